"""The policy update of one RL step: advantage-scored experiences in, one or more AdamW steps out.

:class:`PolicyUpdate` turns experiences into training rows (:mod:`codrl.train.batching`), splits
them into ``updates_per_step`` mini-batches, cuts each into micro-batches by a token budget and
accumulates their gradients, normalised by the mini-batch's number of trained tokens (token-mean),
then clips and steps. Sampled tokens are scored from the model's hidden states chunk by chunk
(:mod:`codrl.train.scoring`), so no full-vocabulary logits of a micro-batch are kept for backward.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import torch

from codrl.algo.losses import masked_mean, policy_loss
from codrl.rollout.experience import Experience
from codrl.train.batching import TrainSeq, collate, micro_batches, to_sequences
from codrl.train.config import TrainConfig
from codrl.train.memory import large_frees_to_os
from codrl.train.scoring import TokenScores, score_tokens


class PolicyUpdate:
    """Gradient steps on ``model``'s trainable parameters with ``optimizer``."""

    def __init__(self, cfg: TrainConfig, model: Any, optimizer: torch.optim.Optimizer, pad_id: int) -> None:
        self.cfg = cfg
        self.model = model
        self.optimizer = optimizer
        self.pad_id = pad_id
        self.trainable = [p for g in optimizer.param_groups for p in g["params"]]

    def lr_at(self, step: int) -> float:
        """Learning rate of ``step`` (linear warm-up, then constant)."""
        w = self.cfg.optim.warmup_steps
        return self.cfg.optim.lr * (min(1.0, (step + 1) / w) if w else 1.0)

    @property
    def temperature(self) -> float:
        t = self.cfg.rollout.temperature
        return t if t > 0 else 1.0

    def score(self, batch: dict[str, torch.Tensor], ref: bool = False, with_entropy: bool = False) -> TokenScores:
        """Logprobs of the batch's trained tokens under the policy, or under the reference (base
        model, adapters off, no grad). Scored from hidden states chunk by chunk (no [B, T, V]
        logits kept); positions outside ``batch["mask"]`` get 0."""
        ctx = contextlib.ExitStack()
        if ref:
            ctx.enter_context(torch.no_grad())
            ctx.enter_context(self.model.disable_adapter())
        with ctx:
            return score_tokens(self.model, batch["input_ids"], batch["attention_mask"], batch["mask"],
                                self.temperature, with_entropy=with_entropy)

    def __call__(self, exps: list[Experience], step: int, rollout_logprobs: bool) -> dict[str, float]:
        """Update on advantage-scored experiences; returns metrics averaged over mini-batches.

        ``rollout_logprobs``: the rollout's logprobs are the behaviour policy's, as the trainer
        computes them (else they are recomputed under the current weights first).
        """
        with large_frees_to_os():  # else freed activations stay resident (codrl.train.memory)
            return self._update(exps, step, rollout_logprobs)

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _update(self, exps: list[Experience], step: int, rollout_logprobs: bool) -> dict[str, float]:
        cfg = self.cfg
        exps = [e for e in exps if e.completion_ids and e.token_exact]
        if not exps:
            return {}
        device = self._device()
        use_kl = cfg.loss.kl_coef > 0
        if use_kl and not hasattr(self.model, "disable_adapter"):
            raise ValueError("loss.kl_coef > 0 needs LoRA (the reference is the base model with adapters disabled)")
        seqs = to_sequences(exps, merge_turns=cfg.merge_turns)
        if not rollout_logprobs:
            self.recompute_old_logprobs(seqs)
        rng = random.Random(cfg.seed * 7919 + step)
        order = seqs[:]
        rng.shuffle(order)
        minis = [order[i::cfg.updates_per_step] for i in range(cfg.updates_per_step)]
        sums: dict[str, float] = {}
        count = 0
        self.model.train()
        for mini in minis:
            if not mini:
                continue
            n_tokens = sum(e.num_trained for e in mini)
            self.optimizer.zero_grad(set_to_none=True)
            for mb in micro_batches(mini, cfg.micro_batch_tokens):
                batch = collate(mb, self.pad_id, device)
                ref_lp = self.score(batch, ref=True).logprobs if use_kl else None
                scores = self.score(batch, with_entropy=True)
                loss, m = policy_loss(scores.logprobs, batch["old_logprobs"], batch["advantages"], batch["mask"],
                                      cfg.loss, num_tokens=n_tokens, ref_logprobs=ref_lp)
                loss.backward()
                if scores.entropy is not None:
                    m["entropy"] = float(masked_mean(scores.entropy, batch["mask"]))
                w = float(batch["mask"].sum()) / n_tokens
                for k, v in m.items():
                    if k != "num_tokens":
                        sums[k] = sums.get(k, 0.0) + w * float(v)
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                del scores, ref_lp, loss
            gn = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.optim.grad_clip)
            for g in self.optimizer.param_groups:
                g["lr"] = self.lr_at(step)
            self.optimizer.step()
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(gn)
            count += 1
        self.model.eval()
        return {k: v / max(1, count) for k, v in sums.items()}

    @torch.no_grad()
    def recompute_old_logprobs(self, seqs: list[TrainSeq]) -> None:
        """Score the sampled tokens under the current weights (when the rollout engine differs)."""
        self.model.eval()
        for mb in micro_batches(seqs, self.cfg.micro_batch_tokens):
            batch = collate(mb, self.pad_id, self._device())
            lp = self.score(batch).logprobs.cpu()  # 0 at untrained positions, which are never used
            for r, e in enumerate(mb):
                e.old_logprobs = [0.0] + lp[r, : e.num_tokens - 1].tolist()
