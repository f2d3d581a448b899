"""The policy update of one RL step: advantage-scored episodes in, one or more AdamW steps out.

:class:`PolicyUpdate` turns episodes into training rows (:mod:`codrl.train.batching`), splits
them into ``updates_per_step`` mini-batches, cuts each into micro-batches by a token budget and
accumulates their gradients, normalised by the mini-batch's number of trained tokens (token-mean),
then clips and steps. Sampled tokens are scored from the model's hidden states chunk by chunk
(:mod:`codrl.train.scoring`), so no full-vocabulary logits of a micro-batch are kept for backward.

Under torch.distributed (:mod:`codrl.distributed.torch_dist`) every rank holds all rows and
trains on its share of each mini-batch, balanced by tokens. The loss stays the token mean over the
whole mini-batch (every rank divides by its global token count) and is scaled by the world size,
so that DDP's or FSDP2's averaging of the ranks' gradients yields the single-process gradient.
Every rank runs the same number of micro-batches (zero-weighted filler passes where it has no rows
left) and synchronises gradients in the last one only.

When the sampler is not the trainer (:mod:`codrl.algo.offpolicy`), the rollout's logprobs become the
rows' behaviour logprobs, the old logprobs are recomputed under the current weights, and each
token's loss term is weighted by the configured correction; the mismatch is logged per pack position.

With teachers (:mod:`codrl.train.teachers`), every row's sampled tokens are scored under its
environment's teacher first, and the distillation term joins the advantages per token
(:mod:`codrl.algo.distill`); the student-teacher KL is logged per environment and pack position.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from typing import Any

import torch

from codrl.algo.losses import masked_mean, policy_loss
from codrl.algo.offpolicy import (CorrectionMode, add_mismatch_sums, correction_mode, importance_weights,
                                  mismatch_metrics, trainer_temperature)
from codrl.distributed.torch_dist import TrainedModel
from codrl.rollout.experience import ModelEpisode
from codrl.train.batching import (PrefixNode, TrainSeq, collate, filler_row, micro_batches, plan_tokens,
                                  prefix_plan, rank_micro_batches, recurring_prefixes, split_rows, to_sequences,
                                  top_prefix_counts)
from codrl.train.config import TrainConfig
from codrl.train.memory import large_frees_to_os
from codrl.train.scoring import HeldPrefixes, TokenScores, can_share_prefix
from codrl.train.teachers import Teachers, load_teachers


def update_correction(cfg: TrainConfig) -> CorrectionMode:
    """The off-policy correction of ``cfg``'s updates (:func:`codrl.algo.offpolicy.correction_mode`):
    stale experiences count as kept for correction with asynchronous steps and ``stale: correct``."""
    d = cfg.distributed
    return correction_mode(cfg.offpolicy, cfg.old_logprobs, stale_kept=d.async_rollouts and d.stale == "correct")


class PolicyUpdate:
    """Gradient steps on ``model``'s trainable parameters with ``optimizer``.

    ``parallel`` is the model as torch.distributed trains it (:func:`~codrl.distributed.torch_dist.wrap_model`);
    by default the model alone, in this process. ``tokenizer`` and ``env_names`` (the student's, and
    the mixture's environments) check the teachers of a distilling run (:func:`~codrl.train.teachers.load_teachers`).
    """

    def __init__(self, cfg: TrainConfig, model: Any, optimizer: torch.optim.Optimizer, pad_id: int,
                 parallel: TrainedModel | None = None, *, tokenizer: Any = None,
                 env_names: Sequence[str] | None = None) -> None:
        self.cfg = cfg
        self.model = model
        self.optimizer = optimizer
        self.pad_id = pad_id
        self.parallel = parallel or TrainedModel(model)
        self.trainable = [p for g in optimizer.param_groups for p in g["params"]]
        #: Whether micro-batches compute their rows' shared prefix once (``cfg.share_prefix``).
        self.share_prefix = cfg.share_prefix and can_share_prefix(model) and self.parallel.shares_prefix
        #: The off-policy correction applied to every update.
        self.correction = update_correction(cfg)
        #: The frozen teachers of on-policy distillation (None: the loss does not distill).
        self.teachers: Teachers | None = load_teachers(cfg, tokenizer, env_names)

    @property
    def _holds_prefixes(self) -> bool:
        """Whether a top prefix recurring in several micro-batches is computed once per mini-batch."""
        return self.share_prefix and self.parallel.holds_prefixes and self.parallel.ctx.world_size == 1

    def lr_at(self, step: int) -> float:
        """Learning rate of ``step`` (linear warm-up, then constant)."""
        w = self.cfg.optim.warmup_steps
        return self.cfg.optim.lr * (min(1.0, (step + 1) / w) if w else 1.0)

    @property
    def temperature(self) -> float:
        """Temperature of the policy the update trains (:func:`codrl.algo.offpolicy.trainer_temperature`)."""
        return trainer_temperature(self.cfg.offpolicy, self.cfg.rollout.temperature)

    def score(self, batch: dict[str, torch.Tensor], ref: bool = False, with_entropy: bool = False,
              held: HeldPrefixes | None = None) -> TokenScores:
        """Logprobs of the batch's trained tokens under the policy, or under the reference (base
        model, adapters off, no grad). Scored from hidden states chunk by chunk (no [B, T, V]
        logits kept); positions outside ``batch["mask"]`` get 0. ``held``: top prefixes shared
        with other micro-batches of this update (policy scores in one process only)."""
        ctx = contextlib.ExitStack()
        if ref:
            ctx.enter_context(torch.no_grad())
            ctx.enter_context(self.model.disable_adapter())
        with ctx:
            return self.parallel.score(batch["input_ids"], batch["attention_mask"], batch["mask"], self.temperature,
                                       with_entropy=with_entropy, plan=batch.get("plan"), held=held)

    def _plan(self, rows: list[TrainSeq]) -> PrefixNode | None:
        """How a micro-batch's rows compute their shared prefixes once (None: every row in full)."""
        return prefix_plan(rows) if self.share_prefix and len(rows) > 1 else None

    def _collate(self, rows: list[TrainSeq], plan: PrefixNode | None) -> dict[str, Any]:
        """A micro-batch's tensors, with the plan of the prefixes its rows compute once."""
        batch: dict[str, Any] = collate(rows or [filler_row(self.pad_id)], self.pad_id, self._device())
        batch["plan"] = plan
        return batch

    def context_per_trained(self, minis: list[list[TrainSeq]]) -> dict[str, float]:
        """Context tokens the forward passes compute per trained token, with the prefix sharing
        of this update and without it (every row in full), over all ranks' micro-batches."""
        trained = sum(e.num_trained for mini in minis for e in mini) or 1
        full = sum(e.num_tokens for mini in minis for e in mini)
        done = full
        if self.share_prefix:
            parts = [rows for mini in minis for rows in split_rows(mini, self.parallel.ctx.world_size)]
            done = 0
            for rows in parts:
                micro = micro_batches(rows, self.cfg.micro_batch_tokens, True)
                plans = [self._plan(mb) for mb in micro]
                done += sum(plan_tokens(p, mb) if p else sum(e.num_tokens for e in mb)
                            for mb, p in zip(micro, plans, strict=True))
                if self._holds_prefixes:  # a recurring top prefix is computed once per mini-batch
                    done -= sum((n - 1) * len(k) for k, n in top_prefix_counts(micro, plans).items())
        return {"context_tokens_per_trained_token": done / trained,
                "context_tokens_per_trained_token_unshared": full / trained}

    def __call__(self, episodes: list[ModelEpisode], step: int, rollout_logprobs: bool) -> dict[str, float]:
        """Update on advantage-scored episodes; returns metrics averaged over mini-batches
        (the same numbers on every rank).

        ``rollout_logprobs``: the rollout's logprobs are the behaviour policy's, as the trainer
        computes them (else, and always under an off-policy correction, they are kept as behaviour
        logprobs and the old logprobs are recomputed under the current weights first).
        """
        with large_frees_to_os():  # else freed activations stay resident (codrl.train.memory)
            return self._update(episodes, step, rollout_logprobs)

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def _use_kl(self) -> bool:
        return self.cfg.loss.kl_coef > 0

    def _update(self, episodes: list[ModelEpisode], step: int, rollout_logprobs: bool) -> dict[str, float]:
        cfg = self.cfg
        seqs = to_sequences(episodes, merge_turns=cfg.merge_turns)
        if not seqs:
            return {}
        if self._use_kl and not hasattr(self.model, "disable_adapter"):
            raise ValueError("loss.kl_coef > 0 needs LoRA (the reference is the base model with adapters disabled)")
        rng = random.Random(cfg.seed * 7919 + step)
        order = seqs[:]
        rng.shuffle(order)
        minis = [m for m in (order[i::cfg.updates_per_step] for i in range(cfg.updates_per_step)) if m]
        if self.correction != "none" or not rollout_logprobs:
            for s in seqs:
                s.behaviour_logprobs = s.old_logprobs
            self.recompute_old_logprobs(seqs, minis)
        if self.teachers is not None:
            self.teachers.score(seqs, self.temperature)
        sums: dict[str, float] = {}
        mismatch: dict[str, float] = {}
        norms = 0.0
        self.parallel.engine.train()
        for mini in minis:
            self.optimizer.zero_grad(set_to_none=True)
            self.accumulate(mini, sums, mismatch)
            norms += self.step(step)
        self.parallel.engine.eval()
        totals = self.parallel.ctx.sum_across_ranks(sums)
        return {**{k: v / len(minis) for k, v in totals.items()}, "grad_norm": norms / len(minis),
                **self.context_per_trained(minis), **mismatch_metrics(self.parallel.ctx.sum_across_ranks(mismatch)),
                **(self.teachers.metrics(self.parallel.ctx.sum_across_ranks) if self.teachers else {})}

    def accumulate(self, mini: list[TrainSeq], sums: dict[str, float] | None = None,
                   mismatch: dict[str, float] | None = None) -> dict[str, float]:
        """Forward and backward of this rank's share of mini-batch ``mini``, adding to the gradients.

        The loss is the token mean over all of ``mini`` (every rank's rows), times the world
        size: averaging the ranks' gradients then gives the gradient of the whole mini-batch.
        Adds this rank's metrics to ``sums`` (a new dict by default) and returns it: each metric
        weighted by its micro-batch's share of ``mini``'s tokens, so that summed over the ranks
        they are the mini-batch's token means, and the loss. Rows with behaviour logprobs get the
        off-policy correction's token weights and add their per-position sums to ``mismatch``
        (:func:`codrl.algo.offpolicy.add_mismatch_sums`) when it is given.
        """
        ctx = self.parallel.ctx
        n_tokens = sum(e.num_trained for e in mini)
        micro = rank_micro_batches(split_rows(mini, ctx.world_size), self.cfg.micro_batch_tokens, ctx.rank,
                                   self.share_prefix)
        sums = {} if sums is None else sums
        # One process: a top prefix that recurs in several micro-batches is computed once for all.
        plans = [self._plan(rows) for rows in micro]
        held = None
        if self._holds_prefixes:
            keys = recurring_prefixes(micro, plans)
            held = HeldPrefixes(keys) if keys else None
        for i, (rows, plan) in enumerate(zip(micro, plans, strict=True)):
            with self.parallel.gradient_sync(i == len(micro) - 1):
                batch = self._collate(rows, plan)
                ref_lp = self.score(batch, ref=True).logprobs if self._use_kl else None
                scores = self.score(batch, with_entropy=True, held=held)
                adv = batch["advantages"] if self.teachers is None else self.teachers.advantages(rows, batch,
                                                                                                  scores.logprobs)
                weights = self._correct(rows, batch, mismatch)
                loss, m = policy_loss(scores.logprobs, batch["old_logprobs"], adv, batch["mask"],
                                      self.cfg.loss, num_tokens=n_tokens, ref_logprobs=ref_lp, token_weights=weights)
                (loss * (ctx.world_size if rows else 0.0)).backward()
            if not rows:
                continue
            if scores.entropy is not None:
                m["entropy"] = float(masked_mean(scores.entropy, batch["mask"]))
            w = float(batch["mask"].sum()) / n_tokens
            for k, v in m.items():
                if k != "num_tokens":
                    sums[k] = sums.get(k, 0.0) + w * float(v)
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            del scores, ref_lp, loss
        if held is not None:
            held.backward()
        return sums

    def _correct(self, rows: list[TrainSeq], batch: dict[str, Any],
                 mismatch: dict[str, float] | None) -> torch.Tensor | None:
        """The token weights of a micro-batch's correction (None: no correction), adding its
        mismatch sums to ``mismatch``; rows without behaviour logprobs are on-policy."""
        if not any(e.behaviour_logprobs is not None for e in rows):
            return None
        corr = importance_weights(batch["old_logprobs"], batch["behaviour_logprobs"], batch["mask"], self.correction,
                                  self.cfg.offpolicy.cap)
        if mismatch is not None:
            add_mismatch_sums(mismatch, batch["old_logprobs"], batch["behaviour_logprobs"], batch["mask"],
                              batch["positions"], corr.acted)
        return corr.weights if self.correction != "none" else None

    def step(self, step: int) -> float:
        """Clip the accumulated gradients to the global norm and take an optimizer step at the
        learning rate of RL step ``step``; returns the norm before clipping."""
        norm = self.parallel.clip_grad_norm(self.trainable, self.cfg.optim.grad_clip)
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(step)
        self.optimizer.step()
        return norm

    @torch.no_grad()
    def recompute_old_logprobs(self, seqs: list[TrainSeq], minis: list[list[TrainSeq]]) -> None:
        """Score the sampled tokens under the current weights (when the rollout engine differs).

        Each rank scores the rows it trains (its share of every mini-batch of ``minis``, which
        partition ``seqs``), in their order in ``seqs``.
        """
        ctx = self.parallel.ctx
        position = {id(s): i for i, s in enumerate(seqs)}
        split = [split_rows(mini, ctx.world_size) for mini in minis]
        shares = [sorted((s for parts in split for s in parts[r]), key=lambda s: position[id(s)])
                  for r in range(ctx.world_size)]
        self.parallel.engine.eval()
        for mb in rank_micro_batches(shares, self.cfg.micro_batch_tokens, ctx.rank, self.share_prefix):
            batch = self._collate(mb, self._plan(mb))
            lp = self.score(batch).logprobs.cpu()  # 0 at untrained positions, which are never used
            for r, e in enumerate(mb):
                e.old_logprobs = [0.0] + lp[r, : e.num_tokens - 1].tolist()
