"""`codrl export`: a checkpoint as a merged Hugging Face folder or a GGUF file llama.cpp serves.

Fast tests use a tiny random Llama with a small byte-level BPE tokenizer, saved in the checkpoint
layout with a LoRA adapter whose B matrices are non-zero (so the merge changes the model). The slow
round trip exports the embedded SmolLM2 with such an adapter to an f32 GGUF, serves it with
llama.cpp and compares its greedy lifecycles with the checkpoint's own.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gguf
import numpy as np
import pytest
import torch

from codrl.errors import CodrlError
from codrl.export import export
from codrl.export.llama_gguf import check_architecture, pre_tokenizer_name, rope_interleave
from codrl.train.checkpoint import Snapshot, save_checkpoint, trainable_state

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["Map (row 0 is the top row, col 0 the left column):", "F H F P", "F G F F", "You are at row 0, col 3.",
          "The goal G is at row 1, col 1. Moves left: 6.", "Reply with <answer>Direction X</answer> 1, 2, 3, 4.",
          "Hints: walk down then left. Previous hints: none yet. Reward of this task: 1"]
needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama_cpp (llama-cpp-python[server]) is not installed")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "codrl.cli", *args], capture_output=True, text=True, timeout=600)


def bpe_tokenizer() -> Any:
    """A byte-level BPE tokenizer with ChatML special tokens, trained on a few lines in a blink."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(
        vocab_size=360, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tok.chat_template = CHATML
    return tok


def lora_checkpoint(base: Any, tokenizer: Any, run: Path, seed: int = 0, std: float = 0.2) -> Any:
    """Save ``base`` with a LoRA adapter (B matrices drawn with ``seed``) as checkpoint step 1 of run
    folder ``run``; return the adapted (peft) model."""
    from peft import LoraConfig, get_peft_model

    from codrl.backends.hf import quiet_peft

    with quiet_peft():
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                   "o_proj"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    save_checkpoint(run, 1, model, tokenizer, Snapshot(trainable_state(model), optimizer.state_dict()), {})
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny random Llama (grouped-query attention, untied head) saved as a base folder, and a run
    folder holding a LoRA checkpoint of it; ``adapted`` is the checkpoint's model in memory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("export")
    tok = bpe_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok) + 5, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.3, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    base = LlamaForCausalLM(config).eval()
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    adapted = lora_checkpoint(LlamaForCausalLM.from_pretrained(root / "base"), tok, root / "run")
    ids = tok.apply_chat_template([{"role": "system", "content": CORPUS[0]}, {"role": "user", "content": CORPUS[3]}],
                                  add_generation_prompt=True, tokenize=True, return_dict=False)
    return SimpleNamespace(root=root, run=root / "run", tok=tok, base=base, adapted=adapted,
                           prompt=tok.decode(ids), ids=list(ids))


def logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_hf_export_loads_with_plain_transformers_and_equals_the_checkpoint(tiny: SimpleNamespace,
                                                                             tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export(tiny.run, tmp_path / "hf", "hf")
    assert not (out / "adapter_config.json").exists() and (out / "generation_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHATML and tok(tiny.prompt).input_ids == tiny.ids
    expected = logits(tiny.adapted, tiny.ids)
    assert torch.allclose(logits(merged, tiny.ids), expected, atol=1e-4)
    assert not torch.allclose(logits(tiny.base, tiny.ids), expected, atol=1e-2)  # the merge mattered


def test_full_model_checkpoint_is_exported_as_is(tiny: SimpleNamespace, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    optimizer = torch.optim.SGD(tiny.base.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "run", 3, tiny.base, tiny.tok, Snapshot(trainable_state(tiny.base),
                                                                       optimizer.state_dict()), {})
    out = export(tmp_path / "run", tmp_path / "hf", "hf")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(logits(exported, tiny.ids), logits(tiny.base, tiny.ids))


def test_adapter_base_falls_back_to_the_run_config(tiny: SimpleNamespace, tmp_path: Path) -> None:
    """A run copied elsewhere: the base folder the adapter names is gone, config.yaml's model.path is used."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny.run, run)
    model_dir = run / "checkpoints" / "step-000001" / "model"
    adapter_config = json.loads((model_dir / "adapter_config.json").read_text())
    (model_dir / "adapter_config.json").write_text(json.dumps({**adapter_config,
                                                               "base_model_name_or_path": "/gone/base"}))
    (run / "config.yaml").write_text(f"model:\n  path: {tiny.root / 'base'}\n")
    out = export(model_dir, tmp_path / "hf", "hf", "f32")
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.allclose(logits(merged, tiny.ids), logits(tiny.adapted, tiny.ids), atol=1e-4)


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_gguf_reads_back_with_llama_names_shapes_and_tokenizer(tiny: SimpleNamespace, tmp_path: Path,
                                                               dtype: str) -> None:
    path = export(tiny.run / "checkpoints" / "step-000001", tmp_path / "m.gguf", "gguf", dtype)
    reader = gguf.GGUFReader(path)
    config = tiny.base.config
    expected = {"token_embd.weight": [64, config.vocab_size], "output_norm.weight": [64],
                "output.weight": [64, config.vocab_size]}
    for i in range(2):
        expected.update({f"blk.{i}.attn_norm.weight": [64], f"blk.{i}.ffn_norm.weight": [64],
                         f"blk.{i}.attn_q.weight": [64, 64], f"blk.{i}.attn_k.weight": [64, 32],
                         f"blk.{i}.attn_v.weight": [64, 32], f"blk.{i}.attn_output.weight": [64, 64],
                         f"blk.{i}.ffn_gate.weight": [64, 96], f"blk.{i}.ffn_up.weight": [64, 96],
                         f"blk.{i}.ffn_down.weight": [96, 64]})
    assert {t.name: [int(n) for n in t.shape] for t in reader.tensors} == expected
    matrix_type = gguf.GGMLQuantizationType.F16 if dtype == "f16" else gguf.GGMLQuantizationType.F32
    assert {t.tensor_type for t in reader.tensors if len(t.shape) == 2} == {matrix_type}
    assert {t.tensor_type for t in reader.tensors if len(t.shape) == 1} == {gguf.GGMLQuantizationType.F32}
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.attention.head_count_kv"].contents() == 2
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == config.vocab_size and tokens[1] == "<|im_start|>" and tokens[-1].startswith("[PAD")
    types = fields["tokenizer.ggml.token_type"].contents()
    assert types[1] == gguf.TokenType.CONTROL and types[-1] == gguf.TokenType.UNUSED
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tiny.tok.eos_token_id
    assert fields["tokenizer.chat_template"].contents() == CHATML


@needs_llama
@pytest.mark.parametrize(("dtype", "atol"), [("f32", 1e-3), ("f16", 0.2)])
def test_gguf_runs_in_llama_cpp_like_transformers(tiny: SimpleNamespace, tmp_path: Path, dtype: str,
                                                  atol: float) -> None:
    import llama_cpp

    path = export(tiny.run, tmp_path / "m.gguf", "gguf", dtype)
    f32 = int(gguf.GGMLQuantizationType.F32)  # an f32 KV cache, so f32 weights agree to rounding
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, logits_all=True, type_k=f32, type_v=f32, verbose=False)
    try:
        assert llm.tokenize(tiny.prompt.encode(), add_bos=False, special=True) == tiny.ids
        llm.eval(tiny.ids)
        got = torch.tensor(np.array(llm.scores[:len(tiny.ids)]))
    finally:
        llm.close()
    expected = logits(tiny.adapted, tiny.ids)
    assert torch.allclose(got, expected, atol=atol, rtol=0), (got - expected).abs().max()
    assert got[-1].argmax() == expected[-1].argmax()


def test_rope_interleave_turns_half_split_rotation_into_pair_rotation() -> None:
    """Rotating a query the transformers way, then reordering, equals reordering, then rotating
    adjacent pairs the llama.cpp way."""
    heads, head_dim = 3, 8
    q = torch.randn(heads * head_dim)
    angles = torch.rand(head_dim // 2) * 3
    halves = q.reshape(heads, 2, head_dim // 2)
    first, second = halves[:, 0], halves[:, 1]
    hf = torch.stack([first * angles.cos() - second * angles.sin(), second * angles.cos() + first * angles.sin()], 1)
    pairs = rope_interleave(q, heads).reshape(heads, head_dim // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    ggml = torch.stack([even * angles.cos() - odd * angles.sin(), odd * angles.cos() + even * angles.sin()], -1)
    assert torch.allclose(rope_interleave(hf.reshape(-1), heads), ggml.reshape(-1), atol=1e-6)
    assert not torch.allclose(rope_interleave(q, heads), q)


def test_unsupported_architecture_and_pre_tokenizer_are_one_line_errors() -> None:
    with pytest.raises(CodrlError, match="'GPT2LMHeadModel' is not supported; supported: LlamaForCausalLM"):
        check_architecture(SimpleNamespace(architectures=["GPT2LMHeadModel"], rope_parameters=None))
    assert pre_tokenizer_name({"type": "ByteLevel", "use_regex": True}) == "gpt-2"
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}]}) == "smollm"
    with pytest.raises(CodrlError, match="pre-tokenizer .* is not supported"):
        pre_tokenizer_name({"type": "Whitespace"})


@pytest.mark.parametrize(("args", "needles"), [
    (["/no/such/run", "out"], ["CHECKPOINT not found", "run folder", "model/ folder"]),
    (["/no/such/run", "out", "--format", "onnx"], ["--format", "'hf'", "'gguf'"]),
    (["/no/such/run", "out", "--format", "gguf", "--dtype", "q4"], ["--dtype", "'f16'", "'f32'"]),
])
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str], needles: list[str]) -> None:
    proc = run_cli("export", *args)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_cli_exports_a_run_folder(tiny: SimpleNamespace, tmp_path: Path) -> None:
    proc = run_cli("export", str(tiny.run), str(tmp_path / "m.gguf"), "--format", "gguf")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {tmp_path / 'm.gguf'} (gguf)" in proc.stdout
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    taken = run_cli("export", str(tiny.run), str(tiny.root), "--format", "hf")
    assert taken.returncode == 2 and "is not an empty folder" in taken.stderr


def lifecycle_replies(run: Path) -> dict[tuple[str, int, str], list[str]]:
    """The replies of every lifecycle of an evaluation folder, in order."""
    out: dict[tuple[str, int, str], list[str]] = {}
    for line in (run / "trajectories.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["pack_id"], record["repeat"], record["mode"]] = [
            turn["reply"] for episode in record["episodes"] for turn in episode["turns"]]
    return out


def match_rate(a: dict[Any, list[str]], b: dict[Any, list[str]]) -> float:
    """Fraction of replies identical at the same place of the same lifecycle (of the longer list)."""
    assert a.keys() == b.keys()
    same = sum(x == y for key in a for x, y in zip(a[key], b[key]))
    return same / sum(max(len(a[key]), len(b[key])) for key in a)


#: Serve greedy decoding as it is: no repeat penalty (llama-cpp-python applies 1.1 to every request
#: unless the penalty window is 0) and an f32 KV cache, as the f32 weights.
PLAIN_SERVING = ["--last_n_tokens_size", "0", "--type_k", "0", "--type_v", "0"]


@pytest.mark.slow
@needs_llama
def test_gguf_round_trip_serves_the_checkpoints_greedy_replies(tmp_path: Path) -> None:
    """An f32 GGUF of a LoRA checkpoint of the embedded model, served by llama.cpp and evaluated
    through `codrl eval --endpoint`, replies like the checkpoint itself on the same packs.

    The prompts are the same both ways: no reply prefix, and no update step (nohint), whose
    prefilled ``Hints:`` an endpoint can only ask for in words.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codrl.backends.embedded import embedded_model_dir
    from codrl.backends.llama_server import LlamaServer

    try:
        base_dir = embedded_model_dir()
    except CodrlError as e:
        pytest.skip(f"embedded model unavailable: {e}")
    run = tmp_path / "run"
    lora_checkpoint(AutoModelForCausalLM.from_pretrained(base_dir), AutoTokenizer.from_pretrained(base_dir), run,
                    seed=1, std=0.02)
    gguf_path = tmp_path / "model-f32.gguf"
    proc = run_cli("export", str(run), str(gguf_path), "--format", "gguf", "--dtype", "f32")
    assert proc.returncode == 0, proc.stderr
    evaluation = ["--env", "frozenlake", "--packs", "4", "-k", "3", "-r", "1", "--temperature", "0",
                  "--contexts", "nohint", "rollout.use_reply_prefix=false", "rollout.max_new_tokens_solve=24"]
    own = run_cli("eval", "--model", str(run / "checkpoints" / "step-000001" / "model"), "--out",
                  str(tmp_path / "own"), *evaluation)
    assert own.returncode == 0, own.stderr
    server = LlamaServer(gguf_path, threads=2)
    server.command += PLAIN_SERVING
    with server:
        served = run_cli("eval", "--endpoint", f"{server.url}/v1", "--out", str(tmp_path / "served"), *evaluation)
    server.cleanup()
    assert served.returncode == 0, served.stderr
    rate = match_rate(lifecycle_replies(tmp_path / "own"), lifecycle_replies(tmp_path / "served"))
    print(f"greedy replies identical (f32 GGUF via llama.cpp vs the checkpoint): {rate:.1%}")
    assert rate >= 0.9
    own_rows, served_rows = (json.loads((tmp_path / name / "results.json").read_text())["summary"]["positions"]
                             ["nohint"] for name in ("own", "served"))
    for a, b in zip(own_rows, served_rows, strict=True):
        assert a["ci_low"] is not None and b["ci_low"] is not None, "too few packs for a 95% interval"
        assert a["ci_low"] - 1e-9 <= b["mean_reward"] <= a["ci_high"] + 1e-9, (a, b)
        assert b["ci_low"] - 1e-9 <= a["mean_reward"] <= b["ci_high"] + 1e-9, (a, b)
