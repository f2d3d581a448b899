"""Scripted Secret Table agents: random values, the oracle, and a fact-copying learner.

All three read the asked letter from the observation, in either style (``Query: b ?`` or ``What is
the number of letter b?``), and answer in that style (a bare value, or ``<answer>N</answer>``).
The learner keeps one ``b=3`` line per letter in its hints, copied from feedback that reveals the
entry (``b=3`` or ``The number of letter b is 3.``), and answers from them; without a line for the
asked letter it guesses.
"""

from __future__ import annotations

import re

import numpy as np

from codrl.envs.base import Pack
from codrl.envs.scripted.base import TurnText

_KEY_RE = re.compile(r"Query: ([a-z]) \?|number of letter ([a-z])\?")
_FACT_RE = re.compile(r"\b([a-z])=(\d+)\b|number of letter ([a-z]) is (\d+)")


def asked_key(observation: str) -> tuple[str, bool] | None:
    """(letter, chat style) of the question at the end of an observation, or None."""
    found = _KEY_RE.findall(observation)
    if not found:
        return None
    toy, chat = found[-1]
    return (chat, True) if chat else (toy, False)


def facts(text: str) -> dict[str, str]:
    """Every ``letter -> value`` entry a text states (later statements win)."""
    out: dict[str, str] = {}
    for k1, v1, k2, v2 in _FACT_RE.findall(text):
        out[k1 or k2] = v1 or v2
    return out


def _reply(value: str, chat: bool) -> str:
    return f"<answer>{value}</answer>" if chat else value


def _values(pack: Pack) -> list[str]:
    """The value range 1..max of the world's table: the action space the random agent draws from."""
    table = pack.world.get("table", {}) if isinstance(pack.world, dict) else {}
    top = max((int(v) for v in table.values()), default=2)
    return [str(v) for v in range(1, max(top, 2) + 1)]


class RandomAgent:
    """Answers a value drawn uniformly from the table's range; writes no hints."""

    def __init__(self, values: list[str], rng: np.random.Generator) -> None:
        self.values, self.rng = values, rng

    def act(self, hints: str, observation: str) -> str:
        asked = asked_key(observation)
        return _reply(self.values[int(self.rng.integers(len(self.values)))], bool(asked and asked[1]))

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float | None) -> str:
        return hints


class OracleAgent:
    """Reads the hidden table."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    def act(self, hints: str, observation: str) -> str:
        asked = asked_key(observation)
        if asked is None:
            return ""
        return _reply(self.table.get(asked[0], ""), asked[1])

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float | None) -> str:
        return hints


class LearnerAgent:
    """Copies revealed entries into ``letter=value`` hint lines and answers from them."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def act(self, hints: str, observation: str) -> str:
        asked = asked_key(observation)
        if asked is None:
            return ""
        key, chat = asked
        known = facts(hints)
        return _reply(known.get(key, str(1 + int(self.rng.integers(2)))), chat)

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float | None) -> str:
        known = facts(hints)
        for turn in transcript:
            known.update(facts(turn.feedback))
        return "\n".join(f"{k}={v}" for k, v in sorted(known.items()))


def random_agent(pack: Pack, rng: np.random.Generator) -> RandomAgent:
    return RandomAgent(_values(pack), rng)


def oracle_agent(pack: Pack, rng: np.random.Generator) -> OracleAgent:
    return OracleAgent({str(k): str(v) for k, v in pack.world["table"].items()})


def learner_agent(pack: Pack, rng: np.random.Generator) -> LearnerAgent:
    return LearnerAgent(rng)
