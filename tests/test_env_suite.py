"""The checklist, run over every built-in environment at once.

Each environment's own test file goes deeper (rules by hand, scripted learners tuned to its
world); this file holds every environment to the same contract: listed with a description,
deterministic packs, a shared world within a pack, disjoint splits, a fresh lifecycle state per
call, replies that never raise, and the scripted agents' levels (FrozenLake's in full here).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codrl.envs import BUILTIN, CoDEnv, env_names, make_env
from codrl.envs.scripted import MODULES, agents_for
from codrl.eval.checklist import levels, reward_matrix

ALL = sorted(BUILTIN)
REAL = sorted(MODULES)  # every built-in but the toy has scripted agents


def test_codrl_envs_lists_all_fifteen() -> None:
    proc = subprocess.run([sys.executable, "-m", "codrl.cli", "envs"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sorted(["frozenlake", "frozenlake_hard", "alchemy", "alchemy_hard", "terminal", "gridnav",
                            "gridnav_hard", "control", "control_hard", "pde", "pde_hard", "diagnosis",
                            "code", "code_hard", "secret_table"])
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # each with a one-line description
    assert set(env_names()) >= set(names)


@pytest.mark.parametrize("name", ALL)
def test_packs_deterministic_shared_world_and_splits_disjoint(name: str) -> None:
    env = make_env(name)
    a = env.sample_pack("train", 3, 1, 3)
    b = make_env(name).sample_pack("train", 3, 1, 3)
    assert a == b
    json.dumps(a.world)  # logged as JSON
    assert a.env == env.name and len(a) == 3
    other = env.sample_pack("train", 3, 2, 3)
    assert (other.world, other.tasks) != (a.world, a.tasks)
    train = {json.dumps([p.world, t.spec], sort_keys=True) for i in range(6)
             for p in [env.sample_pack("train", 0, i, 2)] for t in p.tasks}
    test = {json.dumps([p.world, t.spec], sort_keys=True) for i in range(6)
            for p in [env.sample_pack("test", 0, i, 2)] for t in p.tasks}
    assert not train & test


@pytest.mark.parametrize("name", ALL)
def test_lifecycle_state_is_fresh_per_call(name: str) -> None:
    env = make_env(name)
    pack = env.sample_pack("test", 0, 0, 2)
    s1, s2 = env.new_state(pack), env.new_state(pack)
    assert s1 is None or s1 is not s2


ADVERSARIAL = ["", " ", "<answer></answer>", "<answer>", "</answer>", "<answer><answer>x</answer></answer>",
               "<answer>1</answer><answer>2</answer>", "\x00\ud7ff\u202e<answer>é</answer>", "A" * 200_000,
               "<answer>" * 5000, "</answer>" * 5000, "<answer>" + "(" * 5000 + "</answer>"]


@pytest.mark.parametrize("name", ALL)
def test_adversarial_replies_are_scored_not_raised(name: str) -> None:
    env = make_env(name)
    pack = env.sample_pack("test", 0, 0, 1)
    for reply in ADVERSARIAL:
        episode = env.start(pack, pack.tasks[0], env.new_state(pack))
        episode.reset()
        t0 = time.monotonic()
        res = episode.step(reply)
        assert time.monotonic() - t0 < 2.0, (name, reply[:40])
        assert isinstance(res.feedback, str) and res.feedback
        assert np.isfinite(res.reward)
        if not res.valid:
            assert res.done and res.reward == 0.0


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300) | st.builds(lambda a, b: f"<answer>{a}</answer>{b}", st.text(max_size=80),
                                              st.text(max_size=40)))
def test_fuzzed_replies_never_raise(name: str, text: str) -> None:
    env = _cached(name)
    pack = env.sample_pack("test", 0, 0, 1)
    episode = env.start(pack, pack.tasks[0], env.new_state(pack))
    episode.reset()
    for _ in range(3):
        res = episode.step(text)
        assert np.isfinite(res.reward)
        if res.done:
            break


_ENVS: dict[str, CoDEnv] = {}


def _cached(name: str) -> CoDEnv:
    if name not in _ENVS:
        _ENVS[name] = make_env(name)
    return _ENVS[name]


@pytest.mark.parametrize("name", ["frozenlake", "frozenlake_hard"])
def test_frozenlake_checklist_levels(name: str) -> None:
    env = make_env(name)
    agents = agents_for(name)
    lv = levels(env, *agents, packs=150, pack_size=4)
    assert lv.oracle == 1.0  # the oracle knows the code mapping and walks a shortest safe path
    assert lv.chance < 0.3
    assert lv.learner_last - lv.learner_first > 0.4  # the mapping learned from feedback pays off
    assert abs(lv.memoryless_last - lv.memoryless_first) < 0.15
    assert lv.learner_last - lv.memoryless_last > 0.3


def test_frozenlake_learner_reads_only_text() -> None:
    """The learner's factory ignores the world: the same rewards with a scrambled pack.world."""
    env = make_env("frozenlake")
    learner = agents_for("frozenlake").learner
    a = reward_matrix(env, learner, packs=20)
    b = reward_matrix(env, lambda pack, rng: learner(pack.__class__(pack.pack_id, pack.env, pack.split, {},
                                                                    pack.tasks), rng), packs=20)
    assert np.array_equal(a, b)


