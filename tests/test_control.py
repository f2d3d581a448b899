"""Tests of the Optimal Control environment (codrl.envs.control) and its scripted agents."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codrl.envs import Pack, Task, describe, make_env
from codrl.envs.control import (
    CHANCE_REWARD,
    FORMAT_HINT,
    PRESET_DEFAULTS,
    VARIABLES,
    OptimalControl,
    extract_answer,
)
from codrl.envs.scripted import agents_for
from codrl.envs.scripted.base import TurnText
from codrl.envs.scripted.control import (
    PROBE,
    estimate_dynamics,
    learner_agent,
    oracle_agent,
    parse_task,
    plan_controls,
    random_agent,
    sequence_expression,
)
from codrl.eval.checklist import play_pack, reward_matrix

WORLD = {"a": 0.8, "b": -0.5}
SPEC = {"x0": 1.0, "v0": 0.5, "x_target": 3.0, "v_target": 0.0, "horizon": 3}


def hand_pack(world: dict = WORLD, spec: dict = SPEC) -> tuple[Pack, Task]:
    task = Task(task_id="t/0", position=0, spec=dict(spec))
    return Pack(pack_id="t", env="control", split="train", world=dict(world), tasks=(task,)), task


def episode(env: OptimalControl | None = None, world: dict = WORLD, spec: dict = SPEC):
    env = env or OptimalControl()
    pack, task = hand_pack(world, spec)
    ep = env.start(pack, task)
    return ep, ep.reset()


def answer(expr: str) -> str:
    return f"<answer>{expr}</answer>"


# -- registry, presets, knobs -------------------------------------------------------------------
@pytest.mark.parametrize("name,preset", [("control", "medium"), ("control_hard", "hard")])
def test_registry(name, preset):
    env = make_env(name)
    assert isinstance(env, OptimalControl) and env.name == name and env.preset == preset
    assert env.horizon == PRESET_DEFAULTS[preset]["horizon"]
    assert env.target_max == PRESET_DEFAULTS[preset]["target_max"]
    assert env.chance_reward == CHANCE_REWARD[preset]
    assert env.reply_prefix == "<answer>" and env.stop_strings == ("</answer>",) and env.max_turns == 1
    assert describe(name)
    assert OptimalControl.__doc__.splitlines()[0].startswith("Optimal Control:")


def test_presets_and_knobs():
    easy = OptimalControl(preset="easy")
    assert (easy.horizon, easy.x0_max, easy.v0_max, easy.target_max) == (8, 1.0, 0.5, 3.0)
    hard = OptimalControl(preset="hard")
    assert (hard.horizon, hard.x0_max, hard.v0_max, hard.target_max) == (12, 2.0, 1.5, 8.0)
    custom = OptimalControl(horizon=5, a_range=(0.9, 0.9), b_range=(1, 1), attempts=2)
    assert custom.horizon == 5 and custom.max_turns == 2 and custom.chance_reward is None
    assert "up to 2 replies" in custom.system_prompt


@pytest.mark.parametrize("kw,needle", [
    ({"name": ""}, "name"), ({"preset": "extreme"}, "'easy', 'medium' or 'hard'"), ({"preset": None}, "preset"),
    ({"horizon": 0}, "horizon"), ({"horizon": 2.5}, "horizon"), ({"horizon": True}, "horizon"),
    ({"horizon": 51}, "horizon"), ({"x0_max": -1}, "x0_max"), ({"v0_max": float("nan")}, "v0_max"),
    ({"target_max": "5"}, "target_max"), ({"a_range": (1.0, 0.5)}, "a_range"), ({"a_range": (0, 1)}, "a_range"),
    ({"a_range": (0.5, 3)}, "a_range"), ({"a_range": "ab"}, "a_range"), ({"a_range": (1, 2, 3)}, "a_range"),
    ({"b_range": (0, 1)}, "b_range"), ({"b_range": 5}, "b_range"), ({"attempts": 0}, "attempts"),
    ({"attempts": 6}, "attempts"),
])
def test_bad_params(kw, needle):
    with pytest.raises(ValueError, match=needle):
        OptimalControl(**kw)


# -- packs, worlds, splits ----------------------------------------------------------------------
def test_pack_determinism_and_json():
    a = make_env("control").sample_pack("train", 3, 7, 4)
    b = make_env("control").sample_pack("train", 3, 7, 4)
    assert a == b
    assert json.loads(json.dumps(a.world)) == a.world
    assert json.loads(json.dumps([t.spec for t in a.tasks])) == [t.spec for t in a.tasks]
    c = make_env("control").sample_pack("train", 3, 8, 4)
    assert a.world != c.world


def test_determinism_in_fresh_process():
    code = ("import json; from codrl.envs import make_env; p = make_env('control_hard').sample_pack('test', 5, 2, 4); "
            "print(json.dumps({'world': p.world, 'tasks': [t.spec for t in p.tasks]}, sort_keys=True))")
    out = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
           for _ in range(2)]
    p = make_env("control_hard").sample_pack("test", 5, 2, 4)
    here = json.dumps({"world": p.world, "tasks": [t.spec for t in p.tasks]}, sort_keys=True)
    assert out[0].strip() == out[1].strip() == here


def test_split_disjoint():
    env = make_env("control")
    keys = {s: {env.task_key(p.world, t.spec) for i in range(100) for p in [env.sample_pack(s, 0, i, 4)]
                for t in p.tasks} for s in ("train", "test")}
    assert len(keys["train"]) == len(keys["test"]) == 400
    assert not keys["train"] & keys["test"]
    assert all(env.split_of(json.loads(k)["world"], json.loads(k)["task"]) == "test" for k in keys["test"])


@pytest.mark.parametrize("name", ["control", "control_hard"])
def test_world_and_task_ranges(name):
    env = make_env(name)
    signs = set()
    for i in range(200):
        p = env.sample_pack("train", 1, i, 4)
        a, b = p.world["a"], p.world["b"]
        assert 0.55 <= a <= 1.2 and 0.35 <= abs(b) <= 1.5
        signs.add(b > 0)
        for t in p.tasks:
            s = t.spec
            assert abs(s["x0"]) <= env.x0_max and abs(s["v0"]) <= env.v0_max
            assert abs(s["x_target"]) <= env.target_max and s["v_target"] == 0.0 and s["horizon"] == env.horizon
        assert len({json.dumps(t.spec) for t in p.tasks}) == 4
    assert signs == {True, False}


def test_tasks_share_dynamics():
    """Every task of a pack runs under the pack's (a, b): the feedback tables of all tasks agree."""
    env = make_env("control")
    pack = env.sample_pack("train", 0, 11, 4)
    for task in pack.tasks:
        ep = env.start(pack, task)
        ep.reset()
        res = ep.step(answer("0.5 if t < 1 else (-0.3 if t < 2 else 0.2)"))
        a, b = estimate_dynamics(res.feedback)
        assert a == pytest.approx(pack.world["a"], abs=2e-3) and b == pytest.approx(pack.world["b"], abs=2e-3)


