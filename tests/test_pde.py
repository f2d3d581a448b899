"""Tests of the PDE Discovery environment (``pde`` and ``pde_hard``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codrl.envs import Pack, Task, make_env
from codrl.envs.pde import PDEDiscovery, PDEState, parse_action, score_equation
from codrl.envs.pde.env import CHANCE_REWARD, FORMAT_HINT, T_STEPS
from codrl.envs.pde.library import (
    ALIASES,
    HARD_TEMPLATES,
    TERM_NAMES,
    TRAIN_TEMPLATES,
    EquationError,
    evaluate,
    format_equation,
    parse_equation,
    parse_term_list,
)
from codrl.envs.pde.regression import refit, sparse_regression
from codrl.envs.pde.simulate import initial_profile, residual, simulate, x_grid
from codrl.envs.scripted import agents_for
from codrl.envs.scripted.base import TurnText
from codrl.envs.scripted.pde import learner_agent, oracle_agent, random_agent
from codrl.eval.checklist import play_pack, reward_matrix

NAMES = ("pde", "pde_hard")
#: A cheaper grid for tests that simulate many experiments (the default stays 257 x 2001).
SMALL = {"nx": 65, "nt": 401}


def answer(text: str) -> str:
    return f"<answer>{text}</answer>"


def hand_pack(equation: dict[str, float], amplitudes=(2.0, -1.5), name: str = "pde") -> Pack:
    tasks = tuple(Task(task_id=f"h/{k}", position=k,
                       spec={"amplitude": a, "modes": [[0, 1.0]], "stratum": k, "noise_seed": 11 + k})
                  for k, a in enumerate(amplitudes))
    return Pack(pack_id="h", env=name, split="train", world={"template": 0, "equation": equation,
                                                             "text": format_equation(equation)}, tasks=tasks)


def play(env: PDEDiscovery, pack: Pack, task: Task, replies: list[str], state=None):
    ep = env.start(pack, task, state)
    obs = ep.reset()
    results = [ep.step(r) for r in replies]
    return obs, results


# -- registry, knobs ----------------------------------------------------------------------------
def test_registry_variants_and_defaults():
    env, hard = make_env("pde"), make_env("pde_hard")
    assert (env.name, env.variant, env.term_cap) == ("pde", "train", 2)
    assert (hard.name, hard.variant, hard.term_cap) == ("pde_hard", "hard", 3)
    for e in (env, hard):
        assert e.max_turns == 6 and e.points_per_task == 6 and e.regress_terms == 3
        assert (e.nx, e.nt) == (257, 2001)
        assert e.chance_reward == CHANCE_REWARD[e.variant]
        assert e.reply_prefix == "<answer>" and e.stop_strings == ("</answer>",)
    assert PDEDiscovery.__doc__.splitlines()[0].startswith("PDE Discovery:")
    assert "1 to 2 terms" in env.system_prompt and "1 to 3 terms" in hard.system_prompt
    assert make_env("pde", turns=8).chance_reward is None


@pytest.mark.parametrize("kw,field", [
    ({"variant": "easy"}, "variant"), ({"term_cap": 0}, "term_cap"), ({"term_cap": True}, "term_cap"),
    ({"regress_terms": 16}, "regress_terms"), ({"points_per_task": 0}, "points_per_task"),
    ({"turns": 1}, "turns"), ({"amplitude_range": (2.0, 1.0)}, "amplitude_range"),
    ({"amplitude_range": (1.0, 3.5)}, "amplitude_range"), ({"amplitude_range": "x"}, "amplitude_range"),
    ({"magnitude_range": (0.0, 1.0)}, "magnitude_range"), ({"nx": 4}, "nx"), ({"nt": 500}, "nt"),
    ({"nt": 2.5}, "nt"), ({"noise_u": -1.0}, "noise_u"), ({"noise_y": "a"}, "noise_y"), ({"name": ""}, "name"),
])
def test_bad_knobs_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        PDEDiscovery(**kw)


# -- packs, worlds, splits ----------------------------------------------------------------------
PACK_SNIPPET = """
import json
from codrl.envs import make_env
env = make_env({name!r})
p = env.sample_pack("train", 3, 7, 4)
ep = env.start(p, p.tasks[0], env.new_state(p))
obs = [ep.reset()] + [ep.step(r).feedback for r in ("<answer>sample 0.5 0; 0.3 0.05</answer>",
                                                     "<answer>regress u, u^3, sin(u)</answer>")]
