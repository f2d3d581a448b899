"""Helpers shared by several test files (not a test module): loading a bench script as a module,
and serving a handler class on a free local port in a background thread."""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module (registered in ``sys.modules``: dataclasses look their
    module up while the file executes)."""
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def serve_in_thread(handler: type[BaseHTTPRequestHandler], **attrs: Any) -> Iterator[Any]:
    """A ThreadingHTTPServer of ``handler`` on 127.0.0.1 (a free port: ``server_address[1]``), with
    ``attrs`` set on it for the handler to read, served until the block ends."""
    srv: Any = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for key, value in attrs.items():
        setattr(srv, key, value)
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def lifecycle_result(pack: str, repeat: int, rewards: list[float], updates: list[float] | None = None, *,
                     solve_turns: int = 1, tokens: int = 2, env: str = "") -> Any:
    """A finished :class:`~codrl.rollout.experience.LifecycleResult` built by hand: task rewards
    ``rewards`` (one solve episode of ``solve_turns`` calls each, ``tokens`` sampled tokens a call)
    and an update episode after task ``j`` with own reward ``updates[j]``."""
    from codrl.rollout.experience import EpisodeRecord, Experience, LifecycleResult, ModelEpisode

    def call(kind: str, position: int, turn: int) -> Experience:
        return Experience(pack_id=pack, repeat=repeat, episode_type=kind, position=position,  # type: ignore[arg-type]
                          turn=turn, prompt_ids=[7, 7, 7], completion_ids=[1] * tokens, logprobs=[-0.5] * tokens,
                          text="", env=env)

    updates = updates or []
    records, episodes = [], []
    for i, r in enumerate(rewards):
        records.append(EpisodeRecord(position=i, task_id=f"t{i}", hints_in="", turns=[], env_reward=r, reward=r,
                                     success=r > 0, format_valid=True, feedback="", completion_tokens=0))
        episodes.append(ModelEpisode("solve", i, [call("solve", i, t) for t in range(solve_turns)], own_reward=r))
        if i < len(updates):
            episodes.append(ModelEpisode("update", i, [call("update", i, 0)], own_reward=updates[i]))
    return LifecycleResult(pack_id=pack, env=env, split="train", repeat=repeat, mode="cod", episodes=records,
                           model_episodes=episodes)
