"""The RL trainer's loop: lifecycle rollouts -> CoD advantages -> clipped token-level policy gradient.

One step (:meth:`Trainer.step`): bring the rollout engine up to the current weights and play the
step's plan, ``packs_per_step`` packs x ``rollout.repeats`` (:mod:`codrl.train.rollouts`; every
engine is a :class:`~codrl.distributed.engines.RolloutEngine`); compute every episode's advantage
from the whole lifecycles (docs/method.md); update the policy (:mod:`codrl.train.update`).
Evaluation, metric sinks and checkpoints live in :mod:`~codrl.train.evaluation`,
:mod:`~codrl.train.loggers` and :mod:`~codrl.train.checkpoint`.

Under ``torchrun`` (:mod:`codrl.distributed.torch_dist`) every process holds all of a step's
lifecycles and trains on its share of the rows with DDP or FSDP2; rank 0 alone writes checkpoints,
logs and reports.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import transformers
from rich.console import Console

from codrl.algo.advantages import compute_advantages
from codrl.backends.base import Backend
from codrl.backends.hf import HFBackend
from codrl.distributed.engines import RolloutEngine, play_shared
from codrl.distributed.torch_dist import init_from_env, wrap_model
from codrl.envs import CoDEnv
from codrl.errors import CodrlError
from codrl.eval.metrics import Summary
from codrl.eval.runner import build_env
from codrl.rollout.experience import LifecycleResult, ModelEpisode
from codrl.train.checkpoint import Preemption, checkpoint_path, restore_newest, save_checkpoint
from codrl.train.config import TrainConfig, write_run_config
from codrl.train.diagnostics import adapter_delta, verdict
from codrl.train.evaluation import TrainingEvaluations
from codrl.train.loggers import Loggers
from codrl.train.policy import build_policy, build_vllm, seed_all
from codrl.train.rollouts import StepPlanner, build_engine, fresh_lifecycles, rollout_logprobs_are_old, training_envs
from codrl.train.step_metrics import step_metrics, step_progress
from codrl.train.teachers import evaluate_teachers
from codrl.train.update import PolicyUpdate


class Trainer:
    """Runs ``cfg.steps`` RL steps with checkpoints, logs and periodic evaluation. ``backend``: a model
    built in code (e.g. the toy policy), already on this rank's device; default: ``cfg.model``'s."""

    def __init__(self, cfg: TrainConfig, backend: HFBackend | None = None, console: Console | None = None) -> None:
        self.cfg = cfg
        #: This process's place in torch.distributed (a lone process by default).
        self.dist = init_from_env(cfg.distributed, cfg.model.device)
        if self.dist.active and cfg.model.engine != "hf":
            raise CodrlError("torch.distributed training plays rollouts on the trained model itself: "
                             "model.engine must be 'hf'")
        self.console = console or Console()
        if not self.dist.is_main:  # rank 0 prints for everyone
            self.console = Console(quiet=True)
            transformers.utils.logging.disable_progress_bar()
        self.out = Path(cfg.output_dir)
        seed_all(cfg.seed)
        self.envs: list[CoDEnv] = training_envs(cfg)
        extra = [build_env(s.name, s.params) for s in cfg.eval.envs]
        names = {e.name for e in self.envs}
        #: Evaluated at start/end/every N: every training environment, then the extra ones.
        self.eval_envs: list[CoDEnv] = self.envs + [e for e in extra if e.name not in names]
        self.backend = backend or build_policy(cfg, str(self.dist.device))
        self.model = self.backend.model
        self.tokenizer = self.backend.tokenizer
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError("the model has no trainable parameters")
        #: The model as it is trained: itself, a DDP replica or FSDP2 shards (then its parameters are shards).
        self.parallel = wrap_model(self.model, self.dist, cfg.distributed.strategy)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=cfg.optim.lr,
                                           betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
        self.policy_update = PolicyUpdate(cfg, self.model, self.optimizer, self.backend.pad_id, self.parallel,
                                          tokenizer=self.tokenizer, env_names=[e.name for e in self.envs])
        #: Plays evaluations: the trained model itself, or a vLLM copy refreshed after updates.
        self.rollout_backend: Backend = self.backend if cfg.model.engine == "hf" else build_vllm(cfg, self.tokenizer)
        self.plan = StepPlanner(cfg, self.envs)  # the packs, jobs and seeds of every step
        #: Plays the training rollouts (see codrl.distributed.engines).
        self.engine: RolloutEngine = build_engine(cfg, self.backend, self.rollout_backend, self.parallel, self.plan)
        self._engine_version: int | None = None  # weights version the engine has
        self.step_idx = 0
        self.history: list[dict[str, Any]] = []
        self.evaluations = TrainingEvaluations(cfg, self.eval_envs, self.out, self.console, self.dist.is_main)
        self.loggers: Loggers | None = None
        #: True when the last train() stopped early on SIGTERM (a checkpoint was written).
        self.preempted = False

    # -- one RL step ---------------------------------------------------------------------
    def rollout(self, step: int) -> list[LifecycleResult]:
        """Play the step's packs with the current weights; sampling is seeded by (seed, step), so
        resumes are exact."""
        self._push_weights()
        jobs, seeds = self.plan(step)
        return self.engine.run(jobs, seeds=seeds)

    def _push_weights(self) -> None:
        """Bring the engine up to the current version (every rank takes part: gathering the
        trainable tensors is collective under FSDP2)."""
        if self._engine_version == self.step_idx:
            return
        tensors = self.parallel.full_trainable() if self.engine.needs_weights else None
        self.engine.set_weights(tensors, self.step_idx)
        self._engine_version = self.step_idx

    def update(self, episodes: list[ModelEpisode]) -> dict[str, float]:
        """Policy-gradient update of the current step on advantage-scored episodes; returns its metrics."""
        return self.policy_update(episodes, self.step_idx, rollout_logprobs_are_old(self.cfg, self.backend))

    def step(self) -> dict[str, Any]:
        """One RL step: rollout, advantages, update. Returns its metrics."""
        t0 = time.time()
        results = self.rollout(self.step_idx)
        t1 = time.time()
        trained, stale = fresh_lifecycles(self.cfg, results, self.step_idx)
        if self.cfg.rollout.on_env_error == "drop_group":  # a broken pack teaches nothing
            broken = {r.pack_id for r in trained if r.env_errors}
            trained = [r for r in trained if r.pack_id not in broken]
        episodes = [ep for r in trained for ep in r.model_episodes]
        adv = compute_advantages(trained, self.cfg.advantage) if episodes else {}
        upd = self.update(episodes)
        self.step_idx += 1
        self._push_weights()  # engines with a copy of their own get the new version at once
        delta = adapter_delta(self.model)
        if delta is not None:
            upd["adapter_delta"] = delta
        return step_metrics(self.step_idx, results, episodes, env_names=[e.name for e in self.envs], adv=adv,
                            update=upd, times={"rollout": t1 - t0, "update": time.time() - t1}, extra=stale)

    # -- evaluation and logs -------------------------------------------------------------
    def evaluate(self, tag: str) -> dict[str, Summary]:
        """Evaluate every evaluation environment now; report under ``eval/<tag>`` (:mod:`codrl.train.evaluation`);
        at step 0 the teachers of a distillation run too, once (their reward is the student's yardstick)."""
        if self.step_idx == 0 and self.policy_update.teachers is not None and not self.dist.active:
            evaluate_teachers(self.cfg, self.policy_update.teachers, self.envs, self.out, self.console, self._log)
        shared = partial(play_shared, self.parallel, clear_cache=self.backend.store.clear) if self.dist.active else None
        return self.evaluations.run(tag, self.step_idx, self.rollout_backend, self._log, shared)

    @property
    def evals(self) -> dict[str, dict[int, Summary]]:
        """Summaries of the evaluations so far: environment name -> step -> summary."""
        return self.evaluations.summaries

    def _close_logs(self) -> None:
        if self.loggers is not None:
            self.loggers.close()
            self.loggers = None

    def _log(self, metrics: dict[str, Any], step: int) -> None:
        if self.loggers is not None:
            self.loggers.log(metrics, step)

    # -- checkpoints and the loop ----------------------------------------------------------
    def save(self) -> Path:
        """Checkpoint the current step: every rank takes part, rank 0 writes, the others wait for it."""
        snapshot = self.parallel.snapshot(self.optimizer)
        path = checkpoint_path(self.out, self.step_idx)
        if snapshot is not None:
            state = {"data_position": self.step_idx * self.cfg.packs_per_step, "history": self.history}
            path = save_checkpoint(self.out, self.step_idx, self.model, self.tokenizer, snapshot, state)
        self.dist.barrier()  # no rank may go on to read or replace a checkpoint still being written
        return path

    def resume(self) -> bool:
        """Restore the newest readable checkpoint of ``output_dir`` (a damaged one is passed over
        with a warning, see :func:`~codrl.train.checkpoint.restore_newest`); False if there is none."""
        found = restore_newest(self.out, self.model, self.parallel, self.optimizer, self.console)
        if found is None:
            return False
        path, state = found
        self.step_idx = int(state["step"])
        self.history = list(state.get("history", []))
        self._push_weights()
        self.console.print(f"resumed from {path} (step {self.step_idx})")
        return True

    def train(self, resume: bool = False,
              on_step: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Run the remaining steps; evaluate at start/end/every N; checkpoint every N and at the end.
        ``on_step(metrics)`` is called after every step, once its checkpoint and evaluation are done."""
        cfg, main = self.cfg, self.dist.is_main
        if main:
            write_run_config(cfg, self.out, self.eval_envs)
        if resume:
            self.resume()
        if main and self.loggers is None:
            self.loggers = Loggers(cfg.log, self.out, cfg.model_dump(mode="json"))
        if cfg.eval.at_start and self.step_idx == 0:
            self.evaluate("step-000000")
        with Preemption() as preemption, step_progress(self.console, cfg.steps, self.step_idx,
                                                       [e.name for e in self.envs], cfg.rollout.pack_size,
                                                       bar=cfg.log.progress and main) as show:
            while self.step_idx < cfg.steps:
                m = self.step()
                self.history.append(m)
                self._log(m, self.step_idx)
                show(self.step_idx, m)
                saved = bool(cfg.save_every and self.step_idx % cfg.save_every == 0)
                if saved:
                    self.save()
                if self._preempted(preemption):
                    return self._stop_preempted(saved)
                if cfg.eval.every and self.step_idx % cfg.eval.every == 0 and self.step_idx < cfg.steps:
                    self.evaluate(f"step-{self.step_idx:06d}")
                if on_step is not None:
                    on_step(m)
        if not (cfg.save_every and self.step_idx % cfg.save_every == 0):
            self.save()
        if cfg.eval.at_end:
            self.evaluate(f"step-{self.step_idx:06d}")
        if main:
            self.evaluations.write_curves()
            (self.out / "history.json").write_text(json.dumps(self.history, indent=1))
            learned, line = verdict(self.history, adapter_delta(self.model))
            self.console.print(("" if learned else "[bold red]no learning signal:[/] ") + line)
        self._close_logs()
        return self.history

    def _preempted(self, preemption: Preemption) -> bool:
        """Whether a stop was requested (SIGTERM); under torch.distributed, rank 0's answer for all."""
        if not self.dist.active:
            return preemption.requested
        return bool(self.dist.broadcast_object(preemption.requested if self.dist.is_main else None))

    def _stop_preempted(self, saved: bool) -> list[dict[str, Any]]:
        """Stop at this step boundary: checkpoint (unless just written), close the logs, say how to go on
        (:meth:`close` then stops the engine, steps played ahead included)."""
        path = checkpoint_path(self.out, self.step_idx) if saved else self.save()
        if self.dist.is_main:
            (self.out / "history.json").write_text(json.dumps(self.history, indent=1))
            self.console.print(f"stopped by SIGTERM after step {self.step_idx}: checkpoint {path}; continue with "
                               "`codrl train ... --resume`")
        self._close_logs()
        self.preempted = True
        return self.history

    def close(self) -> None:
        """Stop the rollout engine (Ray workers, steps played ahead), metric sinks and the process group
        this trainer created."""
        self._close_logs()
        self.engine.close()
        self.dist.close()