print(json.dumps({{"world": p.world, "tasks": [t.spec for t in p.tasks], "obs": obs}}, sort_keys=True))
"""


@pytest.mark.parametrize("name", NAMES)
def test_determinism_also_in_a_fresh_process(name):
    text = subprocess.run([sys.executable, "-c", PACK_SNIPPET.format(name=name)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": "1"}, timeout=120, check=True).stdout.strip()
    again = subprocess.run([sys.executable, "-c", PACK_SNIPPET.format(name=name)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": "2"}, timeout=120, check=True).stdout.strip()
    assert text == again
    env = make_env(name)
    a, b = env.sample_pack("train", 3, 7, 4), make_env(name).sample_pack("train", 3, 7, 4)
    assert a == b
    assert json.loads(text)["world"] == a.world and json.loads(text)["tasks"] == [t.spec for t in a.tasks]
    json.dumps(a.world), json.dumps([t.spec for t in a.tasks])


@pytest.mark.parametrize("name,templates", [("pde", TRAIN_TEMPLATES), ("pde_hard", HARD_TEMPLATES)])
def test_tasks_share_the_equation_and_packs_differ(name, templates):
    env = make_env(name)
    worlds, sizes = set(), set()
    for i in range(25):
        pack = env.sample_pack("train", 1, i, 4)
        eq = pack.world["equation"]
        template = templates[pack.world["template"]]
        assert sorted(eq) == sorted(t for t, _ in template)
        assert all(np.sign(eq[t]) == s and 0.5 <= abs(eq[t]) <= 2.0 and round(eq[t], 2) == eq[t] for t, s in template)
        assert pack.world["text"] == format_equation(eq)
        for task in pack.tasks:
            assert env.start(pack, task).truth == eq
        worlds.add(json.dumps(eq, sort_keys=True))
        sizes.add(len(eq))
    assert len(worlds) >= 20
    assert sizes == ({1, 2} if name == "pde" else {1, 2, 3})
    assert not {json.dumps(t) for t in TRAIN_TEMPLATES} & {json.dumps(t) for t in HARD_TEMPLATES}


def test_splits_disjoint_and_amplitudes_stratified():
    env = make_env("pde")
    keys = {}
    for split in ("train", "test"):
        keys[split] = set()
        for i in range(40):
            pack = env.sample_pack(split, 0, i, 4)
            assert sorted(t.spec["stratum"] for t in pack.tasks) == [0, 1, 2, 3]
            for t in pack.tasks:
                lo = 1.0 + 1.5 * t.spec["stratum"] / 4
                assert lo - 1e-9 <= abs(t.spec["amplitude"]) <= lo + 1.5 / 4 + 1e-9
                assert env.split_of(pack.world, t.spec) == split
                keys[split].add(env.task_key(pack.world, t.spec))
    assert len(keys["train"]) == len(keys["test"]) == 160
    assert not keys["train"] & keys["test"]


# -- the solver ---------------------------------------------------------------------------------
def test_heat_equation_first_mode_decays_like_exp_minus_pi2_t():
    x = x_grid(257)
    traj = simulate({}, initial_profile(x, 1.0, [[0, 1.0]]), nt=2001, record_every=10)
    for k in (20, 100, 200):  # t = 0.1, 0.5, 1.0
        t = k / T_STEPS
        exact = np.exp(-np.pi ** 2 * t) * np.sin(np.pi * x)
        assert np.max(np.abs(traj[k] - exact)) < 0.03 * np.exp(-np.pi ** 2 * t)  # semi-implicit Euler: ~2.5% at t=1
    assert traj[0, 0] == traj[0, -1] == traj[-1, 0] == traj[-1, -1] == 0.0


def test_discrete_residual_is_the_reaction_term():
    eq = {"u": 1.3, "u^3": -0.7}
    x = x_grid(129)
    traj = simulate(eq, initial_profile(x, 2.0, [[2, 0.4], [0, 0.6]]), nt=801)
    res = residual(traj, 1.0 / 800)
    assert np.max(np.abs(res - evaluate(eq, traj[:-1, 1:-1]))) < 1e-7


def test_simulation_time_and_batched_profiles():
    env = make_env("pde")
    pack = hand_pack({"u": 1.2, "u^3": -0.8}, amplitudes=(2.5,))
    times = []
    for _ in range(3):
        state = env.new_state(pack)
        t0 = time.perf_counter()
        traj = env.trajectory(pack.world["equation"], pack.tasks[0].spec, state)
        times.append(time.perf_counter() - t0)
    print(f"\none 257 x 2001 trajectory: best {min(times) * 1000:.0f} ms, worst {max(times) * 1000:.0f} ms")
    assert traj.shape == (T_STEPS + 1, 257)
    assert min(times) < 3.0  # measured ~50-100 ms on 2 shared cores; loose for loaded machines
    x = x_grid(33)
    both = simulate({"sin(u)": -1.0}, np.stack([np.sin(np.pi * x), -2 * np.sin(np.pi * x)], axis=1), nt=201)
    one = simulate({"sin(u)": -1.0}, -2 * np.sin(np.pi * x), nt=201)
    assert np.allclose(both[:, :, 1], one)


@pytest.mark.parametrize("name", NAMES)
def test_experiments_stay_bounded(name):
    env = make_env(name, **SMALL)
    for i in range(15):
        pack = env.sample_pack("test", 2, i, 4)
        state = env.new_state(pack)
        for task in pack.tasks:
            traj = env.trajectory(pack.world["equation"], task.spec, state)
            assert np.all(np.isfinite(traj)) and np.abs(traj).max() < 3.0
            assert np.abs(traj[0]).max() == pytest.approx(abs(task.spec["amplitude"]), rel=1e-3)


# -- the grammar --------------------------------------------------------------------------------
def test_grammar_examples_and_aliases():
    assert parse_equation("1.2*u - 0.5*u^3") == {"u": 1.2, "u^3": -0.5}
    assert parse_equation(" f(u) = -u^3 + 2 u ") == {"u": 2.0, "u^3": -1.0}
    assert parse_equation("u_t = u_xx + 0.8*(exp(u)-1) - 1.5e-1*tanh(u)") == {"exp(u)-1": 0.8, "tanh(u)": -0.15}
    assert parse_equation("0.8*e^u - 1") == {"exp(u)-1": 0.8}
    assert parse_equation("2*u**2 + -1*U^5") == {"u^2": 2.0, "u^5": -1.0}
    assert parse_equation("u + u - 2*u") == {} and parse_equation("0") == {}
    assert parse_equation("0.5sin(2*u)+.25 LOG(1+u^2)") == {"sin(2u)": 0.5, "log(1+u^2)": 0.25}
    assert parse_equation("3*u/(1+u+u^2) + u^4/(u^4+1)") == {"u^4/(1+u^4)": 1.0, "u/(1+u+u^2)": 3.0}
    for alias, name in ALIASES.items():
        assert parse_equation(f"2*{alias}") == {name: 2.0}
    for name in TERM_NAMES:
        assert parse_term_list(name, 15) == [name]
    assert format_equation({"u^3": -0.5, "u": 1.2, "exp(u)-1": 0.8}) == "1.2*u - 0.5*u^3 + 0.8*(exp(u)-1)"
    assert format_equation({"u": -1.0}) == "-u" and format_equation({}) == "0"


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(TERM_NAMES),
                       st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda c: c != 0.0),
                       max_size=6))
def test_grammar_round_trip(eq):
    text = format_equation(eq)
    assert parse_equation(text) == {k: eq[k] for k in TERM_NAMES if k in eq}
    assert format_equation(parse_equation(text)) == text


@pytest.mark.parametrize("text", [
    "__import__('os').system('ls')", "os.system('rm -rf /')", "u**u", "u^u", "u*u", "cos(u)", "exp(u)",
    "1.2", "1.2*u 3*u^3", "(u + u^3)", "2*(u", "u^6", "u^77", "sin(3u)", "x", "", "   ", "1e999*u",
    "lambda: u", "u; u^3", "u_t = u_xx", "u_t = u_xx 2*u", "--+u", "u" + "+u" * 300,
])
def test_grammar_rejects_everything_else(text):
    with pytest.raises(EquationError):
        parse_equation(text)


# -- the action parser --------------------------------------------------------------------------
def test_parse_actions():
    a, _ = parse_action(answer("sample 0.5 0; (0.25, 0.1); [1 , 1];"))
    assert a.kind == "sample" and a.points == ((0.5, 0.0), (0.25, 0.1), (1.0, 1.0))
    a, _ = parse_action("thinking... " + answer(" Summary "))
    assert a.kind == "summary"
    a, _ = parse_action(answer("regress u, sin(u),tanh(u)"))
    assert a.kind == "regress" and a.terms == ("u", "sin(u)", "tanh(u)")
    a, _ = parse_action(answer("regress candidates: 1.2*u - 0.5*u^3 | sin(u)"))
    assert a.kind == "candidates" and a.supports == (("u", "u^3"), ("sin(u)",))
    a, _ = parse_action(answer("commit 2"))
    assert a.kind == "commit" and a.rank == 2
    a, _ = parse_action(answer("commit 1.2*u - 0.5*u^3"))
    assert a.kind == "commit" and a.equation == {"u": 1.2, "u^3": -0.5}
    for bad in ["sample 0.5 0", answer("sample 0.5 0") + answer("summary"), "<answer>summary", "summary</answer>",
                answer("dance"), answer("sample 0.5"), answer("sample"), answer("summary now"),
                answer("regress u, cos(u)"), answer("regress u, u"), answer("regress"), answer("commit"),
                answer("regress candidates u | u^3"), answer("regress candidates: 0"), answer("commit __import__"),
                "</answer> x <answer>", answer("x" * 2000), None, 42]:
        a, why = parse_action(bad)
        assert a is None and why, bad


# -- episodes -----------------------------------------------------------------------------------
def test_full_episode_and_hidden_reward():
    env = make_env("pde")
    pack = hand_pack({"u": 1.2, "u^3": -0.8})
    obs, res = play(env, pack, pack.tasks[0], [
        answer("sample 0.5 0; 0.4 0; 0.3 0; 0.2 0"), answer("summary"), answer("regress u, u^3, sin(u)"),
        answer("commit 1.2*u - 0.8*u^3")])
    assert "Experiment 1" in obs and "Turn 1 of 6" in obs and FORMAT_HINT in obs and "up to 3 library terms" in obs
    assert [r.info["event"] for r in res] == ["sample", "summary", "regress", "commit"]
    assert all(r.valid for r in res) and [r.done for r in res] == [False, False, False, True]
    assert "Sample points left in this experiment: 2" in res[0].observation and "0.5000  0.000" in res[0].feedback
    assert "Pooled evidence: 4 points" in res[1].feedback
    best = parse_equation(res[2].feedback.split("1. f(u) = ")[1].split("    rms residual")[0])
    assert best == pytest.approx({"u": 1.2, "u^3": -0.8}, abs=0.02)
    assert res[3].reward == 1.0
    assert res[3].feedback == "Committed f(u) = 1.2*u - 0.8*u^3. The task is over (its score is not shown)."
    assert ep_over(env, pack)


def ep_over(env, pack) -> bool:
    ep = env.start(pack, pack.tasks[0])
    ep.reset()
    ep.step(answer("sample 0.5 0; 0.4 0; 0.3 0"))
    ep.step(answer("regress u"))
    done = ep.step(answer("commit 1"))
    again = ep.step(answer("summary"))
    return done.done and again.done and again.feedback == "The task is already over."


def test_rejections_cost_a_turn_and_the_turn_limit_fails_the_task():
    env = make_env("pde")
    pack = hand_pack({"u": -1.0})
    _, res = play(env, pack, pack.tasks[0], [
        answer("commit 1"), answer("regress u"), answer("sample 0.5 0; 0.4 0; 0.3 0; 0.2 0; 0.1 0; 0.6 0; 0.7 0"),
        answer("sample 1.5 0"), answer("regress u, u^2, u^3, u^4"), answer("summary")])
    assert [r.info["event"] for r in res] == ["rejected"] * 5 + ["timeout"]
    assert all(r.valid and r.reward == 0.0 for r in res) and res[-1].done and not any(r.done for r in res[:-1])
    assert "Turn limit reached without a commit" in res[-1].feedback
    assert "only 6 are left" in res[2].feedback and "at most 3 library terms" in res[4].feedback


def test_commit_must_come_from_the_last_regression():
    env = make_env("pde")
    pack = hand_pack({"u": 1.2, "u^3": -0.8})
    _, res = play(env, pack, pack.tasks[0], [
        answer("sample 0.5 0; 0.4 0; 0.3 0; 0.2 0; 0.1 0; 0.45 0"), answer("regress candidates: sin(u) | tanh(u)"),
        answer("commit 1.2*u - 0.8*u^3"), answer("commit 3"), answer("commit 0.9*tanh(u)")])
    assert [r.info["event"] for r in res] == ["sample", "regress", "rejected", "rejected", "commit"]
    assert res[-1].reward == pytest.approx(1 / (1 + (1.2 + 0.8 + 0.9) / 2.0))


def test_malformed_reply_is_a_scored_failure():
    env = make_env("pde_hard")
    pack = hand_pack({"u": 1.0}, name="pde_hard")
    _, res = play(env, pack, pack.tasks[0], [answer("sample 0.5 0"), "<answer>regress u, cos(u)</answer>"])
    assert res[0].valid and not res[0].done
    assert res[1].done and not res[1].valid and res[1].reward == 0.0 and res[1].info["event"] == "invalid"
    assert FORMAT_HINT in res[1].feedback and "cos(u)" in res[1].feedback


def test_score_equation():
    truth = {"u": 1.0, "u^3": -1.0}
    assert score_equation(truth, truth) == 1.0
    assert score_equation({"u": 1.1, "u^3": -0.9}, truth) == pytest.approx(1 / 1.1)
    assert score_equation({"u": 1.0}, truth) == pytest.approx(1 / 1.5)
    assert score_equation({"u": 1.0, "u^3": -1.0, "sin(u)": 0.2}, truth) == pytest.approx(1 / (1 + 0.1 + 1))
    assert score_equation({}, truth) == 0.5


def test_regression_finds_a_known_law_and_refits_candidates():
    rng = np.random.default_rng(0)
    u = rng.uniform(-2.2, 2.2, 24)
    y = evaluate({"sin(u)": 1.5, "u^3": -0.6}, u) + 0.0005 * rng.standard_normal(24)
    fits = sparse_regression(u, y, TERM_NAMES, cap=2)
    assert fits[0].support == ("u^3", "sin(u)")
    assert fits[0].equation == pytest.approx({"u^3": -0.6, "sin(u)": 1.5}, abs=0.01)
    ranked = refit(u, y, [("u",), ("u^3", "sin(u)"), ("tanh(u)", "u^3")])
    assert ranked[0].support == ("u^3", "sin(u)") and ranked[0].rms < 0.002


# -- lifecycle state ----------------------------------------------------------------------------
def test_points_pool_within_a_lifecycle_and_never_across_lifecycles():
    env = make_env("pde")
    pack = hand_pack({"u": 1.2, "u^3": -0.8})
    first, second = env.new_state(pack), env.new_state(pack)
    assert isinstance(first, PDEState) and first is not second
    play(env, pack, pack.tasks[0], [answer("sample 0.5 0; 0.4 0.05")], first)
    assert len(first.points) == 2 and not second.points
    assert len(first.trajectories) == 1 and not second.trajectories  # the experiment is cached per lifecycle
    obs, res = play(env, pack, pack.tasks[1], [answer("sample 0.5 0"), answer("regress u, u^3")], first)
    assert "holds 2 points from 1 earlier experiment" in obs
    assert "Regression on 3 pooled points" in res[1].feedback
    obs, res = play(env, pack, pack.tasks[1], [answer("regress u")], second)
    assert "No points sampled yet" in obs and res[0].info["event"] == "rejected"
    other = hand_pack({"u": 1.0})
    with pytest.raises(ValueError):
        env.start(replace(other, pack_id="other"), other.tasks[0], first)


def test_same_replies_same_transcript_and_noise_per_position():
    env = make_env("pde")
    pack = hand_pack({"tanh(u)": -1.0})
    replies = [answer("sample 0.5 0; 0.3 0.2"), answer("regress u, tanh(u)")]
    a = play(env, pack, pack.tasks[0], replies, env.new_state(pack))
    b = play(env, pack, pack.tasks[0], replies, env.new_state(pack))
    assert [r.feedback for r in a[1]] == [r.feedback for r in b[1]]


# -- scripted agents ----------------------------------------------------------------------------
def test_agents_for_names():
    for name in NAMES:
        agents = agents_for(name)
        assert (agents.random, agents.oracle, agents.learner) == (random_agent, oracle_agent, learner_agent)


@pytest.mark.parametrize("name", NAMES)
def test_oracle_near_max_and_random_near_chance(name):
    env = make_env(name, **SMALL)  # the grid hardly matters to these agents; the small one is cheaper
    ora = reward_matrix(env, oracle_agent, packs=20)
    assert ora.mean() > 0.99
    rnd = reward_matrix(env, random_agent, packs=100)
    print(f"\n{name}: oracle {ora.mean():.3f}, random {rnd.mean():.4f} (chance_reward {env.chance_reward})")
    # 400 tasks with a per-task sd of ~0.14: standard error ~0.007
    assert abs(rnd.mean() - env.chance_reward) < 0.03


@pytest.mark.parametrize("name,min_gain", [("pde", 0.12), ("pde_hard", 0.05)])
def test_learner_improves_memoryless_does_not(name, min_gain):
    # Measured over 300 test packs (seeds 1-2): train learner 0.56 -> 0.80 (gain 0.24 +- 0.02),
    # memoryless 0.56 -> 0.57 (0.02 +- 0.03); hard learner 0.43 -> 0.58 (0.15 +- 0.02), memoryless
    # 0.43 -> 0.45 (0.02 +- 0.02). The learner samples t = 0 only, so this plays the default grid fast.
    env = make_env(name)
    lrn = reward_matrix(env, learner_agent, packs=50)
    mem = reward_matrix(env, learner_agent, packs=50, use_hints=False)
    gain, control = lrn[:, -1].mean() - lrn[:, 0].mean(), mem[:, -1].mean() - mem[:, 0].mean()
    print(f"\n{name}: learner {lrn.mean(0).round(3)} memoryless {mem.mean(0).round(3)}")
    assert gain > min_gain
    assert abs(control) < 0.08
    assert lrn[:, -1].mean() > mem[:, -1].mean() + min_gain / 2


def test_learner_hints_carry_the_support():
    env = make_env("pde")
    pack = env.sample_pack("test", 0, 0, 4)
    state = env.new_state(pack)
    rng = np.random.default_rng(0)
    hints, rewards = "", []
    for task in pack.tasks:
        agent = learner_agent(pack, rng)
        ep = env.start(pack, task, state)
        obs = ep.reset()
        transcript = []
        for _ in range(env.max_turns):
            reply = agent.act(hints, obs)
            step = ep.step(reply)
            transcript.append(TurnText(obs, reply, step.feedback))
            if step.done:
                break
            obs = step.observation
        rewards.append(step.reward)
        hints = agent.write_hints(hints, transcript, step.reward)
        assert "searched:" in hints and "committed:" in hints
    print("\n" + pack.world["text"], np.round(rewards, 3), "\n" + hints)
    assert rewards[-1] > 0.95  # this pack's law is found and then reused
    assert len(transcript) == 3  # sample, regress the remembered support, commit
    assert play_pack(env, pack, learner_agent, np.random.default_rng(0)) == rewards


# -- robustness ---------------------------------------------------------------------------------
FRAGMENTS = ["<answer>", "</answer>", "<ANSWER >", "sample", "summary", "regress", "commit", "candidates:", " ",
             "0.5", "-1", "1e5", ";", ",", "|", "u", "u^3", "sin(u)", "exp(u)-1", "(", ")", "*", "+", "-", "\n",
             "1", "99", "nan", "inf", "__import__", "os.system", "**", "u/(1+u^2)", "f(u)=", "#", "\x00", "é"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)))
def test_fuzzed_replies_never_raise(reply):
    env = FUZZ_ENV
    ep = env.start(FUZZ_PACK, FUZZ_PACK.tasks[0], env.new_state(FUZZ_PACK))
    ep.reset()
    t0 = time.perf_counter()
    res = ep.step(reply)
    assert time.perf_counter() - t0 < 1.0
    assert isinstance(res.feedback, str) and res.feedback
    if not res.valid:
        assert res.done and res.reward == 0.0 and FORMAT_HINT in res.feedback
    else:
        assert res.reward == 0.0 or res.info["event"] == "commit"


FUZZ_ENV = make_env("pde", **SMALL)
FUZZ_PACK = hand_pack({"u": 1.0, "u^3": -1.0})


def test_huge_replies_are_fast_failures():
    env = make_env("pde")
    pack = hand_pack({"u": 1.0})
    for reply in ["<answer>" * 200_000, "x" * 2_000_000, answer("regress " + "u, " * 300_000),
                  answer("commit " + "u+" * 500_000 + "u"), "<answer>sample " + "0.5 0; " * 200_000]:
        ep = env.start(pack, pack.tasks[0])
        ep.reset()
        t0 = time.perf_counter()
        res = ep.step(reply)
        assert time.perf_counter() - t0 < 1.0
        assert res.done and not res.valid and res.reward == 0.0


def test_learner_reads_only_text():
    """The learner's factory ignores the world: the same rewards with the world hidden from it."""
    env = make_env("pde")
    a = reward_matrix(env, learner_agent, packs=8)
    b = reward_matrix(env, lambda pack, rng: learner_agent(replace(pack, world={}), rng), packs=8)
    assert np.array_equal(a, b)
