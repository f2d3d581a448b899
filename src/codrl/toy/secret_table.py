"""Secret Table: the smallest CoD world in which carried-over context pays off.

Each world is a hidden random table that maps a few one-letter keys (``a``, ``b``, ...) to values
(``1``, ``2``, ...). Each task asks for the value of one key, in a single reply. Whatever the agent
answers, the feedback reveals the right answer as one word ``key=value``, so an agent that writes
what it saw into its hints can answer later questions about the same key, while an agent without
context is stuck at chance (``1 / num_values``).

The world also fixes which keys the pack asks about (``asked``, a random subset of size
``keys_per_pack``); every task draws its key uniformly from that subset. With the default
``keys_per_pack=1`` every task of a pack asks the same question, so task 0 is at chance and every
later task can be solved from the hints.

World format: ``{"table": {"a": "3", "b": "1", ...}, "asked": ["b"]}``.
Task spec format: ``{"key": "b"}``.

The split is decided per *table* (a hash of the table), so a train pack and a test pack never share
a table, let alone a task. All texts are short and made of few distinct words, because the tiny
policy of :mod:`codrl.toy.policy` reads them with a word-level tokenizer.
"""

from __future__ import annotations

import json
import re
import string
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import Field

from codrl.envs.base import CoDEnv, EnvParams, Episode, Pack, StepResult, Task, at_most, parse_params

#: Texts of the environment (short; every word is a token of the tiny policy's vocabulary).
SYSTEM_PROMPT = "Secret table. Answer with one value."
FORMAT_TEXT = "Invalid. Answer with one value."
CHAT_FORMAT_TEXT = "Invalid reply: answer with <answer>N</answer>."
CORRECT_TEXT = "Correct."
WRONG_TEXT = "Wrong."
OVER_TEXT = "Over."

#: Largest supported table: one lower-case letter per key.
MAX_KEYS = len(string.ascii_lowercase)


def fact(key: str, value: str) -> str:
    """The word that reveals one entry of the table, e.g. ``b=3``."""
    return f"{key}={value}"


def observation_text(key: str) -> str:
    """The task text the model sees for a question about ``key``."""
    return f"Query: {key} ?"


_CHAT_ANSWER_RE = re.compile(r"<answer>\s*(\d+)(?!\d)")

#: Styles of the texts: ``toy`` (few distinct words, for the word-level tiny policy) and ``chat``
#: (plain sentences and an answer tag, for real chat models).
Style = Literal["toy", "chat"]
STYLES: tuple[str, ...] = get_args(Style)


def chat_system_prompt(keys: tuple[str, ...], values: tuple[str, ...]) -> str:
    """The ``chat`` style's system prompt: the rules, and the answer format."""
    return (f"A hidden table gives each letter ({', '.join(keys)}) a number ({', '.join(values)}). "
            "The table is the same in every task of this environment. Each task asks for the number of one "
            "letter. After each answer you are told the right one.\n"
            f"Reply with the number only, for example <answer>{values[0]}</answer>.")


def chat_observation_text(key: str) -> str:
    """The ``chat`` style's question about ``key``."""
    return f"What is the number of letter {key}?"


