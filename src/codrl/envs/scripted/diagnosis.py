"""Scripted Diagnosis agents: random actions, the Bayesian oracle, and a case-counting learner.

The oracle and the learner are the same Bayesian doctor (:class:`BayesDoctor`) with different
models of the clinic. Each turn it computes the posterior over conditions from the presenting
complaint and the answers so far, looks two questions or tests ahead, and asks the one that raises
the expected score most; it diagnoses the most likely condition once no question pays for its cost.

* The oracle's model is the true clinic profile read from ``pack.world``.
* The learner's model comes from its hints: per condition, how many patients had it and, for each
  symptom and test, what those patients showed (read from the observations and from the final
  feedback, which names the true condition and, by default, the full case record). Counts are
  blended with the general textbook guidance of the system prompt (:data:`TEXTBOOK`), which is
  all it has with empty hints, misleading symptom included.
"""

from __future__ import annotations

import re

import numpy as np

from codrl.envs.base import Pack
from codrl.envs.diagnosis import (CONDITIONS, SYMPTOMS, TESTS, textbook_symptom_prob, textbook_test_dist)
from codrl.envs.scripted.base import TurnText

TEST_NAMES: tuple[str, ...] = tuple(TESTS)
#: Outcomes per action are padded to this many (symptoms: yes/no; tests: up to 3 results).
_MAX_OUT = max(3, *(len(v) for v in TESTS.values()))

_COMPLAINT_RE = re.compile(r"presenting complaint: ([a-z_]+)\.")
_KNOWN_RE = re.compile(r"^  ([a-z_]+): ([a-z]+)", re.MULTILINE)
_COUNTS_RE = re.compile(r"Questions asked: (\d+), tests ordered: (\d+)\.")
_COSTS_RE = re.compile(r"Costs: ([0-9.]+) per question, ([0-9.]+) per test")
_LEFT_RE = re.compile(r"Turns left: (\d+) of (\d+)")
_TRUTH_RE = re.compile(r"the patient had ([a-z_]+)\.", re.IGNORECASE)
_RECORD_RE = re.compile(r"Full case record: ([^\n]*)\.")
_PAIR_RE = re.compile(r"([a-z_]+) ([a-z]+)")
_HINT_COND_RE = re.compile(r"^([a-z_]+): (\d+) patients?(.*)$", re.MULTILINE)
_HINT_SYM_RE = re.compile(r"([a-z_]+) (\d+)/(\d+)")
_HINT_TEST_RE = re.compile(r"([a-z_]+) ([a-z]+) (\d+)")


def _answer(verb: str, word: str) -> str:
    return f"<answer>{verb} {word}</answer>"


