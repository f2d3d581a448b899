"""Agent programs as a rollout engine: each lifecycle is one run of the user's program.

:class:`AgentEngine` is a :class:`~codrl.distributed.engines.RolloutEngine`: for each job it opens
a lifecycle in the training proxy (:mod:`codrl.serve.proxy`), writes the pack's tasks to a JSON
file and starts the program with, in its environment:

* ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``: the proxy (any OpenAI-compatible client reads them);
* ``CODRL_LIFECYCLE``: the id to tag calls, rewards and the end with;
* ``CODRL_TASKS``: the path of ``{"lifecycle", "pack_id", "repeat", "seed", "tasks": [...]}``;
* ``CODRL_SEED``: a sampling seed for this lifecycle (send it as the requests' ``seed``).

Up to ``rollout.max_concurrent`` programs run at once; their model calls meet in the proxy's engine
thread and are batched there. A program that exits before ``POST /codrl/v1/end`` or runs past
``agent.timeout_s`` (then it is killed, with its process group) fails its lifecycle: the result
marks every task an environment error (``rollout.on_env_error`` decides whether the pack is left
out of the update), and the rest of the step goes on. Each program's output is kept in
``<work_dir>/<lifecycle>.log``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from codrl.distributed.engines import Weights
from codrl.errors import CodrlError
from codrl.rollout.experience import LifecycleResult
from codrl.rollout.lifecycle import Job, seeds_for
from codrl.serve.agent_config import AgentConfig
from codrl.serve.proxy import TrainingProxy

#: Seconds between checks of the running programs.
POLL_S = 0.05


@dataclass
class _Run:
    """One program run: its job's index, lifecycle id, process and log file."""

    index: int
    lifecycle: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    started: float


class AgentEngine:
    """Plays each lifecycle by running the agent program against the training proxy."""

    needs_weights = False  # the proxy samples from the trained model itself

    def __init__(self, proxy: TrainingProxy, cfg: AgentConfig, max_concurrent: int, work_dir: Path) -> None:
        if not cfg.command:
            raise CodrlError("agent.command: no program to run; give one with `codrl train --agent \"CMD\"`")
        self.argv = shlex.split(cfg.command)
        self.proxy, self.cfg, self.max_concurrent = proxy, cfg, max_concurrent
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.base_url = proxy.start()
        self.policy_version = 0

    def set_weights(self, tensors: Weights, version: int) -> None:
        self.policy_version = self.proxy.policy_version = version

    def run(self, jobs: Sequence[Job], on_done: Callable[[LifecycleResult], None] | None = None,
            seeds: Sequence[int] | None = None) -> list[LifecycleResult]:
        """Run the program once per job (``max_concurrent`` at once); results in job order."""
        seeds = seeds_for(jobs, seeds)
        results: list[LifecycleResult | None] = [None] * len(jobs)
        queue = list(range(len(jobs)))[::-1]
        live: list[_Run] = []
        try:
            while queue or live:
                while queue and len(live) < self.max_concurrent:
                    i = queue.pop()
                    live.append(self._start(i, jobs[i], int(seeds[i])))
                time.sleep(POLL_S)
                for run in list(live):
                    failed = self._check(run)
                    if failed is False:
                        continue
                    live.remove(run)
                    run.log.close()
                    result = self.proxy.result(run.lifecycle, failed=failed or None)
                    self.proxy.close_lifecycle(run.lifecycle)
                    results[run.index] = result
                    if on_done is not None:
                        on_done(result)
        finally:
            for run in live:  # interrupted: no program outlives the step
                _kill(run.process)
                run.log.close()
        return [r for r in results if r is not None]

    def _start(self, index: int, job: Job, seed: int) -> _Run:
        pack = job.pack
        lifecycle = f"{pack.pack_id}#{job.repeat}#{uuid.uuid4().hex[:8]}"
        self.proxy.open_lifecycle(lifecycle, pack_id=pack.pack_id, repeat=job.repeat, env=pack.env, split=pack.split,
                                  num_tasks=len(pack.tasks), task_ids=[t.task_id for t in pack.tasks])
        stem = lifecycle.replace("/", "_").replace("#", "_")
        tasks = self.work_dir / f"{stem}.json"
        tasks.write_text(json.dumps({"lifecycle": lifecycle, "pack_id": pack.pack_id, "repeat": job.repeat,
                                     "seed": seed, "tasks": [t.spec for t in pack.tasks]}))
        env = {**os.environ, "OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": self.cfg.api_key,
               "CODRL_LIFECYCLE": lifecycle, "CODRL_TASKS": str(tasks), "CODRL_SEED": str(seed)}
        log = (self.work_dir / f"{stem}.log").open("wb")
        try:
            process = subprocess.Popen(self.argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            log.close()
            raise CodrlError(f"agent.command {self.cfg.command!r} could not start: {e}") from None
        return _Run(index, lifecycle, process, log, time.monotonic())

    def _check(self, run: _Run) -> str | bool:
        """False while the lifecycle runs; "" once it ended well; else why it failed."""
        if self.proxy.wait(run.lifecycle, 0):
            if run.process.poll() is None:  # ended: let the program finish on its own, briefly
                try:
                    run.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    _kill(run.process)
            return ""
        code = run.process.poll()
        if code is not None:
            if self.proxy.wait(run.lifecycle, 0):  # it ended the lifecycle just before exiting
                return ""
            return (f"The agent program exited with code {code} before ending its lifecycle "
                    f"(its output: {Path(run.log.name).name}).")
        if time.monotonic() - run.started > self.cfg.timeout_s:
            _kill(run.process)
            return f"The agent program ran past agent.timeout_s ({self.cfg.timeout_s:g}s) and was stopped."
        return False

    def close(self) -> None:
        """Stop the proxy's server."""
        self.proxy.stop()


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the program and everything it started (its own process group)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
