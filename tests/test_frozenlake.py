"""Tests of the FrozenLake-Obscure environment."""

from __future__ import annotations

import json

import numpy as np
import pytest

from codrl.envs import Pack, Task, make_env
from codrl.envs.frozenlake import (DELTAS, DIRECTIONS, FORMAT_HINT, FrozenLakeObscure, make_spec,
                                   parse_action, shortest_path)

# Start in the middle so every direction is a plain move; holes and the goal are placed around it.
#   col: 0 1 2 3
ROWS = ["FFFF",   # row 0
        "FFSH",   # row 1   S at (1, 2), hole to its right at (1, 3)
        "FFGF",   # row 2   goal below S at (2, 2)
        "FFFF"]   # row 3
MAPPING = {"1": "Up", "2": "Right", "3": "Down", "4": "Left"}
INVERSE = {d: c for c, d in MAPPING.items()}


def reply(code: str | int) -> str:
    return f"<answer>Direction {code}</answer>"


def hand_pack(rows: list[str] = ROWS, mapping: dict[str, str] = MAPPING) -> tuple[Pack, Task]:
    task = Task(task_id="t/0", position=0, spec=make_spec(rows))
    pack = Pack(pack_id="t", env="frozenlake", split="train", world={"mapping": dict(mapping)},
                tasks=(task,))
    return pack, task


def episode(env: FrozenLakeObscure | None = None, rows: list[str] = ROWS,
            mapping: dict[str, str] = MAPPING):
    env = env or FrozenLakeObscure()
    pack, task = hand_pack(rows, mapping)
    ep = env.start(pack, task)
    ep.reset()
    return ep


# -- packs, worlds, splits ----------------------------------------------------------------------
def test_pack_determinism():
    env = make_env("frozenlake")
    a = env.sample_pack("train", seed=3, index=7, size=4)
    b = make_env("frozenlake").sample_pack("train", seed=3, index=7, size=4)
    assert a == b
    c = env.sample_pack("train", seed=3, index=8, size=4)
    assert [t.spec for t in a.tasks] != [t.spec for t in c.tasks]
    json.dumps(a.world), json.dumps([t.spec for t in a.tasks])  # JSON-serialisable


def test_split_disjoint():
    env = make_env("frozenlake")
    keys = {}
    for split in ("train", "test"):
        keys[split] = {env.task_key(p.world, t.spec)
                       for i in range(200) for p in [env.sample_pack(split, 0, i, 4)] for t in p.tasks}
        assert len(keys[split]) > 100
    assert not keys["train"] & keys["test"]


def test_mapping_shared_in_pack_and_varies_across_packs():
    env = make_env("frozenlake")
    mappings = []
    for i in range(20):
        pack = env.sample_pack("train", 1, i, 4)
        m = pack.world["mapping"]
        assert sorted(m) == ["1", "2", "3", "4"] and sorted(m.values()) == sorted(DIRECTIONS)
        for task in pack.tasks:
            assert env.start(pack, task).mapping == m
        mappings.append(json.dumps(m, sort_keys=True))
    assert len(set(mappings)) > 1


@pytest.mark.parametrize("name,sizes", [("frozenlake", {4, 5}), ("frozenlake_hard", {6, 7})])
def test_maps_solvable_within_limit(name, sizes):
    env = make_env(name)
    assert env.name == name
    seen = set()
    for i in range(30):
        for t in env.sample_pack("train", 0, i, 4).tasks:
            rows = t.spec["rows"]
            seen.add(len(rows))
            assert all(len(r) == len(rows) for r in rows)
            d = shortest_path(rows)
            assert d is not None and 1 <= d <= env.max_env_steps == 6
            assert t.spec["shortest_path"] == d
            assert "".join(rows).count("S") == 1 and "".join(rows).count("G") == 1
    assert seen == sizes


def test_safe_probability_roughly_in_range():
    env = FrozenLakeObscure(max_env_steps=100)  # no path-length filter bias worth noting
    rng = np.random.default_rng(0)
    world = env.sample_world(rng)
    tiles = "".join("".join(env.sample_task(world, rng)["rows"]) for _ in range(300))
    free = tiles.count("F") / (tiles.count("F") + tiles.count("H"))
    assert 0.55 < free < 0.8


def test_bad_params():
    for kw in [dict(min_size=1), dict(min_size=5, max_size=4), dict(safe_prob_range=(0.7, 0.6)),
               dict(safe_prob_range=(0.0, 0.5)), dict(safe_prob_range="x"), dict(max_env_steps=0),
               dict(max_agent_steps=0), dict(name="")]:
        with pytest.raises(ValueError):
            FrozenLakeObscure(**kw)


# -- transitions --------------------------------------------------------------------------------
def test_reset_observation():
    ep = episode()
    obs = ep.reset()
    assert "F F F F\nF F P H\nF F G F\nF F F F" in obs
    assert "row 1, col 2" in obs and "Moves left: 6" in obs and FORMAT_HINT in obs


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_each_code_moves_its_direction(direction):
    rows = ["FFF", "FSF", "FFG"]
    for mapping in (MAPPING, {"1": "Left", "2": "Down", "3": "Right", "4": "Up"}):
        ep = episode(rows=rows, mapping=mapping)
        code = {d: c for c, d in mapping.items()}[direction]
        res = ep.step(reply(code))
        dr, dc = DELTAS[direction]
        assert res.info["position"] == [1 + dr, 1 + dc]
        assert res.info["direction"] == direction and res.info["code"] == code
        assert res.valid and res.reward == 0.0 and not res.done
        assert f"Action {code} moved you {direction} to row {1 + dr}, col {1 + dc}." in res.feedback


