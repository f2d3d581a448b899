"""Update throughput with and without prefix sharing, on the same training rows in one run.

Workload: the rows of the quickstart's first RL step (``configs/quickstart_cpu.yaml``: the
embedded SmolLM2-135M-Instruct with LoRA, FrozenLake lifecycles, advantages by the cod
estimator), played once. The same rows then go through the update's forward and backward
(:meth:`codrl.train.update.PolicyUpdate.accumulate`, no optimizer step, so the weights never
change) with ``share_prefix`` off and on, alternately, ``--repeats`` times each; the time of a
side is its fastest pass. Both sides must give the same loss and gradients (to float32 rounding).

``ctx_per_trained``: context tokens the forward passes compute per trained token (every row in
full before; each micro-batch's shared prefix once after).

    python bench/update_throughput.py                  # quickstart rows (~4 min on 2 cores)
    python bench/update_throughput.py -c configs/real_cod_cpu.yaml

Last line: ``RESULT update_speedup= ctx_per_trained_before= ctx_per_trained_after=``.
Target: update_speedup >= 2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from codrl.algo.advantages import compute_advantages
from codrl.config import load_yaml
from codrl.train.batching import to_sequences
from codrl.train.config import TrainConfig
from codrl.train.trainer import Trainer
from codrl.train.update import PolicyUpdate

ROOT = Path(__file__).resolve().parents[1]
TARGET = 2.0


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", default=str(ROOT / "configs" / "quickstart_cpu.yaml"))
    p.add_argument("--repeats", type=int, default=2, help="timed passes per side (the fastest counts)")
    p.add_argument("--out", default="runs/bench_update_throughput")
    args = p.parse_args(argv)
    cfg = load_yaml(TrainConfig, args.config)
    cfg = cfg.model_copy(update={"output_dir": args.out, "eval": cfg.eval.model_copy(
        update={"at_start": False, "at_end": False})})
    trainer = Trainer(cfg)
    try:
        t0 = time.time()
        results = trainer.rollout(0)
        compute_advantages(results, cfg.advantage)
        rows = to_sequences([ep for r in results for ep in r.model_episodes], merge_turns=cfg.merge_turns)
        print(f"rows: {len(rows)} from {len(results)} lifecycles (rollout {time.time() - t0:.0f} s), "
              f"{sum(r.num_tokens for r in rows)} tokens, {sum(r.num_trained for r in rows)} trained; "
              f"micro_batch_tokens {cfg.micro_batch_tokens}; torch threads {torch.get_num_threads()}")
        model = trainer.model
        params = [q for q in model.parameters() if q.requires_grad]
        updates = {share: PolicyUpdate(cfg.model_copy(update={"share_prefix": share}), model,
                                       torch.optim.AdamW(params, lr=0.0), trainer.policy_update.pad_id)
                   for share in (False, True)}
        times: dict[bool, list[float]] = {False: [], True: []}
        grads: dict[bool, list[torch.Tensor]] = {}
        loss: dict[bool, float] = {}
        model.train()
        for _ in range(args.repeats):
            for share in (False, True):
                model.zero_grad(set_to_none=True)
                t = time.perf_counter()
                sums = updates[share].accumulate(rows)
                times[share].append(time.perf_counter() - t)
                grads[share] = [q.grad.detach().clone() for q in params]
                loss[share] = sums["loss"]
        model.eval()
        ratio = updates[True].context_per_trained([rows])
        rel = max(float((a - b).abs().max()) / (float(a.abs().max()) + 1e-30)
                  for a, b in zip(grads[False], grads[True], strict=True))
    finally:
        trainer.close()
    before, after = min(times[False]), min(times[True])
    speedup = before / after
    print(f"unshared: {before:.1f} s (passes {', '.join(f'{t:.1f}' for t in times[False])}); "
          f"shared: {after:.1f} s (passes {', '.join(f'{t:.1f}' for t in times[True])}); "
          f"median ratio {statistics.median(times[False]) / statistics.median(times[True]):.2f}")
    print(f"loss {loss[False]:.6f} vs {loss[True]:.6f}; largest gradient difference {rel:.1e} of the tensor's largest entry")
    print(f"target update_speedup >= {TARGET}: {'met' if speedup >= TARGET else 'NOT met'}")
    out = {"update_speedup": speedup, "ctx_per_trained_before": ratio["context_tokens_per_trained_token_unshared"],
           "ctx_per_trained_after": ratio["context_tokens_per_trained_token"]}
    print("RESULT " + " ".join(f"{k}={v:.2f}" for k, v in out.items()))
    return out


if __name__ == "__main__":
    main()
    sys.exit(0)
