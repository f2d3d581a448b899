"""The typed training config (``codrl train --config FILE.yaml``).

Every knob has a default that runs on a 2-core CPU with the embedded model; ``configs/`` holds a CPU
quickstart and a GPU config mirroring the paper's FrozenLake-Obscure study.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from codrl.algo.advantages import AdvantageConfig
from codrl.config import EnvName, dump_yaml
from codrl.algo.losses import PolicyLossConfig
from codrl.algo.offpolicy import OffPolicyConfig
from codrl.rollout.config import RolloutConfig
from codrl.serve.agent_config import AgentConfig
from codrl.train.teachers import TeacherConfig

if TYPE_CHECKING:
    from codrl.envs import CoDEnv


class EnvSpec(BaseModel):
    """One training environment and its weight in the mixture."""

    model_config = ConfigDict(extra="forbid")

    name: EnvName = Field(description="environment name (see `codrl envs`) or import path 'package.module:ClassName'")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword parameters of the environment")
    weight: float = Field(1.0, gt=0.0, description="relative sampling weight of this environment's packs")


class LoraSpec(BaseModel):
    """LoRA adapter settings (peft)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class ModelConfig(BaseModel):
    """Which model to train and how."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field("embedded", description="'embedded' (SmolLM2-135M-Instruct) or a Hugging Face model folder")
    lora: LoraSpec | None = Field(default_factory=LoraSpec, description="LoRA settings; null = full fine-tuning")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    gradient_checkpointing: bool = False
    engine: Literal["hf", "vllm"] = Field("hf", description="rollout engine: 'hf' (the trained model itself, "
                                          "in-process) or 'vllm' (a vLLM copy refreshed after every update; GPU, "
                                          "pip install 'codrl[vllm]')")
    vllm: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments of the vLLM engine "
                                 "(e.g. gpu_memory_utilization, max_model_len); see docs/vllm.md")
    kv_cache_mb: float = Field(1024, ge=0, description="memory (MiB) the rollout engine keeps to reuse the KV cache "
                               "of prompt prefixes it has seen; 0 prefills every prompt in full")
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra arguments of the "
                                                 "chat template, e.g. {enable_thinking: false} for Qwen3 (passed "
                                                 "to apply_chat_template by the transformers and vLLM engines)")


class OptimConfig(BaseModel):
    """AdamW settings."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(2e-4, gt=0.0, description="learning rate (must be > 0)")
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0.0, description="max global gradient norm")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up steps")


class EvalSchedule(BaseModel):
    """Periodic evaluation on the test split (same report as `codrl eval`)."""

    model_config = ConfigDict(extra="forbid")

    every: int = Field(0, ge=0, description="evaluate every N steps (0 = only at start and end)")
    at_start: bool = True
    at_end: bool = True
    packs: int = Field(4, ge=1)
    pack_size: int | None = Field(None, ge=1, description="default: the training pack size")
    repeats: int = Field(1, ge=1)
    split: Literal["train", "test"] = "test"
    temperature: float = Field(1.0, ge=0.0)
    envs: list[EnvSpec] = Field(default_factory=list, description="extra evaluation environments (e.g. held-out "
                                "or harder variants), evaluated besides every training environment")


class LogConfig(BaseModel):
    """Where metrics go (:mod:`codrl.train.loggers`)."""

    model_config = ConfigDict(extra="forbid")

    backends: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"], description="metric sinks: tensorboard (<output_dir>/tb), wandb "
                                                            "(pip install wandb), mlflow (pip install mlflow-skinny)")
    wandb_project: str = "codrl"
    wandb_mode: Literal["online", "offline", "disabled"] = Field("online", description="offline: keep the run in "
                                                                 "<output_dir>/wandb for a later `wandb sync`")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                                            "else a file store in <output_dir>/mlruns)")
    mlflow_experiment: str = "codrl"
    progress: bool = True

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old in ("tensorboard", "wandb"):
                if old in data:
                    raise ValueError(f"log.{old} was replaced by log.backends: list the sinks, e.g. "
                                     f"backends: [tensorboard, wandb, mlflow] (or [] for none)")
        return data


