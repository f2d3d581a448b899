"""Tests of the Diagnosis environment (a simulated clinic dialogue) and its scripted agents."""

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
from codrl.envs.diagnosis import (CHANCE_REWARD, CONDITIONS, SYMPTOMS, TESTS, TEXTBOOK, Diagnosis,
                                  format_hint, parse_action)
from codrl.envs.scripted import agents_for
from codrl.envs.scripted.base import TurnText
from codrl.envs.scripted.diagnosis import CaseCounts, ClinicModel, case_from_transcript, read_observation
from codrl.eval.checklist import reward_matrix

# A hand-made clinic of two conditions and one patient with dust_lung.
WORLD = {
    "conditions": ["dust_lung", "marsh_fever"], "base_rates": [0.7, 0.3],
    "symptoms": {c: {s: (0.8 if s in TEXTBOOK[c]["symptoms"] else 0.1) for s in SYMPTOMS}
                 for c in ("dust_lung", "marsh_fever")},
    "tests": {c: {t: {v: 1.0 / len(vs) for v in vs} for t, vs in TESTS.items()} for c in ("dust_lung", "marsh_fever")},
    "misleading": None,
}
SPEC = {"condition": "dust_lung", "complaint": "cough",
        "symptoms": {s: ("yes" if s in ("cough", "fatigue") else "no") for s in SYMPTOMS},
        "tests": {"blood_count": "low", "chest_scan": "cloudy", "skin_swab": "negative"}}


def ans(text: str) -> str:
    return f"<answer>{text}</answer>"


def episode(env: Diagnosis | None = None, spec: dict | None = None):
    env = env or Diagnosis()
    task = Task(task_id="t/0", position=0, spec=spec or SPEC)
    pack = Pack(pack_id="t", env="diagnosis", split="train", world=WORLD, tasks=(task,))
    ep = env.start(pack, task)
    ep.reset()
    return ep


# -- packs, worlds, splits ----------------------------------------------------------------------
PACK_SNIPPET = ("import json; from codrl.envs import make_env; p = make_env('diagnosis').sample_pack('test', 5, 3, 4); "
                "print(json.dumps([p.world, [t.spec for t in p.tasks]], sort_keys=True))")


def test_pack_determinism_and_json():
    env = make_env("diagnosis")
    a = env.sample_pack("test", 5, 3, 4)
    assert a == make_env("diagnosis").sample_pack("test", 5, 3, 4)
    assert [t.spec for t in a.tasks] != [t.spec for t in env.sample_pack("test", 5, 4, 4).tasks]
    text = json.dumps([a.world, [t.spec for t in a.tasks]], sort_keys=True)
    assert json.loads(text) == [a.world, [t.spec for t in a.tasks]]
    out = subprocess.run([sys.executable, "-c", PACK_SNIPPET], capture_output=True, text=True, timeout=60,
                         check=True)
    assert out.stdout.strip() == text


def test_tasks_share_clinic_and_packs_differ():
    env = make_env("diagnosis")
    worlds = set()
    for i in range(30):
        pack = env.sample_pack("train", 1, i, 4)
        w = pack.world
        assert 3 <= len(w["conditions"]) <= 4 and set(w["conditions"]) <= set(CONDITIONS)
        assert abs(sum(w["base_rates"]) - 1.0) < 1e-9 and min(w["base_rates"]) > 0
        for c in w["conditions"]:
            assert all(0 < w["symptoms"][c][s] < 1 for s in SYMPTOMS)
            for t, vs in TESTS.items():
                assert sorted(w["tests"][c][t]) == sorted(vs) and abs(sum(w["tests"][c][t].values()) - 1) < 0.03
        for task in pack.tasks:
            assert task.spec["condition"] in w["conditions"]  # every patient comes from this clinic
            env.start(pack, task)
        worlds.add(json.dumps(w, sort_keys=True))
    assert len(worlds) == 30


def test_split_disjoint():
    env = make_env("diagnosis")
    keys = {split: {env.task_key(p.world, t.spec) for i in range(100)
                    for p in [env.sample_pack(split, 0, i, 4)] for t in p.tasks} for split in ("train", "test")}
    assert len(keys["train"]) > 300 and len(keys["test"]) > 300
    assert not keys["train"] & keys["test"]


