"""A checkpoint as one plain transformers model: find its ``model/`` folder, merge a LoRA adapter
into its base model, save the result as a Hugging Face folder.

A checkpoint argument is a run folder (its ``checkpoints/latest``), a checkpoint folder
(``step-NNNNNN``) or that folder's ``model/``. The base of a LoRA adapter is the folder its
``adapter_config.json`` names when that exists; else the ``model.path`` of the run's
``config.yaml`` (a run copied from another machine); else, for an adapter of the embedded model
whose cached copy moved, the embedded model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from codrl.backends.embedded import CACHE_NAME, is_adapter_dir, resolve_model_path
from codrl.config import read_yaml_mapping
from codrl.errors import CodrlError
from codrl.train.checkpoint import latest_checkpoint, model_dir_of

CHECKPOINT_FORMS = ("a run folder (with checkpoints/latest)", "a checkpoint folder (step-NNNNNN)",
                    "its model/ folder")


def model_folder(checkpoint: Path) -> Path:
    """The ``model/`` folder (a peft adapter or a full model) of a run, checkpoint or model folder."""
    p = Path(checkpoint).expanduser()
    if not p.exists():
        raise CodrlError(f"CHECKPOINT not found: {p}; expected {', '.join(CHECKPOINT_FORMS)}")
    if (p / "checkpoints").is_dir():
        latest = latest_checkpoint(p)
        if latest is None:
            raise CodrlError(f"CHECKPOINT {p} is a run folder without a complete checkpoint (checkpoints/latest)")
        p = latest
    p = model_dir_of(p)
    if not ((p / "config.json").is_file() or is_adapter_dir(p)):
        raise CodrlError(f"CHECKPOINT {p} holds neither a model (config.json) nor a LoRA adapter "
                         f"(adapter_config.json); expected {', '.join(CHECKPOINT_FORMS)}")
    return p


def adapter_base(adapter: Path) -> str:
    """Where the base model of the LoRA adapter folder ``adapter`` lies (see the module docstring)."""
    from peft import PeftConfig

    named = str(PeftConfig.from_pretrained(adapter).base_model_name_or_path)
    run_config = adapter.parent.parent.parent / "config.yaml"  # <run>/checkpoints/step-N/model
    model = read_yaml_mapping(run_config).get("model") if run_config.is_file() else None
    if Path(named).expanduser().is_dir():
        base: str | None = named
    elif isinstance(model, dict) and model.get("path"):
        base = str(model["path"])
    else:
        base = None if Path(named).name == CACHE_NAME else named
    try:
        return resolve_model_path(base)
    except CodrlError as e:
        raise CodrlError(f"base model of the LoRA adapter {adapter}: {e}") from None


def load_merged(model_dir: Path, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """The model of a checkpoint's ``model/`` folder with any LoRA adapter merged in (in float32),
    in ``dtype`` (None: the base model's own), and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from codrl.backends.hf import quiet_peft

    if not is_adapter_dir(model_dir):
        return (AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or "auto"),
                AutoTokenizer.from_pretrained(model_dir))
    from peft import PeftModel

    base = adapter_base(model_dir)
    dtype = dtype or AutoConfig.from_pretrained(base).dtype or torch.float32
    lm = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with quiet_peft():
        lm = PeftModel.from_pretrained(lm, model_dir).merge_and_unload()
    has_tokenizer = (model_dir / "tokenizer_config.json").is_file()
    return lm.to(dtype), AutoTokenizer.from_pretrained(model_dir if has_tokenizer else base)


def save_hf(model: Any, tokenizer: Any, out: Path) -> Path:
    """Save ``model`` (with its generation config) and ``tokenizer`` (with its chat template) into
    the folder ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
