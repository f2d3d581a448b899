"""Distributed rollout scaling: lifecycles per second with 1 and with 2 Ray rollout workers.

Both pool sizes play the *same* jobs with the *same* seeds through
:class:`codrl.distributed.ray_rollout.RayRolloutPool` (FrozenLake-Obscure packs and the embedded
SmolLM2-135M-Instruct on CPU, fp32, by default; ``--env`` and ``--model`` pick another workload),
so they sample the same lifecycles (up to fp32 noise; compared and printed) and differ only in how many workers share
them. Each worker runs ``--threads`` torch threads (default 1) on a local Ray instance.

What is timed: only ``pool.run`` on the jobs. Each pool is built first (workers start, import
torch and load the model) and then plays one warm-up lifecycle per worker from another pack
(first-call costs: thread pools, chat template compilation), all before the clock starts.

Chunks: both sizes use the same ``--chunk`` (lifecycles per chunk; default a quarter of the jobs,
so the two workers get two chunks each), so each worker's engine sees the same batches and the
ratio measures parallelism, not batch size. A chunk of ``--repeats`` lifecycles keeps a pack's
repeats together (they share their first prompt in the worker's KV cache).

The ideal ratio on 2 idle cores is 2. Other processes on the machine take cores from the workers:
the load average is printed before and after each timed run.

Run time (defaults: 16 lifecycles, K=2, 2 CPU cores): about 1-2 minutes for one worker, half of
that for two, plus 20-40 s of start-up per pool.

Usage: ``python bench/distributed_scaling.py [--packs 4 --repeats 4 --pack-size 2 --chunk 4]``

The last output line is ``RESULT scaling_2w=<rate with 2 workers / rate with 1> rate_1w=<lifecycles/s>
rate_2w=<lifecycles/s>``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from functools import partial

import numpy as np

from codrl.backends.hf import HFBackend
from codrl.backends.kv_cache import common_prefix
from codrl.distributed.ray_rollout import RayRolloutPool
from codrl.envs import make_env
from codrl.rollout.config import RolloutConfig
from codrl.rollout.experience import LifecycleResult
from codrl.rollout.lifecycle import Job, job_seeds, make_jobs
from codrl.train.config import DistributedConfig


@dataclass
class Side:
    """One pool size's timed run."""

    workers: int
    results: list[LifecycleResult]
    wall_s: float
    load_before: float
    load_after: float

    @property
    def rate(self) -> float:
        return len(self.results) / self.wall_s

    @property
    def tok_s(self) -> float:
        return sum(len(e.completion_ids) for r in self.results for e in r.experiences) / self.wall_s


def load1() -> float:
    """The 1-minute load average (other processes on the machine take cores from the workers)."""
    return os.getloadavg()[0]


def run_side(workers: int, model: str | None, cfg: RolloutConfig, jobs: list[Job], seeds: list[int],
             warmup: list[Job], chunk: int, threads: int) -> Side:
    """Start a pool of ``workers``, warm every worker up, then time one run of ``jobs``."""
    t0 = time.perf_counter()
    dist = DistributedConfig(rollout_workers=workers, worker_threads=threads)
    with RayRolloutPool(partial(HFBackend.from_pretrained, model), cfg, dist, chunk_size=1) as pool:
        print(f"{workers} worker(s) up in {time.perf_counter() - t0:.1f}s", flush=True)
        pool.run(warmup[:workers], seeds=list(range(workers)))  # chunks of 1: one lifecycle per worker
        pool.chunk_size = chunk
        before = load1()
        t1 = time.perf_counter()
        results = pool.run(jobs, seeds=seeds)
        wall = time.perf_counter() - t1
    return Side(workers, results, wall, before, load1())


def agreement(a: list[LifecycleResult], b: list[LifecycleResult]) -> tuple[int, float]:
    """How many lifecycles sampled the same tokens in both runs, and the largest logprob gap on the
    tokens they share before any divergence.

    The gap is fp32 noise (the workers batch and cache differently); a sampling draw that falls
    within it of a token boundary picks the neighbour, and that lifecycle legitimately diverges
    from there (rare: a few per 100,000 tokens, see tests/test_kv_cache.py).
    """
    same, gap = 0, 0.0
    for x, y in zip(a, b, strict=True):
        same += [e.completion_ids for e in x.experiences] == [e.completion_ids for e in y.experiences]
        for e, f in zip(x.experiences, y.experiences, strict=False):
            n = common_prefix(np.array(e.completion_ids), np.array(f.completion_ids))  # same prompt until then
            gap = max(gap, float(np.max(np.abs(np.subtract(e.logprobs[:n], f.logprobs[:n])), initial=0.0)))
            if n < max(len(e.completion_ids), len(f.completion_ids)):
                break
    return same, gap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--pack-size", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=0, help="lifecycles per chunk (0: a quarter of the jobs)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each worker")
    ap.add_argument("--model", default="embedded", help="'embedded' or a model folder (HFBackend.from_pretrained)")
    ap.add_argument("--env", default="frozenlake")
    ap.add_argument("--split", default="test")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens-solve", type=int, default=RolloutConfig().max_new_tokens_solve)
    ap.add_argument("--max-new-tokens-update", type=int, default=RolloutConfig().max_new_tokens_update)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cfg = RolloutConfig(pack_size=args.pack_size, repeats=args.repeats, temperature=args.temperature,
                        max_new_tokens_solve=args.max_new_tokens_solve,
                        max_new_tokens_update=args.max_new_tokens_update)
    env = make_env(args.env)
    jobs = make_jobs([(env, env.sample_pack(args.split, args.seed, i, args.pack_size)) for i in range(args.packs)],
                     cfg)
    warmup = make_jobs([(env, env.sample_pack(args.split, args.seed + 1, i, args.pack_size)) for i in range(2)], cfg)
    seeds = job_seeds(len(jobs), args.seed)
    chunk = args.chunk or math.ceil(len(jobs) / 4)
    model = None if args.model == "embedded" else args.model
    print(f"{len(jobs)} lifecycles ({args.packs} packs x {args.repeats} repeats, K={args.pack_size}, "
          f"{args.env}/{args.split}), model {args.model}, chunks of {chunk}, {args.threads} torch thread(s) "
          f"per worker, {os.cpu_count()} CPUs")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    sides = [run_side(n, model, cfg, jobs, seeds, warmup, chunk, args.threads) for n in (1, 2)]

    print()
    print(f"{'workers':<9}{'lifecycles':>11}{'wall s':>9}{'lc/s':>9}{'tok/s':>9}{'load 1m before/after':>24}")
    for s in sides:
        print(f"{s.workers:<9}{len(s.results):>11}{s.wall_s:>9.1f}{s.rate:>9.3f}{s.tok_s:>9.1f}"
              f"{f'{s.load_before:.2f} / {s.load_after:.2f}':>24}")
    one, two = sides
    same, gap = agreement(one.results, two.results)
    print(f"identical lifecycles with 1 and 2 workers: {same}/{len(jobs)}; largest logprob gap on shared tokens "
          f"{gap:.1e} (fp32 noise: a draw that close to a token boundary flips, see agreement())")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"RESULT scaling_2w={two.rate / one.rate:.2f} rate_1w={one.rate:.4f} rate_2w={two.rate:.4f}")


if __name__ == "__main__":
    main()