def test_base_rates_follow_world():
    env = Diagnosis()
    rng = np.random.default_rng(0)
    world = env.sample_world(rng)
    draws = [env.sample_task(world, rng)["condition"] for _ in range(3000)]
    for c, r in zip(world["conditions"], world["base_rates"]):
        assert abs(draws.count(c) / len(draws) - r) < 0.04


@pytest.mark.parametrize("kind", ["uninformative", "reversed"])
def test_misleading_symptom(kind):
    env = Diagnosis(misleading=kind)
    rng = np.random.default_rng(3)
    for _ in range(30):
        w = env.sample_world(rng)
        s = w["misleading"]["symptom"]
        assert w["misleading"]["kind"] == kind
        textbook_for = [c for c in w["conditions"] if s in TEXTBOOK[c]["symptoms"]]
        assert textbook_for  # it looks diagnostic in the textbook for a condition seen here
        probs = {c: w["symptoms"][c][s] for c in w["conditions"]}
        if kind == "uninformative":
            assert len(set(probs.values())) == 1 and 0.6 <= probs[textbook_for[0]] <= 0.85
        else:
            assert all(probs[c] <= 0.15 if c in textbook_for else probs[c] >= 0.65 for c in probs)
    assert Diagnosis(misleading="none").sample_world(rng)["misleading"] is None


# -- dialogue and rewards -----------------------------------------------------------------------
def test_observation_contents():
    env = Diagnosis()
    ep = episode(env)
    obs = ep.reset()
    assert "presenting complaint: cough" in obs and "cough: yes (presenting complaint)" in obs
    assert "Turns left: 8 of 8" in obs and "0.05 per question, 0.10 per test" in obs
    assert all(s in obs for s in SYMPTOMS) and all(c in obs for c in CONDITIONS) and all(t in obs for t in TESTS)
    assert format_hint() in obs and "dust_lung" in obs
    prompt = env.system_prompt
    for needle in ("<answer>ask SYMPTOM</answer>", "<answer>test TEST</answer>", "<answer>diagnose CONDITION</answer>",
                   "simulated", "nothing here is medical advice", "at most 8 turns",
                   "marsh_fever: key symptoms fever, chills"):
        assert needle in prompt
    assert env.reply_prefix == "<answer>" and env.stop_strings == ("</answer>",) and env.max_turns == 8
    assert env.chance_reward == CHANCE_REWARD and Diagnosis(max_turns=6).chance_reward is None


def test_reward_questions_and_tests():
    ep = episode()
    r1 = ep.step(ans("ask fatigue"))
    assert r1.valid and not r1.done and r1.reward == 0.0
    assert r1.feedback == "You asked about fatigue. The patient says: yes."
    assert "fatigue: yes" in r1.observation and "Turns left: 7 of 8" in r1.observation
    assert "would score 0.95" in r1.observation
    assert ep.step(ans("ask fever")).feedback == "You asked about fever. The patient says: no."
    r3 = ep.step(ans("test blood_count"))
    assert r3.feedback == "Test blood_count result: low." and "blood_count: low" in r3.observation
    assert "would score 0.80" in r3.observation
    end = ep.step("I am fairly sure. " + ans("diagnose dust_lung"))
    assert end.done and end.valid and end.reward == pytest.approx(1 - 2 * 0.05 - 0.1) and end.observation is None
    assert end.info["event"] == "correct" and end.info["condition"] == "dust_lung"
    assert "Correct: the patient had dust_lung." in end.feedback and "Full case record:" in end.feedback
    assert "cough yes" in end.feedback and "blood_count low" in end.feedback
    assert ep.step(ans("diagnose dust_lung")).info["event"] == "over"


def test_immediate_and_wrong_diagnosis():
    assert episode().step(ans("diagnose dust_lung")).reward == 1.0
    ep = episode()
    ep.step(ans("ask cough"))
    res = ep.step(ans("diagnose marsh_fever"))
    assert res.done and res.valid and res.reward == 0.0 and res.info["event"] == "wrong"
    assert "Wrong: you diagnosed marsh_fever, but the patient had dust_lung." in res.feedback
    hidden = episode(Diagnosis(reveal_record=False)).step(ans("diagnose marsh_fever"))
    assert "the patient had dust_lung" in hidden.feedback and "Full case record" not in hidden.feedback


