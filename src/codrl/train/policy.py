"""The trained policy: the configured model (with its LoRA adapters) and its separate vLLM sampler.

:func:`build_policy` loads the model of ``cfg.model`` as a transformers backend, with LoRA adapters
when configured; with ``model.engine: vllm``, :func:`build_vllm` builds the vLLM engine that samples
for it (refreshed from the trained model after each update).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from codrl.backends.base import Backend
from codrl.backends.hf import HFBackend
from codrl.train.config import TrainConfig


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random streams."""
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
