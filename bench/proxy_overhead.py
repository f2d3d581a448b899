"""Proxy overhead: lifecycles per second through the training proxy vs in process, on the same jobs.

Both sides play the same FrozenLake-Obscure jobs (packs x repeats, the same seeds) with the same
lifecycle generator (:func:`codrl.rollout.lifecycle.play_lifecycle`) on the same model (the
embedded SmolLM2-135M-Instruct, CPU fp32):

* in process: :class:`~codrl.rollout.lifecycle.LifecycleRunner` batches every lifecycle's calls;
* through the proxy: :class:`~codrl.serve.agent.AgentEngine` starts one program per lifecycle (this
  file with ``--program``), which drives the generator and sends each call to the proxy with the
  official ``openai`` client, tagged, and reports each task's reward over HTTP; the proxy batches
  the programs' concurrent calls in its engine thread and records them token-exactly.

The ratio is what a program of one's own costs against codrl's own runner: process starts, HTTP,
JSON and batches formed from independent clients. Reply prefixes are off on both sides (a chat
API has no prefill). ``--threads 1`` by default (see bench/rollout_throughput.py).

Usage: ``python bench/proxy_overhead.py [--packs 4 --repeats 2 --pack-size 2 --concurrent 8]``.
Last line: ``RESULT proxy_ratio=<proxy lifecycles/s / in-process lifecycles/s> proxy_lps= inproc_lps=``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_PARAMS = {"min_size": 4, "max_size": 4, "max_env_steps": 3, "max_agent_steps": 3}


def rollout_config(pack_size: int, repeats: int, concurrent: int):  # noqa: ANN201 - codrl imported late
    from codrl.rollout.config import RolloutConfig

    return RolloutConfig(pack_size=pack_size, repeats=repeats, max_concurrent=concurrent, use_reply_prefix=False,
                         max_new_tokens_solve=16, max_new_tokens_update=48)


def program(pack_size: int, repeats: int, concurrent: int) -> int:
    """One lifecycle as an outside program: the generator's calls go to the proxy over HTTP."""
    import urllib.request

    from openai import OpenAI

    from codrl.backends.base import GenResult
    from codrl.envs import make_env
    from codrl.rollout.lifecycle import play_lifecycle
    from codrl.rollout.prompts import UPDATE_SYSTEM

    job = json.loads(Path(os.environ["CODRL_TASKS"]).read_text())
    lifecycle = os.environ["CODRL_LIFECYCLE"]
    env = make_env("frozenlake", **ENV_PARAMS)
    _, split, seed, index = job["pack_id"].rsplit("/", 3)
    pack = env.sample_pack(split, int(seed), int(index), len(job["tasks"]))
    client = OpenAI()
    base = str(client.base_url).rstrip("/").removesuffix("/v1")
    reported = 0

    def post(path: str, body: dict) -> None:
        req = urllib.request.Request(base + path, data=json.dumps({"lifecycle": lifecycle, **body}).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {client.api_key}"})
        urllib.request.urlopen(req, timeout=600).read()

    def on_episode(record) -> None:  # noqa: ANN001 - an EpisodeRecord, after the update that followed it
        nonlocal reported
        post("/codrl/v1/reward", {"position": record.position, "reward": record.reward, "feedback": record.feedback})
        reported += 1

    gen = play_lifecycle(env, pack, job["repeat"], rollout_config(pack_size, repeats, concurrent), seed=job["seed"],
                         on_episode=on_episode)
    try:
        req = next(gen)
        while True:
            kind = "update" if req.messages[0]["content"] == UPDATE_SYSTEM else "solve"
            out = client.chat.completions.create(
                model="policy", messages=req.messages, max_tokens=req.sampling.max_new_tokens,
                stop=list(req.sampling.stop) or None, seed=req.seed,
                extra_headers={"X-Codrl-Lifecycle": lifecycle, "X-Codrl-Episode": kind,
                               "X-Codrl-Position": str(reported)})
            req = gen.send(GenResult(text=out.choices[0].message.content or "", token_exact=False))
    except StopIteration:
        pass
    post("/codrl/v1/end", {})
    return 0


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--pack-size", type=int, default=2)
    p.add_argument("--concurrent", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--program", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.program:
        sys.exit(program(args.pack_size, args.repeats, args.concurrent))
    import torch

    from codrl.backends.hf import HFBackend
    from codrl.envs import make_env
    from codrl.rollout.lifecycle import LifecycleRunner, job_seeds, make_jobs
    from codrl.serve.agent import AgentEngine
    from codrl.serve.agent_config import AgentConfig
    from codrl.serve.proxy import TrainingProxy

    torch.set_num_threads(args.threads)
    cfg = rollout_config(args.pack_size, args.repeats, args.concurrent)
    env = make_env("frozenlake", **ENV_PARAMS)
    jobs = make_jobs([(env, env.sample_pack("test", 0, i, args.pack_size)) for i in range(args.packs)], cfg)
    seeds = job_seeds(len(jobs), 1234)
    backend = HFBackend.from_pretrained(None)
    t = time.perf_counter()
    inproc = LifecycleRunner(backend, cfg).run(jobs, seeds=seeds)
    inproc_s = time.perf_counter() - t
    command = (f"{sys.executable} {Path(__file__).resolve()} --program --pack-size {args.pack_size} "
               f"--repeats {args.repeats} --concurrent {args.concurrent}")
    agent = AgentConfig(tasks=str(ROOT / "examples" / "own_agent" / "tasks.jsonl"), command=command, timeout_s=1800)
    engine = AgentEngine(TrainingProxy(backend, cfg=cfg, require_lifecycle=True), agent, args.concurrent,
                         Path(tempfile.mkdtemp(prefix="proxy_overhead_")))
    try:
        t = time.perf_counter()
        proxied = engine.run(jobs, seeds=seeds)
        proxy_s = time.perf_counter() - t
    finally:
        engine.close()
    failed = sum(r.env_errors > 0 for r in proxied)
    calls = (sum(len(r.experiences) for r in inproc), sum(len(r.experiences) for r in proxied))
    tokens = (sum(len(c.completion_ids) for r in inproc for c in r.experiences),
              sum(len(c.completion_ids) for r in proxied for c in r.experiences))
    print(f"{len(jobs)} lifecycles ({args.packs} packs x {args.repeats}, K={args.pack_size}), concurrent "
          f"{args.concurrent}, torch threads {args.threads}")
    print(f"in process : {inproc_s:7.1f} s  {calls[0]} calls  {tokens[0]} sampled tokens")
    print(f"proxy      : {proxy_s:7.1f} s  {calls[1]} calls  {tokens[1]} sampled tokens  ({failed} failed programs)")
    out = {"proxy_ratio": inproc_s / proxy_s, "proxy_lps": len(jobs) / proxy_s, "inproc_lps": len(jobs) / inproc_s}
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in out.items()))
    return out


if __name__ == "__main__":
    main()
