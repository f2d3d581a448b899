"""The distillation proof: a CoD-trained teacher teaches a fresh student faster than RL does, and two
teachers teach one student a two-domain mixture.

World and policy as in ``bench/toy_cod_effect.py`` (SecretTable, the tiny word-level policy after
the same reading warm-up). First a teacher is trained with CoD credit for ``--teacher-steps`` RL
steps on each of two SecretTable variants standing in for two domains: ``table_a`` (one key per
pack, the plain toy) and ``table_b`` (two keys per pack). Then, from the warmed-up policy and with
the same budget of ``--steps`` steps, evaluated every 5 steps on the test split:

* ``opd``: on-policy distillation from the ``table_a`` teacher alone (``loss.variant: opd``);
* ``rl``: CoD RL on ``table_a`` (the teacher's own recipe);
* ``mix``: distillation on the ``table_a`` + ``table_b`` mixture, each with its own teacher.

A run's step count is the first evaluated step whose last-position reward reaches ``--target``
(``none``: not within the budget). ``mix_gap`` is the largest shortfall of the mixture student's
last-position reward against a teacher's own on the same evaluation packs (evaluated once, at the
start). Targets: ``opd_steps <= rl_steps / 2``; ``mix_gap <= 0.05``.

    python bench/toy_opd.py                       # default budget
    python bench/toy_opd.py --steps 10 --teacher-steps 5 --packs-per-step 4   # quick look

Last line: ``RESULT opd_steps=... rl_steps=... mix_gap=...``.
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

from codrl.toy.secret_table import SecretTable
from codrl.train.checkpoint import checkpoint_path
from codrl.train.config import TrainConfig
from codrl.train.teachers import evaluate_teachers
from codrl.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from toy_cod_effect import toy_config, warm_policy  # noqa: E402

#: The two domains of the mixture: SecretTable variants with the same vocabulary.
DOMAINS: dict[str, dict[str, Any]] = {"table_a": {"keys_per_pack": 1}, "table_b": {"keys_per_pack": 2}}
EVAL_EVERY = 5


def config(model_dir: Path, out: Path, args: argparse.Namespace, domains: list[str], steps: int,
           teachers: dict[str, Path] | None = None) -> TrainConfig:
    """The toy run of ``bench/toy_cod_effect.py`` on ``domains``: CoD RL, or distillation from ``teachers``."""
    base = toy_config(model_dir, out, "cod", args, args.seed).model_dump(mode="json")
    base["envs"] = [{"name": "secret_table", "params": {**DOMAINS[d], "name": d}} for d in domains]
    base["steps"] = steps
    base["eval"]["every"] = EVAL_EVERY
    if teachers:
        base["loss"] = {"variant": "opd"}
        base["teachers"] = [{"envs": [d], "path": str(teachers[d])} for d in domains]
    return TrainConfig.model_validate(base)


def train(cfg: TrainConfig, label: str) -> Trainer:
    """A trained (quiet) trainer of ``cfg``."""
    t0 = time.time()
    trainer = Trainer(cfg)
    trainer.console.quiet = True
    trainer.train()
    print(f"{label}: {time.time() - t0:.0f}s", flush=True)
    return trainer


def late(trainer: Trainer, env: str) -> dict[int, float]:
    """Last-position reward of every evaluation of ``env`` (step -> reward)."""
    return {s: summ.mean_rewards("cod")[-1] for s, summ in sorted(trainer.evals[env].items())}


def steps_to(curve: dict[int, float], target: float) -> int | None:
    """The first evaluated step whose reward reaches ``target`` (None: none did)."""
    return next((s for s, r in curve.items() if r >= target), None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        env = SecretTable(keys_per_pack=args.keys_per_pack)
        name = f"warm-s{args.seed}-w{args.warmup_steps}-h{args.hidden}-l{args.layers}-k{args.keys_per_pack}"
        warm = warm_policy(env, args, args.seed, Path(args.warm_dir or tmp) / name)
        teachers = {}
        for d in DOMAINS:
            out = tmp / f"teacher-{d}"
            t = train(config(warm, out, args, [d], args.teacher_steps), f"teacher {d}")
            print(f"teacher {d}: last position {late(t, d)}", flush=True)
            teachers[d] = checkpoint_path(out, args.teacher_steps)
            t.close()
        curves = {}
        for label, domains, given in (("opd", ["table_a"], teachers), ("rl", ["table_a"], None)):
            t = train(config(warm, tmp / label, args, domains, args.steps, given), label)
            curves[label] = late(t, "table_a")
            print(f"{label}: last position {curves[label]}", flush=True)
            t.close()
        mix = Trainer(config(warm, tmp / "mix", args, list(DOMAINS), args.steps, teachers))
        mix.console.quiet = True
        assert mix.policy_update.teachers is not None
        yardstick = evaluate_teachers(mix.cfg, mix.policy_update.teachers, mix.envs, mix.out, mix.console,
                                      lambda m, s: None)
        mix.train()
        gaps = {}
        for d in DOMAINS:
            teacher_late = yardstick[d].mean_rewards("cod")[-1]
            student_late = late(mix, d)[args.steps]
            gaps[d] = teacher_late - student_late
            print(f"mix {d}: teacher {teacher_late:.3f} student {student_late:.3f}", flush=True)
        mix.close()
    return {"opd_steps": steps_to(curves["opd"], args.target), "rl_steps": steps_to(curves["rl"], args.target),
            "mix_gap": max(gaps.values())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=40, help="RL steps of each student run (the budget)")
    p.add_argument("--teacher-steps", type=int, default=20, help="CoD steps that train each teacher")
    p.add_argument("--target", type=float, default=0.8, help="last-position reward a run must reach")
    p.add_argument("--packs-per-step", type=int, default=8)
    p.add_argument("--repeats", type=int, default=4, help="GRPO group size")
    p.add_argument("--pack-size", type=int, default=4)
    p.add_argument("--keys-per-pack", type=int, default=1, help="of the warm-up's environment")
    p.add_argument("--hint-tokens", type=int, default=4, help="token budget of a hints block")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--warmup-steps", type=int, default=800)
    p.add_argument("--eval-packs", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warm-dir", default=None, help="keep the warmed-up policy here and reuse it (see "
                   "bench/toy_cod_effect.py)")
    args = p.parse_args(argv)
    args.async_lookahead = 0  # toy_config's asynchronous-steps setting: off
    t0 = time.time()
    out = run(args)
    print(f"wall time {(time.time() - t0) / 60:.1f} min")
    print("RESULT " + " ".join(f"{k}={'none' if v is None else (f'{v:.3f}' if isinstance(v, float) else v)}"
                               for k, v in out.items()))


if __name__ == "__main__":
    sys.exit(main())