def test_answer_span_finds_the_single_pair() -> None:
    """The shared tag step of every environment parser: exactly one <answer>...</answer>, in order."""
    from codrl.envs.base import answer_span

    reply = "Thinking. <answer> 3,5 </answer> done"
    start, end = answer_span(reply)
    assert reply[start:end] == " 3,5 "
    assert answer_span("<ANSWER >x</Answer  >") == (9, 10)  # any case, spaces before '>'
    assert answer_span("<answer></answer>") == (8, 8)
    assert answer_span("") == answer_span("no tags") == "no <answer>...</answer> pair found"
    assert answer_span("<answer>x") == answer_span("x</answer>") == "no <answer>...</answer> pair found"
    assert answer_span("<answer>a<answer>b</answer>") == "more than one <answer> or </answer> tag"
    assert answer_span("<answer>a</answer>b</answer>") == "more than one <answer> or </answer> tag"
    assert answer_span("<answer>a</answer><answer>b</answer>") == "more than one <answer> or </answer> tag"
    assert answer_span("</answer>x<answer>") == "</answer> comes before <answer>"
    assert answer_span("<answer >" + "x" * 10 + "</answer>", max_chars=10) == (9, 19)
    assert answer_span("<answer>" + "x" * 11 + "</answer>", max_chars=10) == "the answer is too long (at most 10 characters)"
    assert answer_span("<answer>" + "x" * 11 + "</answer>", 10, "too long for a move") == "too long for a move"
    assert answer_span("<an\u017fwer>x</answer>") == "no <answer>...</answer> pair found"  # tags are ASCII only
    for bad in (None, 3, b"<answer>x</answer>", ["<answer>x</answer>"]):
        assert answer_span(bad) == "the reply is not text"
    huge = ["<answer>" * 125_000 + "</answer>", "</answer>" * 111_112, "<answer" + " " * 1_000_000, "<" * 1_000_000,
            "<answer>" + "x" * 1_000_000 + "</answer>", "x" * 1_000_000 + "<answer>1</answer>"]
    t0 = time.perf_counter()
    results = [answer_span(h, max_chars=100) for h in huge]
    assert time.perf_counter() - t0 < 0.5
    assert results[:5] == ["more than one <answer> or </answer> tag", "no <answer>...</answer> pair found",
                           "no <answer>...</answer> pair found", "no <answer>...</answer> pair found",
                           "the answer is too long (at most 100 characters)"]
    assert results[5] == (1_000_008, 1_000_009)