class SecretTable(CoDEnv):
    """A hidden key -> value table shared by a pack; each task asks for one key's value.

    Parameters: the keywords of :class:`SecretTable.Params` (style ``chat`` prefills the reply
    with ``<answer>``, so that a chat model writes one number and closes the tag). Rewards: 1.0 for
    the right value, 0.0 for a wrong or malformed reply. Episodes are single-turn; the feedback
    always reveals ``key=value``.
    """

    reply_prefix = ""
    stop_strings: tuple[str, ...] = ()
    max_turns = 1
    split_by = "world"  # the split is a property of the table

    class Params(EnvParams):
        """SecretTable's parameters."""

        num_keys: int = Field(4, strict=True, ge=1, le=MAX_KEYS,
                              description=f"Keys a, b, ... of the table, 1-{MAX_KEYS} (one letter per key).")
        num_values: int = Field(4, strict=True, ge=2, description=(
            "Values 1 .. num_values, >= 2 (one value would need no learning)."))
        keys_per_pack: Annotated[int, at_most("num_keys")] = Field(
            1, strict=True, ge=1, description="Distinct keys a pack asks about, 1 to num_keys.")
        name: str = Field("secret_table", min_length=1, description="Name of the environment (pack ids, reports).")
        max_world_tries: int = Field(10_000, strict=True, ge=1,
                                     description="Table draws allowed to land in the requested split.")
        style: Style = Field("toy", description=(
            "toy: terse texts for the tiny policy; chat: sentences and an <answer> tag for a real chat model."))

    def __init__(self, **params: Any) -> None:
        p = parse_params(self.Params, params)
        self.name = p.name
        self.num_keys = p.num_keys
        self.num_values = p.num_values
        self.keys_per_pack = p.keys_per_pack
        self.max_world_tries = p.max_world_tries
        self.keys: tuple[str, ...] = tuple(string.ascii_lowercase[:p.num_keys])
        self.values: tuple[str, ...] = tuple(str(v) for v in range(1, p.num_values + 1))
        self.style = p.style
        if p.style == "chat":
            self.system_prompt = chat_system_prompt(self.keys, self.values)
            self.reply_prefix = "<answer>"
            self.stop_strings = ("</answer>",)
        else:
            self.system_prompt = SYSTEM_PROMPT
        self.chance_reward = 1.0 / p.num_values

    # -- CoDEnv -------------------------------------------------------------------------------
    def sample_world(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw a random table and the subset of keys this pack asks about (in table order)."""
        table = {k: self.values[int(rng.integers(self.num_values))] for k in self.keys}
        picked = rng.choice(self.num_keys, size=self.keys_per_pack, replace=False)
        asked = [self.keys[int(i)] for i in sorted(picked)]
        return {"table": table, "asked": asked}

    def sample_task(self, world: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Ask about one key drawn uniformly from the world's ``asked`` keys."""
        asked = world["asked"]
        return {"key": str(asked[int(rng.integers(len(asked)))])}

    def start(self, pack: Pack, task: Task, state: Any = None) -> SecretTableEpisode:
        """Begin the single-turn episode of ``task`` in the table of ``pack.world``."""
        table = self._check_world(pack.world)
        key = task.spec.get("key") if isinstance(task.spec, dict) else None
        if key not in table:
            raise ValueError(f"{self.name}: task asks about key {key!r}, which the table lacks")
        return SecretTableEpisode(str(key), table[key], self.values, chat=self.style == "chat")

    def task_key(self, world: dict[str, Any], spec: dict[str, Any]) -> str:
        """The split is decided by the table alone, so train and test never share a table."""
        return json.dumps({"table": world["table"]}, sort_keys=True)

    # -- helpers ------------------------------------------------------------------------------
    def _check_world(self, world: dict[str, Any]) -> dict[str, str]:
        table = world.get("table") if isinstance(world, dict) else None
        if (not isinstance(table, dict) or sorted(table) != list(self.keys)
                or any(str(v) not in self.values for v in table.values())):
            raise ValueError(f"{self.name}: world needs a table from keys {self.keys} to values "
                             f"{self.values}, got {world!r}")
        return {str(k): str(v) for k, v in table.items()}


class SecretTableEpisode(Episode):
    """One question about one key. ``info`` of a step holds ``event`` (``correct``, ``wrong``,
    ``invalid`` or ``over``), ``key``, ``answer`` (the right value) and ``guess`` (the parsed
    value, or None)."""

    def __init__(self, key: str, answer: str, values: tuple[str, ...], chat: bool = False) -> None:
        self.key = key
        self.answer = answer
        self.values = frozenset(values)
        self.chat = chat
        self.done = False

    def reset(self) -> str:
        """Return the question."""
        self.done = False
        return chat_observation_text(self.key) if self.chat else observation_text(self.key)

    def parse(self, reply: str) -> str | None:
        """The value a reply names, or None unless it is exactly one value token (spaces aside).
        In the ``chat`` style the value is the whole number that opens the reply's ``<answer>`` tag
        (what follows it is not read: the stop string usually cuts the closing tag)."""
        if not isinstance(reply, str):
            return None
        guess = reply.strip()
        if self.chat:
            m = _CHAT_ANSWER_RE.match(guess)
            if m is None:
                return None
            guess = m.group(1)
        return guess if guess in self.values else None

    def step(self, reply: str) -> StepResult:
        """Score the reply and reveal the right answer. Never raises."""
        revealed = (f"The number of letter {self.key} is {self.answer}." if self.chat
                    else fact(self.key, self.answer))
        info: dict[str, Any] = {"key": self.key, "answer": self.answer, "guess": None}
        if self.done:
            return StepResult(None, 0.0, True, f"{OVER_TEXT} {revealed}", True, {**info, "event": "over"})
        self.done = True
        guess = self.parse(reply)
        info["guess"] = guess
        if guess is None:
            invalid = CHAT_FORMAT_TEXT if self.chat else FORMAT_TEXT
            return StepResult(None, 0.0, True, f"{invalid} {revealed}", False, {**info, "event": "invalid"})
        if guess == self.answer:
            return StepResult(None, 1.0, True, f"{CORRECT_TEXT} {revealed}", True, {**info, "event": "correct"})
        return StepResult(None, 0.0, True, f"{WRONG_TEXT} {revealed}", True, {**info, "event": "wrong"})