def test_turn_cap():
    ep = episode()
    for _ in range(7):
        res = ep.step(ans("ask fever"))
        assert not res.done
    assert "Turns left: 1 of 8. This is your last turn" in res.observation
    res = ep.step(ans("ask fever"))
    assert res.done and res.valid and res.reward == 0.0 and res.info["event"] == "timeout"
    assert "the patient had dust_lung" in res.feedback
    ep = episode()
    for _ in range(7):
        ep.step(ans("test chest_scan"))
    assert ep.step(ans("diagnose dust_lung")).reward == pytest.approx(0.3)  # 7 tests, diagnosis on turn 8
    ep = episode(Diagnosis(max_turns=1))
    assert ep.step(ans("ask fever")).info["event"] == "timeout"


def test_reward_clipped_at_zero():
    ep = episode(Diagnosis(question_cost=0.4, test_cost=1.0))
    ep.step(ans("ask fever"))
    ep.step(ans("ask fever"))
    ep.step(ans("ask fever"))
    assert ep.step(ans("diagnose dust_lung")).reward == 0.0
    ep = episode(Diagnosis(question_cost=0.0, test_cost=0.0))
    ep.step(ans("test skin_swab"))
    assert ep.step(ans("diagnose dust_lung")).reward == 1.0


def test_answers_consistent_within_task():
    env = Diagnosis(max_turns=50)
    pack = make_env("diagnosis").sample_pack("train", 2, 0, 4)
    for task in pack.tasks:
        ep = env.start(pack, task)
        ep.reset()
        for name in (*SYMPTOMS, *SYMPTOMS):
            res = ep.step(ans(f"ask {name}"))
            assert res.feedback == f"You asked about {name}. The patient says: {task.spec['symptoms'][name]}."
        for t in (*TESTS, *TESTS):
            assert ep.step(ans(f"test {t}")).feedback == f"Test {t} result: {task.spec['tests'][t]}."
        if task.spec["complaint"]:
            assert task.spec["symptoms"][task.spec["complaint"]] == "yes"
            assert f"presenting complaint: {task.spec['complaint']}." in ep.reset()
    ep = episode()
    first, again = ep.step(ans("ask fever")), ep.step(ans("ask fever"))
    assert first.feedback == again.feedback and again.info["questions"] == 2  # same answer, costs again
    assert "would score 0.90" in again.observation


# -- parsing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    "", "ask fever", "<answer></answer>", "<answer>ask</answer>", "<answer>ask fevr</answer>",
    "<answer>ask Fever please</answer>", "<answer>test fever</answer>", "<answer>ask blood_count</answer>",
    "<answer>diagnose flu</answer>", "<answer>diagnose marsh fever</answer>", "<answer>ask sore throat</answer>",
    "<answer>ask fever</answer><answer>ask cough</answer>", "<answer>ask <answer>fever</answer>",
    "<answer>ask fever</answer></answer>", "</answer>ask fever<answer>", "<answer>ask fever",
    "<answer>ask fever, cough</answer>", "<answer>ask fièvre</answer>", "<answer>asks fever</answer>",
    "<answer>" + "ask fever " * 50 + "</answer>", "x" * 1_000_000, "<answer>" * 20_000, None,
])
def test_malformed_replies(bad):
    ep = episode()
    t0 = time.perf_counter()
    res = ep.step(bad)
    assert time.perf_counter() - t0 < 0.5
    assert res.done and not res.valid and res.reward == 0.0 and res.observation is None
    assert res.info["event"] == "invalid"
    for needle in ("<answer>ask SYMPTOM</answer>", "<answer>diagnose CONDITION</answer>", "night_sweats",
                   "skin_swab", "drift_sickness", "reward 0"):
        assert needle in res.feedback


