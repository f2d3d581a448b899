"""Data-parallel training with torch.distributed: DDP for LoRA, FSDP2 for full fine-tuning.

Launched with ``torchrun`` (or inside a process group someone else initialised, e.g. Ray Train's
workers), every process holds all of a step's experiences and trains on its share of the rows;
torch's own engines average the gradients. This module holds the pieces the trainer needs:

* :func:`init_from_env`: the process group from torchrun's environment, as a :class:`DistContext`
  (a no-op single-process context when there is no group to join);
* :func:`wrap_model`: the policy as a :class:`TrainedModel` (one process), :class:`DDPModel`
  (replicated) or :class:`FSDPModel` (sharded), each able to score tokens, switch gradient
  synchronisation, clip by the global norm, prepare generation and give or take full checkpoint
  state (:class:`~codrl.train.checkpoint.Snapshot`).

Scoring goes through :class:`TokenScorer`, a module whose forward runs
:func:`~codrl.train.scoring.score_tokens` on the model. ``score_tokens`` calls the model's decoder
and output head directly, never the model's own forward, so a DDP wrapper or an FSDP2 root placed
on the model itself would be bypassed (DDP's reducer would not expect the backward; FSDP2's root
would not gather the embeddings and head). DDP wraps the scorer instead, and FSDP2 makes it the
root, with every decoder layer a unit of its own.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from codrl.train.batching import PrefixNode
from codrl.train.checkpoint import Snapshot, check_names, local_snapshot, restore_local, trainable_state
from codrl.train.config import DistributedConfig
from codrl.train.scoring import HeldPrefixes, TokenScores, score_tokens

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the process group; the defaults are a lone process."""

    rank: int = 0
    world_size: int = 1
    #: The device this process trains on (``cuda:LOCAL_RANK`` on GPUs under torchrun).
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: A process group is in use (collectives run); False for a plain single-process run.
    active: bool = False
    #: This context created the group, so :meth:`close` destroys it.
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op without a group)."""
        if self.active:
            dist.barrier()

    def gather_objects(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: T | None) -> T:
        """Rank 0's ``obj`` (picklable) on every rank; the other ranks pass None."""
        if not self.active:
            return obj  # type: ignore[return-value]
        box: list[Any] = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum_across_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Each key's values summed over the ranks (0 where a rank lacks the key).

        Gathered as Python floats and added in rank order, so every rank gets bit-identical
        numbers even when ranks hold different keys (a rank that only ran filler passes has none).
        """
        total: dict[str, float] = {}
        for part in self.gather_objects(values):
            for k, v in part.items():
                total[k] = total.get(k, 0.0) + v
        return total

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_from_env(cfg: DistributedConfig, device: str) -> DistContext:
    """Join the process group of this launch, or describe a lone process.

    An initialised group (e.g. Ray Train's) is used as it is. Otherwise ``WORLD_SIZE > 1`` (set by
    torchrun with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) initialises one with
    ``cfg.backend`` (auto: nccl when ``device`` is CUDA, else gloo). A CUDA ``device`` becomes
    ``cuda:LOCAL_RANK``, one GPU per process. Without a group and with ``WORLD_SIZE`` unset or 1,
    the context is the single-process one and nothing is initialised.
    """
    dev = torch.device(device)
    joined = dist.is_initialized()
    if not joined and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext(device=dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if not joined:
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return DistContext(dist.get_rank(), dist.get_world_size(), dev, active=True, owns_group=not joined)


class TokenScorer(nn.Module):
    """:func:`~codrl.train.scoring.score_tokens` of ``model`` as this module's forward.

    The module a data-parallel engine wraps (see the module docstring): its forward is the one
    call through which every scoring pass, with or without gradients, reaches the model.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, mask: Tensor | None, temperature: float,
                with_entropy: bool, plan: PrefixNode | None = None, held: HeldPrefixes | None = None
                ) -> tuple[Tensor, Tensor | None]:
        scores = score_tokens(self.model, input_ids, attention_mask, mask, temperature, with_entropy=with_entropy,
                              plan=plan, held=held)
        return scores.logprobs, scores.entropy


