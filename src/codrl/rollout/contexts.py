"""The context a lifecycle carries from one task to the next: one class per kind, one registry.

A :class:`Context` owns everything that differs between kinds of context: the update step's
messages and reply prefix, and how a reply becomes the next task's hints, whether it was valid and
the update episode's own reward. The lifecycle loop (:func:`codrl.rollout.lifecycle.play_lifecycle`)
asks it and names no kind. One instance is made per lifecycle and holds that lifecycle's state.

Built in: ``cod`` (:class:`HintsContext`: the model rewrites a free-form ``Hints:`` block),
``nohint`` (:class:`NoHintContext`: no update step, the baseline) and ``curator``
(:class:`CuratorContext`: the model edits a numbered lesson list with ADD/REVISE/REMOVE
operations applied by code). A context of your own is a subclass in any module, named by its
import path (``rollout.mode: my_module:MyContext``, ``--contexts cod,my_module:MyContext``); see
``examples/notes_context.py``.

:class:`Variant` names what a lifecycle played: its context and its Ralph-loop setting
(``cod``, ``nohint``, ``ralph``, ``ralph-first-curator``, ...). Everything that names a mode asks it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from codrl.errors import CodrlError
from codrl.rollout.curator import apply_operations, curator_messages, parse_reply, render_lessons
from codrl.rollout.experience import Turn
from codrl.rollout.prompts import NO_HINT, parse_hints, parse_hints_block, ramp, update_messages

Messages = list[dict[str, str]]


@dataclass
class ContextUpdate:
    """What one update reply did: ``valid`` (the reply did what the prompt asked), the update
    episode's ``own_reward``, and ``details`` kept on the task's record (e.g. curator operation counts)."""

    valid: bool
    own_reward: float
    details: dict[str, Any] = field(default_factory=dict)


class Context:
    """How a lifecycle carries what it learned between tasks (subclass it for a new kind).

    ``hints`` is the text the next solve prompt shows under ``Hints:`` (empty at the start). A
    subclass sets ``name`` and implements :meth:`update_request` and :meth:`apply`; one with
    ``updates = False`` has no update step. ``cfg`` is the lifecycle's
    :class:`~codrl.rollout.config.RolloutConfig` (penalties, prefixes, budgets).
    """

    #: The name results carry (a built-in's short name; a plug-in defaults to its import path).
    name: ClassVar[str] = ""
    #: Whether the lifecycle runs an update step between tasks.
    updates: ClassVar[bool] = True

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.hints = ""

    def update_request(self, system_prompt: str, observation: str, turns: Sequence[Turn], reward: float | None,
                       feedback: str) -> tuple[Messages, str]:
        """The update step's messages and its reply prefix, after a task: its first ``observation``,
        its ``turns``, the ``reward`` (None where the environment hides it) and the ``feedback``."""
        raise NotImplementedError

    def apply(self, text: str, n_tokens: int) -> ContextUpdate:
        """Take the update reply (``text``, without the prefix; ``n_tokens`` long): set :attr:`hints`
        for the next task and say whether the reply was valid and what it scores."""
        raise NotImplementedError

    def own_reward(self, valid: bool, n_tokens: int) -> float:
        """The own reward every built-in update scores: 0 for a valid reply, else
        ``-hint_penalty_coef``; minus the over-length ramp ``hint_length_coef * ramp(n_tokens)``."""
        c = self.cfg
        base = 0.0 if valid else -c.hint_penalty_coef
        return base - c.hint_length_coef * ramp(n_tokens, c.hint_length_start, c.hint_length_end)


class HintsContext(Context):
    """``cod``: the model rewrites a free-form hints block after every task (docs/method.md)."""

    name = "cod"

    def update_request(self, system_prompt: str, observation: str, turns: Sequence[Turn], reward: float | None,
                       feedback: str) -> tuple[Messages, str]:
        c = self.cfg
        msgs = update_messages(system_prompt, self.hints, observation, list(turns), reward, feedback,
                               reasoning=c.update_reasoning, max_tokens=c.update_length_line)
        return msgs, "" if c.update_reasoning else c.update_reply_prefix

    def apply(self, text: str, n_tokens: int) -> ContextUpdate:
        c = self.cfg
        parsed = parse_hints_block(text) if c.update_reasoning else parse_hints(c.update_reply_prefix + text)
        valid = parsed is not None and len(parsed) >= c.hint_min_chars  # none parsed, or too short: invalid
        own = self.own_reward(valid, n_tokens)
        if valid and parsed is not None:
            self.hints = parsed
        elif c.on_hint_parse_failure == "clear":
            self.hints = NO_HINT
        # else: an invalid block keeps the previous hints (nothing learned is lost)
        return ContextUpdate(valid, own)


class NoHintContext(Context):
    """``nohint``: nothing is carried; every task starts without hints (the baseline)."""

    name = "nohint"
    updates = False


class CuratorContext(Context):
    """``curator``: the model edits a numbered lesson list by operations (:mod:`codrl.rollout.curator`);
    the list's rendering is the next task's hints."""

    name = "curator"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.lessons: list[str] = []

    def update_request(self, system_prompt: str, observation: str, turns: Sequence[Turn], reward: float | None,
                       feedback: str) -> tuple[Messages, str]:
        msgs = curator_messages(system_prompt, self.lessons, observation, list(turns), reward, feedback,
                                max_tokens=self.cfg.update_length_line)
        return msgs, self.cfg.curator_reply_prefix

    def apply(self, text: str, n_tokens: int) -> ContextUpdate:
        c = self.cfg
        reply = parse_reply(c.curator_reply_prefix + text)
        edit = apply_operations(self.lessons, reply.operations, c.curator_max_lessons, c.curator_max_chars)
        self.lessons = edit.lessons  # only accepted operations changed it
        self.hints = render_lessons(self.lessons)
        valid = edit.applied > 0 or reply.says_none
        ops = {**edit.counts(), "ignored": reply.ignored}
        return ContextUpdate(valid, self.own_reward(valid, n_tokens), {"curator_ops": ops})


#: The built-in contexts by name.
BUILTIN: dict[str, type[Context]] = {c.name: c for c in (HintsContext, NoHintContext, CuratorContext)}
#: Their names, in the order help texts list them.
CONTEXTS: tuple[str, ...] = tuple(BUILTIN)


def context_class(name: str) -> type[Context]:
    """The :class:`Context` a name stands for: a built-in name or an import path
    ``package.module:ClassName``. Anything else is a :class:`CodrlError` naming the allowed values."""
    if not isinstance(name, str):
        raise CodrlError(f"context must be a name, got {name!r}")
    if name in BUILTIN:
        return BUILTIN[name]
    allowed = f"allowed values: {', '.join(map(repr, CONTEXTS))} or an import path 'package.module:ClassName'"
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise CodrlError(f"context {name!r} is not allowed; {allowed}")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise CodrlError(f"context {name!r}: cannot import it ({type(e).__name__}: {e}); {allowed}") from None
    if not (isinstance(obj, type) and issubclass(obj, Context)):
        raise CodrlError(f"context {name!r} is not a subclass of codrl.rollout.contexts.Context")
    return obj


def check_context(name: str) -> str:
    """``name`` if it names a context (pydantic validators use this); else a ``ValueError``."""
    try:
        context_class(name)
    except CodrlError as e:
        raise ValueError(str(e)) from None
    return name


def make_context(name: str, cfg: Any) -> Context:
    """A fresh context of kind ``name`` for one lifecycle (an unknown kind is a ``ValueError``)."""
    return context_class(check_context(name))(cfg)


def context_name(name: str) -> str:
    """The name results of context ``name`` carry: the class's ``name``, else the import path."""
    return context_class(name).name or name


