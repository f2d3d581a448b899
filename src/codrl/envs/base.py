"""The CoD environment interface.

A *world* is an environment instance with hidden, reusable structure (an action mapping, a
recipe, a secret table). A *pack* is K related tasks drawn from one world. Each task is played as
a multi-turn text *episode*: observation text -> model reply -> parsed action -> next observation,
reward, done, feedback text.

Packs are deterministic given ``(env, split, seed, index)``; environments assign every task to a
split by a hash of its content, so the train and test splits never share a task.

Some worlds change while a pack is played (cells revealed in one task stay revealed in the next,
data gathered early is pooled later). Such an environment returns a fresh *lifecycle state* from
:meth:`CoDEnv.new_state`; whoever plays a lifecycle creates it once, hands it to every
:meth:`CoDEnv.start` of that lifecycle, and drops it when the lifecycle ends. Two lifecycles never
share a state object, even when they play the same pack at the same time. Stateless environments
ignore it.

Every built-in environment declares its constructor's parameters as a nested :class:`EnvParams`
model named ``Params``: types, bounds and a description per field. The constructor takes them as
keywords and validates them there (:func:`parse_params`), so a bad value is a one-line
:class:`ParamsError` naming the field and what is allowed, and ``codrl envs NAME`` lists them.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      ValidatorFunctionWrapHandler, WrapValidator, model_validator)
from pydantic_core import PydanticCustomError

from codrl.config import format_validation_error
from codrl.envs.world_key import fingerprint, load_key, secret_seed
from codrl.errors import CodrlError, bad_choice

SPLITS = ("train", "test")

# The answer tags: ASCII letters in any case, optional whitespace before ``>`` (``<ANSWER >``).
_OPEN_TAG_RE = re.compile(r"<answer\s*>", re.IGNORECASE | re.ASCII)
_CLOSE_TAG_RE = re.compile(r"</answer\s*>", re.IGNORECASE | re.ASCII)


def answer_span(reply: object, max_chars: int | None = None, too_long: str | None = None) -> tuple[int, int] | str:
    """``(start, end)`` of the content of ``reply``'s single ``<answer>...</answer>`` pair, or why there is none.

    The reply must hold exactly one opening and one closing answer tag (ASCII letters in any case,
    whitespace allowed before ``>``), the opening one first; text before and after the pair is
    the caller's to ignore or reject. ``reply[start:end]`` is the raw content (not stripped). With
    ``max_chars``, content longer than that many characters is refused with ``too_long`` (default
    ``"the answer is too long (at most N characters)"``). Otherwise the reason is one of
    ``"the reply is not text"``, ``"no <answer>...</answer> pair found"``, ``"more than one
    <answer> or </answer> tag"`` and ``"</answer> comes before <answer>"``. Linear time on any
    input (the tag search stops at the second tag of each kind); never raises.
    """
    if not isinstance(reply, str):
        return "the reply is not text"
    opens = [m.end() for _, m in zip(range(2), _OPEN_TAG_RE.finditer(reply))]
    closes = [m.start() for _, m in zip(range(2), _CLOSE_TAG_RE.finditer(reply))] if opens else []
    if not opens or not closes:
        return "no <answer>...</answer> pair found"
    if len(opens) > 1 or len(closes) > 1:
        return "more than one <answer> or </answer> tag"
    start, end = opens[0], closes[0]
    if end < start:
        return "</answer> comes before <answer>"
    if max_chars is not None and end - start > max_chars:
        return too_long if too_long is not None else f"the answer is too long (at most {max_chars} characters)"
    return start, end


class ParamsError(CodrlError, ValueError):
    """Bad environment parameters: a one-line user-facing error, and a ValueError like any bad argument."""


class EnvParams(BaseModel):
    """The typed parameters of an environment: unknown names are refused, every field has a default.

    A model with variants names the field that picks one in :attr:`variant_field` and the knobs each
    variant sets in :attr:`variant_defaults`: a knob left out (or None) takes the chosen variant's
    value, so the validated model always holds the values the environment uses.
    """

    model_config = ConfigDict(extra="forbid")
    #: The field that picks a variant ("" when there are no variants).
    variant_field: ClassVar[str] = ""
    #: Variant -> knob -> the value a knob left out takes.
    variant_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _fill_variant_knobs(cls, data: Any) -> Any:
        """Fill the knobs left out or None from the chosen variant (an unknown variant is its field's error)."""
        if not cls.variant_field or not isinstance(data, Mapping):
            return data
        variant = data.get(cls.variant_field, cls.model_fields[cls.variant_field].default)
        knobs = {k for d in cls.variant_defaults.values() for k in d}
        given = {k: v for k, v in data.items() if not (v is None and k in knobs)}
        chosen = cls.variant_defaults.get(variant, {}) if isinstance(variant, str) else {}
        return {**chosen, **given}

    def at_defaults(self, *names: str) -> bool:
        """Whether the fields ``names`` hold their defaults (a variant's knobs: the chosen variant's)."""
        chosen = self.variant_defaults.get(getattr(self, self.variant_field), {}) if self.variant_field else {}
        return all(getattr(self, n) == chosen.get(n, type(self).model_fields[n].default) for n in names)


P = TypeVar("P", bound=EnvParams)
T = TypeVar("T")


def parse_params(model: type[P], params: Mapping[str, Any]) -> P:
    """``params`` validated by ``model``; a bad one is a :class:`ParamsError` naming the env and each field."""
    try:
        return model.model_validate(dict(params))
    except ValidationError as e:
        name = params.get("name")
        if not isinstance(name, str) or not name:
            name = model.model_fields["name"].default if "name" in model.model_fields else model.__qualname__
        raise ParamsError(str(format_validation_error(model, e, f"parameters of env {name!r}"))) from None


def _value_or_pair(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate a pair as it is and a single value ``v`` as ``(v, v)``, its error reported once."""
    if isinstance(value, (list, tuple)):
        return handler(value)
    try:
        return handler((value, value))
    except ValidationError as e:
        first = e.errors()[0]
        raise PydanticCustomError(first["type"], "{msg}", {"msg": first["msg"]}) from None


def _ordered(pair: tuple[Any, Any]) -> tuple[Any, Any]:
    if pair[0] > pair[1]:
        raise ValueError("a (low, high) range needs low <= high")
    return pair


#: An inclusive ``(low, high)`` range of ``T`` values, ``low <= high``.
Pair = Annotated[tuple[T, T], AfterValidator(_ordered)]
#: The same, where a single value ``v`` also stands for ``(v, v)``.
ValueOrPair = Annotated[tuple[T, T], WrapValidator(_value_or_pair), AfterValidator(_ordered)]


def _unique(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(values))


#: A non-empty selection of ``T`` choices, repeats dropped (the first of each kept, in order).
Subset = Annotated[tuple[T, ...], Field(min_length=1), AfterValidator(_unique)]


def one_of(values: Sequence[str]) -> Any:
    """The ``Literal`` type of the strings ``values`` (choices that another module lists at run time)."""
    return Literal[tuple(values)]


def _compared_to(other: str, sign: int) -> AfterValidator:
    word = ">=" if sign > 0 else "<="

    def check(value: Any, info: ValidationInfo) -> Any:
        bound = info.data.get(other)
        if bound is not None and (value - bound) * sign < 0:
            raise ValueError(f"must be {word} {other} ({bound})")
        return value

    return AfterValidator(check)


def at_least(other: str) -> AfterValidator:
    """A field validator: the value must be >= field ``other`` (declared before it)."""
    return _compared_to(other, 1)


def at_most(other: str) -> AfterValidator:
    """A field validator: the value must be <= field ``other`` (declared before it)."""
    return _compared_to(other, -1)


@dataclass(frozen=True)
class Task:
    """One task of a pack. ``spec`` is JSON-serialisable and fully determines the task."""

    task_id: str
    position: int
    spec: dict[str, Any]


@dataclass(frozen=True)
class Pack:
    """K related tasks drawn from one world. ``world`` holds the hidden structure (for logs only)."""

    pack_id: str
    env: str
    split: str
    world: dict[str, Any]
    tasks: tuple[Task, ...]

    def __len__(self) -> int:
        return len(self.tasks)


@dataclass
class StepResult:
    """What the environment answers to one model reply.

    ``valid`` is False when the reply could not be parsed as an action (a scored failure: the
    episode ends with reward 0 and ``feedback`` states the expected format).
    ``observation`` is the next user message when the episode goes on, else None.
    """

    observation: str | None
    reward: float
    done: bool
    feedback: str
    valid: bool = True
    info: dict[str, Any] = field(default_factory=dict)


class Episode(ABC):
    """One attempt at one task. Stateful; created by :meth:`CoDEnv.start`."""

    @abstractmethod
    def reset(self) -> str:
        """Return the first observation (the task description the model sees)."""

    @abstractmethod
    def step(self, reply: str) -> StepResult:
        """Apply the model's full reply (reply prefix included) and return the outcome."""


class CoDEnv(ABC):
    """A family of worlds that can produce packs of related tasks.

    Subclasses set :attr:`name`, :attr:`system_prompt` and optionally :attr:`reply_prefix` (text the
    assistant reply is prefilled with, e.g. ``"<answer>Direction "`` to teach a strict format), and
    implement :meth:`sample_world`, :meth:`sample_task` and :meth:`start`.
    """

    name: str = "base"
    system_prompt: str = ""
    reply_prefix: str = ""
    #: Strings that end a solve reply (e.g. a closing answer tag), so the model stops right there.
    stop_strings: tuple[str, ...] = ()
    max_turns: int = 1
    #: Reward of a random policy, if known (shown in reports next to the curve).
    chance_reward: float | None = None
    #: Lowest and highest reward an episode can score (confidence intervals are clipped to it).
    reward_range: tuple[float, float] = (0.0, 1.0)
    #: An episode counts as a success (the reports' success rate) when its reward reaches this.
    #: 1.0 suits all-or-nothing rewards; worlds whose solved tasks score below 1 (a cost for
    #: rounds used, a continuous loss) set their own.
    success_threshold: float = 1.0
    #: What the train/test split is decided by: each ``"task"`` (tasks of one world may fall in
    #: both splits) or the whole ``"world"`` (worlds with few possible tasks: a pack's world is
    #: redrawn until it lands in the requested split, so train and test never share a world).
    split_by: str = "task"
    #: Draws of a world before :meth:`sample_pack` gives up (``split_by = "world"``).
    max_world_tries: int = 10_000
    #: Whether pack worlds are drawn from a secret (:mod:`codrl.envs.world_key`) rather than from
    #: the guessable (name, split, seed, index): set by worlds that run model-written code, which
    #: could otherwise search for its own world and rebuild the expected answers.
    secret_worlds: bool = False
    #: Key file of the secret (None: the installation's default key); see :mod:`codrl.envs.world_key`.
    world_key: str | None = None
    #: Whether the model may see a task's reward once the task is over. True: the context step
    #: after a task (the hints rewrite, the curator) is told the reward. False for worlds whose
    #: reward is a function of the hidden truth that the feedback does not already reveal (PDE
    #: Discovery scores the committed coefficients against the hidden ones): every model-visible
    #: text then leaves the reward out, so notes cannot carry it from task to task and climb it.
    #: Reports and the viewer still show it to people.
    reward_visible: bool = True
    #: The typed constructor parameters (declared by each built-in environment; see :class:`EnvParams`).
    Params: ClassVar[type[EnvParams] | None] = None

    @classmethod
    def params_model(cls) -> type[EnvParams] | None:
        """The Params of this class's constructor: None when the class that defines the constructor
        declares none (a plug-in's constructor signature is then its contract)."""
        owner = next(c for c in cls.__mro__ if "__init__" in c.__dict__)
        params = owner.__dict__.get("Params")
        return params if isinstance(params, type) and issubclass(params, EnvParams) else None

    # -- to implement -------------------------------------------------------------------------
    @abstractmethod
    def sample_world(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw the hidden structure shared by a pack."""

    @abstractmethod
    def sample_task(self, world: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Draw one task spec (JSON-serialisable) inside ``world``."""

    @abstractmethod
    def start(self, pack: Pack, task: Task, state: Any = None) -> Episode:
        """Begin an episode of ``task`` in the world of ``pack``.

        ``state`` is this lifecycle's object from :meth:`new_state` (None for stateless worlds);
        the episode may read and change it, and later tasks of the same lifecycle see the change.
        """

    # -- provided -----------------------------------------------------------------------------
    def new_state(self, pack: Pack) -> Any:
        """A fresh per-lifecycle world state for one pass through ``pack`` (default: None, stateless).

        Called once when a lifecycle starts; the object lives exactly as long as that lifecycle.
        Return a new object on every call: repeats of a pack played concurrently must not share it.
        """
        return None

    def task_key(self, world: dict[str, Any], spec: dict[str, Any]) -> str:
        """Content that decides a task's split: world + spec, or the world alone (``split_by``)."""
        if self.split_by == "world":
            return json.dumps({"world": world}, sort_keys=True)
        return json.dumps({"world": world, "task": spec}, sort_keys=True)

    def split_of(self, world: dict[str, Any], spec: dict[str, Any]) -> str:
        """Assign a task to a split by a hash of its content: 1 in 5 tasks is a test task."""
        h = int(hashlib.sha256(self.task_key(world, spec).encode()).hexdigest()[:8], 16)
        return "test" if h % 5 == 0 else "train"

    def pack_rng(self, split: str, seed: int, index: int, size: int) -> np.random.Generator:
        """Validate a pack request and return the generator that pack ``index`` is drawn from."""
        if split not in SPLITS:
            raise bad_choice("split", split, SPLITS)
        if size < 1:
            raise ValueError(f"pack size must be >= 1, got {size}")
        if self.secret_worlds:
            return np.random.default_rng(secret_seed(load_key(self.world_key), self.name, split, seed, index))
        name_key = int(hashlib.sha256(self.name.encode()).hexdigest()[:8], 16)
        return np.random.default_rng([name_key, SPLITS.index(split), seed, index])

    def world_key_fingerprint(self) -> str | None:
        """The public fingerprint of the key this environment's worlds come from (None: no secret)."""
        return fingerprint(load_key(self.world_key)) if self.secret_worlds else None

    def make_pack(self, split: str, seed: int, index: int, world: dict[str, Any],
                  specs: list[dict[str, Any]]) -> Pack:
        """Assemble a :class:`Pack` with stable ids from a world and its task specs."""
        tasks = tuple(Task(task_id=f"{self.name}/{split}/{seed}/{index}/{k}", position=k, spec=spec)
                      for k, spec in enumerate(specs))
        return Pack(pack_id=f"{self.name}/{split}/{seed}/{index}", env=self.name, split=split,
                    world=world, tasks=tasks)

    def sample_pack(self, split: str, seed: int, index: int, size: int) -> Pack:
        """Deterministically build pack ``index`` of ``split`` for ``seed`` with ``size`` tasks."""
        rng = self.pack_rng(split, seed, index, size)
        if self.split_by == "world":
            for _ in range(self.max_world_tries):
                world = self.sample_world(rng)
                if self.split_of(world, {}) == split:
                    return self.make_pack(split, seed, index, world, [self.sample_task(world, rng) for _ in range(size)])
            raise RuntimeError(f"{self.name}: no {split} world in {self.max_world_tries} draws "
                               "(the world space is too small for this split)")
        world = self.sample_world(rng)
        specs: list[dict[str, Any]] = []
        tries = 0
        while len(specs) < size:
            spec = self.sample_task(world, rng)
            tries += 1
            if self.split_of(world, spec) != split:
                if tries > 10_000 * size:
                    raise RuntimeError(f"{self.name}: could not draw {size} {split} tasks")
                continue
            specs.append(spec)
        return self.make_pack(split, seed, index, world, specs)


def ralph_pack(pack: Pack, size: int | None = None) -> Pack:
    """The Ralph-loop variant of ``pack``: its first task repeated ``size`` (default K) times."""
    k = len(pack) if size is None else size
    first = pack.tasks[0]
    tasks = tuple(replace(first, task_id=f"{first.task_id}#r{i}", position=i) for i in range(k))
    return replace(pack, pack_id=pack.pack_id + "/ralph", tasks=tasks)


def expand_ralph(pack: Pack, size: int | None = None) -> list[Pack]:
    """The expanded Ralph-loop variant: every task of ``pack`` becomes its own repeated pack."""
    k = len(pack) if size is None else size
    out = []
    for t in pack.tasks:
        tasks = tuple(replace(t, task_id=f"{t.task_id}#r{i}", position=i) for i in range(k))
        out.append(replace(pack, pack_id=f"{pack.pack_id}/ralph{t.position}", tasks=tasks))
    return out
