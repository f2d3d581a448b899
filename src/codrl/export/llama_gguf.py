"""A transformers Llama model and its byte-level BPE tokenizer as one GGUF file llama.cpp loads.

Weights are written in f32, or f16 for matrices (norm vectors stay f32, as llama.cpp expects).
Tensor names come from the ``gguf`` package's name map of the Llama architecture. The query and
key projections are reordered for llama.cpp's rotary embedding: transformers rotates the two
halves of each head (dimension ``i`` with ``i + head_dim / 2``), llama.cpp rotates adjacent pairs
(``2i`` with ``2i + 1``), so the rows of each head are interleaved to match.

The tokenizer is written as llama.cpp's ``gpt2`` (byte-level BPE) vocabulary: tokens, their
types (special added tokens are control tokens), merges, the special token ids, whether a BOS/EOS
is added, and the chat template. The pre-tokenizer is named from the tokenizer's own one: plain
byte-level splitting is ``gpt-2``, single digits split first is ``smollm``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from codrl.errors import CodrlError, bad_choice

#: Architectures (``config.architectures``) this writer supports.
ARCHITECTURES = ("LlamaForCausalLM",)
#: GGUF weight types: numpy dtype of the matrices, and the file type recorded in the header.
DTYPES: dict[str, tuple[type[np.floating], gguf.LlamaFileType]] = {
    "f32": (np.float32, gguf.LlamaFileType.ALL_F32),
    "f16": (np.float16, gguf.LlamaFileType.MOSTLY_F16),
}


def check_architecture(config: Any) -> None:
    """Fail with one line unless ``config`` is a model this writer supports, with plain rotary positions."""
    arch = (config.architectures or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise CodrlError(f"--format gguf: architecture {arch!r} is not supported; supported: "
                         f"{', '.join(ARCHITECTURES)} (export --format hf and convert with llama.cpp's converter)")
    rope_type = (config.rope_parameters or {}).get("rope_type", "default")
    if rope_type != "default":
        raise CodrlError(f"--format gguf: rope_type {rope_type!r} is not supported; supported: 'default'")


def rope_interleave(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a query or key projection (``heads`` heads) from half-split to adjacent-pair rotary order."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def pre_tokenizer_name(spec: dict[str, Any] | None) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) of a tokenizer.json ``pre_tokenizer`` entry."""
    parts = spec.get("pretokenizers", []) if spec and spec.get("type") == "Sequence" else [spec or {}]
    kinds = [(p.get("type"), p.get("individual_digits", p.get("use_regex"))) for p in parts]
    if kinds == [("ByteLevel", True)]:
        return "gpt-2"
    if kinds == [("Digits", True), ("ByteLevel", True)]:
        return "smollm"
    raise CodrlError(f"--format gguf: pre-tokenizer {json.dumps(spec)[:120]} is not supported; supported: byte-level "
                     "(GPT-2 splitting), or single digits then byte-level")


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int) -> None:
    """Write ``tokenizer`` (a fast byte-level BPE tokenizer) as llama.cpp's ``gpt2`` vocabulary."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise CodrlError(f"--format gguf: tokenizer model {spec['model']['type']!r} is not supported; "
                         "supported: byte-level BPE")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise CodrlError(f"--format gguf: token id {max(by_id)} is outside the model's vocab_size {vocab_size}")
    added = tokenizer.added_tokens_decoder
    types = gguf.TokenType
    tokens, kinds = [], []
    for i in range(vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        if i not in by_id:
            kinds.append(types.UNUSED)
        elif i in added:
            kinds.append(types.CONTROL if added[i].special else types.USER_DEFINED)
        else:
            kinds.append(types.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    for setter, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                             (writer.add_eos_token_id, tokenizer.eos_token_id),
                             (writer.add_unk_token_id, tokenizer.unk_token_id),
                             (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            setter(token_id)
    probe = tokenizer("a").input_ids
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id])
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def add_hparams(writer: gguf.GGUFWriter, config: Any, file_type: gguf.LlamaFileType) -> None:
    """Write the Llama hyperparameters of ``config``."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)


def add_tensors(writer: gguf.GGUFWriter, model: Any, matrix_dtype: type[np.floating]) -> None:
    """Write the weights of ``model`` under their GGUF names, query/key rows in llama.cpp's rotary order."""
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd when the file has no output weight
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise CodrlError(f"--format gguf: weight {hf_name!r} has no GGUF name in the Llama architecture")
        data = tensor.detach().to(torch.float32).cpu()
        projection = hf_name.split(".")[-2]
        if projection in heads:
            data = rope_interleave(data, heads[projection])
        writer.add_tensor(name, data.numpy().astype(matrix_dtype if data.ndim > 1 else np.float32))


def write_gguf(model: Any, tokenizer: Any, out: Path, dtype: str = "f16") -> Path:
    """Write ``model`` (a transformers Llama) and ``tokenizer`` to the GGUF file ``out``, atomically."""
    if dtype not in DTYPES:
        raise bad_choice("--dtype", dtype, DTYPES)
    check_architecture(model.config)
    matrix_dtype, file_type = DTYPES[dtype]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_name(out.stem)
        add_hparams(writer, model.config, file_type)
        add_tokenizer(writer, tokenizer, model.config.vocab_size)
        add_tensors(writer, model, matrix_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
