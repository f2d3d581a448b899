"""Task sources for agent programs: packs of opaque task objects, drawn like an environment's packs.

An agent program (``codrl train --agent CMD``, docs/own_agent.md) brings its own loop, prompts
and grading; codrl only needs its packs. A source is

* a JSONL file, one pack per line: a list of task objects, or ``{"pack_id": ..., "tasks": [...]}``;
* or an import path ``package.module:function`` returning such packs (a list of them).

Task objects are passed to the program as they are: codrl never reads them.
:class:`TaskSourceEnv` wraps a source as a :class:`~codrl.envs.base.CoDEnv`, so the trainer draws
packs from it (with repeats) exactly as from an environment; it cannot play a task itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from codrl.envs.base import CoDEnv, Episode, Pack, Task
from codrl.envs.registry import resolve
from codrl.errors import CodrlError


def _pack(raw: Any, where: str) -> tuple[str | None, list[Any]]:
    """``(pack_id or None, tasks)`` of one pack as written in a source."""
    if isinstance(raw, dict) and "tasks" in raw:
        pack_id, tasks = raw.get("pack_id"), raw["tasks"]
        if pack_id is not None and not isinstance(pack_id, str):
            raise CodrlError(f"{where}: pack_id must be a string, got {pack_id!r}")
    else:
        pack_id, tasks = None, raw
    if not isinstance(tasks, list) or not tasks:
        raise CodrlError(f"{where}: a pack is a non-empty list of task objects, or {{\"pack_id\": ..., \"tasks\": "
                         f"[...]}}; got {type(tasks).__name__}")
    return pack_id, tasks


def load_packs(source: str) -> list[tuple[str | None, list[Any]]]:
    """The packs of ``source`` (a JSONL path or an import path ``module:function``), in order."""
    path = Path(source)
    if path.suffix == ".jsonl" or path.exists():
        if not path.is_file():
            raise CodrlError(f"agent.tasks: no such file {source!r}")
        packs = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise CodrlError(f"agent.tasks: {source}:{n}: not JSON ({e.msg})") from None
            packs.append(_pack(raw, f"agent.tasks: {source}:{n}"))
    else:
        factory, _ = resolve(source, "agent.tasks")
        if not callable(factory):
            raise CodrlError(f"agent.tasks {source!r}: {factory!r} is not callable")
        packs = [_pack(raw, f"agent.tasks: {source} pack {i}") for i, raw in enumerate(factory())]
    if not packs:
        raise CodrlError(f"agent.tasks: {source!r} holds no packs")
    return packs


class TaskSourceEnv(CoDEnv):
    """A task source as an environment the trainer draws packs from: pack ``index`` of a seed is
    the source's pack at that place in an order shuffled by the seed (every pack once per pass).
    The tasks of a pack are its own (``size`` caps how many; a shorter pack stays as it is). The
    split is ignored: the source is what the program trains on."""

    max_turns = 1

    def __init__(self, source: str, name: str = "agent") -> None:
        self.name, self.source = name, source
        self.packs = load_packs(source)

    def sample_pack(self, split: str, seed: int, index: int, size: int) -> Pack:
        rnd, place = divmod(index, len(self.packs))  # each pass over the packs has an order of its own
        order = np.random.default_rng([seed, 7541, *([rnd] if rnd else [])]).permutation(len(self.packs))
        j = int(order[place])
        pack_id, specs = self.packs[j]
        pack_id = pack_id or f"{self.name}/{j}"
        tasks = tuple(Task(task_id=f"{pack_id}/{k}", position=k, spec=spec) for k, spec in enumerate(specs[:size]))
        return Pack(pack_id=pack_id, env=self.name, split=split, world={}, tasks=tasks)

    def sample_world(self, rng: np.random.Generator) -> dict[str, Any]:
        raise CodrlError(f"{self.name}: packs come from the task source {self.source!r}")

    def sample_task(self, world: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        raise CodrlError(f"{self.name}: packs come from the task source {self.source!r}")

    def start(self, pack: Pack, task: Task, state: Any = None) -> Episode:
        raise CodrlError(f"{self.name}: tasks of a task source are played by the agent program, not by codrl")