class TrainedModel:
    """The policy as the update trains it, in one process.

    The subclasses replicate it (:class:`DDPModel`) or shard it (:class:`FSDPModel`); these
    methods are the single-process behaviour. ``model`` stays the unwrapped model: generation
    and the checkpoint's parameter names use it.
    """

    def __init__(self, model: nn.Module, ctx: DistContext | None = None) -> None:
        self.model = model
        self.ctx = ctx or DistContext()
        self.scorer = TokenScorer(model)
        #: The module every scoring pass is called through (the scorer, or its DDP wrapper).
        self.engine: nn.Module = self.scorer

    #: Whether a scoring pass may compute shared prefixes once (``plan`` of :meth:`score`).
    shares_prefix = True
    #: Whether an update's micro-batches may share a prefix computed once for all of them
    #: (:class:`~codrl.train.scoring.HeldPrefixes`): in one process only, since a replicated or
    #: sharded model's gradient synchronisation needs every backward to be its micro-batch's own.
    holds_prefixes = True

    def score(self, input_ids: Tensor, attention_mask: Tensor | None, mask: Tensor | None, temperature: float,
              with_entropy: bool = False, plan: PrefixNode | None = None, held: HeldPrefixes | None = None
              ) -> TokenScores:
        """Scores of the trained tokens (see :func:`~codrl.train.scoring.score_tokens`)."""
        logprobs, entropy = self.engine(input_ids, attention_mask, mask, temperature, with_entropy, plan, held)
        return TokenScores(logprobs, entropy)

    def gradient_sync(self, enabled: bool) -> AbstractContextManager[None]:
        """Around one micro-batch's forward and backward: False accumulates gradients locally only."""
        return nullcontext()

    @contextmanager
    def generation(self) -> Iterator[bool]:
        """Around rollouts on :attr:`model`; yields whether parameters were gathered in place
        (then a cache keyed on parameter versions, such as the backend's prefix store, is stale)."""
        yield False

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        """Clip the gradients to a global norm of ``max_norm``; return the norm before clipping."""
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def full_trainable(self) -> dict[str, Tensor] | None:
        """Whole CPU copies of the trainable tensors on rank 0, None elsewhere (every rank calls it):
        the weights a separate rollout engine (Ray workers, an asynchronous copy) must load."""
        return trainable_state(self.model) if self.ctx.is_main else None

    def snapshot(self, optimizer: torch.optim.Optimizer) -> Snapshot | None:
        """The full checkpoint state on rank 0, None on the other ranks (every rank calls it)."""
        return local_snapshot(self.model, optimizer) if self.ctx.is_main else None

    def restore(self, snapshot: Snapshot, optimizer: torch.optim.Optimizer, path: Path) -> None:
        """Load a checkpoint's full state (read from ``path`` by every rank)."""
        restore_local(self.model, optimizer, snapshot, path)


