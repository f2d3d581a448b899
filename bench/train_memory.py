"""Peak resident memory of one quickstart training step, with a per-phase breakdown.

Workload: ``codrl train -c configs/quickstart_cpu.yaml --steps 1`` -- the embedded
SmolLM2-135M-Instruct (fp32, 49,152-token vocabulary) with LoRA r=8 on q/k/v/o, on CPU: an
evaluation at start (2 packs), one RL step (one pack of K=3 tasks played as a GRPO group of two
lifecycles, then a policy-gradient update in micro-batches of at most 2,048 tokens), a
checkpoint, and the evaluation at the end. The command runs in a child process, so the peak is the
child's maximum resident set size (``getrusage(RUSAGE_CHILDREN)``, the number ``/usr/bin/time -v``
prints as "Maximum resident set size").

Target: <= 3 GiB (TRL's GRPO step on the same model peaks at 2.3 GiB). The trainer used to peak at
5.8-6.1 GiB here: full-vocabulary float32 logits of a whole micro-batch, their log-softmax and
entropy kept for backward, and freed activations kept resident by glibc's heap (see
``codrl.train.scoring`` and ``codrl.train.memory``); it now peaks at about 2.9-3.0 GiB, in the
update. What is left there is about 1 GiB of interpreter, libraries and fp32 weights plus the
model body's own activations, about 0.9 MiB per token of the largest micro-batch (up to 2,048
here). ``model.gradient_checkpointing: true`` (``-c`` a copy of the config with it) brings the
peak to about 1.3 GiB, set by the rollout, for about 50% more update time.

Phases: the child wraps ``Trainer.__init__`` (model load), ``evaluate``, ``rollout``, ``update``
and ``save`` and samples its resident size every 10 ms, so the table shows the resident size at
the start and end of each phase and its peak during it (sampled; the RESULT is the exact
kernel-reported peak over the whole run). The wrappers only observe; the command is unchanged.

    python bench/train_memory.py                       # quickstart, one step (~8 min on 2 cores)
    python bench/train_memory.py -c configs/other.yaml --steps 2

Last line: ``RESULT quickstart_peak_gib=<x>``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_GIB = 3.0
GIB = 2**30


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PhaseMonitor:
    """Samples this process's resident size in a thread; records start/peak/end per phase."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.phases: list[dict[str, Any]] = []
        self._peak = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            rss = _rss_bytes()
            with self._lock:
                self._peak = max(self._peak, rss)
            time.sleep(self.interval_s)

    def wrap(self, owner: Any, method: str, label: Any) -> None:
        """Replace ``owner.method`` by a wrapper recording a phase named ``label(*args)`` (or ``label``)."""
        fn = getattr(owner, method)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            name = label(*args, **kwargs) if callable(label) else label
            start = _rss_bytes()
            with self._lock:
                outer_peak, self._peak = self._peak, start
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                end = _rss_bytes()
                with self._lock:
                    peak = max(self._peak, end)
                    self._peak = max(outer_peak, peak)  # an enclosing phase still sees this peak
                self.phases.append({"phase": name, "start": start, "peak": peak, "end": end,
                                    "seconds": time.perf_counter() - t0})

        setattr(owner, method, wrapper)


def child(phases_json: str, cli_args: list[str]) -> None:
    """Run ``codrl <cli_args>`` in this process with the phase monitor installed."""
    from codrl import cli
    from codrl.train.trainer import Trainer

    mon = PhaseMonitor()
    mon.wrap(Trainer, "__init__", "load model + build trainer")
    mon.wrap(Trainer, "evaluate", lambda self, tag: f"eval {tag}")
    mon.wrap(Trainer, "rollout", lambda self, step: f"rollout step {step}")
    mon.wrap(Trainer, "update", lambda self, exps: f"update ({len(exps)} experiences)")
    mon.wrap(Trainer, "save", "checkpoint")
    sys.argv = ["codrl", *cli_args]
    try:
        cli.main()
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        Path(phases_json).write_text(json.dumps(mon.phases))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:  # the measured process: --child PHASES_JSON CODRL_ARGS...
        child(sys.argv[2], sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default=str(ROOT / "configs" / "quickstart_cpu.yaml"))
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--output-dir", default=None, help="default: a temporary folder, removed afterwards")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="train_memory_") as tmp:
        out = args.output_dir or str(Path(tmp) / "run")
        phases_json = str(Path(tmp) / "phases.json")
        cli_args = ["train", "-c", args.config, "--steps", str(args.steps), "--output-dir", out]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
        print(f"running: codrl {' '.join(cli_args)}", flush=True)
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", phases_json, *cli_args],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
        wall = time.time() - t0
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"training command failed with exit status {proc.returncode}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB  # Linux: KiB
        phases = json.loads(Path(phases_json).read_text()) if Path(phases_json).is_file() else []

    print("\n| phase | start GiB | peak GiB | end GiB | seconds |\n| --- | ---: | ---: | ---: | ---: |")
    for p in phases:
        print(f"| {p['phase']} | {p['start'] / GIB:.2f} | {p['peak'] / GIB:.2f} | {p['end'] / GIB:.2f} "
              f"| {p['seconds']:.0f} |")
    print(f"\npeak resident set size: {peak:.2f} GiB (target <= {TARGET_GIB:.1f} GiB: "
          f"{'met' if peak <= TARGET_GIB else 'NOT met'}); wall time {wall:.0f} s")
    print(f"RESULT quickstart_peak_gib={peak:.2f}")


if __name__ == "__main__":
    main()
