"""Tests of the Secret Table environment."""

from __future__ import annotations

import json

import numpy as np
import pytest

from codrl.envs import Pack, Task, make_env
from codrl.errors import CodrlError
from codrl.toy.secret_table import SecretTable, fact, observation_text

TABLE = {"a": "3", "b": "1", "c": "4", "d": "2"}


def hand_episode(key: str = "b", env: SecretTable | None = None):
    env = env or SecretTable()
    task = Task(task_id="t/0", position=0, spec={"key": key})
    pack = Pack(pack_id="t", env=env.name, split="train", world={"table": dict(TABLE), "asked": [key]},
                tasks=(task,))
    ep = env.start(pack, task)
    return ep, ep.reset()


# -- construction -------------------------------------------------------------------------------
def test_registry_and_defaults():
    env = make_env("secret_table")
    assert isinstance(env, SecretTable)
    assert env.keys == ("a", "b", "c", "d") and env.values == ("1", "2", "3", "4")
    assert env.chance_reward == pytest.approx(0.25)
    assert env.max_turns == 1 and env.reply_prefix == "" and env.stop_strings == ()
    assert make_env("secret_table", num_values=5).chance_reward == pytest.approx(0.2)


@pytest.mark.parametrize("kwargs", [
    {"num_keys": 0}, {"num_keys": 27}, {"num_keys": 2.5}, {"num_keys": True}, {"num_values": 1},
    {"num_values": "4"}, {"keys_per_pack": 0}, {"keys_per_pack": 5}, {"name": ""},
])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError, match="secret_table|name"):
        SecretTable(**kwargs)


# -- packs, worlds, splits ----------------------------------------------------------------------
def test_pack_determinism_and_format():
    env = make_env("secret_table")
    a = env.sample_pack("train", seed=3, index=7, size=4)
    assert a == make_env("secret_table").sample_pack("train", seed=3, index=7, size=4)
    others = [env.sample_pack("train", seed=3, index=i, size=4).world for i in range(8, 16)]
    assert any(w != a.world for w in others)
    assert env.sample_pack("train", seed=4, index=7, size=4) != a
    json.dumps(a.world), json.dumps([t.spec for t in a.tasks])
    assert sorted(a.world["table"]) == list(env.keys)
    assert set(a.world["table"].values()) <= set(env.values)
    assert [t.position for t in a.tasks] == [0, 1, 2, 3]
    assert len({t.task_id for t in a.tasks}) == 4


def test_split_disjoint():
    env = make_env("secret_table")
    tables = {}
    for split in ("train", "test"):
        packs = [env.sample_pack(split, 0, i, 4) for i in range(150)]
        assert all(p.split == split and env.split_of(p.world, t.spec) == split for p in packs for t in p.tasks)
        tables[split] = {json.dumps(p.world["table"], sort_keys=True) for p in packs}
    assert tables["train"] and tables["test"]
    assert not tables["train"] & tables["test"]


def test_table_shared_and_keys_from_asked():
    for kpp in (1, 2, 4):
        env = make_env("secret_table", keys_per_pack=kpp)
        for i in range(30):
            pack = env.sample_pack("train", 1, i, 6)
            asked = pack.world["asked"]
            assert len(asked) == len(set(asked)) == kpp and set(asked) <= set(env.keys)
            assert {t.spec["key"] for t in pack.tasks} <= set(asked)
            for task in pack.tasks:  # every task is answered from the one table of the pack
                ep = env.start(pack, task)
                ep.reset()
                right = pack.world["table"][task.spec["key"]]
                assert ep.step(right).reward == 1.0


def test_keys_spread_over_asked():
    env = make_env("secret_table", keys_per_pack=2)
    distinct = [len({t.spec["key"] for t in env.sample_pack("train", 0, i, 8).tasks}) for i in range(20)]
    assert max(distinct) == 2


def test_unreachable_split_raises():
    class AllTrain(SecretTable):
        def split_of(self, world, spec):
            return "train"

    env = AllTrain(max_world_tries=50)
    assert env.sample_pack("train", 0, 0, 2).split == "train"
    with pytest.raises(RuntimeError, match="no test world in 50 draws"):
        env.sample_pack("test", 0, 0, 2)
    with pytest.raises(ValueError, match="pack size"):
        env.sample_pack("train", 0, 0, 0)


def test_bad_world_and_task():
    env = SecretTable()
    task = Task("t", 0, {"key": "z"})
    with pytest.raises(ValueError, match="lacks"):
        env.start(Pack("p", env.name, "train", {"table": dict(TABLE), "asked": ["a"]}, (task,)), task)
    with pytest.raises(ValueError, match="table"):
        env.start(Pack("p", env.name, "train", {"table": {"a": "9"}}, (task,)), task)
    with pytest.raises(Exception, match="split"):
        env.sample_pack("dev", 0, 0, 2)


# -- episodes -----------------------------------------------------------------------------------
def test_observation_is_short():
    ep, obs = hand_episode("c")
    assert obs == observation_text("c") == "Query: c ?"


