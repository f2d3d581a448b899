"""The installed libraries are inside the ranges pyproject.toml pins, and the library internals the
project relies on still exist there (a new release that moves them fails here, not in a run)."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {(r := Requirement(d)).name: r for d in deps}


@pytest.mark.parametrize("name", ["torch", "transformers", "peft"])
def test_installed_versions_are_inside_the_pinned_ranges(name: str) -> None:
    req = _pins()[name]
    version = importlib.metadata.version(name)
    assert req.specifier.contains(version, prereleases=True), f"{name} {version} is outside {req.specifier}"


def test_transformers_pin_includes_the_gpu_machines_version() -> None:
    assert _pins()["transformers"].specifier.contains("5.17.0")


def test_transformers_cache_internals_the_kv_buffer_writes_into() -> None:
    """codrl.backends.kv_cache subclasses DynamicLayer and fills DynamicCache.layers itself."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    for method in ("update", "lazy_initialization", "get_seq_length"):
        assert callable(getattr(DynamicLayer, method, None)), f"DynamicLayer.{method} is gone"
    cache = DynamicCache()
    assert isinstance(cache.layers, list) and hasattr(cache, "layer_class_to_replicate")
    import inspect

    assert "key_states" in inspect.signature(DynamicLayer.update).parameters


def test_kv_buffer_cache_runs_a_forward_pass() -> None:
    """The buffer-backed cache through a real forward pass of a tiny Llama: same logits as transformers' own cache."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from codrl.backends.kv_cache import BatchKV, cache_argument, model_kv_shape

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    ids = torch.randint(0, 64, (2, 7))
    layers, kv_heads, head_dim = model_kv_shape(model)
    kv = BatchKV.allocate(layers, 2, kv_heads, 16, head_dim, torch.float32, torch.device("cpu"))
    arg = cache_argument(model)  # the name this transformers version takes, without deprecation warnings
    with torch.no_grad():
        cache = kv.cache()
        first = model(ids[:, :5], **{arg: cache}, use_cache=True).logits
        kv.sync_length(cache)
        nxt = model(ids[:, 5:], **{arg: kv.cache()}, use_cache=True).logits
        full = model(ids).logits
    assert kv.length == 5
    assert torch.allclose(torch.cat([first, nxt], 1), full, atol=1e-5)


def test_torch_and_transformers_attributes_read_by_the_backend() -> None:
    """hf.py keys its weight cache on parameters' in-place version counters; scoring reads the
    model's checkpointing flag under its new or old name."""
    from transformers import LlamaConfig, LlamaForCausalLM

    p = torch.nn.Parameter(torch.zeros(2))
    before = p._version
    with torch.no_grad():
        p.add_(1)
    assert p._version > before
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2))
    assert any(hasattr(type(model), n) for n in ("is_activation_checkpointing", "is_gradient_checkpointing"))


def test_no_deprecation_warning_from_wrapping_a_model_in_lora() -> None:
    """Wrapping a model in LoRA as the trainer does prints no FutureWarning or DeprecationWarning
    (peft's read of a deprecated transformers attribute is silenced around that call only)."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from codrl.backends.hf import quiet_peft

    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_peft():
            get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    bad = [w for w in seen if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not bad, [str(w.message) for w in bad]
