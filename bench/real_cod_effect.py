"""The CoD effect on a real language model: CoD credit vs per-task GRPO on the embedded SmolLM2-135M.

The same training config (``configs/real_cod_cpu.yaml``: model, world, budget, seeds, packs) is
trained twice, once with ``advantage.estimator: cod`` (reward-to-go credit, method.md) and once
with ``grpo`` (each episode's own reward, the ablation that gives hint writing no signal). Then
the base model and both trained models play the same held-out test packs, each with the ``cod``
context (the hints it writes) and the ``nohint`` context (no memory between tasks).

Everything runs through the real path: HFBackend (transformers) -> LifecycleRunner -> Trainer, the
trained LoRA checkpoints loaded and merged for evaluation like ``codrl eval --model``.

Stages, each cached in the output folder and skipped when done, so the experiment can span
sittings (stop it any time and run the same command again)::

    OUT/train-cod/, OUT/train-grpo/            training runs (resumed from their last checkpoint)
    OUT/eval-base/, OUT/eval-cod/, OUT/eval-grpo/   evaluation reports (results.json, trajectories.jsonl)

A gain is, per pack (repeats averaged), the mean reward at positions 1..K-1 ("late") minus the
reward at position 0; its 95% interval is a Student-t interval over packs. ``cod_minus_grpo_late``
is the paired per-pack difference of the late reward between the cod- and the grpo-trained model
(both in the cod context). The last-minus-first gain (the definition of ``results.json``) is
printed too.

    python bench/real_cod_effect.py                  # the full experiment (CPU; see docs/real_cod_effect.md)
    python bench/real_cod_effect.py --quick          # a small version for development (< 10 min)
    python bench/real_cod_effect.py --device cuda    # on a GPU

Last line: ``RESULT base_gain= cod_gain= grpo_gain= cod_minus_grpo_late= cod_nohint_gain= minutes= device=``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from codrl.config import load_yaml
from codrl.eval.metrics import mean_ci
from codrl.eval.runner import EvalConfig, evaluate
from codrl.train.checkpoint import latest_checkpoint
from codrl.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("cod", "grpo")
MODELS = ("base", "cod", "grpo")
CONTEXTS = ("cod", "nohint")


def arm_config(base: TrainConfig, arm: str, out: Path, args: argparse.Namespace) -> TrainConfig:
    """The training config of one arm: the shared config with the arm's estimator and folder."""
    update: dict[str, Any] = {"output_dir": str(out / f"train-{arm}"),
                              "advantage": base.advantage.model_copy(update={"estimator": arm})}
    if args.device:
        update["model"] = base.model.model_copy(update={"device": args.device})
    if args.steps:
        update["steps"] = args.steps
    if args.quick:  # one small step per arm: the plumbing, on the real model, in minutes
        update |= {"steps": 1, "packs_per_step": 1, "save_every": 1,
                   "rollout": base.rollout.model_copy(update={"pack_size": min(base.rollout.pack_size, 3)}),
                   "eval": base.eval.model_copy(update={"at_start": False, "at_end": False})}
    return base.model_copy(update=update)


def train_arm(cfg: TrainConfig) -> float:
    """Train (or finish training) one arm; returns the minutes spent now (0 when it was done)."""
    from codrl.train.trainer import Trainer

    out = Path(cfg.output_dir)
    done = out / "history.json"
    if done.is_file() and len(json.loads(done.read_text())) >= cfg.steps:
        print(f"[cached] {out}: {cfg.steps} steps trained")
        return 0.0
    t0 = time.time()
    trainer = Trainer(cfg)
    try:
        trainer.train(resume=True)
    finally:
        trainer.close()
        del trainer
        gc.collect()
    return (time.time() - t0) / 60


def final_model(cfg: TrainConfig) -> str:
    """The model folder of an arm's last checkpoint (a LoRA adapter, merged on load)."""
    path = latest_checkpoint(Path(cfg.output_dir))
    if path is None:
        raise SystemExit(f"error: {cfg.output_dir} has no checkpoint; train it first")
    return str(path / "model")


