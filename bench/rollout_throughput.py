"""Rollout throughput: codrl's batched lifecycle runner, with and without KV-cache reuse, vs a batch-1 loop.

All sides play FrozenLake-Obscure packs through the *same* lifecycle generator
(:func:`codrl.rollout.lifecycle.play_lifecycle`) with the same model (the embedded
SmolLM2-135M-Instruct, CPU fp32), the same :class:`RolloutConfig` and the same prompts
(``HFBackend.encode_prompt``); they differ only in how model calls are served:

* cached: :class:`LifecycleRunner` plays ``--concurrent`` lifecycles at once through
  ``HFBackend.serve``: continuous batching (a lifecycle's next request joins the decode batch while
  others are still decoding) with KV-cache reuse (the key/value states of prefixes computed before
  -- the lifecycle's previous call, the system prompt, a pack's shared first prompt -- are reused
  and only the rest is prefilled).
* runner: the same, with reuse off (``kv_cache_mb=0``): every prompt is prefilled in full.
* naive: one lifecycle at a time, and every request is a literal batch-1 ``model.generate`` call
  (sampling, stop strings and logprobs computed the same way).

Throughput is generated (completion) tokens per wall-clock second. The naive loop is slow, so by
default it plays only ``--naive-lifecycles`` of the jobs (spread over the packs) and its tok/s is
computed on that subset; the ratio compares rates, so the subset only adds sampling noise.
``--no-cache`` skips the cached side (the runner alone vs the loop).

For each runner side a forward-pass profile (prefill vs decode time, padding, batch sizes, decode
rows spent on finished sequences) shows where the time goes, and the prompt tokens actually
prefilled per generated token are printed. Other processes on the machine skew wall-clock numbers:
the load average and the process CPU time are printed next to the results.

Threads: the default is one torch thread. On a 2-core machine that other processes also use, two
torch threads spin-wait on each other and run several times slower than one (measured 9x on a
374-token prefill); ``--threads 2`` is the better choice only on an otherwise idle machine.

Run time (defaults: 32 lifecycles, K=2, 2 CPU cores): the runner without reuse prefills about
145k prompt tokens (8-15 minutes), the cached runner a fraction of that, the naive subset 1-2
minutes. ``--packs 4 --repeats 2`` gives a quicker, smaller-batch run.

Usage: ``python bench/rollout_throughput.py [--packs 8 --repeats 4 --pack-size 2 --concurrent 32]``

The last output line is ``RESULT speedup=<cached runner / batch-1 loop> cache_speedup=<cached runner /
runner without reuse> prefill_per_gen_before=<prompt tokens prefilled per generated token, no reuse>
prefill_per_gen_after=<the same with reuse>`` plus the raw rates.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from codrl.backends.base import GenRequest, GenResult
from codrl.backends.hf import HFBackend
from codrl.backends.kv_cache import common_prefix
from codrl.envs import make_env
from codrl.rollout.config import RolloutConfig
from codrl.rollout.experience import LifecycleResult
from codrl.rollout.lifecycle import Job, LifecycleRunner, make_jobs, play_lifecycle


# -- the naive side ------------------------------------------------------------------------------
@torch.inference_mode()
def naive_generate(backend: HFBackend, req: GenRequest) -> GenResult:
    """One request, one literal batch-1 ``model.generate`` call (no padding, no batching)."""
    model, tok = backend.model, backend.tokenizer
    p = req.sampling
    prompt = backend.encode_prompt(req)
    ids = torch.tensor([prompt], dtype=torch.long, device=backend.device)
    sample = p.temperature > 0
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=sample,
        temperature=p.temperature if sample else None, top_p=p.top_p if sample else None,
        top_k=0 if sample else None, max_new_tokens=p.max_new_tokens,
        stop_strings=list(p.stop) or None, tokenizer=tok if p.stop else None,
        eos_token_id=backend.eos_ids, pad_token_id=backend.pad_id,
        return_dict_in_generate=True, output_logits=True,
    )
    toks = out.sequences[0, len(prompt):].tolist()
    temp = p.temperature if sample else 1.0
    logits = torch.stack(out.logits, dim=1)[0, : len(toks)].float()
    lps = torch.log_softmax(logits / temp, dim=-1).gather(1, torch.tensor(toks).unsqueeze(1)).squeeze(1)
    text = tok.decode(toks, skip_special_tokens=True)
    stopped = (toks and toks[-1] in backend.eos_ids) or any(s in text for s in p.stop)
    return GenResult(text=text, prompt_ids=prompt, completion_ids=toks, logprobs=lps.tolist(),
                     finish_reason="stop" if stopped else "length")


def run_naive(backend: HFBackend, jobs: list[Job], cfg: RolloutConfig) -> list[LifecycleResult]:
    results = []
    for job in jobs:
        gen = play_lifecycle(job.env, job.pack, job.repeat, cfg, mode=cfg.mode)
        req = next(gen)
        try:
            while True:
                req = gen.send(naive_generate(backend, req))
        except StopIteration as stop:
            results.append(stop.value)
    return results


# -- profiling of the codrl side -------------------------------------------------------------------
@dataclass
class ForwardProfile:
    """Wall time of the model's forward passes, split into prefill (seq len > 1) and decode (seq len 1).

    Token and row counts come from the backend's own stats (``HFBackend.stats``).
    """

    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefill_calls: int = 0
    decode_calls: int = 0
    batch_sizes: Counter = field(default_factory=Counter)  # rows per prefill pass
    _t: float = 0.0

    def attach(self, model: Any) -> list[Any]:
        def pre(_mod: Any, args: tuple, kwargs: dict) -> None:
            self._t = time.perf_counter()

        def post(_mod: Any, args: tuple, kwargs: dict, _out: Any) -> None:
            dt = time.perf_counter() - self._t
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                return
            b, n = ids.shape
            if n > 1:
                self.prefill_s += dt
                self.prefill_calls += 1
                self.batch_sizes[b] += 1
            else:
                self.decode_s += dt
                self.decode_calls += 1

        return [model.register_forward_pre_hook(pre, with_kwargs=True),
                model.register_forward_hook(post, with_kwargs=True)]


def reusable_prefill(results: list[LifecycleResult]) -> dict[str, int]:
    """Upper bound on prompt tokens a KV cache could serve instead of a fresh prefill.

    ``shared``: the prefix common to every prompt of the same episode type (the system prompt and
    chat header); ``history``: beyond that, the prefix a prompt shares with the same lifecycle's
    earlier calls (prompt + completion), i.e. the multi-turn history of a solve episode.
    """
    def _lcp(a: list[int], b: list[int]) -> int:
        return common_prefix(np.asarray(a), np.asarray(b))

    exps = [e for r in results for e in r.experiences]
    shared: dict[str, int] = {}
    for kind in ("solve", "update"):
        prompts = [e.prompt_ids for e in exps if e.episode_type == kind]
        if prompts:
            shared[kind] = min(_lcp(prompts[0], p) for p in prompts)
    out = {"shared": 0, "history": 0}
    for r in results:
        seen: list[list[int]] = []
        for e in r.experiences:
            s = shared.get(e.episode_type, 0)
            h = max((_lcp(e.prompt_ids, q) for q in seen), default=0)
            out["shared"] += s
            out["history"] += max(0, h - s)
            seen.append(e.prompt_ids + e.completion_ids)
    out["total"] = out["shared"] + out["history"]
    return out


def completion_tokens(results: list[LifecycleResult]) -> int:
    return sum(len(e.completion_ids) for r in results for e in r.experiences)


def spread(jobs: list[Job], n: int) -> list[Job]:
    """``n`` jobs spread evenly over the job list (so over packs, not only the first pack)."""
    if n >= len(jobs):
        return list(jobs)
    step = len(jobs) / n
    return [jobs[int(i * step)] for i in range(n)]


@dataclass
class Side:
    """One runner configuration's measurements."""

    name: str
    results: list[LifecycleResult]
    wall_s: float
    cpu_s: float
    stats: dict[str, int]
    prof: ForwardProfile

    @property
    def gen_tokens(self) -> int:
        return completion_tokens(self.results)

    @property
    def tok_s(self) -> float:
        return self.gen_tokens / self.wall_s

    @property
    def prefill_per_gen(self) -> float:
        return self.stats["prefill_tokens"] / max(self.gen_tokens, 1)


