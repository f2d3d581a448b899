"""GPU smoke benchmark: lifecycle rollouts and one training step of a randomly initialised ~0.5B decoder.

Runs codrl's whole RL path on one device, with nothing to download, and times it: batched
lifecycle rollouts on FrozenLake-Obscure through :class:`~codrl.backends.hf.HFBackend` and
:class:`~codrl.rollout.lifecycle.LifecycleRunner`, then advantages
(:func:`~codrl.algo.advantages.compute_advantages`) and one policy update
(:class:`~codrl.train.update.PolicyUpdate`) on every experience of the rollout.

* Model: a Qwen2-0.5B-shaped ``Qwen2ForCausalLM`` (hidden 896, 24 layers, 14 query and 2 key-value
  heads, MLP 4,864, a 151,936-token vocabulary, tied embeddings: 494M parameters) built from its
  config with random weights, directly on the device in ``--dtype``. ``--size tiny`` is a
  1.5M-parameter model of the same architecture, to check the script on a CPU in seconds.
* Tokenizer: word-level, built in code (:func:`codrl.toy.policy.build_tokenizer`) over the words
  of the texts FrozenLake lifecycles produce, padded with unused tokens to the model's vocabulary,
  so the output head and the sampling cost what a real vocabulary costs. ``--tokenizer PATH``
  loads a local tokenizer folder instead (it needs a chat template).
* Rollout: ``--lifecycles`` lifecycles, all live at once: ``--lifecycles / --repeats`` packs of
  ``--pack-size`` tasks, each played ``--repeats`` times, sampled at temperature 1 with
  ``--max-new-tokens`` per reply (solve and update-context alike), after a short warm-up call.
  Defaults: 64 lifecycles (16 packs x 4 repeats), K=3, 64 tokens per reply.
* Training: full fine-tuning, one AdamW step on all experiences, as the trainer takes it (rollout
  logprobs as the old policy's, micro-batches of at most ``--micro-batch-tokens`` tokens).

Threads: one torch CPU thread by default (``--threads``). On a small CPU that other processes also
use, two torch threads spin-wait on each other: the tiny CPU run's rollout took 4 s with two
threads on a busy 2-core machine and 0.2 s with one.

A random model never writes a valid move, so every solve episode ends after one reply with reward
0 and every advantage is 0: the update still runs every forward and backward pass (the gradient
is zero). Timings are wall-clock with the device synchronised. The training step is the first one,
so its time includes allocating the optimizer state.

Needs: Python >= 3.10, torch, transformers (with its own requirements: tokenizers,
huggingface_hub, ...), numpy, pydantic and pyyaml -- none of codrl's other dependencies (accelerate,
gguf, matplotlib, openai, peft, rich, scipy, tensorboard, typer; ``tests/test_gpu_smoke.py`` runs
the script with them blocked). transformers imports scipy and accelerate when they are installed,
but runs without them. codrl itself comes from this repository's ``src/``, which the script puts
first on ``sys.path``. No network access: the model and tokenizer are built in code, and
``--tokenizer`` reads local files only.

    python bench/gpu_smoke.py                # 0.5B, bfloat16, on CUDA when available
    python bench/gpu_smoke.py --device cpu --size tiny --dtype float32 --lifecycles 8

Last line: ``RESULT gen_tok_s=<generated tokens per rollout second> train_tok_s=<prompt + completion
tokens per training-step second> peak_mem_gib=<torch.cuda.max_memory_allocated, or the peak
resident set size on a CPU>``.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from codrl.algo.advantages import compute_advantages  # noqa: E402
from codrl.backends.base import GenRequest, GenResult, SamplingParams  # noqa: E402
from codrl.backends.hf import HFBackend  # noqa: E402
from codrl.toy.policy import ROLES, SPECIAL_TOKENS, build_tokenizer, num_params  # noqa: E402
from codrl.envs.frozenlake import CODES, FrozenLakeObscure  # noqa: E402
from codrl.rollout.config import RolloutConfig  # noqa: E402
from codrl.rollout.experience import LifecycleResult  # noqa: E402
from codrl.rollout.lifecycle import LifecycleRunner, job_seeds, make_jobs, play_lifecycle  # noqa: E402
from codrl.train.batching import to_sequences  # noqa: E402
from codrl.train.config import EnvSpec, ModelConfig, TrainConfig  # noqa: E402
from codrl.train.update import PolicyUpdate  # noqa: E402

GIB = 2**30
#: Packs played with random moves to collect the word-level tokenizer's vocabulary.
VOCAB_PACKS = 8
T = TypeVar("T")


@dataclass(frozen=True)
class Shape:
    """Size of a Qwen2-architecture decoder."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int