@dataclass(frozen=True)
class Variant:
    """What a lifecycle played: a context and a Ralph-loop setting (``none``, ``first``, ``expand``).

    :attr:`mode` is the name its results carry (``cod``, ``nohint``, ``curator``, or ``ralph``,
    ``ralph-nohint``, ``ralph-curator`` for Ralph loops; a plug-in's own name likewise);
    :attr:`label` the evaluation-set name ``codrl matrix`` uses (``cod``, ``ralph-first``,
    ``ralph-expand-curator``, ...), which :meth:`parse` reads back.
    """

    context: str = "cod"
    ralph: str = "none"

    @property
    def mode(self) -> str:
        name = context_name(self.context)
        if self.ralph == "none":
            return name
        return "ralph" if name == "cod" else f"ralph-{name}"

    @property
    def label(self) -> str:
        if self.ralph == "none":
            return self.context
        return f"ralph-{self.ralph}" + ("" if self.context == "cod" else f"-{self.context}")

    @classmethod
    def parse(cls, label: str) -> Variant:
        """The variant of a :attr:`label`: ``ralph-first`` -> (``cod``, ``first``),
        ``ralph-expand-nohint`` -> (``nohint``, ``expand``), ``curator`` -> (``curator``, ``none``)."""
        for ralph in ("first", "expand"):
            head = f"ralph-{ralph}"
            if label == head:
                return cls("cod", ralph)
            if label.startswith(head + "-"):
                return cls(label[len(head) + 1:], ralph)
        return cls(label, "none")
