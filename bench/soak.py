"""Long runs stay flat: 300 training steps of the tiny policy, with evaluations and checkpoints
every 10 steps and the KV-prefix store on, sampling the process's memory and open files.

    python bench/soak.py                 # 300 steps, about 10 minutes on 2 CPU cores
    python bench/soak.py --steps 60      # a shorter look

It prints the resident memory (RSS) and open file descriptors every 10 steps, and where they grew.
Last line: ``RESULT rss_growth=... open_files_growth=... steps_per_min_first=... steps_per_min_last=...``
where ``rss_growth`` is the relative RSS growth from step 50 (after warm-up effects: allocator
pools, imported modules, the first evaluation and checkpoint) to the last step (0.05 = 5%;
target < 0.10), ``open_files_growth`` the change in open descriptors over the same span (target
0), and the step rates are over the first and the last 50 steps.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from codrl.toy.policy import build_tiny_policy, save_policy, warmup_reader
from codrl.toy.secret_table import SecretTable
from codrl.train.config import TrainConfig
from codrl.train.trainer import Trainer


def rss_mb() -> float:
    """Resident set size of this process in MiB (``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=10, help="evaluate and checkpoint every N steps")
    p.add_argument("--from-step", type=int, default=50, help="the step growth is measured from")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="codrl-soak-"))
    env = SecretTable()
    model, tok = build_tiny_policy(env, seed=0)
    warmup_reader(model, tok, env, steps=60, eval_size=0)
    model_dir = save_policy(model, tok, work / "tiny")
    cfg = TrainConfig.model_validate({
        "envs": [{"name": "secret_table"}], "steps": args.steps, "packs_per_step": 4, "save_every": args.every,
        "seed": 0, "output_dir": str(work / "run"),
        "rollout": {"pack_size": 3, "repeats": 4, "max_new_tokens_solve": 3, "max_new_tokens_update": 4,
                    "update_reply_prefix": "Hints:", "hint_min_chars": 1, "hint_length_start": 3,
                    "hint_length_end": 4},
        "model": {"path": str(model_dir), "lora": None, "kv_cache_mb": 64},
        "optim": {"lr": 1e-3},
        "eval": {"every": args.every, "packs": 2, "at_start": False, "at_end": True},
        "log": {"backends": ["tensorboard"], "progress": False},
    })
    trainer = Trainer(cfg)
    samples: dict[int, tuple[float, int, float]] = {}  # step -> (rss MiB, open fds, time)

    def on_step(m: dict[str, Any]) -> None:
        step = int(m["step"])
        if step % args.every == 0 or step in (1, args.from_step):
            gc.collect()
            samples[step] = (rss_mb(), open_files(), time.monotonic())
            print(f"step {step:4d}: rss {samples[step][0]:7.1f} MiB, open files {samples[step][1]}", flush=True)
        else:
            samples[step] = (float("nan"), -1, time.monotonic())

    t0 = time.monotonic()
    try:
        trainer.train(on_step=on_step)
    finally:
        trainer.close()
    last = args.steps
    first = min(args.from_step, last)
    rss_a, fds_a, _ = samples[first]
    rss_b, fds_b, _ = samples[last]
    span = min(50, last - 1)
    rate_first = span / ((samples[span][2] - t0) / 60)
    rate_last = span / ((samples[last][2] - samples[last - span][2]) / 60)
    growth = (rss_b - rss_a) / rss_a
    print(f"RSS from step {first} to {last}: {rss_a:.1f} -> {rss_b:.1f} MiB ({growth:+.1%}); "
          f"open files {fds_a} -> {fds_b}; {time.monotonic() - t0:.0f}s in all", flush=True)
    print(f"RESULT rss_growth={growth:.4f} open_files_growth={fds_b - fds_a} steps_per_min_first={rate_first:.1f} "
          f"steps_per_min_last={rate_last:.1f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