# -- the clinic model ---------------------------------------------------------------------------
class ClinicModel:
    """A model of a clinic over the whole vocabulary: base rates ``prior[c]``, ``sym[c, s]`` (the
    probability of each symptom) and ``tests[t][c, v]`` (the distribution of each test's results)."""

    def __init__(self, prior: np.ndarray, sym: np.ndarray, tests: dict[str, np.ndarray]) -> None:
        self.prior = prior / prior.sum()
        self.sym = np.clip(sym, 1e-4, 1 - 1e-4)
        self.tests = {t: d / d.sum(axis=1, keepdims=True) for t, d in tests.items()}
        self._complaint_lik: np.ndarray | None = None

    @property
    def complaint_lik(self) -> np.ndarray:
        """``P(complaint = s | c)`` under this model (computed on first use)."""
        if self._complaint_lik is None:
            self._complaint_lik = _complaint_likelihood(self.sym)
        return self._complaint_lik

    @classmethod
    def textbook(cls) -> ClinicModel:
        """The system prompt's general guidance: every condition equally likely."""
        sym = np.array([[textbook_symptom_prob(c, s) for s in SYMPTOMS] for c in CONDITIONS])
        tests = {t: np.array([[textbook_test_dist(c, t)[v] for v in TESTS[t]] for c in CONDITIONS]) for t in TESTS}
        return cls(np.ones(len(CONDITIONS)), sym, tests)

    @classmethod
    def from_world(cls, world: dict) -> ClinicModel:
        """The true clinic profile (conditions outside the clinic get base rate 0)."""
        tb = cls.textbook()
        prior = np.zeros(len(CONDITIONS))
        sym, tests = tb.sym.copy(), {t: d.copy() for t, d in tb.tests.items()}
        for c, r in zip(world["conditions"], world["base_rates"]):
            i = CONDITIONS.index(c)
            prior[i] = float(r)
            sym[i] = [float(world["symptoms"][c][s]) for s in SYMPTOMS]
            for t, values in TESTS.items():
                tests[t][i] = [float(world["tests"][c][t][v]) for v in values]
        return cls(prior, sym, tests)

    @classmethod
    def from_counts(cls, counts: CaseCounts, prior_pseudo: float = 0.25, strength: float = 2.0) -> ClinicModel:
        """Case counts blended with the textbook: ``strength`` pseudo-patients of textbook per entry,
        ``prior_pseudo`` pseudo-patients of every condition in the base rates."""
        tb = cls.textbook()
        prior = counts.patients + prior_pseudo
        sym = (counts.sym_yes + strength * tb.sym) / (counts.sym_seen + strength)[:, :]
        tests = {t: (counts.test_counts[t] + strength * tb.tests[t])
                 / (counts.test_counts[t].sum(axis=1, keepdims=True) + strength) for t in TESTS}
        return cls(prior, sym, tests)

    def likelihoods(self) -> tuple[list[tuple[str, str]], np.ndarray]:
        """Every question and test as ``(verb, name)`` with its outcome table ``L[a, o, c]``."""
        actions = [("ask", s) for s in SYMPTOMS] + [("test", t) for t in TEST_NAMES]
        lik = np.zeros((len(actions), _MAX_OUT, len(CONDITIONS)))
        for i in range(len(SYMPTOMS)):
            lik[i, 0] = self.sym[:, i]
            lik[i, 1] = 1 - self.sym[:, i]
        for j, t in enumerate(TEST_NAMES):
            d = self.tests[t]
            lik[len(SYMPTOMS) + j, : d.shape[1]] = d.T
        return actions, lik

    def posterior(self, complaint: str | None, known: dict[str, str], complaint_given: bool = True) -> np.ndarray:
        """Posterior over conditions given the complaint (if stated) and the answers in ``known``."""
        log = np.log(np.maximum(self.prior, 1e-300))
        if complaint_given:
            if complaint is None:
                log += np.log1p(-self.sym).sum(axis=1)
            else:
                log += np.log(self.complaint_lik[:, SYMPTOMS.index(complaint)])
        for name, value in known.items():
            if name == complaint:
                continue
            if name in SYMPTOMS:
                p = self.sym[:, SYMPTOMS.index(name)]
                log += np.log(p if value == "yes" else 1 - p)
            elif name in TESTS and value in TESTS[name]:
                log += np.log(np.maximum(self.tests[name][:, TESTS[name].index(value)], 1e-300))
        log[self.prior <= 0] = -np.inf
        post = np.exp(log - log.max())
        return post / post.sum()


def _complaint_likelihood(sym: np.ndarray) -> np.ndarray:
    """``P(complaint = s | c)`` when the complaint is a uniformly chosen present symptom.

    ``dist[c, s, k]`` is the probability that ``k`` symptoms other than ``s`` are present.
    """
    n_c, n_s = sym.shape
    dist = np.zeros((n_c, n_s, n_s + 1))
    dist[:, :, 0] = 1.0
    for o in range(n_s):
        p = np.repeat(sym[:, o:o + 1], n_s, axis=1)
        p[:, o] = 0.0  # symptom o itself is not "another" symptom of target o
        shifted = np.concatenate([np.zeros((n_c, n_s, 1)), dist[:, :, :-1]], axis=2)
        dist = dist * (1 - p)[:, :, None] + shifted * p[:, :, None]
    return sym * (dist / np.arange(1, n_s + 2)).sum(axis=2)


