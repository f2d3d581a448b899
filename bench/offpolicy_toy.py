"""Off-policy correction on the toy: a sampler that is not the trainer, with and without correction.

The toy CoD run of ``bench/toy_cod_effect.py`` (SecretTable, the tiny policy after its reading
warm-up, CoD credit), with a deliberately perturbed sampler: the rollouts sample at
``--sampler-temperature`` while the update trains the policy at temperature 1
(``offpolicy.target_temperature``), as when an agent harness samples at its own temperature.
Both arms start from the same warmed-up policy and train for the same number of steps:

* corrected: ``offpolicy.mode`` (``--mode``, tis by default) with ``--cap``;
* uncorrected: mode none (old logprobs recomputed, the mismatch ignored).

The trained policy is evaluated at temperature 1 on the test split every ``--eval-every`` steps.
Printed per step: the late-position reward of the sampler's training rollouts, and at every
evaluation the late-position reward of the trained policy; then the corrected arm's mismatch per
pack position (mean KL(sampler || trainer), the ratio's spread, the share of tokens capped).

    python bench/offpolicy_toy.py                      # default: about 8 minutes on 2 cores
    python bench/offpolicy_toy.py --mode mis_token --sampler-temperature 2.0

Last line: ``RESULT corrected_late=... uncorrected_late=... gap=... corrected_steps_to_08=...
uncorrected_steps_to_08=... gap_when_corrected_reaches_08=...``: the last evaluation's late-position
reward of each arm and their difference; the first evaluated step at which each arm reaches 0.8
(``None``: not within the budget); and the uncorrected arm's shortfall at the corrected arm's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).parent))
from toy_cod_effect import toy_config, warm_policy  # noqa: E402

from codrl.toy.secret_table import SecretTable  # noqa: E402
from codrl.train.config import TrainConfig  # noqa: E402
from codrl.train.trainer import Trainer  # noqa: E402

ARMS = ("corrected", "uncorrected")


def arm_config(model_dir: Path, out: Path, arm: str, args: argparse.Namespace) -> TrainConfig:
    """The toy CoD config with the perturbed sampler; the corrected arm adds the correction."""
    cfg = toy_config(model_dir, out, "cod", args, seed=0)
    offpolicy = {"mode": args.mode if arm == "corrected" else "none", "cap": args.cap, "target_temperature": 1.0}
    return TrainConfig.model_validate(cfg.model_dump() | {
        "rollout": cfg.rollout.model_dump() | {"temperature": args.sampler_temperature},
        "offpolicy": offpolicy,
        "eval": cfg.eval.model_dump() | {"every": args.eval_every, "temperature": 1.0},
    })


def run_arm(model_dir: Path, out: Path, arm: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one arm; its per-step training late reward, evaluation curve and final mismatch."""
    t0 = time.time()
    trainer = Trainer(arm_config(model_dir, out, arm, args))
    trainer.console.quiet = True
    history = trainer.train()
    late = args.pack_size - 1
    evals = trainer.evals[trainer.envs[0].name]
    return {"train_late": [h[f"reward/pos{late}"] for h in history],
            "eval_late": {step: s.mean_rewards("cod")[late] for step, s in sorted(evals.items())},
            "mismatch": {k: v for k, v in history[-1].items() if "offpolicy/" in k},
            "minutes": (time.time() - t0) / 60}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=16, help="RL steps per arm (the same budget for both)")
    p.add_argument("--sampler-temperature", type=float, default=1.5,
                   help="temperature the rollouts sample at (the trainer trains temperature 1)")
    p.add_argument("--mode", choices=("tis", "mis_token", "mis_episode"), default="tis",
                   help="the corrected arm's offpolicy.mode")
    p.add_argument("--cap", type=float, default=2.0, help="offpolicy.cap of the corrected arm")
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--packs-per-step", type=int, default=16)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--pack-size", type=int, default=4)
    p.add_argument("--keys-per-pack", type=int, default=1)
    p.add_argument("--hint-tokens", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--warmup-steps", type=int, default=600)
    p.add_argument("--eval-packs", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warm-dir", default=None, help="keep and reuse the warmed-up policy here (see toy_cod_effect)")
    args = p.parse_args(argv)
    args.async_lookahead = 0  # read by toy_config

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    env = SecretTable(keys_per_pack=args.keys_per_pack)
    with tempfile.TemporaryDirectory() as tmp:
        name = f"warm-s0-w{args.warmup_steps}-h{args.hidden}-l{args.layers}-k{args.keys_per_pack}"
        model_dir = warm_policy(env, args, 0, Path(args.warm_dir or tmp) / name)
        runs = {arm: run_arm(model_dir, Path(tmp) / arm, arm, args) for arm in ARMS}

    print(f"\nsampler temperature {args.sampler_temperature}, trainer temperature 1.0; corrected: "
          f"{args.mode} cap {args.cap}; chance {env.chance_reward:.2f}")
    print("late-position reward of the sampler's training rollouts, per step:")
    print(f"{'step':>5s} " + " ".join(f"{arm:>12s}" for arm in ARMS))
    for step in range(args.steps):
        print(f"{step + 1:5d} " + " ".join(f"{runs[arm]['train_late'][step]:12.3f}" for arm in ARMS))
    print("late-position reward of the trained policy (test split, temperature 1), per evaluation:")
    print(f"{'step':>5s} " + " ".join(f"{arm:>12s}" for arm in ARMS))
    for step in runs[ARMS[0]]["eval_late"]:
        print(f"{step:5d} " + " ".join(f"{runs[arm]['eval_late'][step]:12.3f}" for arm in ARMS))
    print("mismatch at the last step (corrected arm): "
          + ", ".join(f"{k.split('offpolicy/')[1]}={v:.3f}" for k, v in sorted(runs["corrected"]["mismatch"].items())))
    print("wall time: " + ", ".join(f"{arm} {runs[arm]['minutes']:.1f} min" for arm in ARMS))
    corrected, uncorrected = (list(runs[arm]["eval_late"].values())[-1] for arm in ARMS)
    first = {arm: next((st for st, v in runs[arm]["eval_late"].items() if v >= 0.8), None) for arm in ARMS}
    at = first["corrected"]  # the budget at which the corrected arm first reaches 0.8
    gap_at = "none" if at is None else f"{runs['corrected']['eval_late'][at] - runs['uncorrected']['eval_late'][at]:.3f}"
    print(f"RESULT corrected_late={corrected:.3f} uncorrected_late={uncorrected:.3f} "
          f"gap={corrected - uncorrected:.3f} corrected_steps_to_08={first['corrected']} "
          f"uncorrected_steps_to_08={first['uncorrected']} gap_when_corrected_reaches_08={gap_at}")


if __name__ == "__main__":
    sys.exit(main())