class DDPModel(TrainedModel):
    """Replicated on every rank; DDP averages the gradients in the last micro-batch's backward."""

    holds_prefixes = False

    def __init__(self, model: nn.Module, ctx: DistContext) -> None:
        super().__init__(model, ctx)
        ddp = nn.parallel.DistributedDataParallel
        # Buffers (rotary frequencies) are constants: syncing them would cost a collective in every
        # forward. Construction broadcasts rank 0's parameters, so all ranks start equal. Newer
        # torch renamed the switch (deprecating the old name).
        no_buffer_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
                          else "broadcast_buffers")
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        self.engine = ddp(self.scorer, device_ids=device_ids, **{no_buffer_sync: False})

    def gradient_sync(self, enabled: bool) -> AbstractContextManager[None]:
        return nullcontext() if enabled else self.engine.no_sync()  # type: ignore[operator]


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks (the classes transformers lists in ``_no_split_modules``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kinds = set(getattr(base, "_no_split_modules", None) or ())
    blocks = [m for m in base.modules() if type(m).__name__ in kinds]
    if not blocks:
        raise ValueError(f"{type(base).__name__} names no decoder layer class (_no_split_modules) to shard with FSDP2")
    return blocks


class FSDPModel(TrainedModel):
    """Sharded over the ranks with FSDP2: each decoder layer is a unit, the scorer the root.

    Layers gather their parameters for their forward and free them after; the root (embeddings,
    final norm, head) keeps them from its forward through the backward, which recomputes the
    head's chunks. The optimizer must be built on the parameters after wrapping (they become
    DTensor shards).

    No prefix sharing in the update (:attr:`shares_prefix` False): every layer call is a
    collective, so all ranks must run the same forward calls, and a shared prefix is one more
    call on the ranks whose micro-batch has one.
    """

    shares_prefix = False

    def __init__(self, model: nn.Module, ctx: DistContext) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if not hasattr(FSDPModule, "reset_iter_state"):  # generation() relies on it
            raise RuntimeError(f"FSDP2 training needs a torch whose FSDPModule has reset_iter_state "
                               f"(this is {torch.__version__}); use strategy 'ddp'")
        super().__init__(model, ctx)
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        for block in decoder_blocks(model):
            fully_shard(block, mesh=mesh, reshard_after_forward=True)
        fully_shard(self.scorer, mesh=mesh, reshard_after_forward=False)
        self._claim_root()

    def _claim_root(self) -> None:
        """Run a first forward through the scorer on every rank.

        FSDP2 takes the first module to run a forward as its root. A rollout calls the model's
        layers directly, so without this a layer would claim the root before the first update.
        """
        ids = torch.zeros((1, 2), dtype=torch.long, device=self.ctx.device)
        with torch.no_grad():
            self.engine(ids, None, None, 1.0, False)
        self.engine.reset_iter_state()  # type: ignore[operator]  # back to sharded parameters

    @contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        self.engine.set_requires_gradient_sync(enabled)  # type: ignore[operator]
        try:
            yield
        finally:
            self.engine.set_requires_gradient_sync(True)  # type: ignore[operator]

    @contextmanager
    def generation(self) -> Iterator[bool]:
        """Gather every parameter once and keep them gathered for the rollout.

        Ranks play different lifecycles and so run different numbers of forward passes; with
        parameters gathered and no resharding after forward, those passes issue no collective.
        Afterwards :meth:`reset_iter_state` reshards and drops FSDP's per-iteration records: each
        generation forward was recorded for backward prefetching, and prefetching from records
        that differ between ranks would issue mismatched all-gathers. FSDP2 writes the gathered
        tensors in place without bumping their version counters, hence the True.
        """
        from torch.distributed.fsdp import FSDPModule

        for module in self.engine.modules():
            if isinstance(module, FSDPModule):
                module.unshard()
        self.engine.set_reshard_after_forward(False)  # type: ignore[operator]
        try:
            yield True
        finally:
            self.engine.set_reshard_after_forward(True)  # type: ignore[operator]
            self.engine.set_reshard_after_forward(False, recurse=False)  # type: ignore[operator]
            self.engine.reset_iter_state()  # type: ignore[operator]

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)  # a DTensor: the norm over every shard
        return float(norm.full_tensor())  # type: ignore[attr-defined]

    def _full_weights(self) -> dict[str, Tensor] | None:
        """Every whole tensor, gathered to rank 0's CPU; None on the other ranks (every rank calls it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return weights if self.ctx.is_main else None

    def _trainable_of(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: weights[n] for n, p in self.model.named_parameters() if p.requires_grad}

    def full_trainable(self) -> dict[str, Tensor] | None:
        weights = self._full_weights()
        return None if weights is None else self._trainable_of(weights)

    def snapshot(self, optimizer: torch.optim.Optimizer) -> Snapshot | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        weights = self._full_weights()
        optim = get_optimizer_state_dict(self.model, optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if weights is None:
            return None
        names = param_names(self.model, optimizer)
        return Snapshot(self._trainable_of(weights), optimizer_by_position(optim, names), weights)

    def restore(self, snapshot: Snapshot, optimizer: torch.optim.Optimizer, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        check_names(snapshot.trainable, (n for n, _ in self.model.named_parameters()), path)
        # strict=False: the file holds the trainable tensors only; each rank keeps its own shard.
        set_model_state_dict(self.model, snapshot.trainable, options=StateDictOptions(full_state_dict=True,
                                                                                      strict=False))
        by_name = optimizer_by_name(snapshot.optimizer, param_names(self.model, optimizer))
        set_optimizer_state_dict(self.model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def wrap_model(model: nn.Module, ctx: DistContext, strategy: str = "auto") -> TrainedModel:
    """The model as ``ctx`` trains it: as it is in one process, else DDP or FSDP2.

    ``strategy`` auto: DDP when the model carries LoRA adapters (peft), whose few trainable
    tensors are cheap to replicate; FSDP2 for full fine-tuning, whose optimizer state is not.
    Every rank must call it, with the same model.
    """
    if not ctx.active:
        return TrainedModel(model, ctx)
    if strategy == "auto":
        strategy = "ddp" if hasattr(model, "peft_config") else "fsdp"
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"unknown strategy {strategy!r}; allowed: 'auto', 'ddp', 'fsdp'")
    return DDPModel(model, ctx) if strategy == "ddp" else FSDPModel(model, ctx)


# -- optimizer state: by position (torch's state_dict, the checkpoint file) or by name (DCP) ------
def param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the optimizer's parameters, in the order its ``state_dict`` numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_by_position(state: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """A name-keyed optimizer state dict (``get_optimizer_state_dict``) in ``Optimizer.state_dict()`` layout."""
    pos = {n: i for i, n in enumerate(names)}
    return {"state": {pos[n]: s for n, s in state["state"].items()},
            "param_groups": [{**g, "params": [pos[n] for n in g["params"]]} for g in state["param_groups"]]}


def optimizer_by_name(state: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """An ``Optimizer.state_dict()`` keyed by parameter names instead (what ``set_optimizer_state_dict`` takes)."""
    by_pos = list(names)
    return {"state": {by_pos[i]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [by_pos[i] for i in g["params"]]} for g in state["param_groups"]]}