# -- dynamics and reward ------------------------------------------------------------------------
def test_reward_by_hand_constant_policy():
    # a = 0.8, b = -0.5, x0 = 1, v0 = 0.5, target 3, H = 3; u = 2 is clipped to 1.
    # v1 = 0.4 - 0.5 = -0.1, x1 = 0.9; v2 = -0.08 - 0.5 = -0.58, x2 = 0.32; v3 = -0.464 - 0.5 = -0.964, x3 = -0.644
    ep, _obs = episode()
    res = ep.step(answer("2"))
    loss = (-0.644 - 3.0) ** 2 + 2 * 0.964 ** 2 + 0.03 * 3
    assert res.done and res.valid and res.observation is None
    assert res.reward == pytest.approx(1 / (1 + loss))
    assert res.info["event"] == "scored" and res.info["loss"] == pytest.approx(loss)
    assert res.info["controls"] == [1.0, 1.0, 1.0]
    assert res.info["x_end"] == pytest.approx(-0.644) and res.info["v_end"] == pytest.approx(-0.964)
    fb = res.feedback
    assert "Your policy: 2" in fb
    assert " 0 |   1.0000 |   0.5000 |   2.0000 |   1.0000" in fb
    assert " 1 |   0.9000 |  -0.1000 |   2.0000 |   1.0000" in fb
    assert " 3 |  -0.6440 |  -0.9640 |  (end)" in fb
    assert f"= {loss:.4f}. Reward R = 1/(1+L) = {1 / (1 + loss):.4f}" in fb
    after = ep.step(answer("0"))
    assert after.done and after.reward == 0.0 and after.info["event"] == "over"


def test_policy_sees_its_variables():
    ep, _ = episode(spec={**SPEC, "horizon": 4})
    res = ep.step(answer("where(remaining_steps + t == horizon, 0.1 * t, 1 / 0) + 0 * (x + v + x_target + v_target)"))
    assert res.valid and res.info["event"] == "scored"
    assert res.info["controls"] == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_perfect_policy_reaches_reward_one():
    spec = {"x0": 0.0, "v0": 0.0, "x_target": 0.0, "v_target": 0.0, "horizon": 5}
    ep, _ = episode(spec=spec)
    assert ep.step(answer("0")).reward == 1.0