SHAPES: dict[str, Shape] = {
    "0.5b": Shape(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151_936),  # Qwen2-0.5B
    "tiny": Shape(hidden=128, layers=2, heads=4, kv_heads=2, intermediate=512, vocab=8192),
}


@dataclass(frozen=True)
class Phase:
    """One timed phase: the tokens it processed and its wall-clock seconds."""

    name: str
    tokens: int
    seconds: float
    detail: str

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds


# -- setup ---------------------------------------------------------------------------------------
def resolve_device(name: str | None) -> torch.device:
    """``name``, or CUDA when available else the CPU; exits with one line if CUDA is asked for but missing."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"gpu_smoke: --device {name} asked for, but CUDA is not available "
                         "(torch.cuda.is_available() is False)")
    return device


def lifecycle_words(env: FrozenLakeObscure, cfg: RolloutConfig, packs: int, seed: int) -> set[str]:
    """Whitespace-separated words of every text the lifecycle builds with ``env`` (and the chat roles).

    Drives :func:`play_lifecycle` itself with scripted replies (a random action code, which also
    makes a valid hints block, or an empty, invalid reply), so the prompts -- observations, moves
    and their feedback, hints, update-context prompts -- are exactly those a rollout builds.
    """
    rng = random.Random(seed)
    replies = ["", *(f"{code}{env.stop_strings[0]}" for code in CODES)]
    words = set(ROLES)
    for i in range(packs):
        lifecycle = play_lifecycle(env, env.sample_pack("train", seed, i, cfg.pack_size), 0, cfg)
        try:
            request = next(lifecycle)
            while True:
                for text in [*(m["content"] for m in request.messages), request.reply_prefix]:
                    words.update(text.split())
                request = lifecycle.send(GenResult(rng.choice(replies)))
        except StopIteration:
            pass
    return words


def word_tokenizer(words: set[str], vocab: int) -> Any:
    """A word-level tokenizer over ``words``, padded with ``<unused{i}>`` tokens to ``vocab`` entries."""
    fillers = vocab - len(SPECIAL_TOKENS) - len(words)
    if fillers < 0:
        raise ValueError(f"{len(words)} words do not fit a vocabulary of {vocab}")
    return build_tokenizer([*words, *(f"<unused{i}>" for i in range(fillers))])


def load_tokenizer(path: str | None, env: FrozenLakeObscure, cfg: RolloutConfig, vocab: int,
                   seed: int) -> tuple[Any, str]:
    """The tokenizer folder at ``path`` (local files only), else a word-level one; and a description."""
    if path is not None:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return tokenizer, f"{path} ({len(tokenizer)} tokens)"
    words = lifecycle_words(env, cfg, VOCAB_PACKS, seed)
    tokenizer = word_tokenizer(words, vocab)
    return tokenizer, f"word-level, {len(words)} FrozenLake words padded to {len(tokenizer)} tokens"


def build_model(shape: Shape, tokenizer: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A randomly initialised ``Qwen2ForCausalLM`` of ``shape`` (the vocabulary grown to fit
    ``tokenizer``), created on ``device`` in ``dtype``, in eval mode."""
    config = Qwen2Config(
        vocab_size=max(shape.vocab, len(tokenizer)), hidden_size=shape.hidden,
        intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


# -- timed phases --------------------------------------------------------------------------------
def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """``fn()`` and its wall-clock seconds, the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def warm_up(backend: HFBackend) -> None:
    """One short request, so that the timed rollout does not pay for kernel loading; its cached
    states are dropped, so the rollout starts with an empty prefix store."""
    backend.generate([GenRequest([{"role": "user", "content": "warm up"}], SamplingParams(max_new_tokens=4))])
    backend.store.clear()


def rollout(backend: HFBackend, env: FrozenLakeObscure, cfg: RolloutConfig, lifecycles: int, seed: int,
            device: torch.device) -> tuple[list[LifecycleResult], Phase]:
    """Play ``lifecycles`` lifecycles at once; return them and the phase (generated tokens)."""
    packs = [(env, env.sample_pack("train", seed, i, cfg.pack_size)) for i in range(lifecycles // cfg.repeats)]
    jobs = make_jobs(packs, cfg)
    runner = LifecycleRunner(backend, cfg)
    before = dict(vars(backend.stats))
    results, seconds = timed(lambda: runner.run(jobs, seeds=job_seeds(len(jobs), seed)), device)
    stats = {k: v - before[k] for k, v in vars(backend.stats).items()}
    calls = [e for r in results for e in r.experiences]
    detail = (f"{len(jobs)} lifecycles ({len(packs)} packs x {cfg.repeats}, K={cfg.pack_size}), {len(calls)} model "
              f"calls; {stats['prompt_tokens']} prompt tokens, {stats['cached_tokens']} from the KV cache")
    return results, Phase("rollout", sum(len(e.completion_ids) for e in calls), seconds, detail)


def train_step(backend: HFBackend, cfg: TrainConfig, results: list[LifecycleResult], device: torch.device) -> Phase:
    """Advantages, then one full-fine-tuning AdamW step on ``results``; the phase counts prompt + completion tokens."""
    model = backend.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    update = PolicyUpdate(cfg, model, optimizer, backend.pad_id)
    episodes = [ep for r in results for ep in r.model_episodes]

    def step() -> dict[str, float]:
        compute_advantages(results, cfg.advantage)
        return update(episodes, 0, True)  # the rollout's logprobs are the trained policy's (same weights)

    metrics, seconds = timed(step, device)
    rows = to_sequences(episodes, merge_turns=cfg.merge_turns)  # what PolicyUpdate trains on
    detail = (f"{len(rows)} rows of {len(episodes)} episodes; loss {metrics.get('loss', float('nan')):.4f}, "
              f"grad norm {metrics.get('grad_norm', float('nan')):.3g}")
    return Phase("train", sum(r.num_tokens for r in rows), seconds, detail)


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, else the process's peak resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux reports KiB


# -- entry point ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--size", default="0.5b", choices=tuple(SHAPES),
                    help="0.5b: the Qwen2-0.5B shape; tiny: 1.5M parameters, for a check on a CPU")
    ap.add_argument("--tokenizer", default=None, help="local tokenizer folder (default: a word-level one built here)")
    ap.add_argument("--lifecycles", type=int, default=64, help="lifecycles played, all at once")
    ap.add_argument("--repeats", type=int, default=4, help="plays of each pack (the advantage baseline's group)")
    ap.add_argument("--pack-size", type=int, default=3, help="tasks per pack (K)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="token budget of every reply")
    ap.add_argument("--micro-batch-tokens", type=int, default=TrainConfig.model_fields["micro_batch_tokens"].default,
                    help="token budget of one training forward/backward micro-batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default); see the module doc")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.lifecycles < args.repeats or args.lifecycles % args.repeats:
        ap.error(f"--lifecycles ({args.lifecycles}) must be a positive multiple of --repeats ({args.repeats})")
    return args


def print_report(phases: list[Phase], peak_gib: float, device: torch.device) -> None:
    print(f"\n{'phase':<8}{'tokens':>9}{'seconds':>9}{'tok/s':>11}  detail")
    for p in phases:
        print(f"{p.name:<8}{p.tokens:>9}{p.seconds:>9.2f}{p.tok_s:>11.1f}  {p.detail}")
    source = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak resident set size"
    print(f"peak memory: {peak_gib:.2f} GiB ({source})")


def main(argv: list[str] | None = None) -> None:
    start = time.perf_counter()
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    env = FrozenLakeObscure()
    rollout_cfg = RolloutConfig(pack_size=args.pack_size, repeats=args.repeats, max_concurrent=args.lifecycles,
                                max_new_tokens_solve=args.max_new_tokens, max_new_tokens_update=args.max_new_tokens)
    train_cfg = TrainConfig(envs=[EnvSpec(name=env.name)], rollout=rollout_cfg,
                            model=ModelConfig(lora=None, dtype=args.dtype, device=device.type),
                            micro_batch_tokens=args.micro_batch_tokens, seed=args.seed)
    shape = SHAPES[args.size]
    tokenizer, tok_desc = load_tokenizer(args.tokenizer, env, rollout_cfg, shape.vocab, args.seed)
    model = build_model(shape, tokenizer, device, dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"model: Qwen2ForCausalLM, {num_params(model) / 1e6:.1f}M parameters (hidden {shape.hidden}, "
          f"{shape.layers} layers, {shape.heads}/{shape.kv_heads} heads, vocabulary {model.config.vocab_size}), "
          f"{args.dtype} on {where}, random weights")
    print(f"tokenizer: {tok_desc}")
    backend = HFBackend(model, tokenizer, max_batch_size=args.lifecycles)
    warm_up(backend)
    results, gen = rollout(backend, env, rollout_cfg, args.lifecycles, args.seed, device)
    train = train_step(backend, train_cfg, results, device)
    peak_gib = peak_memory_gib(device)
    print_report([gen, train], peak_gib, device)
    print(f"wall time: {time.perf_counter() - start:.1f}s (setup, warm-up and both phases)")
    print(f"RESULT gen_tok_s={gen.tok_s:.1f} train_tok_s={train.tok_s:.1f} peak_mem_gib={peak_gib:.3f}")


if __name__ == "__main__":
    main()
