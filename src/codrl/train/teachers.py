"""Teachers of on-policy distillation: one frozen model per environment of the mixture.

A training config's ``teachers`` name, for one or more environments each, a model folder or a
training checkpoint (:class:`TeacherConfig`). :func:`load_teachers` loads them frozen, on their
own device if asked, and refuses at start-up what cannot work: a teacher whose tokenizer is not
the student's, an environment of the mixture without a teacher (or with two), a teacher for an
environment outside it, and distillation settings without teachers (or teachers without them).

:meth:`Teachers.score` scores the sampled tokens of all of a step's training rows under each
row's teacher, exactly the student's token ids (its prompts, hints included, and its samples),
in micro-batches with the chunked scorer (:func:`~codrl.train.scoring.score_tokens`: no
full-vocabulary logits kept). :meth:`Teachers.advantages` turns a micro-batch's teacher and
student logprobs into per-token advantages (:mod:`codrl.algo.distill`) and keeps the
student-teacher KL per environment and pack position. :func:`evaluate_teachers` measures the
teachers' own reward on the run's evaluation packs, the yardstick of the student's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from codrl.algo.distill import add_kl_sums, distill_advantages, kl_metrics, reverse_kl_tokens
from codrl.algo.losses import PolicyLossConfig
from codrl.backends.hf import HFBackend
from codrl.errors import CodrlError
from codrl.train.batching import TrainSeq, collate, micro_batches, prefix_plan
from codrl.train.checkpoint import model_dir_of
from codrl.train.scoring import can_share_prefix, score_tokens

if TYPE_CHECKING:
    from rich.console import Console

    from codrl.envs import CoDEnv
    from codrl.eval.metrics import Summary
    from codrl.train.config import TrainConfig


class TeacherConfig(BaseModel):
    """One teacher and the environments it teaches."""

    model_config = ConfigDict(extra="forbid")

    envs: list[str] = Field(min_length=1, description="names of the mixture's environments this teacher scores")
    path: str | None = Field(None, description="Hugging Face model folder, or a training checkpoint folder "
                             "(<output_dir>/checkpoints/step-N)")
    endpoint: str | None = Field(None, description="OpenAI-compatible endpoint returning prompt logprobs "
                                 "(not supported yet)")
    device: str | None = Field(None, description="device of the teacher (default: model.device)")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(None, description="default: model.dtype")

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        if (self.path is None) == (self.endpoint is None):
            raise ValueError("a teacher needs exactly one of path (a model folder or checkpoint) and endpoint")
        return self


def check_tokenizer(teacher: Any, student: Any, field: str) -> None:
    """Raise CodrlError unless ``teacher`` maps every token to the same id as ``student``."""
    tv, sv = teacher.get_vocab(), student.get_vocab()
    if tv == sv:
        return
    differ = sum(1 for k, i in sv.items() if tv.get(k) != i) + sum(1 for k in tv if k not in sv)
    raise CodrlError(f"{field}: the teacher's tokenizer is not the student's ({len(tv)} vs {len(sv)} tokens, "
                     f"{differ} mapped differently); teacher and student must share a tokenizer "
                     "(docs/distillation.md)")


def teacher_of_env(cfg: TrainConfig, envs: Sequence[str]) -> dict[str, int]:
    """Index in ``cfg.teachers`` of each environment's teacher; CodrlError unless every environment
    of ``envs`` has exactly one and every teacher's environments are in ``envs``."""
    owner: dict[str, int] = {}
    for i, t in enumerate(cfg.teachers):
        for env in t.envs:
            if env not in envs:
                raise CodrlError(f"teachers[{i}].envs: {env!r} is not an environment of the mixture; "
                                 f"allowed values: {', '.join(map(repr, envs))}")
            if env in owner:
                raise CodrlError(f"teachers[{i}].envs: environment {env!r} already has teacher {owner[env]}")
            owner[env] = i
    missing = [e for e in envs if e not in owner]
    if missing:
        raise CodrlError(f"teachers: environment {missing[0]!r} of the mixture has no teacher; "
                         "name it in the envs of one")
    return owner


