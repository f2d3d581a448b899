"""Rollout throughput: codrl's batched lifecycle runner vs a naive one-request-at-a-time loop.

Both sides play FrozenLake-Obscure packs through the *same* lifecycle generator
(:func:`codrl.rollout.lifecycle.play_lifecycle`) with the same model (the embedded
SmolLM2-135M-Instruct, CPU fp32), the same :class:`RolloutConfig` and the same prompts
(``HFBackend.encode_prompt``); they differ only in how model calls are served:

* codrl: :class:`LifecycleRunner` plays ``--concurrent`` lifecycles at once and sends every
  pending request of a round to ``HFBackend.generate`` as one batched call.
* naive: one lifecycle at a time, and every request is a literal batch-1 ``model.generate`` call
  (sampling, stop strings and logprobs computed the same way).

Throughput is generated (completion) tokens per wall-clock second. On a 2-core CPU the naive loop
is slow, so by default it plays only ``--naive-lifecycles`` of the jobs (spread over the packs)
and its tok/s is computed on that subset; pass ``--naive-lifecycles`` equal to packs x repeats x
(K for ``--ralph expand``) for the full set. The ratio compares rates, so the subset only adds
sampling noise. The last output line is ``RESULT speedup=<ratio> codrl_tok_s=<x> naive_tok_s=<y>``.

A forward-pass profile of the codrl side (prefill vs decode time, padding, batch sizes, wasted
decode rows, and an upper bound on prompt tokens a prefix/KV cache could have served) is printed
to show where the time goes. Other processes on the machine skew wall-clock numbers: the load
average and the process CPU time are printed next to the results.

Threads: the default is one torch thread. On a 2-core machine that other processes also use, two
torch threads spin-wait on each other and run several times slower than one (measured 9x on a
374-token prefill); ``--threads 2`` is the better choice only on an otherwise idle machine.

Run time: prompt prefill dominates (prompts are 370-1000 tokens, replies a few to 64 tokens). With
the defaults (32 lifecycles, K=2) the codrl side prefills about 145k prompt tokens; on 2 CPU cores
at about 250-350 tokens/s that is 8-17 minutes depending on load, plus 1-2 minutes for the naive
subset. ``--packs 4 --repeats 2`` gives a quicker, smaller-batch run.

Usage: ``python bench/rollout_throughput.py [--packs 8 --repeats 4 --pack-size 2 --concurrent 32]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from codrl.backends.base import GenRequest, GenResult
from codrl.backends.hf import HFBackend
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
    """Forward passes of the model, split into prefill (seq len > 1) and decode (seq len 1) steps."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefill_calls: int = 0
    decode_calls: int = 0
    prefill_slots: int = 0  # batch x padded width
    prefill_real: int = 0  # non-pad prompt tokens
    prefill_rows: int = 0  # sequences prefilled (each yields its first generated token)
    decode_rows: int = 0  # batch rows computed over all decode steps
    batch_sizes: Counter = field(default_factory=Counter)
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
                mask = kwargs.get("attention_mask")
                self.prefill_s += dt
                self.prefill_calls += 1
                self.prefill_slots += b * n
                self.prefill_rows += b
                self.prefill_real += int(mask.sum()) if mask is not None else b * n
                self.batch_sizes[b] += 1
            else:
                self.decode_s += dt
                self.decode_calls += 1
                self.decode_rows += b

        return [model.register_forward_pre_hook(pre, with_kwargs=True),
                model.register_forward_hook(post, with_kwargs=True)]


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reusable_prefill(results: list[LifecycleResult]) -> dict[str, int]:
    """Upper bound on prompt tokens a KV cache could serve instead of a fresh prefill.

    ``shared``: the prefix common to every prompt of the same episode type (the system prompt and
    chat header); ``history``: beyond that, the prefix a prompt shares with the same lifecycle's
    earlier calls (prompt + completion), i.e. the multi-turn history of a solve episode.
    """
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--pack-size", type=int, default=2)
    ap.add_argument("--concurrent", type=int, default=32, help="lifecycles played at once (and engine batch cap)")
    ap.add_argument("--naive-lifecycles", type=int, default=4,
                    help="how many of the jobs the naive loop plays (tok/s is computed on that subset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--env", default="frozenlake")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-new-tokens-solve", type=int, default=RolloutConfig().max_new_tokens_solve)
    ap.add_argument("--max-new-tokens-update", type=int, default=RolloutConfig().max_new_tokens_update)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default); see the module doc")
    ap.add_argument("--skip-naive", action="store_true", help="profile the codrl side only")
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
    backend = HFBackend.from_pretrained(None, max_batch_size=args.concurrent)
    print(f"model loaded in {time.perf_counter() - t0:.1f}s; torch threads {torch.get_num_threads()}; "
          f"{len(jobs)} lifecycles ({args.packs} packs x {args.repeats} repeats, K={args.pack_size}, "
          f"{args.env}/{args.split}), concurrent {args.concurrent}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    naive_generate(backend, GenRequest([{"role": "user", "content": "Hi"}]))  # warm-up

    # -- codrl ---------------------------------------------------------------------------------
    torch.manual_seed(args.seed)
    prof = ForwardProfile()
    hooks = prof.attach(backend.model)
    call_sizes: list[int] = []
    call_groups: list[int] = []
    inner = backend.generate

    def counting_generate(reqs: list[GenRequest]) -> list[GenResult]:
        call_sizes.append(len(reqs))
        call_groups.append(len({r.sampling for r in reqs}))
        return inner(reqs)

    backend.generate = counting_generate  # type: ignore[method-assign]
    stats0 = dict(vars(backend.stats))
    runner = LifecycleRunner(backend, cfg)
    c0, w0 = time.process_time(), time.perf_counter()
    res_codrl = runner.run(jobs)
    codrl_s, codrl_cpu = time.perf_counter() - w0, time.process_time() - c0
    del backend.generate
    for h in hooks:
        h.remove()
    stats = {k: v - stats0[k] for k, v in vars(backend.stats).items()}
    codrl_tok = completion_tokens(res_codrl)
    codrl_tps = codrl_tok / codrl_s

    # -- naive ---------------------------------------------------------------------------------
    naive_jobs = spread(jobs, args.naive_lifecycles)
    naive_tok, naive_s, naive_cpu, n_naive_req = 0, float("nan"), float("nan"), 0
    if not args.skip_naive and naive_jobs:
        torch.manual_seed(args.seed)
        c0, w0 = time.process_time(), time.perf_counter()
        res_naive = run_naive(backend, naive_jobs, cfg)
        naive_s, naive_cpu = time.perf_counter() - w0, time.process_time() - c0
        naive_tok = completion_tokens(res_naive)
        n_naive_req = sum(len(r.experiences) for r in res_naive)
    naive_tps = naive_tok / naive_s if naive_tok else float("nan")
    speedup = codrl_tps / naive_tps if naive_tok else float("nan")

    # -- report --------------------------------------------------------------------------------
    n_req = sum(len(r.experiences) for r in res_codrl)
    print()
    print(f"{'side':<8}{'lifecycles':>11}{'requests':>10}{'gen tok':>9}{'wall s':>9}{'cpu s':>9}{'tok/s':>9}")
    print(f"{'codrl':<8}{len(jobs):>11}{n_req:>10}{codrl_tok:>9}{codrl_s:>9.1f}{codrl_cpu:>9.1f}{codrl_tps:>9.2f}")
    print(f"{'naive':<8}{len(naive_jobs):>11}{n_naive_req:>10}{naive_tok:>9}{naive_s:>9.1f}{naive_cpu:>9.1f}"
          f"{naive_tps:>9.2f}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print("codrl profile:")
    print(f"  runner rounds {runner.rounds}; engine calls {stats['generate_calls']}; requests per round "
          f"mean {statistics.mean(call_sizes):.1f} (min {min(call_sizes)}, max {max(call_sizes)}); "
          f"sampling groups per round mean {statistics.mean(call_groups):.2f}")
    fwd = prof.prefill_s + prof.decode_s
    print(f"  forward time {fwd:.1f}s of {codrl_s:.1f}s wall: prefill {prof.prefill_s:.1f}s "
          f"({prof.prefill_calls} calls), decode {prof.decode_s:.1f}s ({prof.decode_calls} steps)")
    pad = 1 - prof.prefill_real / prof.prefill_slots if prof.prefill_slots else 0.0
    print(f"  prefill: {prof.prefill_real} prompt tokens, {prof.prefill_slots} padded slots "
          f"({pad:.0%} padding), {prof.prefill_slots / max(prof.prefill_s, 1e-9):.0f} slots/s")
    useful = codrl_tok
    rows = prof.decode_rows + prof.prefill_rows
    print(f"  decode: {prof.decode_rows} row-steps (+{prof.prefill_rows} first tokens from prefill) for {useful} "
          f"generated tokens ({1 - useful / max(rows, 1):.0%} of rows wasted on finished sequences); "
          f"{1000 * prof.decode_s / max(prof.decode_calls, 1):.0f} ms/step at {prof.decode_rows / max(prof.decode_calls, 1):.1f}"
          " rows/step")
    print(f"  batch sizes of engine batches: {dict(sorted(prof.batch_sizes.items()))}")
    print(f"  backend stats: prompt tokens {stats['prompt_tokens']}, completion tokens {stats['completion_tokens']}")
    reuse = reusable_prefill(res_codrl)
    total_prompt = sum(len(e.prompt_ids) for r in res_codrl for e in r.experiences)
    frac = reuse["total"] / max(total_prompt, 1)
    print(f"  prefix reuse bound: of {total_prompt} prompt tokens, {reuse['shared']} are a prefix shared by every "
          f"prompt of the same kind (system prompt) and {reuse['history']} more repeat the same lifecycle's previous "
          f"call (multi-turn history): {frac:.0%} could come from a KV cache")
    if prof.prefill_s > 0:
        est = prof.prefill_s * (1 - frac) * (prof.prefill_real / max(prof.prefill_slots, 1)) + prof.decode_s
        print(f"  => with prefix caching and no padding, forward time would be about {est:.0f}s instead of {fwd:.0f}s "
              f"(x{fwd / max(est, 1e-9):.1f})")
    print(f"RESULT speedup={speedup:.2f} codrl_tok_s={codrl_tps:.2f} naive_tok_s={naive_tps:.2f}")


if __name__ == "__main__":
    main()