def run_side(name: str, backend: HFBackend, jobs: list[Job], cfg: RolloutConfig, seed: int) -> Side:
    """Play every job through the lifecycle runner on ``backend``, profiling its forward passes."""
    torch.manual_seed(seed)
    prof = ForwardProfile()
    hooks = prof.attach(backend.model)
    stats0 = dict(vars(backend.stats))
    runner = LifecycleRunner(backend, cfg)
    c0, w0 = time.process_time(), time.perf_counter()
    try:
        results = runner.run(jobs)
    finally:
        for h in hooks:
            h.remove()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    stats = {k: v - stats0[k] for k, v in vars(backend.stats).items()}
    return Side(name, results, wall, cpu, stats, prof)


def print_profile(side: Side) -> None:
    prof, stats = side.prof, side.stats
    print(f"{side.name} profile:")
    print(f"  {stats['requests']} requests; prefill passes {prof.prefill_calls} (batch sizes "
          f"{dict(sorted(prof.batch_sizes.items()))}), decode steps {prof.decode_calls}")
    fwd = prof.prefill_s + prof.decode_s
    print(f"  forward time {fwd:.1f}s of {side.wall_s:.1f}s wall ({side.wall_s - fwd:.1f}s outside the model: "
          f"sampling, cache copies, tokenizer, environments): prefill {prof.prefill_s:.1f}s ({prof.prefill_calls} "
          f"calls), decode {prof.decode_s:.1f}s ({prof.decode_calls} steps)")
    pad = 1 - stats["prefill_tokens"] / max(stats["prefill_slots"], 1)
    print(f"  prompt tokens {stats['prompt_tokens']}: {stats['cached_tokens']} served from the KV cache, "
          f"{stats['prefill_tokens']} prefilled ({side.prefill_per_gen:.1f} per generated token) in "
          f"{stats['prefill_slots']} padded slots ({pad:.0%} padding), "
          f"{stats['prefill_slots'] / max(prof.prefill_s, 1e-9):.0f} slots/s")
    generated = side.gen_tokens - sum(len(r.experiences) for r in side.results)  # first tokens come from prefill
    print(f"  decode: {stats['decode_rows']} row-steps for {generated} tokens sampled in decode steps "
          f"({1 - generated / max(stats['decode_rows'], 1):.0%} of rows spent on finished sequences); "
          f"{1000 * prof.decode_s / max(prof.decode_calls, 1):.0f} ms/step at "
          f"{stats['decode_rows'] / max(prof.decode_calls, 1):.1f} rows/step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--pack-size", type=int, default=2)
    ap.add_argument("--concurrent", type=int, default=32, help="lifecycles played at once (and engine batch cap)")
    ap.add_argument("--naive-lifecycles", type=int, default=4,
                    help="how many of the jobs the naive loop plays (tok/s is computed on that subset)")
    ap.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the runner with KV-cache reuse (default on)")
    ap.add_argument("--kv-cache-mb", type=float, default=2048, help="prefix store budget of the cached side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--env", default="frozenlake")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-new-tokens-solve", type=int, default=RolloutConfig().max_new_tokens_solve)
    ap.add_argument("--max-new-tokens-update", type=int, default=RolloutConfig().max_new_tokens_update)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default); see the module doc")
    ap.add_argument("--skip-naive", action="store_true", help="profile the runner sides only")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = RolloutConfig(pack_size=args.pack_size, repeats=args.repeats, max_concurrent=args.concurrent,
                        max_new_tokens_solve=args.max_new_tokens_solve,
                        max_new_tokens_update=args.max_new_tokens_update)
    env = make_env(args.env)
    packs = [(env, env.sample_pack(args.split, args.seed, i, args.pack_size)) for i in range(args.packs)]
    jobs = make_jobs(packs, cfg)
    t0 = time.perf_counter()
    base = HFBackend.from_pretrained(None, max_batch_size=args.concurrent, kv_cache_mb=0)
    print(f"model loaded in {time.perf_counter() - t0:.1f}s; torch threads {torch.get_num_threads()}; "
          f"{len(jobs)} lifecycles ({args.packs} packs x {args.repeats} repeats, K={args.pack_size}, "
          f"{args.env}/{args.split}), concurrent {args.concurrent}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    naive_generate(base, GenRequest([{"role": "user", "content": "Hi"}]))  # warm-up

    sides = [run_side("runner", base, jobs, cfg, args.seed)]
    if args.cache:
        cached = HFBackend(base.model, base.tokenizer, max_batch_size=args.concurrent, kv_cache_mb=args.kv_cache_mb)
        sides.append(run_side("cached", cached, jobs, cfg, args.seed))
        print(f"cached side: store peak {cached.store.stats.peak_bytes / 2**20:.0f} MiB, "
              f"{cached.store.stats.evictions} evictions, {len(cached.store)} entries left")

    naive_jobs = spread(jobs, args.naive_lifecycles)
    naive_tok, naive_s, naive_cpu, n_naive_req = 0, float("nan"), float("nan"), 0
    if not args.skip_naive and naive_jobs:
        torch.manual_seed(args.seed)
        c0, w0 = time.process_time(), time.perf_counter()
        res_naive = run_naive(base, naive_jobs, cfg)
        naive_s, naive_cpu = time.perf_counter() - w0, time.process_time() - c0
        naive_tok = completion_tokens(res_naive)
        n_naive_req = sum(len(r.experiences) for r in res_naive)
    naive_tps = naive_tok / naive_s if naive_tok else float("nan")

    # -- report --------------------------------------------------------------------------------
    print()
    print(f"{'side':<8}{'lifecycles':>11}{'requests':>10}{'gen tok':>9}{'prefilled':>11}{'wall s':>9}{'cpu s':>9}"
          f"{'tok/s':>9}")
    for side in sides:
        n_req = sum(len(r.experiences) for r in side.results)
        print(f"{side.name:<8}{len(jobs):>11}{n_req:>10}{side.gen_tokens:>9}{side.stats['prefill_tokens']:>11}"
              f"{side.wall_s:>9.1f}{side.cpu_s:>9.1f}{side.tok_s:>9.2f}")
    print(f"{'naive':<8}{len(naive_jobs):>11}{n_naive_req:>10}{naive_tok:>9}{'':>11}{naive_s:>9.1f}{naive_cpu:>9.1f}"
          f"{naive_tps:>9.2f}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    for side in sides:
        print_profile(side)
    reuse = reusable_prefill(sides[0].results)
    total_prompt = sum(len(e.prompt_ids) for r in sides[0].results for e in r.experiences)
    print(f"prefix reuse bound: of {total_prompt} prompt tokens, {reuse['shared']} are a prefix shared by every "
          f"prompt of the same kind (system prompt) and {reuse['history']} more repeat the same lifecycle's previous "
          f"call: {reuse['total'] / max(total_prompt, 1):.0%} could come from a KV cache")
    runner, best = sides[0], sides[-1]
    speedup = best.tok_s / naive_tps if naive_tok else float("nan")
    cache_speedup = best.tok_s / runner.tok_s if len(sides) > 1 else float("nan")
    print(f"RESULT speedup={speedup:.2f} cache_speedup={cache_speedup:.2f} "
          f"prefill_per_gen_before={runner.prefill_per_gen:.1f} prefill_per_gen_after={best.prefill_per_gen:.1f} "
          f"runner_speedup={runner.tok_s / naive_tps if naive_tok else float('nan'):.2f} "
          f"cached_tok_s={best.tok_s:.2f} runner_tok_s={runner.tok_s:.2f} naive_tok_s={naive_tps:.2f}")


if __name__ == "__main__":
    main()
