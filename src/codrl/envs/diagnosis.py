"""Diagnosis: a simulated clinic dialogue whose hidden patient population is the world.

This is a toy simulation in place of the study's Learn2Ask (whose doctor-patient data and LLM judge
are not available): the conditions are invented, the symptoms and tests generic, and nothing here
is medical advice. Everything is rule-driven and exact.

Each *world* is a clinic with a hidden profile, shared by every task of a pack:

* which few conditions of the fixed vocabulary of :data:`CONDITIONS` occur here, with their base
  rates (the textbook treats all of them as equally likely);
* per condition, the probability of each symptom of :data:`SYMPTOMS` and the distribution of each
  test's results (:data:`TESTS`). They start from the general textbook guidance
  (:data:`TEXTBOOK`, printed in the system prompt) and vary by clinic: some entries are flipped
  (a textbook key symptom that is rare here, or a local sign the textbook does not mention);
* one *misleading* symptom: a textbook key symptom that is uninformative here (equally common in
  every condition of the clinic) or reversed (rare in the conditions the textbook ties it to,
  common in the others).

Each task is one patient: a condition drawn from the clinic's base rates, and every symptom and
test result drawn once at task start (so the answers are consistent). The patient states one of
the symptoms they have as the presenting complaint. Each turn the agent replies with exactly one
of ``<answer>ask SYMPTOM</answer>``, ``<answer>test TEST</answer>`` or
``<answer>diagnose CONDITION</answer>``. A correct diagnosis scores ``1 - question_cost * questions
- test_cost * tests`` (clipped at 0); a wrong one, running out of turns (the last of ``max_turns``
replies must be a diagnosis) or a malformed reply scores 0. Asking the same thing twice gets the
same answer and costs again. After a diagnosis (or running out of turns) the feedback reveals the
true condition and the full case record, so later patients can be diagnosed with fewer, better
questions: that is the reusable knowledge (base rates, which questions discriminate here, when to
stop asking).

World format (probabilities rounded to 2 decimals; only the clinic's conditions are listed)::

    {"conditions": ["dust_lung", "marsh_fever", "reed_pox"], "base_rates": [0.5, 0.3, 0.2],
     "symptoms": {"dust_lung": {"fever": 0.08, "chills": 0.12, ...}, ...},
     "tests": {"dust_lung": {"blood_count": {"low": 0.8, "normal": 0.12, "high": 0.08}, ...}, ...},
     "misleading": {"symptom": "fever", "kind": "uninformative"}}

``misleading`` is None when the clinic has none. Task spec format::

    {"condition": "dust_lung", "complaint": "cough",
     "symptoms": {"fever": "no", "cough": "yes", ...}, "tests": {"blood_count": "low", ...}}

``complaint`` is None when the patient has none of the symptoms.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import Field

from codrl.envs.base import (CoDEnv, EnvParams, Episode, Pack, StepResult, Task, ValueOrPair, answer_span,
                             parse_params)

#: The symptoms an agent may ask about (answers are ``yes`` or ``no``).
SYMPTOMS: tuple[str, ...] = ("fever", "chills", "cough", "sore_throat", "rash", "itching", "headache",
                             "dizziness", "nausea", "joint_pain", "fatigue", "night_sweats")
#: The tests an agent may order, with their possible results.
TESTS: dict[str, tuple[str, ...]] = {
    "blood_count": ("low", "normal", "high"),
    "chest_scan": ("clear", "patchy", "cloudy"),
    "skin_swab": ("negative", "positive"),
}
#: The general textbook guidance (printed in the system prompt): per invented condition its key
#: symptoms and typical test results. Any two conditions share at most one key symptom.
TEXTBOOK: dict[str, dict[str, Any]] = {
    "marsh_fever": {"symptoms": ("fever", "chills", "fatigue"),
                    "tests": {"blood_count": "high", "chest_scan": "clear", "skin_swab": "negative"}},
    "frost_cough": {"symptoms": ("cough", "sore_throat", "chills"),
                    "tests": {"blood_count": "normal", "chest_scan": "patchy", "skin_swab": "negative"}},
    "ember_rash": {"symptoms": ("rash", "itching", "fever"),
                   "tests": {"blood_count": "normal", "chest_scan": "clear", "skin_swab": "positive"}},
    "dust_lung": {"symptoms": ("cough", "night_sweats", "fatigue"),
                  "tests": {"blood_count": "low", "chest_scan": "cloudy", "skin_swab": "negative"}},
    "gloam_migraine": {"symptoms": ("headache", "dizziness", "nausea"),
                       "tests": {"blood_count": "normal", "chest_scan": "clear", "skin_swab": "negative"}},
    "brine_belly": {"symptoms": ("nausea", "fever", "night_sweats"),
                    "tests": {"blood_count": "low", "chest_scan": "clear", "skin_swab": "negative"}},
    "stone_ache": {"symptoms": ("joint_pain", "fatigue", "headache"),
                   "tests": {"blood_count": "high", "chest_scan": "clear", "skin_swab": "negative"}},
    "reed_pox": {"symptoms": ("itching", "sore_throat", "joint_pain"),
                 "tests": {"blood_count": "normal", "chest_scan": "clear", "skin_swab": "positive"}},
    "drift_sickness": {"symptoms": ("dizziness", "chills", "night_sweats"),
                       "tests": {"blood_count": "low", "chest_scan": "patchy", "skin_swab": "negative"}},
    "ash_pox": {"symptoms": ("rash", "joint_pain", "dizziness"),
                "tests": {"blood_count": "high", "chest_scan": "clear", "skin_swab": "positive"}},
}
#: The conditions an agent may diagnose (the whole vocabulary; a clinic sees only a few).
CONDITIONS: tuple[str, ...] = tuple(TEXTBOOK)
#: Textbook probabilities: a key symptom is present in this share of cases, any other symptom in
#: ``TEXTBOOK_OTHER``; a test shows its typical result in ``TEXTBOOK_TYPICAL`` of cases, the rest
#: split evenly over its other results.
TEXTBOOK_KEY, TEXTBOOK_OTHER, TEXTBOOK_TYPICAL = 0.8, 0.1, 0.8

Misleading = Literal["mixed", "uninformative", "reversed", "none"]
MISLEADING_KINDS: tuple[str, ...] = get_args(Misleading)

#: Mean reward of :func:`codrl.envs.scripted.diagnosis.random_agent` (a uniformly random valid
#: action each turn, out of the 12 questions, 3 tests and 10 diagnoses) with the default knobs:
#: ``checklist.reward_matrix`` over 2 x 2000 packs of 4 tasks, test split, seeds 0 and 1 (0.082 and
#: 0.093; per-seed standard error ~0.003).
CHANCE_REWARD = 0.087

_ACTION_RE = re.compile(r"\s*(ask|test|diagnose)\s+([A-Za-z_]+)\s*", re.ASCII | re.IGNORECASE)
#: Longer answer-tag contents cannot hold one verb and one name.
_MAX_CONTENT = 100


def format_hint() -> str:
    """The one-line reply format, as shown in every observation."""
    return ("Reply with exactly one of <answer>ask SYMPTOM</answer>, <answer>test TEST</answer> or "
            "<answer>diagnose CONDITION</answer>, using a name exactly as listed.")


def allowed_words() -> str:
    """The allowed names of every kind, as one block of text."""
    tests = ", ".join(f"{t} ({'/'.join(v)})" for t, v in TESTS.items())
    return (f"Symptoms you may ask about: {', '.join(SYMPTOMS)}\n"
            f"Tests you may order (possible results): {tests}\n"
            f"Conditions you may diagnose: {', '.join(CONDITIONS)}")


def parse_action(reply: Any) -> tuple[str, str] | str:
    """``(verb, name)`` of ``reply``'s single answer tag, or a short reason why it is malformed.

    Exactly one ``<answer>`` and one ``</answer>`` (any case, spaces before ``>`` allowed), in that
    order, with at most ``_MAX_CONTENT`` characters between them (see
    :func:`~codrl.envs.base.answer_span`), must enclose a verb (``ask``, ``test`` or ``diagnose``,
    any case) and one name of the matching vocabulary (any case; underscores as listed). Text
    outside the tags is ignored. Never raises; linear time on any input.
    """
    span = answer_span(reply, _MAX_CONTENT, "the answer is too long to be one action")
    if isinstance(span, str):
        return span
    m = _ACTION_RE.fullmatch(reply, *span)
    if m is None:
        return "the answer is not 'ask SYMPTOM', 'test TEST' or 'diagnose CONDITION'"
    verb, word = m.group(1).lower(), m.group(2).lower()
    vocab: Sequence[str] = {"ask": SYMPTOMS, "test": tuple(TESTS), "diagnose": CONDITIONS}[verb]
    if word not in vocab:
        kind = {"ask": "symptom", "test": "test", "diagnose": "condition"}[verb]
        return f"{word!r} is not a listed {kind}"
    return verb, word


def textbook_symptom_prob(condition: str, symptom: str) -> float:
    """Textbook probability that a patient with ``condition`` has ``symptom``."""
    return TEXTBOOK_KEY if symptom in TEXTBOOK[condition]["symptoms"] else TEXTBOOK_OTHER


def textbook_test_dist(condition: str, test: str) -> dict[str, float]:
    """Textbook distribution of ``test``'s results for ``condition``."""
    values = TESTS[test]
    typical = TEXTBOOK[condition]["tests"][test]
    rest = (1.0 - TEXTBOOK_TYPICAL) / (len(values) - 1)
    return {v: TEXTBOOK_TYPICAL if v == typical else rest for v in values}