def test_normal_move_and_observation():
    ep = episode()
    res = ep.step(reply(INVERSE["Left"]))
    assert res.info["event"] == "move" and res.info["position"] == [1, 1]
    assert res.feedback == "Action 4 moved you Left to row 1, col 1."
    assert res.observation is not None and "F P S H" in res.observation
    assert "You are at row 1, col 1" in res.observation and "Moves left: 5" in res.observation


def test_wall_bump():
    ep = episode()
    assert ep.step(reply(INVERSE["Up"])).info["position"] == [0, 2]
    res = ep.step(reply(INVERSE["Up"]))
    assert res.info["event"] == "wall" and res.info["position"] == [0, 2] and res.info["env_steps"] == 2
    assert res.feedback == "Action 1 tried to move Up but you hit the wall and stayed at row 0, col 2."
    assert not res.done and res.valid and res.reward == 0.0
    assert "Moves left: 4" in res.observation


def test_hole():
    res = episode().step(reply(INVERSE["Right"]))
    assert res.done and res.valid and res.reward == 0.0 and res.observation is None
    assert res.info["event"] == "hole" and res.info["position"] == [1, 3]
    assert res.feedback == "Action 2 moved you Right into a hole at row 1, col 3. You fell in. Task failed."


def test_goal():
    res = episode().step("I think 3 is down. " + reply(INVERSE["Down"]))
    assert res.done and res.valid and res.reward == 1.0 and res.observation is None
    assert res.info["event"] == "goal" and res.info["position"] == [2, 2]
    assert res.feedback == "Action 3 moved you Down onto the goal at row 2, col 2. Task solved!"


def test_env_step_limit():
    ep = episode()
    for _ in range(5):
        res = ep.step(reply(INVERSE["Up"]))  # one move, then wall bumps
        assert not res.done
    res = ep.step(reply(INVERSE["Up"]))
    assert res.done and res.valid and res.reward == 0.0 and res.observation is None
    assert res.info["event"] == "timeout" and res.info["limit"] == "env_steps"
    assert "Step limit reached" in res.feedback and "all 6 moves" in res.feedback
    after = ep.step(reply(INVERSE["Down"]))
    assert after.done and after.reward == 0.0 and after.info["event"] == "over"


def test_agent_step_limit():
    ep = episode(FrozenLakeObscure(max_env_steps=6, max_agent_steps=2))
    assert "Moves left: 2" in ep.reset()
    assert not ep.step(reply(INVERSE["Left"])).done
    res = ep.step(reply(INVERSE["Left"]))
    assert res.done and res.reward == 0.0 and res.info["limit"] == "agent_steps"
    assert "Step limit reached" in res.feedback and "all 2 replies" in res.feedback


def test_goal_on_last_step_wins():
    ep = episode(FrozenLakeObscure(max_env_steps=2))
    ep.step(reply(INVERSE["Left"]))
    res = ep.step(reply(INVERSE["Right"]))  # back to S: not the goal -> timeout
    assert res.info["event"] == "timeout"
    ep = episode(FrozenLakeObscure(max_env_steps=1))
    assert ep.step(reply(INVERSE["Down"])).reward == 1.0


def test_reset_restarts():
    ep = episode()
    ep.step(reply(INVERSE["Right"]))
    ep.reset()
    assert ep.step(reply(INVERSE["Down"])).reward == 1.0


# -- parsing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    "I will go down.", "<answer>Direction 0</answer>", "<answer>Direction 5</answer>",
    "<answer>Direction x</answer>", "", "<answer>Direction 3", "<answer></answer>",
    "<answer>Direction 12</answer>", "<answer>Down</answer>", "Direction 3</answer>",
    "x" * 100_000, "<answer>" * 20_000, "</answer>" * 20_000, None,
])
def test_malformed_replies(bad):
    ep = episode()
    res = ep.step(bad)
    assert res.done and not res.valid and res.reward == 0.0 and res.observation is None
    assert "<answer>Direction X</answer>" in res.feedback and "1, 2, 3, 4" in res.feedback
    assert res.info["event"] == "invalid"


def test_parse_tolerance_and_exactly_one_tag():
    assert parse_action("<answer>  direction 3 \n</answer>") == "3"
    assert parse_action("<ANSWER>DIRECTION 2</ANSWER>") == "2"
    assert parse_action("I think code 2. <answer>Direction 2</answer> done") == "2"
    assert parse_action(reply(1) + " hmm, no: " + reply(4)) is None  # two answers: a format error
    assert parse_action(reply(2) + " and <answer>Direction 3") is None
    assert parse_action("</answer><answer>Direction 3") is None
    ep = episode()
    res = ep.step(reply(INVERSE["Right"]) + reply(INVERSE["Down"]))
    assert res.done and not res.valid and res.reward == 0.0


def test_prefilled_reply_format():
    env = FrozenLakeObscure()
    assert env.reply_prefix == "<answer>Direction "
    assert parse_action(env.reply_prefix + "3</answer>") == "3"
    assert "<answer>Direction X</answer>" in env.system_prompt
    assert env.max_turns == 8