def _check_settings(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` distills; CodrlError for settings that contradict each other."""
    distills = cfg.loss.variant == "opd" or cfg.loss.opd_coef > 0
    if cfg.loss.variant == "opd" and cfg.loss.opd_coef > 0:
        raise CodrlError("loss.opd_coef: under loss.variant: opd the distillation term is the whole advantage; "
                         "leave opd_coef at 0 (or mix with variant rec_oneside_nois or ppo_clip)")
    if distills and not cfg.teachers:
        raise CodrlError("teachers: loss.variant: opd and loss.opd_coef > 0 need at least one teacher")
    if cfg.teachers and not distills:
        raise CodrlError("teachers: given, but the loss does not use them; set loss.variant: opd or "
                         "loss.opd_coef > 0")
    return distills


def load_teachers(cfg: TrainConfig, student: Any = None, env_names: Sequence[str] | None = None) -> Teachers | None:
    """The frozen teachers of ``cfg`` (None when it does not distill), checked against the student's
    tokenizer ``student`` and the mixture's environments ``env_names`` (the trainer's; by default the
    tokenizer of ``model.path`` and the environments of :func:`~codrl.train.rollouts.training_envs`)."""
    if not _check_settings(cfg):
        return None
    if env_names is None:
        from codrl.train.rollouts import training_envs  # here: rollouts imports the update, which imports this

        env_names = [e.name for e in training_envs(cfg)]
    owner = teacher_of_env(cfg, env_names)
    for i, t in enumerate(cfg.teachers):
        if t.endpoint is not None:
            raise CodrlError(f"teachers[{i}].endpoint: teachers behind an OpenAI-compatible endpoint are not "
                             f"supported yet; give a model folder or checkpoint in teachers[{i}].path")
    if student is None:
        from transformers import AutoTokenizer

        from codrl.backends.embedded import resolve_model_path

        student = AutoTokenizer.from_pretrained(resolve_model_path(None if cfg.model.path == "embedded"
                                                                   else str(model_dir_of(cfg.model.path))))
    backends = []
    for i, t in enumerate(cfg.teachers):
        assert t.path is not None  # checked above: no endpoint means a path
        try:
            backend = HFBackend.from_pretrained(str(model_dir_of(t.path)), device=t.device or cfg.model.device,
                                                dtype=t.dtype or cfg.model.dtype, kv_cache_mb=0)
        except CodrlError as e:
            raise CodrlError(f"teachers[{i}].path: {e}") from None
        check_tokenizer(backend.tokenizer, student, f"teachers[{i}].path")
        backend.model.requires_grad_(False)
        backends.append(backend)
    return Teachers({env: backends[i] for env, i in owner.items()}, cfg.loss, cfg.micro_batch_tokens)


def _row_tensor(rows: Sequence[TrainSeq], like: Tensor) -> Tensor:
    """The rows' teacher logprobs as a tensor shaped like the micro-batch's ``[B, T-1]`` ``like``."""
    out = torch.zeros((like.shape[0], like.shape[1] + 1), dtype=torch.float32)
    for r, e in enumerate(rows):
        if e.teacher_logprobs is None:
            raise ValueError("a row has no teacher logprobs: Teachers.score must run on the step's rows first")
        out[r, : e.num_tokens] = torch.tensor(e.teacher_logprobs, dtype=torch.float32)
    return out[:, 1:].to(like.device)


class Teachers:
    """The teacher of every environment (``backends[env]``) and the step's KL sums."""

    def __init__(self, backends: dict[str, HFBackend], loss: PolicyLossConfig, micro_batch_tokens: int) -> None:
        self.backends, self.loss, self.micro_batch_tokens = backends, loss, micro_batch_tokens
        self._sums: dict[str, float] = {}

    @torch.no_grad()
    def score(self, rows: Sequence[TrainSeq], temperature: float) -> None:
        """Set every row's ``teacher_logprobs``: its teacher's logprobs of the row's sampled tokens
        (0 elsewhere, aligned with ``input_ids`` like ``old_logprobs``), at the student's temperature."""
        groups: dict[str, list[TrainSeq]] = {}
        for e in rows:
            if e.env not in self.backends:
                raise CodrlError(f"teachers: environment {e.env!r} has no teacher")
            groups.setdefault(e.env, []).append(e)
        for env, mine in groups.items():
            backend = self.backends[env]
            share = can_share_prefix(backend.model)
            for mb in micro_batches(mine, self.micro_batch_tokens, share):
                batch = collate(mb, backend.pad_id, backend.device)
                plan = prefix_plan(mb) if share and len(mb) > 1 else None
                lp = score_tokens(backend.model, batch["input_ids"], batch["attention_mask"], batch["mask"],
                                  temperature, plan=plan).logprobs.cpu()
                for r, e in enumerate(mb):
                    e.teacher_logprobs = [0.0] + lp[r, : e.num_tokens - 1].tolist()

    def advantages(self, rows: Sequence[TrainSeq], batch: dict[str, Any], logprobs: Tensor) -> Tensor:
        """Per-token advantages of a micro-batch (:func:`~codrl.algo.distill.distill_advantages`) from the
        student's ``logprobs`` of the trained pass; adds its KL sums (none for a filler pass)."""
        if not rows:
            return batch["advantages"]
        teacher = _row_tensor(rows, batch["mask"])
        add_kl_sums(self._sums, reverse_kl_tokens(logprobs, teacher), batch["mask"], batch["positions"],
                    [e.env for e in rows])
        return distill_advantages(batch["advantages"], logprobs, teacher, self.loss)

    def metrics(self, sum_across_ranks: Callable[[dict[str, float]], dict[str, float]]) -> dict[str, float]:
        """The KL metrics of the update so far (:func:`~codrl.algo.distill.kl_metrics`), summed over
        the ranks by ``sum_across_ranks``; starts the next update's sums."""
        sums, self._sums = self._sums, {}
        return kl_metrics(sum_across_ranks(sums))


def evaluate_teachers(cfg: TrainConfig, teachers: Teachers, envs: Sequence[CoDEnv], out: Path, console: Console,
                      log: Callable[[dict[str, Any], int], None]) -> dict[str, Summary]:
    """Each teacher's own evaluation on the run's evaluation packs of its environments, the yardstick
    of the student's (once, at the start): reports under ``<out>/teacher/eval/<env>``, logged as
    ``teacher/<env>/pos<i>``; returns each environment's summary."""
    from codrl.train.evaluation import TrainingEvaluations

    out_summaries: dict[str, Summary] = {}
    for env in envs:
        def renamed(metrics: dict[str, Any], step: int, name: str = env.name) -> None:
            log({f"teacher/{name}/{k.rsplit('/', 1)[1]}": v for k, v in metrics.items()}, step)

        evaluations = TrainingEvaluations(cfg, [env], out / "teacher", console)
        out_summaries |= evaluations.run(env.name, 0, teachers.backends[env.name], renamed)
    return out_summaries