@pytest.mark.parametrize("expr,step,needle", [
    ("1 / (t - 2)", 2, "division by zero"), ("x / 0", 0, "division by zero"), ("9 ** 9 ** 9", 0, "out of range"),
    ("sqrt(-x - 10 + t * 100)", 0, "square root"), ("pow(10, t * 4)", 2, "exponent 8"),
])
def test_runtime_error_scores_zero_and_names_the_step(expr, step, needle):
    ep, _ = episode()
    res = ep.step(answer(expr))
    if step == 2 and needle.startswith("exponent"):  # 10 ** 8 at t = 2 is out of range first
        needle = "out of range"
    assert res.done and res.valid and res.reward == 0.0 and res.info["event"] == "runtime_error"
    assert res.info["error_step"] == step
    assert f"Runtime error at step t = {step}" in res.feedback and needle in res.feedback
    assert len(res.info["controls"]) == step  # the steps that ran are shown


# -- parsing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,why", [
    ("", "no <answer>"), ("clip(x, -1, 1)", "no <answer>"), ("<answer>x", "no <answer>"), (None, "not text"),
    ("<answer>x</answer> <answer>v</answer>", "more than one"), ("<answer><answer>x</answer></answer>", "more than one"),
    ("</answer>x<answer>", "comes before"), ("<answer></answer>", "empty"), ("<answer>x.__class__</answer>", "attribute"),
    ("<answer>__import__('os')</answer>", "quotes"), ("<answer>" + "(" * 5000 + "</answer>", "too long"),
    ("<answer>" + "x" * 1_000_000 + "</answer>", "too long"), ("<answer>x ^ 2</answer>", r"\*\*"),
    ("<answer>open(x)</answer>", "unknown function"), ("<answer>u</answer>", "unknown name"),
])
def test_malformed_is_scored_failure(bad, why):
    ep, _ = episode()
    res = ep.step(bad)
    assert res.done and not res.valid and res.reward == 0.0 and res.observation is None
    assert res.info["event"] == "invalid" and "Invalid answer" in res.feedback
    assert FORMAT_HINT in res.feedback and re.search(why, res.feedback)


def test_answer_extraction_tolerance():
    assert extract_answer("I think... <answer> clip(x, -1, 1) </answer> done") == "clip(x, -1, 1)"
    assert extract_answer("<ANSWER>`v`</Answer >") == "v"
    assert extract_answer("<answer>u = -v</answer>") == "-v"
    assert extract_answer("<answer>u(x, v, t) = -v</answer>") == "-v"
    assert extract_answer("<answer>u == 1</answer>") == "u == 1"
    env = make_env("control")
    ep, _ = episode(env)
    assert ep.step(env.reply_prefix + "0.25</answer>").info["controls"] == [0.25] * 3


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(["<answer>", "</answer>", "<ANSWER >", "x", "v", "t", "1/0", "9**9**9", "(", ")", "-",
                              "+", "*", "**", "clip(", ",", "where(", "x.__class__", "__import__", "'os'", "lambda",
                              "é", "\x00", "\n", " if ", " else ", "[0]", "1e308", "not ", "ａｎｓｗｅｒ", "<", ">"]),
             max_size=80).map("".join),
    st.sampled_from(["", "<answer>" * 20_000, "</answer>" * 20_000, "<answer>" + "-" * 10_000 + "x</answer>",
                     "<answer>" + "(" * 10_000 + "x" + ")" * 10_000 + "</answer>", "x" * 1_000_000,
                     "<answer>" + "x+" * 150 + "x</answer>", "<answer>" + "not " * 90 + "x</answer>"]),
))
def test_fuzz_step_never_raises(reply):
    ep, _ = episode(make_env("control_hard"))
    start = time.perf_counter()
    res = ep.step(reply)
    assert time.perf_counter() - start < 1.0
    assert res.done and 0.0 <= res.reward <= 1.0 and isinstance(res.feedback, str) and res.feedback
    assert res.info["event"] in ("scored", "runtime_error", "invalid")
    if not res.valid:
        assert res.reward == 0.0 and res.info["event"] == "invalid"


# -- several attempts ---------------------------------------------------------------------------
def test_attempts_last_counts():
    env = OptimalControl(attempts=2)
    ep, obs = episode(env)
    assert obs.startswith("Attempt 1 of 2.")
    first = ep.step(answer("1"))
    assert not first.done and first.reward == 0.0 and first.valid
    assert "Attempt 2 of 2" in first.observation and "Your policy: 1" in first.observation
    last = ep.step(answer("0"))
    assert last.done and last.reward > 0 and "The task is over" in last.feedback
    ep, _ = episode(env)
    assert ep.step("nothing").done  # a malformed reply still ends the task at once