def eval_model(model: str | None, cfg: TrainConfig, folder: Path, args: argparse.Namespace) -> float:
    """Evaluate one model with both contexts on the held-out packs (cached); returns minutes spent."""
    from codrl.backends.hf import HFBackend

    env = cfg.envs[0]
    rollout = cfg.rollout.model_copy(update={"pack_size": args.eval_k, "repeats": args.eval_repeats,
                                             "temperature": cfg.eval.temperature})
    ecfg = EvalConfig(env=env.name, env_params=env.params, split="test", packs=args.eval_packs,
                      seed=args.eval_seed, contexts=list(CONTEXTS), rollout=rollout)
    settings = {"model": model, "eval": ecfg.model_dump(mode="json")}
    stamp = folder / "bench_eval.json"  # what the cached results were played with
    if (folder / "results.json").is_file() and (folder / "trajectories.jsonl").is_file():
        if stamp.is_file() and json.loads(stamp.read_text()) == settings:
            print(f"[cached] {folder}")
            return 0.0
        print(f"[stale] {folder}: played with other settings (or of unknown ones); evaluating again")
        for name in ("results.json", "trajectories.jsonl", "episodes.csv", stamp.name):
            (folder / name).unlink(missing_ok=True)
    t0 = time.time()
    backend = HFBackend.from_pretrained(model, device=args.device or cfg.model.device, dtype=cfg.model.dtype,
                                        max_batch_size=cfg.generation_batch_size, kv_cache_mb=cfg.model.kv_cache_mb,
                                        chat_template_kwargs=cfg.model.chat_template_kwargs)
    try:
        torch.manual_seed(args.eval_seed)
        evaluate(backend, ecfg, folder, title=f"{folder.name}: {env.name} test packs", progress=not args.no_progress)
        stamp.write_text(json.dumps(settings, indent=1))
    finally:
        backend.close()
        del backend
        gc.collect()
    return (time.time() - t0) / 60


def pack_rewards(folder: Path) -> dict[str, dict[str, list[float]]]:
    """context -> pack id -> mean reward (over repeats) at each position, from ``trajectories.jsonl``."""
    sums: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for line in (folder / "trajectories.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for i, ep in enumerate(rec["episodes"]):
            sums[rec["mode"]][rec["pack_id"]][ep.get("position", i)].append(float(ep["reward"]))
    return {mode: {pack: [sum(v) / len(v) for _, v in sorted(pos.items())] for pack, pos in packs.items()}
            for mode, packs in sums.items()}


def late(rewards: list[float]) -> float:
    return sum(rewards[1:]) / (len(rewards) - 1)


def gains(packs: dict[str, list[float]]) -> dict[str, tuple[float, float, float]]:
    """The CoD gain (late minus first) and the last-minus-first gain, with 95% intervals over packs."""
    return {"gain": mean_ci([late(r) - r[0] for r in packs.values()]),
            "last_minus_first": mean_ci([r[-1] - r[0] for r in packs.values()]),
            "first": mean_ci([r[0] for r in packs.values()]),
            "late": mean_ci([late(r) for r in packs.values()])}


def fmt(stat: tuple[float, float, float]) -> str:
    m, lo, hi = stat
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}] (half-width {(hi - lo) / 2:.3f})"


def report(out: Path, minutes: float, device: str) -> dict[str, Any]:
    """Print every model's curves and gains, the targets, and the RESULT line; returns the figures."""
    data = {m: pack_rewards(out / f"eval-{m}") for m in MODELS}
    print()
    print(f"{'model / context':18s} reward by position (mean over packs)")
    for m in MODELS:
        for c in CONTEXTS:
            packs = data[m][c]
            k = min(len(r) for r in packs.values())
            means = [sum(r[i] for r in packs.values()) / len(packs) for i in range(k)]
            print(f"{m + ' / ' + c:18s} [" + " ".join(f"{v:.3f}" for v in means) + f"]  ({len(packs)} packs)")
    print()
    stats = {(m, c): gains(data[m][c]) for m in MODELS for c in CONTEXTS}
    for (m, c), s in stats.items():
        print(f"{m + ' / ' + c:18s} gain {fmt(s['gain'])}  last-minus-first {fmt(s['last_minus_first'])}")
    cod, grpo = data["cod"]["cod"], data["grpo"]["cod"]
    shared = sorted(set(cod) & set(grpo))
    diff = mean_ci([late(cod[p]) - late(grpo[p]) for p in shared])
    print(f"cod - grpo late (paired over {len(shared)} packs): {fmt(diff)}")
    figures = {"base_gain": stats["base", "cod"]["gain"], "cod_gain": stats["cod", "cod"]["gain"],
               "grpo_gain": stats["grpo", "cod"]["gain"], "cod_minus_grpo_late": diff,
               "cod_nohint_gain": stats["cod", "nohint"]["gain"]}
    print()
    targets = [("cod_gain >= +0.15 with its interval above 0",
                figures["cod_gain"][0] >= 0.15 and figures["cod_gain"][1] > 0),
               ("cod late - grpo late >= 0.10 with its paired interval above 0",
                diff[0] >= 0.10 and diff[1] > 0),
               ("cod model's nohint gain within +-0.05 of 0", abs(figures["cod_nohint_gain"][0]) <= 0.05)]
    for text, ok in targets:
        print(f"target {'met' if ok else 'NOT met'}: {text}")
    (out / "figures.json").write_text(json.dumps({k: list(v) for k, v in figures.items()} | {"minutes": minutes},
                                                 indent=1))
    plot(data, out / "reward_by_position.png")
    print(f"wrote {out / 'reward_by_position.png'}")
    print("RESULT " + " ".join(f"{k}={v[0]:.3f}" for k, v in figures.items())
          + f" minutes={minutes:.1f} device={device}")
    return figures


