"""Checkpoints out of codrl: a merged Hugging Face folder, or a GGUF file that llama.cpp serves.

:func:`export` reads a run, checkpoint or ``model/`` folder (:mod:`codrl.export.merge`), merges a
LoRA adapter into its base model and writes either a plain Hugging Face folder (``hf``: loadable by
``transformers`` alone) or one GGUF file (``gguf``: :mod:`codrl.export.llama_gguf`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from codrl.errors import CodrlError, bad_choice

__all__ = ["DTYPES", "FORMATS", "export"]

#: Output formats.
FORMATS = ("hf", "gguf")
#: Weight types of the output (hf default: the base model's own dtype; gguf default: f16).
DTYPES = {"f16": torch.float16, "f32": torch.float32}


def check_output(out: Path, fmt: str) -> None:
    """Fail before any model loads when ``out`` cannot take an export of format ``fmt``."""
    if fmt == "hf" and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CodrlError(f"OUT {out} already exists and is not an empty folder; pass a new folder")
    if fmt == "gguf" and out.is_dir():
        raise CodrlError(f"OUT {out} is a folder; --format gguf writes one file, e.g. {out / 'model.gguf'}")


def export(checkpoint: Path, out: Path, fmt: str = "hf", dtype: str | None = None) -> Path:
    """Export ``checkpoint`` (a run, checkpoint or ``model/`` folder) to ``out`` in format ``fmt``
    (``hf`` or ``gguf``) with weights of ``dtype`` (``f16``/``f32``); return ``out``."""
    from codrl.export.merge import load_merged, model_folder, save_hf

    if fmt not in FORMATS:
        raise bad_choice("--format", fmt, FORMATS)
    if dtype is not None and dtype not in DTYPES:
        raise bad_choice("--dtype", dtype, DTYPES)
    check_output(out, fmt)
    model_dir = model_folder(checkpoint)
    if fmt == "hf":
        return save_hf(*load_merged(model_dir, DTYPES[dtype] if dtype else None), out)
    from codrl.export.llama_gguf import write_gguf

    return write_gguf(*load_merged(model_dir, torch.float32), out, dtype or "f16")