def _validate_world(world: Any) -> None:
    """Raise ValueError unless ``world`` is a clinic profile of the documented format."""
    try:
        conds = world["conditions"]
        rates = world["base_rates"]
        ok = (isinstance(conds, list) and conds and len(set(conds)) == len(conds)
              and all(c in TEXTBOOK for c in conds) and len(rates) == len(conds)
              and all(float(r) >= 0 for r in rates) and sum(float(r) for r in rates) > 0)
        for c in conds:
            ok = ok and all(0.0 <= float(world["symptoms"][c][s]) <= 1.0 for s in SYMPTOMS)
            ok = ok and all(float(world["tests"][c][t][v]) >= 0 for t, vs in TESTS.items() for v in vs)
    except (TypeError, KeyError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise ValueError("diagnosis world needs 'conditions' (names from CONDITIONS), 'base_rates', "
                         "'symptoms' (condition -> symptom -> probability) and 'tests' "
                         f"(condition -> test -> result -> probability), got {world!r}")


def _validate_spec(spec: Any) -> None:
    try:
        ok = (spec["condition"] in TEXTBOOK
              and all(spec["symptoms"][s] in ("yes", "no") for s in SYMPTOMS)
              and all(spec["tests"][t] in vs for t, vs in TESTS.items())
              and (spec["complaint"] is None or spec["symptoms"][spec["complaint"]] == "yes"))
    except (TypeError, KeyError, AttributeError):
        ok = False
    if not ok:
        raise ValueError(f"diagnosis task spec needs 'condition', 'complaint', 'symptoms' and 'tests', got {spec!r}")


class Diagnosis(CoDEnv):
    """Diagnosis: ask, test and diagnose simulated patients of a clinic with a hidden profile.

    Parameters: the keywords of :class:`Diagnosis.Params`.
    """

    reply_prefix = "<answer>"
    stop_strings = ("</answer>",)
    #: A correct diagnosis scores 1 minus the cost of the questions and tests (at least 0.3 within
    #: the turn cap), a wrong one 0: any positive reward is a solved task.
    success_threshold = 0.01

    class Params(EnvParams):
        """Diagnosis's parameters."""

        name: str = Field("diagnosis", min_length=1, description="Name of the environment (pack ids, reports).")
        conditions_per_clinic: ValueOrPair[Annotated[int, Field(strict=True, ge=1, le=len(CONDITIONS))]] = Field(
            (3, 4), description=f"Conditions a clinic sees: a number or a (low, high) range, 1-{len(CONDITIONS)}.")
        base_rate_concentration: float = Field(0.7, strict=True, gt=0.0, allow_inf_nan=False, description=(
            "Dirichlet concentration of the clinic's base rates, > 0 (smaller is more skewed)."))
        local_variation: float = Field(0.15, strict=True, ge=0.0, le=1.0, description=(
            "Probability that a symptom or test entry of a condition departs from the textbook at a clinic."))
        misleading: Misleading = Field("mixed", description=(
            "Kind of the misleading symptom: either at random (mixed), uninformative, reversed or none."))
        question_cost: float = Field(0.05, strict=True, ge=0.0, le=1.0,
                                     description="Reward lost per question asked, 0-1.")
        test_cost: float = Field(0.1, strict=True, ge=0.0, le=1.0, description="Reward lost per test ordered, 0-1.")
        max_turns: int = Field(8, strict=True, ge=1, le=50,
                               description="Replies per patient, 1-50; the last must be a diagnosis.")
        reveal_record: bool = Field(True, strict=True, description=(
            "Whether the final feedback lists the patient's full case record besides the true condition."))

    def __init__(self, **params: Any) -> None:
        p = parse_params(self.Params, params)
        self.name = p.name
        self.conditions_per_clinic = p.conditions_per_clinic
        self.base_rate_concentration = p.base_rate_concentration
        self.local_variation = p.local_variation
        self.misleading = p.misleading
        self.question_cost = p.question_cost
        self.test_cost = p.test_cost
        self.max_turns = p.max_turns
        self.reveal_record = p.reveal_record
        knobs = [f for f in self.Params.model_fields if f != "name"]
        # The measured chance level holds only for the default knobs.
        self.chance_reward = CHANCE_REWARD if p.at_defaults(*knobs) else None
        self.system_prompt = self._build_system_prompt()

    def _build_system_prompt(self) -> str:
        guide = "\n".join(
            f"  {c}: key symptoms {', '.join(e['symptoms'])}; typical tests "
            + ", ".join(f"{t} {v}" for t, v in e["tests"].items())
            for c, e in TEXTBOOK.items())
        record = " and the full case record" if self.reveal_record else ""
        return (
            "You are the doctor in a simulated clinic. This is a made-up game: the conditions are invented, "
            "and nothing here is medical advice.\n"
            "Each task is one patient who has exactly one of the listed conditions. The patient tells you one "
            "symptom they have (the presenting complaint) and answers your questions truthfully; asking the "
            "same thing twice gets the same answer and costs again.\n"
            "Each turn, reply with exactly one action:\n"
            "  <answer>ask SYMPTOM</answer>       ask whether the patient has SYMPTOM "
            f"(costs {self.question_cost:.2f})\n"
            f"  <answer>test TEST</answer>         order TEST and get its result (costs {self.test_cost:.2f})\n"
            "  <answer>diagnose CONDITION</answer>  name the patient's condition; this ends the task\n"
            "for example <answer>ask fever</answer>, <answer>test blood_count</answer> or "
            "<answer>diagnose marsh_fever</answer>. Write names exactly as listed (lowercase, with underscores), "
            "write only one <answer> tag in your reply and nothing else inside it. Any other reply (a second tag, "
            "an unknown name, extra words) ends the task with reward 0.\n"
            f"Scoring: a correct diagnosis scores 1 minus {self.question_cost:.2f} per question and "
            f"{self.test_cost:.2f} per test you used (never below 0); a wrong diagnosis scores 0. You have at "
            f"most {self.max_turns} turns per patient and the last one must be a diagnosis: running out of turns "
            f"scores 0. After the task you are told the patient's true condition{record}.\n"
            "General textbook guidance (it treats all conditions as equally likely; a key symptom is present in "
            f"about {TEXTBOOK_KEY:.0%} of cases and any other symptom in about {TEXTBOOK_OTHER:.0%}; a test shows "
            f"the typical result in about {TEXTBOOK_TYPICAL:.0%} of cases):\n"
            f"{guide}\n"
            "This clinic is not the textbook. Only a few of the conditions occur here, with their own base rates; "
            "some symptoms the textbook calls telling are useless or even misleading here, while others tell the "
            "conditions apart better. The clinic and its patient population stay the same for every task in this "
            "environment, so learn from each outcome which conditions are common here, which questions and tests "
            "actually tell them apart, and when you can stop asking: that is the key to diagnosing later patients "
            "correctly with few questions."
        )

    # -- CoDEnv -------------------------------------------------------------------------------
    def sample_world(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw a clinic profile: its conditions, base rates, symptom and test models, misleading symptom."""
        lo, hi = self.conditions_per_clinic
        n = int(rng.integers(lo, hi + 1))
        idx = sorted(int(i) for i in rng.choice(len(CONDITIONS), size=n, replace=False))
        conds = [CONDITIONS[i] for i in idx]
        rates = rng.dirichlet(np.full(n, self.base_rate_concentration))
        rates = np.maximum(rates, 0.05)
        rates = np.round(rates / rates.sum(), 2)
        rates[int(np.argmax(rates))] += round(1.0 - float(rates.sum()), 2)  # sum exactly 1 after rounding
        symptoms: dict[str, dict[str, float]] = {}
        tests: dict[str, dict[str, dict[str, float]]] = {}
        for c in conds:
            row = {}
            for s in SYMPTOMS:
                key = s in TEXTBOOK[c]["symptoms"]
                flip = rng.random() < self.local_variation
                if key != flip:  # a textbook key symptom, or a local sign of this clinic
                    p = rng.uniform(0.7, 0.95) if key else rng.uniform(0.6, 0.9)
                else:  # uncommon: a textbook non-key symptom, or a key symptom that is rare here
                    p = rng.uniform(0.03, 0.2) if not key else rng.uniform(0.05, 0.3)
                row[s] = round(float(p), 2)
            symptoms[c] = row
            tests[c] = {}
            for t, values in TESTS.items():
                typical = TEXTBOOK[c]["tests"][t]
                if rng.random() < self.local_variation:
                    others = [v for v in values if v != typical]
                    typical = others[int(rng.integers(len(others)))]
                p_typ = float(rng.uniform(0.65, 0.9))
                rest = rng.dirichlet(np.ones(len(values) - 1)) * (1.0 - p_typ)
                dist, k = {}, 0
                for v in values:
                    if v == typical:
                        dist[v] = p_typ
                    else:
                        dist[v] = float(rest[k])
                        k += 1
                tests[c][t] = {v: round(p, 2) for v, p in dist.items()}
        misleading = None
        kind = self.misleading
        if kind == "mixed":
            kind = ("uninformative", "reversed")[int(rng.integers(2))]
        if kind != "none":
            # A key symptom of some clinic condition in the textbook; it tells nothing (or the reverse) here.
            cands = sorted({s for c in conds for s in TEXTBOOK[c]["symptoms"]}, key=SYMPTOMS.index)
            s_star = cands[int(rng.integers(len(cands)))]
            if kind == "uninformative":
                p = round(float(rng.uniform(0.6, 0.85)), 2)
                for c in conds:
                    symptoms[c][s_star] = p
            else:
                for c in conds:
                    textbook_key = s_star in TEXTBOOK[c]["symptoms"]
                    p = rng.uniform(0.03, 0.15) if textbook_key else rng.uniform(0.65, 0.9)
                    symptoms[c][s_star] = round(float(p), 2)
            misleading = {"symptom": s_star, "kind": kind}
        return {"conditions": conds, "base_rates": [float(r) for r in np.round(rates, 2)], "symptoms": symptoms,
                "tests": tests, "misleading": misleading}

    def sample_task(self, world: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Draw one patient: a condition by the base rates, every symptom and test result, a complaint."""
        conds = world["conditions"]
        rates = np.array([float(r) for r in world["base_rates"]])
        c = conds[int(rng.choice(len(conds), p=rates / rates.sum()))]
        p_sym = np.array([float(world["symptoms"][c][s]) for s in SYMPTOMS])
        has = rng.random(len(SYMPTOMS)) < p_sym
        answers = {s: "yes" if h else "no" for s, h in zip(SYMPTOMS, has)}
        results = {}
        for t, values in TESTS.items():
            cum = np.cumsum([float(world["tests"][c][t][v]) for v in values])
            results[t] = values[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(values) - 1)]
        present = [s for s, h in zip(SYMPTOMS, has) if h]
        complaint = present[int(rng.integers(len(present)))] if present else None
        return {"condition": c, "complaint": complaint, "symptoms": answers, "tests": results}

    def start(self, pack: Pack, task: Task, state: Any = None) -> DiagnosisEpisode:
        """Begin a consultation with the patient of ``task``."""
        _validate_world(pack.world)
        _validate_spec(task.spec)
        return DiagnosisEpisode(task.spec, self.question_cost, self.test_cost, self.max_turns, self.reveal_record)


class DiagnosisEpisode(Episode):
    """One consultation. ``info`` of each step holds ``event`` (``ask``, ``test``, ``correct``,
    ``wrong``, ``timeout``, ``invalid`` or ``over``), ``action`` (``[verb, name]`` or None),
    ``questions``, ``tests`` and ``turns`` (used so far), and at the end ``condition`` (the truth)."""

    def __init__(self, spec: dict[str, Any], question_cost: float, test_cost: float, max_turns: int,
                 reveal_record: bool) -> None:
        self.condition: str = spec["condition"]
        self.complaint: str | None = spec["complaint"]
        self.answers: dict[str, str] = dict(spec["symptoms"])
        self.results: dict[str, str] = dict(spec["tests"])
        self.question_cost = question_cost
        self.test_cost = test_cost
        self.max_turns = max_turns
        self.reveal_record = reveal_record
        self.reset()

    # -- helpers ------------------------------------------------------------------------------
    def score_if_correct(self) -> float:
        """The reward a correct diagnosis would earn now."""
        return max(0.0, round(1.0 - self.question_cost * self.questions - self.test_cost * self.tests, 10))

    def _known_lines(self) -> list[str]:
        if not self.known:
            return ["  (nothing yet)"]
        return [f"  {k}: {v}" for k, v in self.known.items()]

    def _observation(self) -> str:
        left = self.max_turns - self.turns
        complaint = (f"The patient's presenting complaint: {self.complaint}."
                     if self.complaint else "The patient feels unwell but names no particular symptom.")
        last = " This is your last turn: you must diagnose now." if left == 1 else " The last one must be a diagnosis."
        lines = [complaint, "Known so far:", *self._known_lines(),
                 (f"Questions asked: {self.questions}, tests ordered: {self.tests}. "
                  f"A correct diagnosis now would score {self.score_if_correct():.2f}."),
                 (f"Costs: {self.question_cost:.2f} per question, {self.test_cost:.2f} per test; a wrong "
                  "diagnosis scores 0."),
                 f"Turns left: {left} of {self.max_turns}.{last}",
                 allowed_words(),
                 format_hint()]
        return "\n".join(lines)

    def _record(self) -> str:
        syms = ", ".join(f"{s} {self.answers[s]}" for s in SYMPTOMS)
        tests = ", ".join(f"{t} {self.results[t]}" for t in TESTS)
        return f" Full case record: {syms}; {tests}."

    def _info(self, event: str, action: tuple[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        return {"event": event, "action": list(action) if action else None, "questions": self.questions,
                "tests": self.tests, "turns": self.turns, **extra}

    def _end(self, text: str, reward: float, event: str, action: tuple[str, str] | None) -> StepResult:
        self.done = True
        if self.reveal_record:
            text += self._record()
        return StepResult(None, reward, True, text, True, self._info(event, action, condition=self.condition))

    # -- Episode ------------------------------------------------------------------------------
    def reset(self) -> str:
        """Start the consultation afresh and return the first observation."""
        self.questions = 0
        self.tests = 0
        self.turns = 0
        self.done = False
        self.known: dict[str, str] = {}
        if self.complaint:
            self.known[self.complaint] = "yes (presenting complaint)"
        return self._observation()

    def step(self, reply: str) -> StepResult:
        """Parse ``reply``, answer the question or test, or score the diagnosis. Never raises."""
        if self.done:
            return StepResult(None, 0.0, True, "The task is already over.", True, self._info("over"))
        parsed = parse_action(reply)
        if isinstance(parsed, str):
            self.done = True
            feedback = (f"Invalid answer: {parsed}. Expected exactly one <answer>ask SYMPTOM</answer>, "
                        "<answer>test TEST</answer> or <answer>diagnose CONDITION</answer> with a name from "
                        f"these lists:\n{allowed_words()}\nThe task ended with reward 0.")
            return StepResult(None, 0.0, True, feedback, False, self._info("invalid"))
        verb, word = parsed
        self.turns += 1
        if verb == "diagnose":
            if word == self.condition:
                score = self.score_if_correct()
                return self._end(f"Correct: the patient had {word}. You used {self.questions} question(s) and "
                                 f"{self.tests} test(s): reward {score:.2f}.", score, "correct", parsed)
            return self._end(f"Wrong: you diagnosed {word}, but the patient had {self.condition}. Reward 0.",
                             0.0, "wrong", parsed)
        if self.turns >= self.max_turns:
            return self._end(f"Out of turns: your last turn had to be a diagnosis, and the patient had "
                             f"{self.condition}. Reward 0.", 0.0, "timeout", parsed)
        if verb == "ask":
            self.questions += 1
            answer = self.answers[word]
            self.known.setdefault(word, answer)
            text = f"You asked about {word}. The patient says: {answer}."
        else:
            self.tests += 1
            answer = self.results[word]
            self.known[word] = answer
            text = f"Test {word} result: {answer}."
        return StepResult(f"{text}\n\n{self._observation()}", 0.0, False, text, True, self._info(verb, parsed))