def plot(data: dict[str, dict[str, dict[str, list[float]]]], path: Path) -> None:
    """Reward by pack position: one panel per context, one curve per model, 95% intervals over packs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CONTEXTS), figsize=(10, 4), sharey=True)
    for ax, c in zip(axes, CONTEXTS):
        for m in MODELS:
            packs = data[m][c]
            k = min(len(r) for r in packs.values())
            stats = [mean_ci([r[i] for r in packs.values()]) for i in range(k)]
            xs = list(range(k))
            ax.errorbar(xs, [s[0] for s in stats], yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]],
                        marker="o", capsize=3, label=f"{m} model")
        ax.set_title(f"context: {c}")
        ax.set_xlabel("pack position")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean reward (95% CI over packs)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config", default=str(ROOT / "configs" / "real_cod_cpu.yaml"),
                   help="training config shared by both arms (default configs/real_cod_cpu.yaml)")
    p.add_argument("--out", default=None, help="output folder (default runs/real_cod_effect[_quick])")
    p.add_argument("--quick", action="store_true",
                   help="a small version for development: one step of one pack per arm, 6 test packs of K=3")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the config's model.device)")
    p.add_argument("--steps", type=int, default=None, help="override the config's training steps")
    p.add_argument("--eval-packs", type=int, default=128, help="held-out test packs per evaluation")
    p.add_argument("--eval-repeats", type=int, default=2, help="lifecycles per pack (averaged per pack)")
    p.add_argument("--eval-k", type=int, default=4, help="K: tasks per evaluation pack (>= 2)")
    p.add_argument("--eval-seed", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.eval_packs, args.eval_repeats, args.eval_k = min(args.eval_packs, 6), 1, min(args.eval_k, 3)
    if args.eval_k < 2:
        p.error("--eval-k must be >= 2 (a gain compares later positions with the first)")
    out = Path(args.out or ("runs/real_cod_effect_quick" if args.quick else "runs/real_cod_effect"))
    out.mkdir(parents=True, exist_ok=True)
    base = load_yaml(TrainConfig, args.config)
    if len(base.envs) != 1:
        raise SystemExit("error: the experiment trains and evaluates one environment; the config lists "
                         f"{len(base.envs)}")
    device = args.device or base.model.device
    if device.startswith("cuda"):
        device = f"cuda:{torch.cuda.get_device_name(0).replace(' ', '_')}"
    cfgs = {arm: arm_config(base, arm, out, args) for arm in ARMS}
    print(f"experiment: {base.envs[0].name} {base.envs[0].params}, {cfgs['cod'].steps} steps x "
          f"{base.packs_per_step} packs x {base.rollout.repeats} repeats (K={base.rollout.pack_size}), "
          f"model {base.model.path} ({'LoRA r=' + str(base.model.lora.r) if base.model.lora else 'full'}); "
          f"evaluation {args.eval_packs} test packs x {args.eval_repeats} repeats, K={args.eval_k}")
    print("means: " + ", ".join(means_used(cfgs["cod"])))
    minutes: dict[str, float] = {}
    for arm in ARMS:
        minutes[f"train-{arm}"] = train_arm(cfgs[arm])
    minutes["eval-base"] = eval_model(None, base, out / "eval-base", args)
    for arm in ARMS:
        minutes[f"eval-{arm}"] = eval_model(final_model(cfgs[arm]), base, out / f"eval-{arm}", args)
    print("wall time of this sitting (minutes): " + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items()))
    return report(out, sum(minutes.values()), device)


def means_used(cfg: TrainConfig) -> list[str]:
    """The features the config uses to give a small model a learning signal (printed above the result)."""
    r = cfg.rollout
    env = cfg.envs[0]
    world = env.name + (f" ({', '.join(f'{k}={v}' for k, v in env.params.items())})" if env.params else "")
    out = [f"world {world}", f"group of {r.repeats} repeats", f"temperature {r.temperature}"]
    if r.use_reply_prefix:
        out.append("reply prefix (short answers)")
    out.append(f"LoRA r={cfg.model.lora.r}" if cfg.model.lora else "full fine-tuning")
    out.append(f"{cfg.steps} steps x {cfg.packs_per_step} packs, lr {cfg.optim.lr:g}")
    return out


if __name__ == "__main__":
    main()
    sys.exit(0)
