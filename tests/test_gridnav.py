"""Tests of Grid Navigation (``gridnav``, ``gridnav_hard``) and its scripted agents."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codrl.backends.base import GenRequest
from codrl.backends.scripted import FunctionBackend
from codrl.envs import Pack, Task, describe, make_env
from codrl.envs.gridnav import (CHANCE_REWARD, GridNavigation, RevealState, best_path, entered_cells,
                                parse_move, rook_targets)
from codrl.envs.scripted import agents_for
from codrl.envs.scripted.gridnav import Situation, learner_agent, oracle_agent, random_agent
from codrl.eval.checklist import play_pack, reward_matrix
from codrl.rollout.config import RolloutConfig
from codrl.rollout.lifecycle import LifecycleRunner, make_jobs
from codrl.rollout.prompts import UPDATE_SYSTEM

NAMES = ("gridnav", "gridnav_hard")

# A tiny hand-made map (radius-1 reveals) for checking the rules by hand.
#   col:   0   1   2
COSTS = [[0, 10, 20],    # row 0
         [30, 40, 50],   # row 1
         [60, 70, 80]]   # row 2


def hand_pack(start=(0, 0), goal=(2, 2), moves=2, costs=COSTS, k=1) -> Pack:
    spec = {"start": list(start), "goal": list(goal), "moves": moves}
    return Pack(pack_id="hand", env="gridnav", split="test", world={"size": len(costs), "costs": costs},
                tasks=tuple(Task(task_id=f"hand/{i}", position=i, spec=spec) for i in range(k)))


def ans(r: int, c: int) -> str:
    return f"<answer>{r},{c}</answer>"


def dilate(cells, size: int, radius: int) -> set[tuple[int, int]]:
    """Every cell within Chebyshev distance ``radius`` of one of ``cells`` (independent of the env)."""
    return {(r, c) for r in range(size) for c in range(size)
            if any(max(abs(r - a), abs(c - b)) <= radius for a, b in cells)}


def digest(name: str) -> str:
    env = make_env(name)
    packs = [env.sample_pack(split, 5, i, 4) for split in ("train", "test") for i in range(3)]
    blob = json.dumps([[p.pack_id, p.world, [t.spec for t in p.tasks]] for p in packs], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# -- packs, worlds, splits ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_pack_determinism_and_sharing(name):
    env = make_env(name)
    a = env.sample_pack("train", seed=3, index=7, size=4)
    assert a == make_env(name).sample_pack("train", seed=3, index=7, size=4)
    json.loads(json.dumps(a.world)), json.loads(json.dumps([t.spec for t in a.tasks]))
    for task in a.tasks:  # every task of a pack plays on the pack's one cost map
        assert np.array_equal(env.start(a, task).costs, np.asarray(a.world["costs"]))
    others = [env.sample_pack("train", 3, i, 4).world["costs"] for i in range(8, 14)]
    assert all(o != a.world["costs"] for o in others)
    assert env.sample_pack("train", 4, 7, 4).world != a.world


def test_determinism_in_fresh_subprocess():
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys; sys.path.insert(0, {here!r}); from test_gridnav import digest; "
            "print(digest('gridnav'), digest('gridnav_hard'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONHASHSEED": "987"}, check=True)
    assert out.stdout.split() == [digest("gridnav"), digest("gridnav_hard")]


@pytest.mark.parametrize("name", NAMES)
def test_split_disjoint(name):
    env = make_env(name)
    keys = {split: {env.task_key(p.world, t.spec) for i in range(40)
                    for p in [env.sample_pack(split, 0, i, 4)] for t in p.tasks} for split in ("train", "test")}
    assert min(len(k) for k in keys.values()) > 150
    assert not keys["train"] & keys["test"]


@pytest.mark.parametrize("name,sizes,moves,radius", [("gridnav", (8, 12), (4, 6), 2),
                                                     ("gridnav_hard", (10, 14), (3, 5), 1)])
def test_worlds_and_tasks(name, sizes, moves, radius):
    env = make_env(name)
    assert env.reveal_radius == radius and env.max_turns == moves[1]
    seen_sizes, seen_moves = set(), set()
    for i in range(40):
        pack = env.sample_pack("train", 1, i, 4)
        costs = np.asarray(pack.world["costs"])
        n = pack.world["size"]
        assert costs.shape == (n, n) and costs.dtype.kind == "i"
        assert costs.min() == 0 and costs.max() == 99  # scaled to [0, 1], squared, x99
        assert np.median(costs) < 40  # squaring makes wide cheap valleys
        seen_sizes.add(n)
        for t in pack.tasks:
            start, goal, r = tuple(t.spec["start"]), tuple(t.spec["goal"]), t.spec["moves"]
            seen_moves.add(r)
            assert start != goal and all(0 <= x < n for x in start + goal)
            # the goal is reachable in exactly R rook moves (any costs: use zeros)
            assert best_path(np.zeros((n, n)), start, goal, r) is not None
    assert seen_sizes == set(range(sizes[0], sizes[1] + 1))
    assert seen_moves == set(range(moves[0], moves[1] + 1))


def test_registry_and_description():
    easy, hard = make_env("gridnav"), make_env("gridnav_hard")
    assert (easy.name, easy.variant, hard.name, hard.variant) == ("gridnav", "train", "gridnav_hard", "hard")
    assert easy.chance_reward == CHANCE_REWARD["train"] and hard.chance_reward == CHANCE_REWARD["hard"]
    assert GridNavigation(min_size=9).chance_reward is None  # measured only for the defaults
    assert easy.reply_prefix == "<answer>" and easy.stop_strings == ("</answer>",)
    assert describe("gridnav") and GridNavigation.__doc__.splitlines()[0].startswith("Grid Navigation")


@pytest.mark.parametrize("kw,field", [
    (dict(variant="easy"), "variant"), (dict(min_size=1), "min_size"), (dict(max_size=31), "max_size"),
    (dict(min_size=10, max_size=9), "max_size"), (dict(n_bumps=0), "n_bumps"), (dict(n_bumps=2.5), "n_bumps"),
    (dict(min_moves=0), "min_moves"), (dict(min_moves=5, max_moves=4), "max_moves"),
    (dict(reveal_radius=-1), "reveal_radius"), (dict(reveal_radius=True), "reveal_radius"),
    (dict(keep_reveals="yes"), "keep_reveals"), (dict(max_sample_tries=0), "max_sample_tries"),
    (dict(name=""), "name"),
])
def test_bad_params(kw, field):
    with pytest.raises(ValueError, match=field):
        GridNavigation(**kw)
    with pytest.raises(ValueError, match="'train' or 'hard'"):
        GridNavigation(variant="medium")


# -- rules by hand ------------------------------------------------------------------------------
def test_reward_formula_by_hand():
    env = GridNavigation(reveal_radius=1)
    pack = hand_pack(moves=2)
    ep = env.start(pack, pack.tasks[0])
    res = ep.step(ans(0, 2))  # enters (0,1)=10 and (0,2)=20
    assert not res.done and res.reward == 0.0 and res.valid
    assert res.info["entered"] == [[0, 1], [0, 2]] and res.info["mean_cost"] == 15.0
    assert res.feedback.startswith("Move 1: 0,0 -> 0,2 entered 2 cells: 0,1=10 0,2=20.")
    res = ep.step(ans(2, 2))  # enters (1,2)=50 and (2,2)=80: mean (10+20+50+80)/4 = 40
    assert res.done and res.info["event"] == "goal" and res.reward == pytest.approx(1 - 40 / 100)
    assert "reward 0.600" in res.feedback and res.observation is None
    assert env.start(pack, pack.tasks[0]).step("x").info["event"] == "invalid"
    after = ep.step(ans(2, 1))
    assert after.done and after.reward == 0.0 and after.info["event"] == "over"


def test_early_arrival_does_not_end_and_revisits_count_twice():
    env = GridNavigation(reveal_radius=1)
    pack = hand_pack(moves=4)
    ep = env.start(pack, pack.tasks[0])
    ep.step(ans(0, 2))
    res = ep.step(ans(2, 2))  # on the goal after 2 of 4 moves: the task goes on
    assert not res.done and res.reward == 0.0
    assert "You are on the goal now, but you must still make every move." in res.observation
    ep.step(ans(2, 0))  # enters (2,1)=70, (2,0)=60
    res = ep.step(ans(2, 2))  # enters (2,1)=70 again, (2,2)=80 again
    assert res.done and res.reward == pytest.approx(1 - (10 + 20 + 50 + 80 + 70 + 60 + 70 + 80) / 8 / 100)


def test_missed_goal_scores_zero():
    env = GridNavigation(reveal_radius=1)
    pack = hand_pack(moves=2)
    ep = env.start(pack, pack.tasks[0])
    ep.step(ans(0, 2))
    res = ep.step(ans(1, 2))
    assert res.done and res.valid and res.reward == 0.0 and res.info["event"] == "missed"
    assert "not on the goal 2,2" in res.feedback


@pytest.mark.parametrize("target,why", [((0, 3), "outside the grid"), ((5, 0), "outside the grid"),
                                        ((1, 1), "neither in your row 0 nor in your column 0"),
                                        ((0, 0), "where you already are")])
def test_illegal_moves_end_the_task(target, why):
    env = GridNavigation(reveal_radius=1)
    pack = hand_pack(moves=2)
    state = env.new_state(pack)
    ep = env.start(pack, pack.tasks[0], state)
    res = ep.step(ans(*target))
    assert res.done and res.valid and res.reward == 0.0 and res.observation is None
    assert res.info["event"] == "illegal" and why in res.feedback and "reward 0" in res.feedback
    assert not state.revealed.any()


def test_observation_and_reveal():
    env = GridNavigation(reveal_radius=1)
    pack = hand_pack(moves=2)
    state = env.new_state(pack)
    ep = env.start(pack, pack.tasks[0], state)
    obs = ep.reset()
    assert obs.startswith("Round 1/2: 2 moves left")
    assert "Last move: none yet." in obs and "You are at 0,0. The goal is at 2,2." in obs
    assert "      0  1  2\n   0  @  ?  ?\n   1  ?  ?  ?\n   2  ?  ?  G\n" in obs
    assert "a cell in row 0 or in column 0" in obs and "<answer>row,col</answer>" in obs
    res = ep.step(ans(0, 2))
    assert state.entered == {(0, 1), (0, 2)}
    assert {tuple(x) for x in np.argwhere(state.revealed)} == dilate([(0, 1), (0, 2)], 3, 1)
    obs = res.observation
    assert "Round 2/2: 1 move left" in obs
    assert "Last move (move 1): 0,0 -> 0,2 entered 2 cells: 0,1=10 0,2=20." in obs
    assert "Running loss: mean cost 15.0 over 2 entered cells." in obs
    assert "   0  0 10  @\n   1 30 40 50\n   2  ?  ?  G\n" in obs


def test_reveal_persists_within_a_lifecycle_only():
    env = GridNavigation(reveal_radius=1)
    pack = hand_pack(moves=2, k=2)
    state = env.new_state(pack)
    env.start(pack, pack.tasks[0], state).step(ans(0, 2))
    obs = env.start(pack, pack.tasks[1], state).reset()  # the next task of the same lifecycle
    assert "   0  @ 10 20\n   1 30 40 50\n   2  ?  ?  G\n" in obs
    assert "   1  ?  ?  ?" in env.start(pack, pack.tasks[1], env.new_state(pack)).reset()
    assert "   1  ?  ?  ?" in env.start(pack, pack.tasks[1]).reset()  # no state: nothing carried
    forgetful = GridNavigation(reveal_radius=1, keep_reveals=False)
    state = forgetful.new_state(pack)
    forgetful.start(pack, pack.tasks[0], state).step(ans(0, 2))
    assert "   1  ?  ?  ?" in forgetful.start(pack, pack.tasks[1], state).reset()
    assert env.new_state(pack) is not env.new_state(pack)
    with pytest.raises(ValueError, match="state"):
        env.start(pack, pack.tasks[0], RevealState(5, 1))


# -- per-lifecycle state through the real runner ------------------------------------------------
def random_moves(seed: int = 0) -> FunctionBackend:
    """Test double of an engine: a fresh random legal rook move for every solve request."""
    rng = np.random.default_rng(seed)

    def reply(req: GenRequest) -> str:
        if req.messages[0]["content"] == UPDATE_SYSTEM:
            return "I moved at random; costs vary."
        sit = Situation(req.messages[-1]["content"])
        targets = rook_targets(sit.size, sit.pos)
        r, c = targets[int(rng.integers(len(targets)))]
        return f"{r},{c}</answer>"

    return FunctionBackend(reply)


def test_state_isolation_concurrent_repeats():
    env = make_env("gridnav")
    pack = env.sample_pack("train", 0, 2, 3)
    states: list[RevealState] = []
    make_state = env.new_state
    env.new_state = lambda p: states.append(make_state(p)) or states[-1]  # type: ignore[method-assign]
    cfg = RolloutConfig(pack_size=3, repeats=8, max_concurrent=64)
    results = LifecycleRunner(random_moves(), cfg).run(make_jobs([(env, pack)], cfg))
    assert len(results) == len(states) == 8 and len({id(s) for s in states}) == 8
    n, rad = pack.world["size"], env.reveal_radius
    by_entered = {frozenset(s.entered): s for s in states}
    assert len(by_entered) == 8  # the repeats really played differently
    for res in results:
        entered_by_task = []
        for ep, task in zip(res.episodes, pack.tasks):
            pos, cells = tuple(task.spec["start"]), []
            assert len(ep.turns) == task.spec["moves"] and all(t.valid for t in ep.turns)
            for turn in ep.turns:
                target = parse_move(turn.reply)
                cells += entered_cells(pos, target)
                pos = target
            entered_by_task.append(cells)
        everything = {c for cells in entered_by_task for c in cells}
        state = by_entered.pop(frozenset(everything))  # exactly one lifecycle state holds this repeat's cells
        assert {tuple(x) for x in np.argwhere(state.revealed)} == dilate(everything, n, rad)
        # task k opens on the reveals of tasks 0..k-1 of this lifecycle, and on nothing else
        for k in range(1, len(pack.tasks)):
            sit = Situation(res.episodes[k].turns[0].observation)
            task = pack.tasks[k].spec
            expected = dilate({c for cells in entered_by_task[:k] for c in cells}, n, rad)
            assert set(sit.known) == expected - {tuple(task["start"]), tuple(task["goal"])}
            assert all(pack.world["costs"][r][c] == v for (r, c), v in sit.known.items())
    assert not by_entered


# -- scripted agents ----------------------------------------------------------------------------
def test_oracle_is_optimal_and_bounds_the_learner():
    env = make_env("gridnav")
    rewards = []
    for i in range(12):
        pack = env.sample_pack("test", 0, i, 4)
        costs = np.asarray(pack.world["costs"], dtype=float)
        ora = play_pack(env, pack, oracle_agent, np.random.default_rng(i))
        lrn = play_pack(env, pack, learner_agent, np.random.default_rng(i))
        for t, o, lr in zip(pack.tasks, ora, lrn):
            best = best_path(costs, tuple(t.spec["start"]), tuple(t.spec["goal"]), t.spec["moves"])
            assert best is not None and o == pytest.approx(1 - best[1] / 100)
            assert lr <= o + 1e-9
        rewards += ora
    print(f"gridnav oracle mean reward over {len(rewards)} tasks: {np.mean(rewards):.3f}")
    assert np.mean(rewards) > 0.85


@pytest.mark.parametrize("name", NAMES)
def test_random_agent_near_chance(name):
    env = make_env(name)
    m = reward_matrix(env, random_agent, packs=200)
    print(f"{name} random mean {m.mean():.4f} (chance_reward {env.chance_reward})")
    assert abs(m.mean() - env.chance_reward) < 0.008 and m.mean() < 0.02


def test_learner_beats_memoryless_when_only_hints_carry_knowledge():
    # keep_reveals=False: the map is hidden again at every task, so only the hints carry it over
    env = make_env("gridnav", keep_reveals=False)
    lrn = reward_matrix(env, learner_agent, packs=50, pack_size=4)
    mem = reward_matrix(env, learner_agent, packs=50, pack_size=4, use_hints=False)
    print("keep_reveals=False learner", lrn.mean(0).round(3), "memoryless", mem.mean(0).round(3))
    assert lrn[:, -1].mean() - lrn[:, 0].mean() > 0.03  # measured +0.052..+0.087 (50 packs, seeds 0-7)
    assert abs(mem[:, -1].mean() - mem[:, 0].mean()) < 0.03  # measured -0.019..+0.008
    assert lrn[:, -1].mean() - mem[:, -1].mean() > 0.03  # measured +0.050..+0.084


def test_persistent_reveal_alone_lifts_memoryless():
    # The registry default keeps reveals for the lifecycle: the observation itself carries the map
    # into later tasks, so the memoryless control improves as much as the learner (measured
    # +0.052..+0.086 for both, last-position gap <= 0.002; 50 packs, seeds 0-7): the hints add
    # nothing that an agent reading the whole grid lacks.
    env = make_env("gridnav")
    lrn = reward_matrix(env, learner_agent, packs=50, pack_size=4)
    mem = reward_matrix(env, learner_agent, packs=50, pack_size=4, use_hints=False)
    print("keep_reveals=True learner", lrn.mean(0).round(3), "memoryless", mem.mean(0).round(3))
    assert mem[:, -1].mean() - mem[:, 0].mean() > 0.03
    assert lrn[:, -1].mean() - lrn[:, 0].mean() > 0.03
    assert abs(lrn[:, -1].mean() - mem[:, -1].mean()) < 0.02


def test_agents_for_names():
    for name in NAMES:
        agents = agents_for(name)
        assert (agents.random, agents.oracle, agents.learner) == (random_agent, oracle_agent, learner_agent)


# -- parsing robustness -------------------------------------------------------------------------
ENV = make_env("gridnav")
PACK = ENV.sample_pack("train", 0, 0, 1)


def fresh_episode():
    return ENV, PACK, ENV.start(PACK, PACK.tasks[0], ENV.new_state(PACK))


def check_scored(reply) -> None:
    _, pack, ep = fresh_episode()
    start = time.perf_counter()
    res = ep.step(reply)
    assert time.perf_counter() - start < 1.0
    assert res.reward == 0.0  # a first move never scores (R >= 4)
    move = parse_move(reply)
    if move is None:
        assert res.done and not res.valid and res.info["event"] == "invalid"
        assert "<answer>row,col</answer>" in res.feedback and "reward 0" in res.feedback
    else:
        n, (r, c) = pack.world["size"], tuple(pack.tasks[0].spec["start"])
        legal = move in rook_targets(n, (r, c))
        assert res.valid and res.done != legal and res.info["event"] == ("move" if legal else "illegal")


FRAGMENTS = ["<answer>", "</answer>", "<ANSWER >", "</Answer>", "<answer", "answer>", "3", "12", "0", ",",
             " ", "\n", "(", ")", "[", "-", "٣", "é", "😀", "\x00", "row", "3,5", "99,99", "1e3"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), st.lists(st.sampled_from(FRAGMENTS), max_size=25).map("".join)))
def test_random_replies_never_raise(reply):
    check_scored(reply)


@pytest.mark.parametrize("reply", [
    "", " ", "x" * 1_000_000, "<answer>" * 100_000, "</answer>" * 100_000, "<answer>1,1</answer>" * 50_000,
    "<answer>" + " " * 1_000_000 + "</answer>", "<answer>3," + "9" * 1_000_000 + "</answer>",
    "<answer><answer>3,5</answer></answer>", "<answer>3,5</answer> or <answer>3,6</answer>",
    "</answer>3,5<answer>", "<answer>٣,٥</answer>", "<answer>3，5</answer>", "<answer>3,5", "3,5</answer>",
    "<answer>-1,2</answer>", "<answer>3.0,5</answer>", "<answer>row 3, col 5</answer>", None, 35,
])
def test_adversarial_replies(reply):
    check_scored(reply)
    assert parse_move(reply) is None


def test_parse_accepts_prefixed_reply_and_variants():
    env = make_env("gridnav")
    assert parse_move(env.reply_prefix + "3,5</answer>") == (3, 5)
    assert parse_move("Go right. <ANSWER> ( 3 , 5 ) </answer > done") == (3, 5)
    assert parse_move("<answer>[12,0]</answer>") == (12, 0)
    assert parse_move(env.reply_prefix + "3,5</answer>\nmore text") == (3, 5)


@pytest.mark.parametrize("move", [(0, 40), (40, 0), (999, 999), "diag", "same"])
def test_out_of_grid_and_diagonal_moves(move):
    _, pack, ep = fresh_episode()
    r, c = pack.tasks[0].spec["start"]
    n = pack.world["size"]
    target = {"diag": ((r + 1) % n, (c + 1) % n), "same": (r, c)}.get(move, move)
    res = ep.step(ans(*target))
    assert res.done and res.valid and res.reward == 0.0 and res.info["event"] == "illegal"
    assert "Illegal move" in res.feedback


def test_print_prompt_and_first_observation():
    env = make_env("gridnav")
    pack = env.sample_pack("train", 0, 0, 4)
    obs = env.start(pack, pack.tasks[0], env.new_state(pack)).reset()
    print("SYSTEM PROMPT:\n" + env.system_prompt + "\n\nFIRST OBSERVATION:\n" + obs)
    assert "<answer>row,col</answer>" in env.system_prompt and "1 - (mean cost" in env.system_prompt
    assert "Round 1/" in obs and "The goal is at" in obs and "? = not revealed yet" in obs