@pytest.mark.parametrize("reply", ["1", " 1", "1\n", "\t1  "])
def test_correct(reply):
    ep, _ = hand_episode("b")
    r = ep.step(reply)
    assert (r.reward, r.done, r.valid, r.observation) == (1.0, True, True, None)
    assert r.feedback.split()[-1] == "b=1" and r.feedback.startswith("Correct")
    assert r.info["event"] == "correct" and r.info["guess"] == "1"


def test_wrong():
    ep, _ = hand_episode("a")
    r = ep.step("2")
    assert (r.reward, r.done, r.valid) == (0.0, True, True)
    assert r.feedback.startswith("Wrong") and "a=3" in r.feedback.split()
    assert r.info["event"] == "wrong"


@pytest.mark.parametrize("reply", ["", "   ", "1 2", "3 3", "b=1", "one", "5", "0", "01", "1.",
                                   "x" * 100_000, "1 " * 50_000, "<answer>1</answer>", None, 7])
def test_malformed(reply):
    ep, _ = hand_episode("b")
    r = ep.step(reply)  # never raises
    assert (r.reward, r.done, r.valid) == (0.0, True, False)
    assert "value" in r.feedback and fact("b", "1") in r.feedback.split()
    assert len(r.feedback) < 60 and r.info["event"] == "invalid"


def test_step_after_done_and_reset():
    ep, _ = hand_episode("d")
    assert ep.step("2").reward == 1.0
    again = ep.step("2")
    assert again.reward == 0.0 and again.done and "d=2" in again.feedback.split()
    assert ep.reset() == "Query: d ?"
    assert ep.step("2").reward == 1.0


def test_feedback_words_are_few():
    env = SecretTable()
    words: set[str] = set()
    for key in env.keys:
        for reply in [*env.values, "", "junk"]:
            ep, obs = hand_episode(key, env)
            words.update(obs.split())
            words.update(ep.step(reply).feedback.split())
    facts = {fact(k, v) for k in env.keys for v in env.values}
    assert len(words - facts - set(env.keys)) <= 12, sorted(words)


def test_random_replies_never_raise():
    rng = np.random.default_rng(0)
    env = SecretTable(num_keys=3, num_values=6, keys_per_pack=2)
    alphabet = list("abc123456 =\n?.") + ["<|im_end|>", "Hints:"]
    for i in range(200):
        pack = env.sample_pack("train", 0, i % 20, 3)
        task = pack.tasks[i % 3]
        ep = env.start(pack, task)
        ep.reset()
        reply = "".join(rng.choice(alphabet, size=int(rng.integers(0, 12))))
        r = ep.step(reply)
        right = pack.world["table"][task.spec["key"]]
        assert r.reward == (1.0 if reply.strip() == right else 0.0)
        assert fact(task.spec["key"], right) in r.feedback.split()


# -- the chat style (real chat models) ----------------------------------------------------------
def test_chat_style_texts_prefix_and_parse():
    env = make_env("secret_table", style="chat")
    assert env.reply_prefix == "<answer>" and env.stop_strings == ("</answer>",)
    assert "a, b, c, d" in env.system_prompt and "<answer>1</answer>" in env.system_prompt
    assert make_env("secret_table").reply_prefix == ""  # the toy style is unchanged
    ep, obs = hand_episode("b", env)
    assert obs == "What is the number of letter b?"
    res = ep.step("<answer>1 is the number")  # the number opening the tag is the answer
    assert (res.reward, res.valid, res.done) == (1.0, True, True)
    assert res.feedback == "Correct. The number of letter b is 1."
    for reply, reward, valid in [("<answer>1</answer>", 1.0, True), ("<answer> 1\n", 1.0, True),
                                 ("<answer>3</answer>", 0.0, True), ("<answer>12</answer>", 0.0, False),
                                 ("<answer>N</answer>", 0.0, False), ("1", 0.0, False), ("", 0.0, False)]:
        ep, _ = hand_episode("b", env)
        res = ep.step(reply)
        assert (res.reward, res.valid) == (reward, valid), reply
        assert "The number of letter b is 1." in res.feedback  # every outcome reveals the entry
    with pytest.raises(CodrlError, match="env 'secret_table'.*style: Input should be 'toy' or 'chat'"):
        make_env("secret_table", style="prose")


@pytest.mark.parametrize("style", ["toy", "chat"])
def test_checklist_levels(style):
    from codrl.envs.scripted import agents_for
    from codrl.eval.checklist import levels

    env = make_env("secret_table", style=style)
    lv = levels(env, *agents_for("secret_table"), packs=200, pack_size=4)
    assert lv.oracle == 1.0
    assert lv.chance == pytest.approx(0.25, abs=0.06)
    assert lv.learner_last == 1.0  # one key per pack: the copied entry answers every later task
    assert lv.learner_last - lv.learner_first > 0.5
    assert abs(lv.memoryless_last - lv.memoryless_first) < 0.1  # no memory, no improvement


def test_learner_reads_only_text():
    from codrl.envs.scripted import agents_for
    from codrl.eval.checklist import reward_matrix

    env = make_env("secret_table", style="chat")
    learner = agents_for("secret_table").learner
    a = reward_matrix(env, learner, packs=20)
    b = reward_matrix(env, lambda pack, rng: learner(Pack(pack.pack_id, pack.env, pack.split, {}, pack.tasks), rng),
                      packs=20)
    assert np.array_equal(a, b)