# -- what a model sees --------------------------------------------------------------------------
def test_prompt_and_observation_read_well():
    env = make_env("control_hard")
    pack = env.sample_pack("test", 0, 0, 4)
    ep = env.start(pack, pack.tasks[0])
    obs = ep.reset()
    res = ep.step(answer("clip(0.3 * (x_target - x) - 0.5 * v, -1, 1)"))
    print("\n--- system prompt ---\n" + env.system_prompt + "\n--- first observation ---\n" + obs
          + "\n--- feedback ---\n" + res.feedback)  # shown with -s: read it as a model would
    for word in ("v[t+1] = a * v[t] + b * u_applied", "x[t+1] = x[t] + v[t+1]", "NEGATIVE", "same in every task",
                 "<answer>EXPRESSION</answer>", "where(COND, A, B)", "A if COND else B", "1/(1+L)"):
        assert word in env.system_prompt
    for var in VARIABLES:
        assert var in env.system_prompt and var in obs
    assert str(pack.world["a"]) not in env.system_prompt + obs + res.feedback  # the dynamics stay hidden
    assert parse_task(obs) == (pack.tasks[0].spec["x0"], pack.tasks[0].spec["v0"], pack.tasks[0].spec["x_target"],
                               0.0, 12)
    assert "Hint" not in obs and FORMAT_HINT in obs


# -- scripted agents and the CoD checklist --------------------------------------------------------
def test_agents_registered():
    agents = agents_for("control_hard")
    assert agents.random is random_agent and agents.oracle is oracle_agent and agents.learner is learner_agent


def test_planner_is_optimal_and_expressible():
    env = make_env("control")
    rng = np.random.default_rng(0)
    for i in range(20):
        pack = env.sample_pack("test", 2, i, 1)
        a, b = pack.world["a"], pack.world["b"]
        s = pack.tasks[0].spec
        us = plan_controls(a, b, s["x0"], s["v0"], s["x_target"], 0.0, s["horizon"])
        assert np.all(np.abs(us) <= 1.0)
        text = sequence_expression(us)
        assert len(text) <= 400
        ep = env.start(pack, pack.tasks[0])
        ep.reset()
        best = ep.step(answer(text)).reward
        for _ in range(5):  # no random perturbation of the plan does better
            other = np.clip(us + rng.normal(0, 0.05, size=us.shape), -1, 1)
            ep.reset()
            assert ep.step(answer(sequence_expression(other))).reward <= best + 1e-3


def test_sequence_expression_fits_long_horizons():
    us = np.linspace(-1, 1, 50)
    text = sequence_expression(us)
    assert len(text) <= 400


@pytest.mark.parametrize("name", ["control", "control_hard"])
def test_oracle_near_max_and_random_near_chance(name):
    env = make_env(name)
    ora = reward_matrix(env, oracle_agent, packs=25, pack_size=4)
    rnd = reward_matrix(env, random_agent, packs=300, pack_size=4)
    print(f"\n{name}: oracle {ora.mean():.3f} (min {ora.min():.3f}), random {rnd.mean():.3f} "
          f"(chance_reward {env.chance_reward})")
    assert ora.mean() > 0.95
    assert abs(rnd.mean() - env.chance_reward) < 0.03


@pytest.mark.parametrize("name", ["control", "control_hard"])
def test_learner_improves_memoryless_does_not(name):
    env = make_env(name)
    lrn = reward_matrix(env, learner_agent, packs=50, pack_size=4)
    mem = reward_matrix(env, learner_agent, packs=50, pack_size=4, use_hints=False)
    print(f"\n{name}: learner {lrn[:, 0].mean():.3f} -> {lrn[:, -1].mean():.3f}, "
          f"memoryless {mem[:, 0].mean():.3f} -> {mem[:, -1].mean():.3f}")
    assert lrn[:, -1].mean() - lrn[:, 0].mean() > 0.5
    assert mem[:, -1].mean() - mem[:, 0].mean() < 0.1
    assert np.allclose(lrn[:, 0], mem[:, 0])  # position 0 is played without hints by both


def test_learner_hints_carry_the_dynamics():
    env = make_env("control")
    pack = env.sample_pack("test", 0, 3, 4)
    agent = learner_agent(pack, np.random.default_rng(0))
    ep = env.start(pack, pack.tasks[0])
    obs = ep.reset()
    reply = agent.act("", obs)
    assert reply == answer(PROBE)
    res = ep.step(reply)
    hints = agent.write_hints("", [TurnText(obs, reply, res.feedback)], res.reward)
    assert f"a = {pack.world['a']:.4f}"[:8] in hints and "b = " in hints
    rewards = play_pack(env, pack, learner_agent, np.random.default_rng(0))
    assert rewards[1] > 0.9 and rewards[-1] > 0.9
