"""Generation FLOP utilisation of the transformers backend against this machine's measured matmul peak.

Workload, per batch size B (default 1, 8, 32, 64): B two-turn conversations built from real
FrozenLake-Obscure first prompts (distinct packs). Turn 1 samples a reply to each first prompt;
turn 2 appends the reply and a feedback message and samples again, as a multi-turn solve episode
does. Each batch size runs twice on the same model: with KV-cache reuse (turn 2 prefills only the
new tokens) and without (every prompt prefilled in full).

Utilisation = model FLOPs per second / peak FLOPs per second, where

* model FLOPs = 2 x parameters x (prompt tokens actually prefilled + generated tokens) -- the
  matmul work of every token the model computed (attention score FLOPs are not counted, which
  slightly understates long-context work);
* the peak is measured in the same run: the best of a few square ``torch.mm`` products in the
  model's dtype with the same torch threads (fp32 on a CPU).

Prefill and decode phases are also reported apart (forward hooks split passes by input length), so
it is visible which one limits utilisation: on a CPU, prefill runs near the matmul peak, while a
decode step at small batch reads all weights for a few rows of work (memory bound).

The model is the embedded SmolLM2-135M-Instruct by default; ``--model DIR --random-weights``
builds the same architecture from ``DIR``'s config with random weights (for machines without
the embedded package, e.g. a GPU box; speed does not depend on the weights' values, though reply
lengths do). ``--device cuda --dtype bfloat16`` runs on a GPU.

Decode is memory bound, so it is also measured against this machine's read bandwidth, taken in
the same run by a STREAM-like triad with the same torch threads: ``mem_util = (bytes a decode
step must read / step time) / bandwidth``, where the bytes are the weights (the input embedding
table aside unless it is also the output head) plus the live key/value states of every row (its
real tokens, not padding), from the decode steps' attention masks.

Usage: ``python bench/generation_efficiency.py [--batches 1,8,32,64 --max-new-tokens 32 --threads 1]``
Last line: ``RESULT util_b1=... util_b8=... util_b32=... util_b64=...`` with reuse (the default engine),
``mem_util_b1=...`` and so on (decode steps, with reuse), then ``util_nocache_b1=...`` and so on without. Reuse lowers utilisation while raising speed: it
removes prefill work, which runs near the peak, and leaves decoding, which does not.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from codrl.backends.base import GenRequest, SamplingParams
from codrl.backends.hf import HFBackend
from codrl.backends.kv_cache import model_kv_shape
from codrl.envs import make_env
from codrl.rollout.prompts import solve_user_message


def matmul_peak(dtype: torch.dtype, device: str, n: int, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n matrix product on this machine (same dtype, device and threads)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = 0.0
    for _ in range(repeats + 1):
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def read_bandwidth(device: str, mib: int = 256, repeats: int = 5) -> float:
    """Best bytes/s of a STREAM-like triad ``a = b + 3 c`` over three ``mib``-MiB float32 arrays
    (far larger than any cache) with the torch threads in force: two arrays read and one written
    per element, counted as STREAM does (12 bytes per element)."""
    n = mib * 2**20 // 4
    b = torch.rand(n, device=device)
    c = torch.rand(n, device=device)
    a = torch.empty(n, device=device)
    best = 0.0
    for _ in range(repeats + 1):
        _sync(device)
        t = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        _sync(device)
        best = max(best, 12 * n / (time.perf_counter() - t))
    return best


def decode_weight_bytes(model: Any) -> int:
    """Bytes of parameters a decode step reads: all of them, but the input embedding table when it
    is not also the output head (a step looks up only its batch's rows there)."""
    seen: set[int] = set()
    total = 0
    inputs = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == inputs.data_ptr()
    for p in model.parameters():
        if p.data_ptr() in seen or (p is inputs and not tied):
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    return total


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class PhaseTimer:
    """Forward-pass wall time split into prefill (input length > 1) and decode passes."""

    device: str
    kv_bytes_per_token: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: int = 0
    decode_kv_bytes: int = 0  # live key/value bytes the decode steps attend over (real tokens only)
    _t: float = 0.0

    def attach(self, model: Any) -> list[Any]:
        def pre(_m: Any, args: tuple, kwargs: dict) -> None:
            _sync(self.device)
            self._t = time.perf_counter()

        def post(_m: Any, args: tuple, kwargs: dict, _out: Any) -> None:
            _sync(self.device)
            dt = time.perf_counter() - self._t
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and ids.shape[1] > 1:
                self.prefill_s += dt
            else:
                self.decode_s += dt
                self.decode_steps += 1
                mask = kwargs.get("attention_mask")
                live = int(mask.sum()) if mask is not None else 0
                self.decode_kv_bytes += live * self.kv_bytes_per_token

        return [model.register_forward_pre_hook(pre, with_kwargs=True),
                model.register_forward_hook(post, with_kwargs=True)]


def first_prompts(n: int, seed: int) -> list[list[dict[str, str]]]:
    """``n`` real FrozenLake-Obscure first-turn chats (distinct packs, no hints yet)."""
    env = make_env("frozenlake")
    chats = []
    for i in range(n):
        pack = env.sample_pack("test", seed, i, 1)
        episode = env.start(pack, pack.tasks[0], env.new_state(pack))
        chats.append([{"role": "system", "content": env.system_prompt},
                      {"role": "user", "content": solve_user_message("", episode.reset())}])
    return chats


def run(backend: HFBackend, chats: list[list[dict[str, str]]], max_new: int, seed: int,
        n_params: int, peak: float, device: str, bandwidth: float = 0.0) -> dict[str, float]:
    """Two turns over ``chats`` in one batch each; FLOP utilisation overall and per phase, and the
    decode steps' memory-bandwidth utilisation."""
    params = SamplingParams(temperature=1.0, max_new_tokens=max_new)
    backend.store.clear()
    s0 = dict(vars(backend.stats))
    layers, kv_heads, head_dim = model_kv_shape(backend.model)
    timer = PhaseTimer(device, kv_bytes_per_token=2 * layers * kv_heads * head_dim * backend.dtype.itemsize)
    hooks = timer.attach(backend.model)
    _sync(device)
    t = time.perf_counter()
    try:
        first = [GenRequest(c, params, session=f"c{i}", seed=seed + i) for i, c in enumerate(chats)]
        outs = backend.generate(first)
        second = [GenRequest(r.messages + [{"role": "assistant", "content": o.text},
                                           {"role": "user", "content": "Invalid move. Reply with one move."}],
                             params, session=r.session, seed=seed + 1000 + i)
                  for i, (r, o) in enumerate(zip(first, outs, strict=True))]
        backend.generate(second)
        _sync(device)
    finally:
        for h in hooks:
            h.remove()
    wall = time.perf_counter() - t
    d = {k: v - s0[k] for k, v in vars(backend.stats).items()}
    prefill_flops = 2 * n_params * d["prefill_tokens"]
    decode_flops = 2 * n_params * (d["completion_tokens"] - d["requests"])  # first tokens come from prefill
    return {
        "wall_s": wall, "prefilled": d["prefill_tokens"], "cached": d["cached_tokens"],
        "generated": d["completion_tokens"], "gen_tok_s": d["completion_tokens"] / wall,
        "util": (prefill_flops + decode_flops + 2 * n_params * d["requests"]) / wall / peak,
        "prefill_util": prefill_flops / max(timer.prefill_s, 1e-9) / peak,
        "decode_util": decode_flops / max(timer.decode_s, 1e-9) / peak,
        "prefill_s": timer.prefill_s, "decode_s": timer.decode_s,
        "decode_ms": 1e3 * timer.decode_s / max(timer.decode_steps, 1),
        "decode_mb": (timer.decode_steps * decode_weight_bytes(backend.model) + timer.decode_kv_bytes)
        / max(timer.decode_steps, 1) / 1e6,
        "mem_util": (timer.decode_steps * decode_weight_bytes(backend.model) + timer.decode_kv_bytes)
        / max(timer.decode_s, 1e-9) / bandwidth if bandwidth else 0.0,
    }


def load(args: argparse.Namespace) -> HFBackend:
    if not args.random_weights:
        backend = HFBackend.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from codrl.backends.embedded import resolve_model_path

        path = resolve_model_path(args.model)
        config = AutoConfig.from_pretrained(path)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype)).to(args.device).eval()
        backend = HFBackend(model, AutoTokenizer.from_pretrained(path))
    backend.max_batch_size = max(int(b) for b in args.batches.split(","))
    return backend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,8,32,64", help="comma-separated batch sizes")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--model", default=None, help="model folder (default: the embedded model)")
    ap.add_argument("--random-weights", action="store_true", help="the model's architecture with random weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (0: torch's default)")
    ap.add_argument("--peak-n", type=int, default=0, help="matrix size for the peak (default 2048 CPU, 8192 GPU)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads and args.device == "cpu":
        torch.set_num_threads(args.threads)
    backend = load(args)
    n_params = sum(p.numel() for p in backend.model.parameters())
    n = args.peak_n or (2048 if args.device == "cpu" else 8192)
    peak = matmul_peak(backend.dtype, args.device, n)
    bandwidth = read_bandwidth(args.device)
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else os.cpu_count()}"
          f"{'' if args.device.startswith('cuda') else ' cpus'}), dtype {args.dtype}, torch threads "
          f"{torch.get_num_threads()}; {n_params / 1e6:.1f}M parameters; measured matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s ({n}x{n}); measured triad bandwidth {bandwidth / 1e9:.1f} GB/s; decode weights "
          f"{decode_weight_bytes(backend.model) / 1e6:.0f} MB; load average {os.getloadavg()[0]:.2f}")
    batches = [int(b) for b in args.batches.split(",")]
    chats = first_prompts(max(batches), args.seed)
    run(backend, chats[:1], 4, args.seed, n_params, peak, args.device)  # warm-up
    rows = []
    for b in batches:
        for reuse in (True, False):
            backend.store.budget_bytes = 4 * 2**30 if reuse else 0
            r = run(backend, chats[:b], args.max_new_tokens, args.seed, n_params, peak, args.device, bandwidth)
            rows.append((b, reuse, r))
            print(f"  batch {b:>3} reuse {'on ' if reuse else 'off'}: {r['wall_s']:.1f}s", flush=True)
    print()
    print(f"{'batch':>5} {'reuse':>5} {'prefilled':>9} {'cached':>7} {'generated':>9} {'wall s':>7} {'gen tok/s':>9} "
          f"{'util':>6} {'prefill util':>12} {'decode util':>11} {'ms/step':>7} {'MB/step':>7} {'mem util':>8}")
    for b, reuse, r in rows:
        print(f"{b:>5} {'on' if reuse else 'off':>5} {r['prefilled']:>9} {r['cached']:>7} {r['generated']:>9} "
              f"{r['wall_s']:>7.1f} {r['gen_tok_s']:>9.1f} {r['util']:>6.2f} {r['prefill_util']:>12.2f} "
              f"{r['decode_util']:>11.2f} {r['decode_ms']:>7.1f} {r['decode_mb']:>7.0f} {r['mem_util']:>8.2f}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print("RESULT " + " ".join(f"util_b{b}={r['util']:.2f}" for b, reuse, r in rows if reuse) + " "
          + " ".join(f"mem_util_b{b}={r['mem_util']:.2f}" for b, reuse, r in rows if reuse) + " "
          + " ".join(f"util_nocache_b{b}={r['util']:.2f}" for b, reuse, r in rows if not reuse))


if __name__ == "__main__":
    main()
