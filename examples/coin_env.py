"""Counterfeit coins: a complete CoD environment in one file, used by name ``coin_env:CoinEnv``.

A mint stamps every coin with a letter mark. In each world a few secret marks are counterfeit
(the hidden structure, shared by every task of a pack). A task lays out a row of coins, exactly
one of them fake; the agent points at it with ``<answer>coin N</answer>`` and has two guesses
(reward 1 on the first, 0.5 on the second). When the task ends the feedback names the fake coin's
mark and the genuine ones, so notes such as "fake: C; genuine: A B E" solve later tasks.
"""

from __future__ import annotations

import re
import string
from typing import Any

import numpy as np

from codrl.envs import CoDEnv, Episode, Pack, StepResult, Task

FORMAT = "End your reply with <answer>coin N</answer>, where N is the coin's number."
_ANSWER = re.compile(r"\s*coin\s+([0-9]{1,3})\s*</answer>\s*")


def parse(reply: str) -> int | None:
    """The coin number of a reply with exactly one ``<answer>``, reading ``coin N</answer>`` (then spaces)."""
    start = reply.find("<answer>") if isinstance(reply, str) else -1
    if start < 0 or reply.find("<answer>", start + 1) >= 0:
        return None
    m = _ANSWER.fullmatch(reply, start + len("<answer>"))
    return int(m.group(1)) if m else None


class CoinEnv(CoDEnv):
    """Counterfeit coins: find the fake coin; which marks are fake is the pack's secret."""

    reply_prefix = "<answer>coin "
    stop_strings = ("</answer>",)

    def __init__(self, name: str = "coin", marks: int = 8, fakes: int = 2, coins: int = 4, guesses: int = 2) -> None:
        for key, value, low, high in (("coins", coins, 2, 9), ("marks", marks, coins, 26),
                                      ("fakes", fakes, 1, marks - coins + 1), ("guesses", guesses, 1, coins)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{key} must be an integer from {low} to {high}, got {value!r}")
        self.name, self.coins, self.guesses = name, coins, guesses
        self.marks, self.fakes = string.ascii_uppercase[:marks], fakes
        self.max_turns = guesses
        # a uniform guesser that never repeats a coin finds the fake on guess j with probability 1/coins
        self.chance_reward = sum(1 - j / guesses for j in range(guesses)) / coins
        self.system_prompt = (
            f"You inspect coins from a mint. Every coin is stamped with a mark, one of {', '.join(self.marks)}. "
            f"Coins with some marks are counterfeit; which marks those are stays the same for every task "
            f"here, so learn them. Each task shows {coins} coins, exactly one of them fake. You have {guesses} "
            f"guesses: reward 1 on the first, less later. {FORMAT}")

    def sample_world(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"fake_marks": sorted(str(m) for m in rng.choice(list(self.marks), self.fakes, replace=False))}

    def sample_task(self, world: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        genuine = [m for m in self.marks if m not in world["fake_marks"]]
        row = [str(m) for m in rng.choice(genuine, self.coins - 1, replace=False)]
        row.insert(int(rng.integers(self.coins)), str(rng.choice(world["fake_marks"])))
        return {"row": row}

    def start(self, pack: Pack, task: Task, state: Any = None) -> CoinEpisode:
        return CoinEpisode(task.spec["row"], set(pack.world["fake_marks"]), self.guesses)


class CoinEpisode(Episode):
    """One row of coins; ``info`` holds the guessed coin number (None if the reply did not parse)."""

    def __init__(self, row: list[str], fake_marks: set[str], guesses: int) -> None:
        self.row, self.guesses = row, guesses
        self.fake = next(i for i, m in enumerate(row, 1) if m in fake_marks)
        self.used, self.over = 0, False

    def reset(self) -> str:
        self.used, self.over = 0, False
        coins = "  ".join(f"coin {i}: {m}" for i, m in enumerate(self.row, 1))
        return f"Coins on the table: {coins}\nWhich coin is fake? {FORMAT}"

    def _end(self, reward: float, text: str, guess: int | None, valid: bool = True) -> StepResult:
        self.over = True
        genuine = " ".join(sorted(m for i, m in enumerate(self.row, 1) if i != self.fake))
        text += f" The fake was coin {self.fake}, mark {self.row[self.fake - 1]}; marks {genuine} are genuine."
        return StepResult(None, reward, True, text, valid, {"guess": guess})

    def step(self, reply: str) -> StepResult:
        if self.over:
            return StepResult(None, 0.0, True, "The task is already over.", True, {"guess": None})
        guess = parse(reply)
        if guess is None or not 1 <= guess <= len(self.row):
            return self._end(0.0, f"Invalid reply. {FORMAT} The task ended with reward 0.", guess, valid=False)
        self.used += 1
        if guess == self.fake:
            reward = 1 - (self.used - 1) / self.guesses
            return self._end(reward, f"Correct: coin {guess} is fake. Reward {reward:g}.", guess)
        text = f"Coin {guess} (mark {self.row[guess - 1]}) is genuine."
        if self.used >= self.guesses:
            return self._end(0.0, f"{text} No guesses left.", guess)
        return StepResult(f"{text} Guesses left: {self.guesses - self.used}. {FORMAT}", 0.0, False, text, True,
                          {"guess": guess})