# -- reading observations -----------------------------------------------------------------------
def read_observation(observation: str) -> dict:
    """Complaint, known answers, counts, costs and turns left from an observation's text."""
    m = _COMPLAINT_RE.search(observation)
    known: dict[str, str] = {}
    if "Known so far:" in observation:
        block = observation.split("Known so far:", 1)[1].split("\nQuestions asked", 1)[0]
        known = {k: v for k, v in _KNOWN_RE.findall(block) if k in SYMPTOMS or k in TESTS}
    counts = _COUNTS_RE.search(observation)
    costs = _COSTS_RE.search(observation)
    left = _LEFT_RE.search(observation)
    return {"complaint": m.group(1) if m and m.group(1) in SYMPTOMS else None,
            "complaint_given": "presenting complaint" in observation or "names no particular" in observation,
            "known": known,
            "questions": int(counts.group(1)) if counts else 0, "tests": int(counts.group(2)) if counts else 0,
            "question_cost": float(costs.group(1)) if costs else 0.05,
            "test_cost": float(costs.group(2)) if costs else 0.1,
            "turns_left": int(left.group(1)) if left else 1}


# -- agents -------------------------------------------------------------------------------------
class RandomAgent:
    """A uniformly random valid action each turn (question, test or diagnosis): the chance level."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.actions = ([("ask", s) for s in SYMPTOMS] + [("test", t) for t in TESTS]
                        + [("diagnose", c) for c in CONDITIONS])

    def act(self, hints: str, observation: str) -> str:
        return _answer(*self.actions[int(self.rng.integers(len(self.actions)))])

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        return hints


class BayesDoctor:
    """Asks the question or test with the best two-step expected score; diagnoses when none pays."""

    def __init__(self, model: ClinicModel) -> None:
        self.model = model

    def decide(self, observation: str) -> tuple[str, str]:
        obs = read_observation(observation)
        model = self.model
        post = model.posterior(obs["complaint"], obs["known"], obs["complaint_given"])
        best_c = CONDITIONS[int(np.argmax(post))]
        spent = obs["questions"] * obs["question_cost"] + obs["tests"] * obs["test_cost"]
        depth = min(2, obs["turns_left"] - 1)
        if depth <= 0:
            return "diagnose", best_c
        actions, lik = model.likelihoods()
        cost = np.array([obs["question_cost"] if v == "ask" else obs["test_cost"] for v, _ in actions])
        asked = np.array([n in obs["known"] or n == obs["complaint"] for _, n in actions])
        stop_now = post.max() * max(0.0, 1 - spent)
        # joint[a, o, c] = P(c, answer o to a)
        joint = post[None, None, :] * lik
        f1 = np.maximum(0.0, 1 - spent - cost)  # score factor after one more action
        v1 = joint.max(axis=2)  # [a, o]: P(o) * max posterior after o
        value = v1 * f1[:, None]
        if depth >= 2:
            # joint2[a, o, b, o2] = max_c P(c, o, o2)
            joint2 = (joint[:, :, None, None, :] * lik[None, None, :, :, :]).max(axis=4).sum(axis=3)  # [a, o, b]
            f2 = np.maximum(0.0, 1 - spent - cost[:, None] - cost[None, :])  # [a, b]
            two = joint2 * f2[:, None, :]
            mask = asked[None, :] | np.eye(len(actions), dtype=bool)  # b re-asks nothing new
            two = np.where(mask[:, None, :], -np.inf, two)
            value = np.maximum(value, two.max(axis=2))
        q = value.sum(axis=1)
        q[asked] = -np.inf
        a = int(np.argmax(q))
        if q[a] > stop_now + 1e-9:
            return actions[a]
        return "diagnose", best_c


class OracleAgent:
    """The Bayesian doctor with the true clinic profile: the attainable level."""

    def __init__(self, world: dict) -> None:
        self.doctor = BayesDoctor(ClinicModel.from_world(world))

    def act(self, hints: str, observation: str) -> str:
        return _answer(*self.doctor.decide(observation))

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        return hints


class CaseCounts:
    """Per condition: patients seen, symptom yes/seen counts and test result counts."""

    def __init__(self) -> None:
        n_c, n_s = len(CONDITIONS), len(SYMPTOMS)
        self.patients = np.zeros(n_c)
        self.sym_yes = np.zeros((n_c, n_s))
        self.sym_seen = np.zeros((n_c, n_s))
        self.test_counts = {t: np.zeros((n_c, len(v))) for t, v in TESTS.items()}

    def add_case(self, condition: str, answers: dict[str, str]) -> None:
        i = CONDITIONS.index(condition)
        self.patients[i] += 1
        for name, value in answers.items():
            if name in SYMPTOMS:
                j = SYMPTOMS.index(name)
                self.sym_seen[i, j] += 1
                self.sym_yes[i, j] += value == "yes"
            elif name in TESTS and value in TESTS[name]:
                self.test_counts[name][i, TESTS[name].index(value)] += 1

    @classmethod
    def from_hints(cls, hints: str) -> CaseCounts:
        out = cls()
        for cond, n, rest in _HINT_COND_RE.findall(hints or ""):
            if cond not in CONDITIONS:
                continue
            i = CONDITIONS.index(cond)
            out.patients[i] += int(n)
            sym_part, _, test_part = rest.partition("tests:")
            for s, yes, seen in _HINT_SYM_RE.findall(sym_part):
                if s in SYMPTOMS:
                    j = SYMPTOMS.index(s)
                    out.sym_yes[i, j] += int(yes)
                    out.sym_seen[i, j] += int(seen)
            for t, v, k in _HINT_TEST_RE.findall(test_part):
                if t in TESTS and v in TESTS[t]:
                    out.test_counts[t][i, TESTS[t].index(v)] += int(k)
        return out

    def to_hints(self) -> str:
        total = int(self.patients.sum())
        if total == 0:
            return ""
        lines = [f"Clinic cases so far: {total} (per condition: patients; symptom: patients with it / patients "
                 "checked; test result counts)."]
        for i in np.argsort(-self.patients, kind="stable"):
            if self.patients[i] == 0:
                continue
            n = int(self.patients[i])
            syms = ", ".join(f"{s} {int(self.sym_yes[i, j])}/{int(self.sym_seen[i, j])}"
                             for j, s in enumerate(SYMPTOMS) if self.sym_seen[i, j] > 0)
            tests = ", ".join(f"{t} {v} {int(self.test_counts[t][i, k])}" for t, vs in TESTS.items()
                              for k, v in enumerate(vs) if self.test_counts[t][i, k] > 0)
            lines.append(f"{CONDITIONS[i]}: {n} patient{'s' if n != 1 else ''}; symptoms: {syms or 'none'}; "
                         f"tests: {tests or 'none'}")
        return "\n".join(lines)


def case_from_transcript(transcript: list[TurnText]) -> tuple[str, dict[str, str]] | None:
    """The true condition and what is known of the patient, from a finished task's text; None if unknown."""
    if not transcript:
        return None
    last = transcript[-1].feedback
    m = _TRUTH_RE.search(last)
    if m is None or m.group(1).lower() not in CONDITIONS:
        return None
    rec = _RECORD_RE.search(last)
    if rec is not None:
        answers = {k: v for k, v in _PAIR_RE.findall(rec.group(1)) if k in SYMPTOMS or k in TESTS}
    else:
        obs = read_observation(transcript[-1].observation)
        answers = dict(obs["known"])
        if obs["complaint"]:
            answers[obs["complaint"]] = "yes"
    return m.group(1).lower(), answers


class LearnerAgent:
    """The Bayesian doctor with a model built from its own hints (case counts + textbook)."""

    def __init__(self) -> None:
        self.doctor: BayesDoctor | None = None

    def act(self, hints: str, observation: str) -> str:
        if self.doctor is None:
            self.doctor = BayesDoctor(ClinicModel.from_counts(CaseCounts.from_hints(hints)))
        return _answer(*self.doctor.decide(observation))

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        counts = CaseCounts.from_hints(hints)
        case = case_from_transcript(transcript)
        if case is not None:
            counts.add_case(*case)
        return counts.to_hints()


def random_agent(pack: Pack, rng: np.random.Generator) -> RandomAgent:
    return RandomAgent(rng)


def oracle_agent(pack: Pack, rng: np.random.Generator) -> OracleAgent:
    return OracleAgent(pack.world)


def learner_agent(pack: Pack, rng: np.random.Generator) -> LearnerAgent:
    return LearnerAgent()
