"""The learning proof: CoD credit assignment teaches a policy to write useful hints; per-task GRPO does not.

World: SecretTable (``codrl.toy.secret_table``): each world hides a random key -> value table;
each task asks the value of a key; the feedback reveals the right answer. Only by writing what it
learned into the hints can the agent beat chance (1/num_values) at later pack positions.

Policy: a tiny LlamaForCausalLM with a word-level tokenizer (``codrl.toy.policy``), driven
through exactly the LLM code path (HFBackend -> LifecycleRunner -> Trainer). Like an LLM that
already reads instructions, it starts from a supervised *reading* warm-up (answer format, reading
a hints block); it is never shown a hint-writing target, so writing useful hints is learned by RL
alone.

For each seed, the same warmed-up policy is trained twice with identical budget: with CoD credit
(``estimator: cod``) and with per-task GRPO (``estimator: grpo``). Reward per position is measured
on the test split before and after training (mean and 95% interval over seeds).

    python bench/toy_cod_effect.py                 # 3 seeds, default budget
    python bench/toy_cod_effect.py --seeds 1 --steps 40   # quick look
    python bench/toy_cod_effect.py --estimators cod --async-lookahead 1   # asynchronous steps

Last line: ``RESULT cod_first=... cod_late=... grpo_late=... chance=... minutes=...`` (the keys of
the estimators run; with ``--async-lookahead``, ``staleness_max``: the largest staleness logged).
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

from codrl.toy.policy import build_tiny_policy, save_policy, warmup_reader
from codrl.toy.secret_table import SecretTable
from codrl.eval.metrics import mean_ci
from codrl.train.config import TrainConfig
from codrl.train.trainer import Trainer


def toy_config(model_dir: Path, out: Path, estimator: str, args: argparse.Namespace, seed: int) -> TrainConfig:
    """The RL config of the toy run (shared by both estimators except ``advantage.estimator``)."""
    return TrainConfig.model_validate({
        "envs": [{"name": "secret_table", "params": {"keys_per_pack": args.keys_per_pack}}],
        "rollout": {"pack_size": args.pack_size, "repeats": args.repeats, "temperature": 1.0,
                    "max_new_tokens_solve": 3, "max_new_tokens_update": args.hint_tokens,
                    "update_reply_prefix": "Hints:", "hint_min_chars": 1,
                    "hint_length_start": args.hint_tokens - 1, "hint_length_end": args.hint_tokens,
                    "length_penalty_start": 2, "length_penalty_end": 3, "max_concurrent": 4096},
        "advantage": {"estimator": estimator, "aggregation": "mean"},
        "loss": {"variant": "rec_oneside_nois"},
        "model": {"path": str(model_dir), "lora": None},
        "optim": {"lr": args.lr, "grad_clip": 1.0},
        "steps": args.steps, "packs_per_step": args.packs_per_step, "micro_batch_tokens": 16384,
        "generation_batch_size": 4096, "save_every": 0,
        "eval": {"packs": args.eval_packs, "repeats": 1, "at_start": True, "at_end": True},
        "log": {"backends": [], "progress": False},
        "distributed": {"async_rollouts": args.async_lookahead > 0, "lookahead": max(1, args.async_lookahead),
                        "max_staleness": max(1, args.async_lookahead)},
        "output_dir": str(out), "seed": seed,
    })


def curve(trainer: Trainer, which: str) -> list[float]:
    evals = trainer.evals[trainer.envs[0].name]  # step -> summary of the (only) training environment
    step = min(evals) if which == "start" else max(evals)
    return evals[step].mean_rewards("cod")


def warm_policy(env: SecretTable, args: argparse.Namespace, seed: int, folder: Path) -> Path:
    """The seed's policy after the reading warm-up, saved in ``folder``; a folder that already holds
    one (``--warm-dir`` of an earlier run; the folder's name carries every setting the warm-up
    depends on) is reused as it is."""
    if (folder / "config.json").is_file():
        print(f"seed {seed}: reading warm-up reused from {folder}", flush=True)
        return folder
    model, tok = build_tiny_policy(env, hidden=args.hidden, layers=args.layers, seed=seed)
    t0 = time.time()
    warm = warmup_reader(model, tok, env, steps=args.warmup_steps, seed=seed)
    print(f"seed {seed}: reading warm-up {time.time() - t0:.0f}s, "
          f"loss {warm['loss_first']:.2f} -> {warm['loss_final']:.2f}", flush=True)
    return save_policy(model, tok, folder)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    env = SecretTable(keys_per_pack=args.keys_per_pack)
    curves: dict[tuple[str, str], list[list[float]]] = {}
    minutes: dict[str, float] = {"cod": 0.0, "grpo": 0.0}
    staleness = 0
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            name = f"warm-s{seed}-w{args.warmup_steps}-h{args.hidden}-l{args.layers}-k{args.keys_per_pack}"
            model_dir = warm_policy(env, args, seed, Path(args.warm_dir or tmp) / name)
            for estimator in args.estimators:
                t0 = time.time()
                cfg = toy_config(model_dir, Path(tmp) / f"run-{seed}-{estimator}", estimator, args, seed)
                trainer = Trainer(cfg)
                trainer.console.quiet = True
                trainer.train()
                minutes[estimator] += (time.time() - t0) / 60
                staleness = max([staleness] + [h.get("async/staleness_max", 0) for h in trainer.history])
                start, end = curve(trainer, "start"), curve(trainer, "end")
                curves.setdefault((estimator, "start"), []).append(start)
                curves.setdefault((estimator, "end"), []).append(end)
                fmt = " ".join(f"{v:.2f}" for v in end)
                print(f"seed {seed} {estimator:4s}: start [{' '.join(f'{v:.2f}' for v in start)}] "
                      f"end [{fmt}]  {time.time() - t0:.0f}s", flush=True)
    return {"curves": curves, "minutes": minutes, "chance": env.chance_reward, "staleness_max": staleness}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60, help="RL steps per run")
    p.add_argument("--packs-per-step", type=int, default=16)
    p.add_argument("--repeats", type=int, default=8, help="GRPO group size")
    p.add_argument("--pack-size", type=int, default=4)
    p.add_argument("--keys-per-pack", type=int, default=1)
    p.add_argument("--hint-tokens", type=int, default=4, help="token budget of a hints block")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--warmup-steps", type=int, default=800)
    p.add_argument("--eval-packs", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warm-dir", default=None,
                   help="keep each seed's warmed-up policy here and reuse it when one with the same seed, "
                        "--warmup-steps, --hidden, --layers and --keys-per-pack is there")
    p.add_argument("--estimators", nargs="+", choices=("cod", "grpo"), default=["cod", "grpo"],
                   help="credit estimators to train (the comparison needs both)")
    p.add_argument("--async-lookahead", type=int, default=0,
                   help="play each step's rollouts while the previous steps train, with weights this many "
                        "updates old (0: synchronous)")
    args = p.parse_args(argv)

    out = run(args)
    curves, k = out["curves"], args.pack_size
    print()
    print(f"{'run':18s} " + " ".join(f"{'pos ' + str(i):>18s}" for i in range(k)))
    summary: dict[str, list[tuple[float, float, float]]] = {}
    for estimator in args.estimators:
        for when in ("start", "end"):
            rows = curves[(estimator, when)]
            stats = [mean_ci([r[i] for r in rows]) for i in range(k)]
            summary[f"{estimator}_{when}"] = stats
            cells = " ".join(f"{m:5.2f} [{lo:4.2f},{hi:4.2f}]" for m, lo, hi in stats)
            print(f"{estimator + ' ' + when:18s} {cells}")
    print("wall time: " + ", ".join(f"{e} {out['minutes'][e]:.1f} min" for e in args.estimators)
          + f" ({args.seeds} seeds)")
    fields = {}
    if "cod" in args.estimators:
        fields |= {"cod_first": summary["cod_end"][0][0], "cod_late": summary["cod_end"][k - 1][0]}
    if "grpo" in args.estimators:
        fields["grpo_late"] = summary["grpo_end"][k - 1][0]
    fields["chance"] = out["chance"]
    fields["minutes"] = out["minutes"][args.estimators[0]] / args.seeds
    if args.async_lookahead:
        fields["staleness_max"] = out["staleness_max"]
    print("RESULT " + " ".join(f"{key}={v:.3f}" if isinstance(v, float) else f"{key}={v}"
                               for key, v in fields.items()))

if __name__ == "__main__":
    sys.exit(main())