class DistributedConfig(BaseModel):
    """Scale-out on existing engines (docs/distributed.md). The defaults run everything in one process.

    * Ray rollout workers: ``rollout_workers`` actors, each with its own copy of the policy, play
      the lifecycles; new weights reach them through Ray's object store after every update.
    * torch.distributed training: launched with ``torchrun`` or as ``train_workers`` Ray Train
      workers, each process trains on its share of the rows; ``strategy`` picks DDP (replicated
      model) or FSDP2 (sharded model).
    * Asynchronous steps: the next step's rollouts are generated while this step trains.
    """

    model_config = ConfigDict(extra="forbid")

    rollout_workers: int = Field(0, ge=0, description="Ray actors that play the lifecycles (pip install "
                                 "'codrl[ray]'); 0: this process plays them")
    ray_address: str | None = Field(None, description="Ray cluster to join ('auto', 'host:6379' or "
                                    "'ray://host:10001'); None starts a local Ray instance")
    worker_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves for each rollout worker")
    worker_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves for each rollout worker (fractions share one)")
    worker_threads: int = Field(1, ge=1, description="torch threads of each rollout worker")
    worker_resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources each "
                                               "rollout and training worker also needs, e.g. {trainer_node: 1} "
                                               "to place workers on nodes started with that resource")
    connect_timeout_s: float = Field(30.0, gt=0, description="fail when ray_address does not answer within this time")
    train_workers: int = Field(0, ge=0, description="training processes started as Ray Train workers (each "
                               "with worker_cpus/worker_gpus); 0: this process, or the ones torchrun started")
    strategy: Literal["auto", "ddp", "fsdp"] = Field("auto", description="under torchrun: 'ddp' replicates the "
                                                     "model, 'fsdp' shards it (FSDP2); auto: ddp with LoRA, fsdp "
                                                     "for full fine-tuning")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="torch.distributed backend; auto: nccl "
                                                     "on CUDA, gloo on CPU")
    async_rollouts: bool = Field(False, description="generate the next steps' rollouts while this step trains "
                                 "(off: every step samples from the weights it trains)")
    lookahead: int = Field(1, ge=1, description="with async_rollouts: how many steps rollouts may run ahead "
                           "of training")
    max_staleness: int = Field(1, ge=0, description="experiences sampled by a policy more than this many "
                               "updates older than the one they train are stale")
    stale: Literal["drop", "correct"] = Field("drop", description="stale experiences are dropped (counted in "
                                              "the step's metrics) or kept and importance-corrected (offpolicy.mode, "
                                              "tis when that is none)")


class TrainConfig(BaseModel):
    """Everything a training run needs."""

    model_config = ConfigDict(extra="forbid")

    envs: list[EnvSpec] = Field(default_factory=list, description="training environments (at least one, unless "
                                "an agent program plays the packs of its own task source: agent)")
    agent: AgentConfig | None = Field(None, description="train an agent program of your own instead of playing "
                                      "environments (docs/own_agent.md)")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig)
    loss: PolicyLossConfig = Field(default_factory=PolicyLossConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalSchedule = Field(default_factory=EvalSchedule)
    log: LogConfig = Field(default_factory=LogConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    steps: int = Field(4, ge=1, description="RL steps (one rollout batch each)")
    packs_per_step: int = Field(2, ge=1, description="packs per step; each is played rollout.repeats times")
    updates_per_step: int = Field(1, ge=1, description="optimizer steps per rollout batch (mini-batches)")
    micro_batch_tokens: int = Field(4096, ge=16, description="token budget of one forward/backward micro-batch")
    old_logprobs: Literal["auto", "rollout", "recompute"] = Field(
        "auto", description="auto: reuse rollout logprobs when the rollout policy is the trained model")
    offpolicy: OffPolicyConfig = Field(default_factory=OffPolicyConfig, description="correction for a sampler "
                                       "that is not the trainer (vLLM, a reduced-precision engine, stale steps)")
    teachers: list[TeacherConfig] = Field(default_factory=list, description="on-policy distillation: one teacher "
                                          "per environment of the mixture (docs/distillation.md)")
    merge_turns: bool = Field(True, description="train a multi-turn episode as one row when its turns' token ids "
                              "extend each other exactly (one forward instead of K)")
    share_prefix: bool = Field(True, description="the update computes a prefix shared by a micro-batch's rows (the "
                               "system prompt, a pack's first task) once instead of once per row; exact, off under "
                               "gradient checkpointing")
    generation_batch_size: int = Field(32, ge=1)
    save_every: int = Field(1, ge=0, description="checkpoint every N steps (0 = only at the end)")
    output_dir: str = "runs/train"
    seed: int = 0

    @model_validator(mode="after")
    def _envs_or_agent(self) -> TrainConfig:
        if self.agent is None and not self.envs:
            raise ValueError("envs: at least one training environment is needed (or an agent section)")
        if self.agent is not None:
            if self.envs:
                raise ValueError("envs: an agent program plays the packs of agent.tasks; leave envs out")
            on = [k for k in ("at_start", "at_end") if getattr(self.eval, k)] + (["every"] if self.eval.every else [])
            if on:
                raise ValueError(f"eval.{on[0]}: an agent program is measured by its training rewards by position "
                                 f"(reward/pos<i>); turn evaluation off (eval.at_start: false, eval.at_end: false, "
                                 f"eval.every: 0)")
            if self.distributed.rollout_workers or self.distributed.async_rollouts or self.model.engine != "hf":
                raise ValueError("agent: agent programs play through the in-process training proxy on the "
                                 "transformers engine (model.engine: hf, no Ray rollout workers or async steps)")
        return self


def write_run_config(cfg: TrainConfig, out: Path, envs: Sequence[CoDEnv]) -> None:
    """What a run was started with, in its output folder: ``config.yaml`` and, for environments
    whose worlds come from a secret key, ``world_keys.json`` (the key's fingerprint, never the key)."""
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, out / "config.yaml")
    keys = {e.name: e.world_key_fingerprint() for e in envs if e.secret_worlds}
    if keys:
        (out / "world_keys.json").write_text(json.dumps(keys, indent=1) + "\n")
