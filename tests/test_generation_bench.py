"""The memory-bandwidth side of bench/generation_efficiency.py: what a decode step must read, and
the bandwidth it is compared with (a STREAM-like triad measured in the same run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from support import load_bench  # noqa: E402


def tiny_llama(tied: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied))


@pytest.mark.parametrize("tied", [True, False])
def test_decode_reads_every_weight_but_an_untied_input_table(tied: bool) -> None:
    bench = load_bench("generation_efficiency")
    model = tiny_llama(tied)
    every = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() lists a tied one once
    table = model.get_input_embeddings().weight
    expected = every if tied else every - table.numel() * table.element_size()
    assert bench.decode_weight_bytes(model) == expected
    assert bench.decode_weight_bytes(model.to(torch.bfloat16)) == expected // 2


def test_triad_bandwidth_is_a_plausible_rate() -> None:
    bench = load_bench("generation_efficiency")
    bw = bench.read_bandwidth("cpu", mib=8, repeats=2)
    assert 1e8 < bw < 1e13  # between 0.1 GB/s and 10 TB/s
