"""Pass rate per attempt of a model in the Ralph loop on coding-world tasks, per context variant.

Plays ``--tasks`` tasks of the coding world (``code``: the first task of test packs 0..N-1), each
attempted ``--attempts`` times, once per context variant (``nohint``: independent attempts,
``cod``: model-written notes, ``curator``: an itemised lesson list edited by operations), with
the embedded SmolLM2-135M-Instruct through one or both backends:

* ``hf``: the transformers backend in process (token-exact, batched, KV reuse);
* ``server``: a real llama.cpp server (``llama_cpp.server`` on the embedded GGUF, started here with
  a 4096-token context) through the OpenAI-compatible backend.

    python bench/ralph_coding.py                          # 20 tasks x 4 attempts, both backends
    python bench/ralph_coding.py --backends server --tasks 5 --attempts 3

Each run writes the full `codrl ralph` output (notes after every attempt, ralph.md, reports) to
``--out/<backend>``. Last line: ``RESULT <backend>_<context>_a<k>=<pass rate at attempt k> ...
<backend>_<context>_reward_a<k>=<mean fraction of tests passed> ... <backend>_seconds=...``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from codrl.eval.ralph import CONTEXTS, RalphConfig, run_ralph


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", nargs="+", choices=("hf", "server"), default=["hf", "server"])
    ap.add_argument("--env", default="code", help="coding environment (code or code_hard)")
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--attempts", type=int, default=4)
    ap.add_argument("--contexts", nargs="+", choices=CONTEXTS, default=list(CONTEXTS))
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-ralph-coding"))
    args = ap.parse_args()
    if min(args.tasks, args.attempts, args.max_new_tokens) < 1:
        ap.error("--tasks, --attempts and --max-new-tokens must be >= 1")
    cfg = RalphConfig(target=args.env, tasks=args.tasks, attempts=args.attempts, contexts=args.contexts,
                      seed=args.seed, rollout={"temperature": args.temperature,
                                               "max_new_tokens_solve": args.max_new_tokens,
                                               "max_new_tokens_update": min(args.max_new_tokens, 160),
                                               "length_penalty_coef": 0.0, "hint_length_coef": 0.0})
    result: list[str] = []
    for name in args.backends:
        t0 = time.perf_counter()
        if name == "hf":
            import torch

            from codrl.backends.hf import HFBackend

            torch.manual_seed(args.seed)
            backend = HFBackend.from_pretrained(None)
            try:
                rates = run_ralph(backend, cfg, args.out / name, meta={"model": "embedded", "backend": name})
            finally:
                backend.close()
        else:
            from codrl.backends.llama_server import LlamaServer
            from codrl.backends.openai_backend import OpenAIBackend

            with LlamaServer(n_ctx=4096) as server:
                client = OpenAIBackend(server.url, timeout=600.0, concurrency=2)
                try:
                    rates = run_ralph(client, cfg, args.out / name, meta={"model": "embedded GGUF", "backend": name})
                finally:
                    client.close()
        seconds = time.perf_counter() - t0
        for context, r in rates.items():
            result += [f"{name}_{context}_a{a.attempt}={a.pass_rate:.3f}" for a in r.attempts]
            result += [f"{name}_{context}_reward_a{a.attempt}={a.mean_reward:.3f}" for a in r.attempts]
        result.append(f"{name}_seconds={seconds:.0f}")
        print(f"{name}: {seconds:.0f} s", flush=True)
    print("RESULT " + " ".join(result))


if __name__ == "__main__":
    main()
