"""Scripted agents of ``coin_env:CoinEnv`` for the checklist harness (:mod:`codrl.eval.checklist`).

``random_agent`` guesses untried coins uniformly (the chance level), ``oracle_agent`` reads the
fake marks from ``pack.world``, and ``learner_agent`` sees only prompts, feedback and its own
hints, in which it keeps the lines ``fake: ...`` and ``genuine: ...``.
"""

from __future__ import annotations

import re

import numpy as np

from codrl.envs import Pack
from codrl.envs.scripted.base import TurnText

_COIN = re.compile(r"coin (\d+): ([A-Z])")
_FAKE = re.compile(r"The fake was coin \d+, mark ([A-Z]); marks ([A-Z ]*) are genuine")
_GENUINE = re.compile(r"Coin \d+ \(mark ([A-Z])\) is genuine")


class CoinAgent:
    """Guesses the coin whose mark is known fake, else an untried coin not known to be genuine."""

    def __init__(self, rng: np.random.Generator, fake: set[str] | None = None, learn: bool = True) -> None:
        self.rng, self.learn = rng, learn
        self.fake, self.genuine = set(fake or ()), set()
        self.row: dict[int, str] = {}
        self.tried: set[int] = set()

    def _read(self, text: str) -> None:
        for line in text.splitlines():
            if line.startswith("fake:"):
                self.fake.update(line[5:].split())
            elif line.startswith("genuine:"):
                self.genuine.update(line[8:].split())
        for fake, genuine in _FAKE.findall(text):
            self.fake.add(fake)
            self.genuine.update(genuine.split())
        self.genuine.update(_GENUINE.findall(text))

    def act(self, hints: str, observation: str) -> str:
        if not self.row:
            self.row = {int(n): m for n, m in _COIN.findall(observation)}
            if self.learn:
                self._read(hints)
        untried = [n for n in sorted(self.row) if n not in self.tried] or sorted(self.row) or [1]
        known = [n for n in untried if self.row.get(n) in self.fake]
        unknown = [n for n in untried if self.row.get(n) not in self.genuine]
        guess = known[0] if known else int(self.rng.choice(unknown or untried))
        self.tried.add(guess)
        return f"<answer>coin {guess}</answer>"

    def write_hints(self, hints: str, transcript: list[TurnText], reward: float) -> str:
        if not self.learn:
            return hints
        self._read(hints + "\n" + "\n".join(t.feedback for t in transcript))
        return f"fake: {' '.join(sorted(self.fake))}\ngenuine: {' '.join(sorted(self.genuine - self.fake))}"


def random_agent(pack: Pack, rng: np.random.Generator) -> CoinAgent:
    return CoinAgent(rng, learn=False)


def oracle_agent(pack: Pack, rng: np.random.Generator) -> CoinAgent:
    return CoinAgent(rng, fake=set(pack.world["fake_marks"]), learn=False)


def learner_agent(pack: Pack, rng: np.random.Generator) -> CoinAgent:
    return CoinAgent(rng)
