"""The RL trainer: lifecycle rollouts -> CoD advantages -> clipped token-level policy gradient.

One step, top to bottom (:meth:`Trainer.step`):

1. draw ``packs_per_step`` training packs (environment mixture by weight; deterministic in
   (seed, step), so a resumed run sees the same data) and play each ``rollout.repeats`` times;
2. compute every episode's advantage (reward-to-go against the group baseline, docs/method.md);
3. update the policy (:mod:`codrl.train.update`): ``updates_per_step`` mini-batches of
   token-budgeted micro-batches (:mod:`codrl.train.batching`), token-mean loss, clip, AdamW.

The rollout backend holds the very model being trained, so the next step samples from the new
weights with no copy. Old logprobs come from the rollout when that is the trained policy.

Under ``torchrun`` (:mod:`codrl.distributed.torch_dist`) each process plays its share of the
step's lifecycles and gets everyone's; all processes then hold the same experiences, train on
their share of the rows with DDP or FSDP2, and rank 0 alone writes checkpoints, logs and reports.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from rich.console import Console

from codrl.algo.advantages import compute_advantages
from codrl.backends.base import Backend
from codrl.backends.hf import HFBackend
from codrl.config import dump_yaml
from codrl.distributed.async_rollout import AsyncRollouts, LocalRolloutEngine, RolloutEngine, split_stale
from codrl.distributed.torch_dist import init_from_env, wrap_model
from codrl.envs import CoDEnv
from codrl.errors import CodrlError
from codrl.eval.metrics import Summary
from codrl.eval.runner import build_env
from codrl.rollout.experience import LifecycleResult, ModelEpisode
from codrl.rollout.lifecycle import Job, LifecycleRunner, job_seeds, make_jobs
from codrl.train.checkpoint import (
    DAMAGED,
    Preemption,
    checkpoint_path,
    read_checkpoint,
    restore_rng,
    resume_candidates,
    save_checkpoint,
)
from codrl.train.config import TrainConfig
from codrl.train.diagnostics import adapter_delta, groups_with_signal, verdict
from codrl.train.evaluation import TrainingEvaluations
from codrl.train.loggers import Loggers
from codrl.train.update import PolicyUpdate


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_vllm(cfg: TrainConfig, tokenizer: Any) -> Backend:
    """The vLLM rollout engine of ``cfg`` (``model.engine: vllm``), serving the base weights and,
    with LoRA, the adapter sent by each sync."""
    from codrl.backends.embedded import resolve_model_path
    from codrl.backends.vllm_backend import VLLMBackend, lora_rank_slot

    lora = cfg.model.lora
    kwargs: dict[str, Any] = {"dtype": cfg.model.dtype, "seed": cfg.seed, "enable_lora": lora is not None}
    if lora is not None:
        kwargs["max_lora_rank"] = lora_rank_slot(lora.r)
    return VLLMBackend(resolve_model_path(None if cfg.model.path == "embedded" else cfg.model.path), tokenizer,
                       chat_template_kwargs=cfg.model.chat_template_kwargs, **{**kwargs, **cfg.model.vllm})


def build_policy(cfg: TrainConfig, device: str | None = None) -> HFBackend:
    """Load the model of ``cfg.model`` (with LoRA adapters when configured) as a backend, on
    ``device`` (default ``cfg.model.device``)."""
    backend = HFBackend.from_pretrained(None if cfg.model.path == "embedded" else cfg.model.path,
                                        device=device or cfg.model.device, dtype=cfg.model.dtype,
                                        max_batch_size=cfg.generation_batch_size, kv_cache_mb=cfg.model.kv_cache_mb,
                                        chat_template_kwargs=cfg.model.chat_template_kwargs)
    model = backend.model
    if cfg.model.lora is not None:
        from peft import LoraConfig, get_peft_model

        from codrl.backends.hf import quiet_peft

        lc = cfg.model.lora
        with quiet_peft():
            model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                     target_modules=lc.target_modules, task_type="CAUSAL_LM"))
        backend.model = model
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return backend


def _reward_metrics(results: list[LifecycleResult], prefix: str) -> dict[str, float]:
    """``<prefix>mean`` and ``<prefix>pos<i>``: mean task reward overall and at each pack position."""
    out = {f"{prefix}mean": float(np.mean([np.mean(r.task_rewards) for r in results]))}
    for i in range(min(len(r.task_rewards) for r in results)):
        out[f"{prefix}pos{i}"] = float(np.mean([r.task_rewards[i] for r in results]))
    return out


def _overflow_metrics(results: list[LifecycleResult]) -> dict[str, int]:
    """``rollout/context_overflow/all`` and ``.../pos<i>``: model calls not sent because they would
    pass the context window, in all and at each pack position (no metric name is the folder of
    another: MLflow's file store keeps each name as a path)."""
    out = {"rollout/context_overflow/all": sum(r.context_overflows for r in results)}
    for i in range(max((len(r.episodes) for r in results), default=0)):
        out[f"rollout/context_overflow/pos{i}"] = sum(r.episodes[i].context_overflows for r in results
                                                      if i < len(r.episodes))
    return out


class Trainer:
    """Runs ``cfg.steps`` RL steps with checkpoints, logs and periodic evaluation.

    ``backend`` may be given to train a model built in code (e.g. the toy policy); by default
    the model of ``cfg.model`` is loaded. Under torchrun (or in an initialised process group)
    every rank builds one; a given backend must already be on this rank's device.
    """

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
        _seed_all(cfg.seed)
        self.envs: list[CoDEnv] = [build_env(s.name, s.params) for s in cfg.envs]
        extra = [build_env(s.name, s.params) for s in cfg.eval.envs]
        names = {e.name for e in self.envs}
        #: Evaluated at start/end/every N: every training environment, then the extra ones.
        self.eval_envs: list[CoDEnv] = self.envs + [e for e in extra if e.name not in names]
        self.weights = np.array([s.weight for s in cfg.envs], dtype=float)
        self.weights /= self.weights.sum()
        self.backend = backend or build_policy(cfg, str(self.dist.device))
        self.model = self.backend.model
        self.tokenizer = self.backend.tokenizer
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError("the model has no trainable parameters")
        #: The model as it is trained: itself, a DDP replica or FSDP2 shards (then its parameters are shards).
        self.parallel = wrap_model(self.model, self.dist, cfg.distributed.strategy)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.optim.lr, betas=cfg.optim.betas,
                                           weight_decay=cfg.optim.weight_decay)
        self.policy_update = PolicyUpdate(cfg, self.model, self.optimizer, self.backend.pad_id, self.parallel)
        #: Plays rollouts and evaluations: the trained model itself, or a vLLM copy synced after updates.
        self.rollout_backend: Backend = self.backend if cfg.model.engine == "hf" else build_vllm(cfg, self.tokenizer)
        self.runner = LifecycleRunner(self.rollout_backend, cfg.rollout)
        #: Plays the training rollouts instead of ``runner`` (on rank 0): Ray workers, or a private
        #: policy copy for asynchronous steps; None plays them in-process.
        self.engine: RolloutEngine | None = self._build_engine()
        self._engine_version: int | None = None  # weights version the engine has
        self._async: AsyncRollouts | None = None
        self._async_started = False  # on every rank: whether rollouts run ahead (rank 0 runs them)
        self.step_idx = 0
        self.history: list[dict[str, Any]] = []
        self.evaluations = TrainingEvaluations(cfg, self.eval_envs, self.out, self.console, self.dist.is_main)
        self.loggers: Loggers | None = None
        #: True when the last train() stopped early on SIGTERM (a checkpoint was written).
        self.preempted = False

    # -- data ----------------------------------------------------------------------------
    def packs_for_step(self, step: int) -> list[tuple[CoDEnv, Any]]:
        """The training packs of ``step``: a pure function of (seed, step)."""
        rng = np.random.default_rng([self.cfg.seed, step])
        out = []
        for i in range(self.cfg.packs_per_step):
            env = self.envs[int(rng.choice(len(self.envs), p=self.weights))]
            out.append((env, env.sample_pack("train", self.cfg.seed, step * self.cfg.packs_per_step + i,
                                             self.cfg.rollout.pack_size)))
        return out

    def _build_engine(self) -> RolloutEngine | None:
        """Ray workers (``rollout_workers``), a private policy copy (``async_rollouts`` in one
        process), or None: the training rollouts are played in-process by ``runner``."""
        d = self.cfg.distributed
        if d.rollout_workers:
            if self.cfg.model.engine != "hf":
                raise CodrlError("distributed.rollout_workers: Ray workers play on the transformers backend; "
                                 "use model.engine 'hf' with them (vLLM serves one process's rollouts)")
            if not self.dist.is_main:
                return None  # rank 0 drives the workers and shares what they played
            from codrl.distributed.ray_rollout import RayRolloutPool

            return RayRolloutPool(partial(build_policy, self.cfg), self.cfg.rollout, d)
        if d.async_rollouts:
            if self.dist.active:
                raise CodrlError("distributed.async_rollouts under torch.distributed needs Ray rollout workers "
                                 "(distributed.rollout_workers > 0)")
            if not isinstance(self.rollout_backend, HFBackend):
                raise CodrlError("distributed.async_rollouts in one process needs model.engine 'hf' "
                                 "(or Ray rollout workers)")
            return LocalRolloutEngine(self.rollout_backend, self.cfg.rollout)
        return None

    # -- one RL step ---------------------------------------------------------------------
    def plan(self, step: int) -> tuple[list[Job], list[int]]:
        """The lifecycles of ``step`` and their sampling seeds: a pure function of (seed, step)."""
        jobs = make_jobs(self.packs_for_step(step), self.cfg.rollout)
        return jobs, job_seeds(len(jobs), self.cfg.seed * 1_000_003 + step)

    def rollout(self, step: int) -> list[LifecycleResult]:
        """Play the step's packs; sampling is seeded by (seed, step) so resumes are exact.

        In-process, every rank plays its share; with Ray workers or asynchronous steps, rank 0
        gets the lifecycles from the engine and shares them with the other ranks.
        """
        d = self.cfg.distributed
        if not (d.rollout_workers or d.async_rollouts):
            jobs, seeds = self.plan(step)
            self.runner.policy_version = self.step_idx
            return self._play(self.runner, jobs, seeds)
        if d.async_rollouts:
            if not self._async_started:
                self._start_async(step)
            results = self._async.get(step) if self._async is not None else None
        else:
            self._push_weights()
            jobs, seeds = self.plan(step)
            results = self.engine.run(jobs, seeds=seeds) if self.engine is not None else None
        return self.dist.broadcast_object(results)

    def _push_weights(self) -> None:
        """Bring a synchronous engine's weights up to the current version (every rank takes part)."""
        if self._engine_version == self.step_idx:
            return
        weights = self.parallel.full_trainable()
        if self.engine is not None and weights is not None:
            self.engine.set_weights(weights, self.step_idx)
        self._engine_version = self.step_idx

    def _start_async(self, step: int) -> None:
        """Start playing steps ``step .. steps-1`` ahead of training (see codrl.distributed.async_rollout);
        every rank takes part, rank 0 runs the thread."""
        self._async_started = True
        weights = self.parallel.full_trainable()
        if self.engine is None or weights is None:
            return  # a rank other than 0: it receives the lifecycles from rank 0
        self._async = AsyncRollouts(self.engine, self.plan, start=step, stop=self.cfg.steps,
                                    lookahead=self.cfg.distributed.lookahead, weights=weights, version=self.step_idx)

    def _stop_async(self) -> None:
        if self._async is not None:
            self._async.close()
        self._async, self._async_started = None, False

    def _play(self, runner: LifecycleRunner, jobs: list[Job], seeds: list[int]) -> list[LifecycleResult]:
        """Play ``jobs`` (one seed each); results in job order.

        Under torch.distributed rank r plays ``jobs[r::world]`` with those jobs' own seeds, so a
        lifecycle samples the same whichever rank plays it, and every rank gets all results
        (advantages need whole groups of repeats).
        """
        if not self.dist.active:
            return runner.run(jobs, seeds=seeds)
        rank, world = self.dist.rank, self.dist.world_size
        with self.parallel.generation() as gathered:
            if gathered:
                self.backend.store.clear()  # its states were computed by other weights: see generation()
            mine = runner.run(jobs[rank::world], seeds=seeds[rank::world])
        shares = self.dist.gather_objects(mine)
        return [shares[i % world][i // world] for i in range(len(jobs))]

    def _sync_rollout_engine(self) -> None:
        """Send the current weights to a separate rollout engine (vLLM); the in-process one shares them.
        Asynchronous rollouts get each new version as soon as it exists; Ray workers in synchronous
        mode get it before the next rollout."""
        if self.rollout_backend is not self.backend:
            self.rollout_backend.sync_weights(self.model)  # type: ignore[attr-defined]
        if self._async_started:
            weights = self.parallel.full_trainable()
            if self._async is not None and weights is not None:
                self._async.publish(self.step_idx, weights)

    def update(self, episodes: list[ModelEpisode]) -> dict[str, float]:
        """Policy-gradient update of the current step on advantage-scored episodes; returns its metrics."""
        return self.policy_update(episodes, self.step_idx, self._use_rollout_logprobs())

    def _use_rollout_logprobs(self) -> bool:
        """Whether the rollout's logprobs serve as old logprobs (else they are recomputed).

        Auto: yes when the rollouts ran the trainer's own model code (in-process, an asynchronous
        copy, Ray workers of the transformers backend), so they are the sampling policy's as the
        trainer computes them; no for vLLM, whose numerics differ. Stale experiences kept for
        importance correction always use them: they ARE the behaviour policy.
        """
        d = self.cfg.distributed
        if d.async_rollouts and d.stale == "correct":
            return True
        mode = self.cfg.old_logprobs
        if mode != "auto":
            return mode == "rollout"
        return self.cfg.model.engine == "hf" and self.backend.token_exact

    def step(self) -> dict[str, Any]:
        """One RL step: rollout, advantages, update. Returns its metrics."""
        t0 = time.time()
        results = self.rollout(self.step_idx)
        t1 = time.time()
        trained, stale = self._fresh(results)
        env_errors = sum(r.env_errors for r in results)
        if env_errors and self.cfg.rollout.on_env_error == "drop_group":  # a broken pack teaches nothing
            broken = {r.pack_id for r in trained if r.env_errors}
            trained = [r for r in trained if r.pack_id not in broken]
        episodes = [ep for r in trained for ep in r.model_episodes]
        adv_metrics = compute_advantages(trained, self.cfg.advantage) if episodes else {}
        upd = self.update(episodes)
        self.step_idx += 1
        self._sync_rollout_engine()
        delta = adapter_delta(self.model)
        if delta is not None:
            upd["adapter_delta"] = delta
        t2 = time.time()
        by_env = {name: [r for r in results if r.env == name] for name in sorted({r.env for r in results})}
        metrics: dict[str, Any] = {
            "step": self.step_idx,
            **_reward_metrics(results, "reward/"),
            **({k: v for name, mine in by_env.items() for k, v in _reward_metrics(mine, f"reward/{name}/").items()}
               if len(self.envs) > 1 else {}),
            "format_valid": float(np.mean([e.format_valid for r in results for e in r.episodes])),
            "hint_valid": float(np.mean([e.hint_valid for r in results for e in r.episodes if e.hints_out is not None]
                                        or [1.0])),
            "tokens/trained": sum(ep.sampled_tokens for ep in episodes),
            "rollout/env_errors": env_errors,
            **_overflow_metrics(results),
            "time/rollout_s": t1 - t0, "time/update_s": t2 - t1,
            **{f"adv/{a}": b for a, b in adv_metrics.items()},
            **{f"train/{a}": b for a, b in upd.items()},
            **{f"train/{a}": b for a, b in groups_with_signal(adv_metrics).items()},
            **stale,
        }
        return metrics

    def _fresh(self, results: list[LifecycleResult]) -> tuple[list[LifecycleResult], dict[str, Any]]:
        """The lifecycles to train on and the staleness metrics (asynchronous steps only): lifecycles
        sampled more than ``max_staleness`` updates ago are dropped, or kept with ``stale: correct``."""
        d = self.cfg.distributed
        if not d.async_rollouts:
            return results, {}
        split = split_stale(results, self.step_idx, d.max_staleness)
        keep = d.stale == "correct"
        return (results if keep else split.fresh), split.metrics(kept=keep)

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(self, tag: str) -> dict[str, Summary]:
        """Evaluate every evaluation environment now; report under ``eval/<tag>`` (:mod:`codrl.train.evaluation`)."""
        return self.evaluations.run(tag, self.step_idx, self.rollout_backend, self._log,
                                    self._play if self.dist.active else None)

    @property
    def evals(self) -> dict[str, dict[int, Summary]]:
        """Summaries of the evaluations so far: environment name -> step -> summary."""
        return self.evaluations.summaries

    # -- logging -------------------------------------------------------------------------
    def _open_logs(self) -> None:
        if self.dist.is_main and self.loggers is None:
            self.loggers = Loggers(self.cfg.log, self.out, self.cfg.model_dump(mode="json"))

    def _close_logs(self) -> None:
        if self.loggers is not None:
            self.loggers.close()
            self.loggers = None

    def _log(self, metrics: dict[str, Any], step: int) -> None:
        if self.loggers is not None:
            self.loggers.log(metrics, step)

    def _position_text(self, m: dict[str, Any]) -> str:
        """``[0.10 0.25 0.40]``, or per environment ``frozenlake [..] alchemy [..]`` for a mixture."""
        k = self.cfg.rollout.pack_size
        if len(self.envs) == 1:
            return "[" + " ".join(f"{m[f'reward/pos{i}']:.2f}" for i in range(k)) + "]"
        parts = []
        for env in self.envs:
            vals = [m.get(f"reward/{env.name}/pos{i}") for i in range(k)]
            if vals[0] is not None:
                parts.append(f"{env.name} [" + " ".join(f"{v:.2f}" for v in vals if v is not None) + "]")
        return " ".join(parts)

    # -- the loop ------------------------------------------------------------------------
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
        """Restore the newest readable checkpoint of ``output_dir``; False if there is none.

        A damaged checkpoint (a truncated or garbled file, a missing tensor, bad JSON) is passed over
        with a warning naming it, and the previous complete one is used. Every rank reads the files
        (whatever world size wrote them) and keeps its own part.
        """
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        for path in resume_candidates(self.out):
            try:
                snapshot, state = read_checkpoint(path)
                missing = sorted(trainable - set(snapshot.trainable))
                if missing:
                    raise ValueError(f"{path / 'trainable.pt'} lacks {len(missing)} tensor(s), e.g. {missing[0]}")
                self.parallel.restore(snapshot, self.optimizer, path)
            except DAMAGED as e:
                self.console.print(f"[bold yellow]warning:[/] checkpoint {path} is damaged and was skipped "
                                   f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
                continue
            restore_rng(state)
            self.step_idx = int(state["step"])
            self.history = list(state.get("history", []))
            self._sync_rollout_engine()
            self.console.print(f"resumed from {path} (step {self.step_idx})")
            return True
        return False

    def train(self, resume: bool = False,
              on_step: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Run the remaining steps; evaluate at start/end/every N; checkpoint every N and at the end.
        ``on_step(metrics)`` is called after every step, once its checkpoint and evaluation are done."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        cfg = self.cfg
        main = self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_yaml(cfg, self.out / "config.yaml")
            keys = {e.name: e.world_key_fingerprint() for e in self.eval_envs if e.secret_worlds}
            if keys:  # which secret the worlds came from (a fingerprint, never the key)
                (self.out / "world_keys.json").write_text(json.dumps(keys, indent=1) + "\n")
        if resume:
            self.resume()
        self._open_logs()
        if cfg.eval.at_start and self.step_idx == 0:
            self.evaluate("step-000000")
        with Preemption() as preemption, Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), console=self.console, disable=not (cfg.log.progress and main)) as bar:
            task = bar.add_task("train", total=cfg.steps, completed=self.step_idx, info="")
            while self.step_idx < cfg.steps:
                m = self.step()
                self.history.append(m)
                self._log(m, self.step_idx)
                pos = self._position_text(m)
                signal = f"groups with signal {m.get('train/groups_with_signal', 0)}/{m.get('train/groups', 0)}"
                bar.update(task, completed=self.step_idx,
                           info=f"reward by position {pos} {signal} loss {m.get('train/loss', float('nan')):.4f}")
                if not cfg.log.progress:
                    self.console.print(f"step {self.step_idx}: reward by position {pos} {signal}")
                saved = bool(cfg.save_every and self.step_idx % cfg.save_every == 0)
                if saved:
                    self.save()
                if self._preempted(preemption):
                    return self._stop_preempted(saved)
                if cfg.eval.every and self.step_idx % cfg.eval.every == 0 and self.step_idx < cfg.steps:
                    self.evaluate(f"step-{self.step_idx:06d}")
                if on_step is not None:
                    on_step(m)
        self._stop_async()
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
        """Stop at this step boundary: checkpoint (unless just written), close, and say how to go on."""
        self._stop_async()
        path = checkpoint_path(self.out, self.step_idx) if saved else self.save()
        if self.dist.is_main:
            (self.out / "history.json").write_text(json.dumps(self.history, indent=1))
            self.console.print(f"stopped by SIGTERM after step {self.step_idx}: checkpoint {path}; continue with "
                               "`codrl train ... --resume`")
        self._close_logs()
        self.preempted = True
        return self.history

    def close(self) -> None:
        """Stop asynchronous rollouts, Ray workers, metric sinks and the process group this trainer created."""
        self._stop_async()
        self._close_logs()
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.dist.close()