def test_parse_tolerance():
    assert parse_action("<answer> ASK  Fever \n</answer>") == ("ask", "fever")
    assert parse_action("Let me think.\n<ANSWER>diagnose Dust_Lung</answer >") == ("diagnose", "dust_lung")
    assert parse_action("<answer>test blood_count</answer> done") == ("test", "blood_count")
    env = Diagnosis()
    assert parse_action(env.reply_prefix + "ask cough</answer>") == ("ask", "cough")


VERBS = ["ask", "test", "diagnose", "Ask", "asks", "diagnosis", ""]
WORDS = [*SYMPTOMS, *TESTS, *CONDITIONS, "fevr", "dust lung", "dust_lungs", "", "é", "\u200bfever"]
replies = st.one_of(
    st.text(max_size=300),
    st.builds(lambda v, w, pre, post: f"{pre}<answer>{v} {w}</answer>{post}", st.sampled_from(VERBS),
              st.sampled_from(WORDS), st.text(max_size=30), st.text(max_size=30)),
    st.builds(lambda parts: "".join(parts), st.lists(st.sampled_from(
        ["<answer>", "</answer>", "<answer >", "ask ", "fever", "diagnose ", "dust_lung", " ", "\n", "ü"]),
        max_size=40)),
    st.builds(lambda n, s: s * n, st.integers(1, 5000),
              st.sampled_from(["<answer>", "</answer>", "<answer>ask fever"])),
)


_WS = " \t\n\r\f\v"


def reference(text: str) -> tuple[str, str] | None:
    """An independent reading of the reply rules: one tag pair, then two ASCII-space separated words."""
    opens = list(re.finditer(r"<answer\s*>", text, re.IGNORECASE))
    closes = list(re.finditer(r"</answer\s*>", text, re.IGNORECASE))
    if len(opens) != 1 or len(closes) != 1 or closes[0].start() < opens[0].end():
        return None
    inner = text[opens[0].end():closes[0].start()]
    if len(inner) > 100:
        return None
    parts = re.split(f"[{_WS}]+", inner.strip(_WS))
    if len(parts) != 2 or not all(p.isascii() for p in parts):
        return None
    verb, word = parts[0].lower(), parts[1].lower()
    vocab = {"ask": SYMPTOMS, "test": tuple(TESTS), "diagnose": CONDITIONS}.get(verb, ())
    return (verb, word) if word in vocab else None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replies)
def test_step_fuzz(text):
    ep = episode()
    t0 = time.perf_counter()
    res = ep.step(text)
    assert time.perf_counter() - t0 < 0.5
    expected = reference(text)
    if expected is not None:
        assert res.valid and res.info["action"] == list(expected)
    else:
        assert not res.valid and res.done and res.reward == 0.0 and "<answer>ask SYMPTOM</answer>" in res.feedback


def test_huge_and_unicode_replies():
    for text, valid in [("<answer>ask fever</answer>" + "x" * 1_000_000, True),
                        ("é" * 1_000_000 + ans("ask fever"), True),
                        ("<answer>ask\u00a0fever</answer>", False),  # only ASCII spaces separate the words
                        ("<answer>ask ｆever</answer>", False), ("<answer>" + "a" * 1_000_000 + "</answer>", False)]:
        ep = episode()
        t0 = time.perf_counter()
        res = ep.step(text)
        assert time.perf_counter() - t0 < 0.5
        assert res.valid == valid and (valid or res.done and res.reward == 0.0)


# -- construction -------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [
    dict(name=""), dict(conditions_per_clinic=0), dict(conditions_per_clinic=(4, 3)), dict(conditions_per_clinic=11),
    dict(conditions_per_clinic=(1, 2, 3)), dict(conditions_per_clinic=2.5), dict(base_rate_concentration=0),
    dict(base_rate_concentration="x"), dict(local_variation=1.5), dict(local_variation=float("nan")),
    dict(misleading="sometimes"), dict(question_cost=-0.1), dict(test_cost=2), dict(max_turns=0),
    dict(max_turns=True), dict(max_turns=2.0), dict(reveal_record="yes"),
])
def test_bad_params(kw):
    with pytest.raises(ValueError) as e:
        Diagnosis(**kw)
    assert next(iter(kw)) in str(e.value)


def test_registry_and_docstring():
    env = make_env("diagnosis")
    assert isinstance(env, Diagnosis) and env.name == "diagnosis"
    assert (Diagnosis.__doc__ or "").splitlines()[0].startswith("Diagnosis:")
    assert "Diagnosis" in describe("diagnosis")
    small = Diagnosis(conditions_per_clinic=1, misleading="none")
    pack = small.sample_pack("train", 0, 0, 3)
    assert len(pack.world["conditions"]) == 1 and pack.world["base_rates"] == [1.0]


# -- scripted agents ----------------------------------------------------------------------------
def test_learner_hints_round_trip():
    counts = CaseCounts()
    counts.add_case("dust_lung", SPEC["symptoms"] | SPEC["tests"])
    counts.add_case("dust_lung", {"fever": "yes", "chest_scan": "clear"})
    counts.add_case("marsh_fever", {"fever": "yes"})
    text = counts.to_hints()
    assert text.splitlines()[1].startswith("dust_lung: 2 patients; symptoms: fever 1/2, chills 0/1")
    again = CaseCounts.from_hints(text)
    assert again.to_hints() == text
    model = ClinicModel.from_counts(again)
    assert model.prior.argmax() == CONDITIONS.index("dust_lung")
    ep = episode()
    obs = ep.reset()
    res = ep.step(ans("diagnose marsh_fever"))
    case = case_from_transcript([TurnText(obs, ans("diagnose marsh_fever"), res.feedback)])
    assert case == ("dust_lung", SPEC["symptoms"] | SPEC["tests"])
    info = read_observation(obs)
    assert info["complaint"] == "cough" and info["turns_left"] == 8 and info["known"] == {"cough": "yes"}


def test_oracle_near_max_and_random_near_chance():
    env = make_env("diagnosis")
    agents = agents_for("diagnosis")
    oracle = reward_matrix(env, agents.oracle, packs=40, pack_size=4, seed=0)
    print(f"oracle mean {oracle.mean():.3f}")
    assert oracle.mean() > 0.78  # measured 0.84 (100 packs); a perfect guesser without questions scores 1
    rnd = reward_matrix(env, agents.random, packs=300, pack_size=4, seed=2)
    print(f"random mean {rnd.mean():.3f} vs chance_reward {CHANCE_REWARD}")
    assert abs(rnd.mean() - CHANCE_REWARD) < 0.03


def test_learner_improves_and_memoryless_does_not():
    env = make_env("diagnosis")
    learner = agents_for("diagnosis").learner
    lrn = reward_matrix(env, learner, packs=60, pack_size=4, seed=0)
    mem = reward_matrix(env, learner, packs=60, pack_size=4, seed=0, use_hints=False)
    print("learner by position", lrn.mean(0).round(3), "memoryless", mem.mean(0).round(3))
    # measured (seeds 0-4): learner 0.28-0.39 -> 0.57-0.69; memoryless 0.28-0.39 -> 0.32-0.38
    assert lrn[:, -1].mean() - lrn[:, 0].mean() > 0.12
    assert mem[:, -1].mean() - mem[:, 0].mean() < 0.08
    assert lrn[:, -1].mean() > mem[:, -1].mean() + 0.12


def test_complaint_likelihood_exact():
    import itertools

    from codrl.envs.scripted.diagnosis import _complaint_likelihood
    sym = np.random.default_rng(0).uniform(0.05, 0.95, (2, 5))
    out = _complaint_likelihood(sym)
    for c in range(2):
        brute = np.zeros(5)
        for bits in itertools.product([0, 1], repeat=5):
            pr = np.prod([sym[c, i] if b else 1 - sym[c, i] for i, b in enumerate(bits)])
            for i, b in enumerate(bits):
                brute[i] += pr / sum(bits) if b else 0.0
        assert np.allclose(out[c], brute)
        assert out[c].sum() + np.prod(1 - sym[c]) == pytest.approx(1.0)


def test_empty_hints_mean_textbook():
    empty = ClinicModel.from_counts(CaseCounts())
    textbook = ClinicModel.textbook()
    assert np.allclose(empty.prior, textbook.prior) and np.allclose(empty.sym, textbook.sym)
    i = CONDITIONS.index("marsh_fever")
    assert empty.sym[i, SYMPTOMS.index("fever")] == pytest.approx(0.8)
