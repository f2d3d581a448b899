"""codrl vs TRL's ``GRPOTrainer`` on the same single-turn GRPO workload (CPU).

Workload (identical on both sides):

* model: the embedded SmolLM2-135M-Instruct (``codrl.backends.embedded.embedded_model_dir()``, a
  plain HF folder), fp32 on CPU, LoRA r=8 / alpha=16 / dropout 0 on ``q_proj``/``v_proj``;
* data: ``--prompts`` distinct chat prompts per step (arithmetic questions asking for step-by-step
  reasoning and a tagged answer), taken in a fixed order from :data:`QUESTIONS`, so step ``s`` uses
  the same prompts on both sides; each prompt is sampled ``--group`` (8) times at temperature 1.0,
  top-p 1, no top-k, at most ``--max-new-tokens`` (64) new tokens. The chat template is applied by
  each library (``add_generation_prompt=True``); both give the same prompt token ids (the run
  prints the prompt-token totals of both sides as a check);
* reward: :func:`reward_of`, a deterministic function of the completion text and the answer;
* algorithm: GRPO advantages ``(r - mean) / (std + eps)`` per prompt group, on-policy (one
  optimizer step per batch, so the importance ratio is 1), token-level PPO-clip loss with
  eps 0.2/0.2 normalised by the number of completion tokens of the whole batch (TRL's default
  ``loss_type="dapo"``; codrl's ``ppo_clip`` loss with its token-mean normalisation), beta 0 (no
  KL, no reference model), AdamW (lr 1e-5, betas 0.9/0.999, eps 1e-8, weight decay 0, constant
  schedule), gradient-norm clipping at 1.0, no gradient checkpointing; the whole batch
  (prompts x group rows) goes through one forward/backward pass on both sides.

Sides (each in its own subprocess, ``--side trl`` / ``--side codrl``, so peak RSS is per side):

* TRL: ``GRPOTrainer(model, reward_funcs=[reward], args=GRPOConfig(num_generations=8,
  max_completion_length=64, beta=0, per_device_train_batch_size=prompts*8,
  gradient_accumulation_steps=1, use_cpu=True, ...), peft_config=LoraConfig(...))`` on a
  ``datasets.Dataset`` with conversational ``prompt`` and ``answer`` columns, ``trainer.train()``
  for ``warmup + steps`` optimizer steps; generation with transformers ``model.generate``.
* codrl: the public pieces: ``codrl.train.trainer.build_policy`` (HFBackend + peft LoRA),
  ``HFBackend.generate`` (exact token ids/logprobs), ``Experience`` objects scored with
  :func:`reward_of`, ``codrl.algo.advantages.compute_advantages`` (``estimator="grpo"``) and
  ``codrl.train.trainer.Trainer.update``.

Measurement (the first ``--warmup`` steps are run but excluded):

* step time: wall time of a whole RL step (generation + reward + advantages + forward/backward +
  clip + optimizer step). TRL: a ``TrainerCallback`` from ``on_step_begin`` to ``on_step_end``
  (generation runs inside ``training_step``, so it is included). codrl: around the whole loop body.
* rollout phase: TRL's ``_generate_and_score_completions`` (timed by overriding it in a subclass:
  tokenisation, ``generate``, decoding, rewards, advantages); codrl: ``backend.generate`` +
  rewards + ``compute_advantages``. "generation tok/s" uses the rollout-phase time.
* update phase = step time - rollout phase (TRL: forward/backward, clip, optimizer step;
  codrl: ``Trainer.update``).
* tokens: completion tokens sampled in the measured steps (EOS included when sampled; TRL counted
  in an override of ``_generate_single_turn``, codrl from ``GenResult.completion_ids``).
  tok/s = completion tokens / seconds of that phase.
* peak RSS: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` inside each child at its end (imports,
  model load and training included); "setup RSS" is the resident set just before the first step.
* CPU time: the same phases are also timed in process CPU seconds (``getrusage``); "tok per CPU-s"
  is much less sensitive to other processes competing for the cores than tok/s (with one torch
  thread it is close to tok/s on an idle machine). The run prints each child's CPU share
  (CPU s / wall s of the measured steps): well under 100% means the machine was contended and the
  wall-clock ratios are noisy; rerun, or use ``--rounds 2`` (order alternated: codrl, TRL, TRL,
  codrl) whose totals are summed.

Threads: each child calls ``torch.set_num_threads(--threads)`` (default 1, same on both sides):
on a 2-core machine shared with other processes two torch threads spin-wait on each other (see
bench/rollout_throughput.py); ``--threads 2`` suits an otherwise idle machine.

Install TRL (benchmark-only; never imported by ``src/codrl``) without letting pip touch
torch/transformers::

    pip install --no-deps trl==1.16.0
    pip install --no-deps datasets pandas pyarrow dill xxhash multiprocess
    python -c "from trl import GRPOTrainer, GRPOConfig"   # lists anything still missing
    python -c "import torch; print(torch.__version__)"   # must still be the CPU build

Tested with trl 1.16.0, datasets 5.2.0, pandas 3.1.1, pyarrow 26.0.1, dill 0.4.1, xxhash 4.1.0,
multiprocess 0.70.19 on transformers 5.24 / peft 0.21 / torch 2.13.0+cpu. (``pip install -e .[bench]``
declares the requirement but resolves dependencies, which may pull another torch; prefer the
``--no-deps`` commands on CPU machines.)

Run: ``python bench/vs_trl.py [--steps 3 --prompts 2 --warmup 1 --threads 1 --rounds 1]`` (about
7 minutes on 2 CPU cores with the defaults, twice that with ``--rounds 2``);
``python bench/vs_trl.py --quick`` is a 1-step, 1-prompt, 16-token sanity run (about a minute).
The last line printed is ``RESULT speedup=<codrl/TRL step tok/s>
train_speedup=<codrl/TRL update tok/s> mem_ratio=<codrl/TRL peak RSS>``, then the same three for
the multi-turn workload with the suffix ``_multiturn``.

Multi-turn workload (``--workloads multi``): each sampled conversation gets a second turn, the
fixed feedback :data:`FEEDBACK` after the first reply, and a second reply; the reward is
:func:`reward_of` the second reply, and both replies are trained (the feedback tokens are not).
TRL drives it through ``GRPOTrainer``'s documented custom-rollout hook ``rollout_func`` (two
transformers ``generate`` calls; the feedback tokens masked with its ``env_mask``), codrl through
``HFBackend.generate`` with a session per conversation (the second turn's prompt is served from
the first turn's KV cache) and its multi-turn rows (the turns of an episode trained as one row).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LORA_R, LORA_ALPHA, LORA_TARGETS = 8, 16, ["q_proj", "v_proj"]
LR = 1e-5
SEED = 0
CHILD_TAG = "VS_TRL_JSON "
#: The second turn's user message of the multi-turn workload (the same after every first reply).
FEEDBACK = "Check your arithmetic once more, then give the final number again inside <answer></answer> tags."

#: (a, op, b): the questions, used in this order (step s takes prompts s*P .. s*P+P-1, cycling).
QUESTIONS = [(23, "+", 58), (91, "-", 37), (12, "*", 7), (46, "+", 79), (84, "-", 29), (9, "*", 13),
             (65, "+", 18), (73, "-", 46), (15, "*", 6), (38, "+", 94), (57, "-", 19), (11, "*", 12),
             (27, "+", 66), (99, "-", 58), (8, "*", 14), (71, "+", 45)]


def question(i: int) -> tuple[list[dict[str, str]], str]:
    """Chat messages and answer of prompt ``i``."""
    a, op, b = QUESTIONS[i % len(QUESTIONS)]
    answer = str(a + b if op == "+" else a - b if op == "-" else a * b)
    text = (f"What is {a} {op} {b}? Explain your reasoning step by step, then give the final number "
            "inside <answer></answer> tags.")
    return [{"role": "user", "content": text}], answer


def step_prompts(step: int, per_step: int) -> list[int]:
    return [step * per_step + j for j in range(per_step)]


def reward_of(text: str, answer: str) -> float:
    """1 for ``<answer>N</answer>`` with the right N, 0.3 for a right N elsewhere, 0.2 for any answer
    tag, plus up to 0.1 for brevity. Deterministic; both sides call exactly this."""
    r = 0.0
    m = re.search(r"<answer>\s*(-?\d+)\s*</answer>", text)
    if m and m.group(1) == answer:
        r += 1.0
    elif answer in re.findall(r"-?\d+", text):
        r += 0.3
    if "<answer>" in text:
        r += 0.2
    return r + 0.1 * max(0.0, 1.0 - len(text) / 400.0)


def rss_kib() -> int:
    """Current resident set (KiB) from /proc (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


#: Per-step quantities summed over the measured steps (and over rounds).
SUMMED = ("step_s", "rollout_s", "generate_s", "update_s", "step_cpu_s", "rollout_cpu_s", "update_cpu_s",
          "tokens", "prompt_tokens", "rows", "truncated")


class Recorder:
    """Per-step timings and token counts of one side."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.steps: list[dict[str, float]] = []
        self.cur: dict[str, float] = {}
        self.rewards: list[float] = []
        self.prompt_hash = hashlib.sha256()  # over the prompt token ids of every step, in order
        self.setup_rss = 0
        self.cpu0 = 0.0
        self.t0 = 0.0

    def begin(self) -> None:
        if not self.steps and not self.cur:
            self.setup_rss = rss_kib()
        if len(self.steps) == self.warmup:
            self.cpu0, self.t0 = cpu_s(), time.perf_counter()
        self.cur = {"t0": time.perf_counter(), "c0": cpu_s(), "rollout_s": 0.0, "rollout_cpu_s": 0.0,
                    "generate_s": 0.0, "tokens": 0, "prompt_tokens": 0, "rows": 0, "truncated": 0}

    def rollout_begin(self) -> None:
        self.cur["r0"], self.cur["rc0"] = time.perf_counter(), cpu_s()

    def rollout_end(self) -> None:
        self.cur["rollout_s"] += time.perf_counter() - self.cur.pop("r0")
        self.cur["rollout_cpu_s"] += cpu_s() - self.cur.pop("rc0")

    def add_prompts(self, prompt_ids: list[list[int]]) -> None:
        for ids in sorted({tuple(p) for p in prompt_ids}):
            self.prompt_hash.update(json.dumps(ids).encode())

    def end(self) -> None:
        c = self.cur
        c["step_s"] = time.perf_counter() - c.pop("t0")
        c["step_cpu_s"] = cpu_s() - c.pop("c0")
        c["update_s"] = c["step_s"] - c["rollout_s"]
        c["update_cpu_s"] = c["step_cpu_s"] - c["rollout_cpu_s"]
        self.steps.append(c)
        i = len(self.steps)
        tag = "warm-up" if i <= self.warmup else "measured"
        print(f"  step {i} ({tag}): {c['step_s']:.1f}s (rollout {c['rollout_s']:.1f}s, update "
              f"{c['update_s']:.1f}s), {int(c['tokens'])} completion tokens", file=sys.stderr, flush=True)
        self.cur = {}

    def summary(self, side: str, threads: int) -> dict[str, Any]:
        m = self.steps[self.warmup:]
        tot = {k: sum(s[k] for s in m) for k in SUMMED if k in m[0]}
        return {"side": side, "threads": threads, "steps": len(m), **tot,
                "cpu_s": cpu_s() - self.cpu0, "wall_s": time.perf_counter() - self.t0,
                "reward_sum": sum(self.rewards), "reward_n": len(self.rewards),
                "prompt_hash": self.prompt_hash.hexdigest()[:12],
                "setup_rss_kib": self.setup_rss, "peak_rss_kib": peak_rss_kib()}


# -- TRL side ------------------------------------------------------------------------------------
def run_trl(args: argparse.Namespace, model_dir: str, rec: Recorder) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer with the rollout phase and the sampled tokens recorded (TRL has no public hook
        between generation and the update; these two methods are TRL internals)."""

        def _generate_and_score_completions(self, inputs):  # type: ignore[override]
            rec.rollout_begin()
            out = super()._generate_and_score_completions(inputs)
            rec.rollout_end()
            return out

        def _generate_single_turn(self, prompt_ids, *a, **kw):  # type: ignore[override]
            t = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *a, **kw)
            rec.cur["generate_s"] += time.perf_counter() - t
            rec.cur["tokens"] += sum(len(c) for c in completion_ids)
            rec.cur["prompt_tokens"] += sum(len(p) for p in prompt_ids)
            rec.add_prompts(prompt_ids)
            rec.cur["rows"] += len(completion_ids)
            rec.cur["truncated"] += sum(1 for c in completion_ids if not c or c[-1] not in self.eos_token_ids)
            return completion_ids, logprobs

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            rec.begin()

        def on_step_end(self, args, state, control, **kw):
            rec.end()

    def reward(completions, answer, final_text=None, **kw) -> list[float]:
        texts = final_text or [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        rs = [reward_of(t, a) for t, a in zip(texts, answer, strict=True)]
        rec.rewards.extend(rs)
        return rs

    n_steps = args.warmup + args.steps
    rows = [question(i) for s in range(n_steps) for i in step_prompts(s, args.prompts)]
    data = Dataset.from_list([{"prompt": msgs, "answer": ans} for msgs, ans in rows])
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    batch = args.prompts * args.group

    def sample(trainer: GRPOTrainer, prompt_ids: list[list[int]]) -> list[list[int]]:
        """One sampled reply per prompt with transformers ``generate`` (left-padded batch), cut
        after the first end-of-turn token, as TRL's own transformers path does."""
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(map(len, prompt_ids))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
        t = time.perf_counter()
        with torch.no_grad():
            out = trainer.model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0,
                                         top_p=1.0, top_k=0, max_new_tokens=args.max_new_tokens, pad_token_id=pad)
        rec.cur["generate_s"] += time.perf_counter() - t
        replies = []
        for row in out[:, width:].tolist():
            cut = next((i + 1 for i, x in enumerate(row) if x in trainer.eos_token_ids), len(row))
            replies.append(row[:cut])
        rec.cur["truncated"] += sum(1 for r in replies if not r or r[-1] not in trainer.eos_token_ids)
        return replies

    def two_turns(prompts: list, trainer: GRPOTrainer) -> dict[str, list]:
        """The multi-turn workload through TRL's custom-rollout hook (``rollout_func``): a reply, a
        fixed feedback message, a second reply. The completion is both replies and the feedback's
        tokens between them, which ``env_mask`` keeps out of the loss."""
        firsts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
                  for p in prompts]
        # The feedback's tokens after an assistant turn: the template's end of turn, the user
        # message and the next assistant header (the same after any reply).
        probe = prompts[0] + [{"role": "assistant", "content": "x"}]
        closed = tok.apply_chat_template(probe, tokenize=True, return_dict=False)
        full = tok.apply_chat_template(probe + [{"role": "user", "content": FEEDBACK}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False)
        closed = closed[: max(i for i, x in enumerate(closed) if x == tok.eos_token_id) + 1]
        feedback = full[len(closed):]
        eos = tok.eos_token_id
        r1 = sample(trainer, firsts)
        closing = [[] if r and r[-1] == eos else [eos] for r in r1]  # a cut-off reply is closed for turn 2
        r2 = sample(trainer, [p + a + c + feedback for p, a, c in zip(firsts, r1, closing, strict=True)])
        completion = [a + c + feedback + b for a, c, b in zip(r1, closing, r2, strict=True)]
        env_mask = [[1] * len(a) + [0] * (len(c) + len(feedback)) + [1] * len(b)
                    for a, c, b in zip(r1, closing, r2, strict=True)]
        rec.cur["tokens"] += sum(len(a) + len(b) for a, b in zip(r1, r2, strict=True))
        rec.cur["prompt_tokens"] += sum(map(len, firsts))
        rec.add_prompts(firsts)
        rec.cur["rows"] += 2 * len(firsts)
        texts = [tok.decode(b, skip_special_tokens=True) for b in r2]
        return {"prompt_ids": firsts, "completion_ids": completion, "env_mask": env_mask,
                # unused without vLLM (on-policy: TRL's ratio is 1 and it scores the tokens itself)
                "logprobs": [[0.0] * len(c) for c in completion], "final_text": texts}

    cfg = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="vs_trl_"), use_cpu=True, bf16=False, fp16=False, seed=SEED,
        num_generations=args.group,
        max_completion_length=args.max_new_tokens * args.turns + (64 if args.turns > 1 else 0),
        temperature=1.0, top_p=1.0, top_k=0,
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, num_iterations=1,
        max_steps=n_steps, shuffle_dataset=False, beta=0.0, loss_type="dapo", epsilon=0.2, epsilon_high=0.2,
        scale_rewards="group", learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0,
        max_grad_norm=1.0, gradient_checkpointing=False, report_to=[], logging_strategy="no",
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = TimedGRPOTrainer(
        model=model, reward_funcs=[reward], args=cfg, train_dataset=data, processing_class=tok,
        peft_config=LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=LORA_TARGETS,
                               task_type="CAUSAL_LM"),
        callbacks=[StepTimer()], rollout_func=two_turns if args.turns > 1 else None,
    )
    trainer.train()
    if len(rec.steps) != n_steps:
        raise RuntimeError(f"TRL ran {len(rec.steps)} steps, expected {n_steps}")


# -- codrl side ----------------------------------------------------------------------------------
def run_codrl(args: argparse.Namespace, model_dir: str, rec: Recorder) -> None:
    import torch

    from codrl.algo.advantages import AdvantageConfig, compute_advantages
    from codrl.algo.losses import PolicyLossConfig
    from codrl.backends.base import GenRequest, SamplingParams
    from codrl.rollout.experience import EpisodeRecord, Experience, LifecycleResult, ModelEpisode
    from codrl.train.config import (
        EnvSpec,
        LogConfig,
        LoraSpec,
        ModelConfig,
        OptimConfig,
        TrainConfig,
    )
    from codrl.train.policy import build_policy
    from codrl.train.trainer import Trainer

    batch = args.prompts * args.group
    cfg = TrainConfig(
        # Trainer() needs an environment although update() never uses it; any built-in one will do.
        envs=[EnvSpec(name="frozenlake")],
        model=ModelConfig(path=model_dir, lora=LoraSpec(r=LORA_R, alpha=LORA_ALPHA, dropout=0.0,
                                                        target_modules=LORA_TARGETS)),
        optim=OptimConfig(lr=LR, weight_decay=0.0, betas=(0.9, 0.999), grad_clip=1.0, warmup_steps=0),
        loss=PolicyLossConfig(variant="ppo_clip", clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0),
        advantage=AdvantageConfig(estimator="grpo"),
        updates_per_step=1, micro_batch_tokens=1 << 20,  # whole batch in one forward/backward, as TRL
        generation_batch_size=batch, old_logprobs="auto", seed=SEED,
        log=LogConfig(backends=[], progress=False), output_dir=tempfile.mkdtemp(prefix="vs_trl_codrl_"),
    )
    torch.manual_seed(SEED)
    backend = build_policy(cfg)
    trainer = Trainer(cfg, backend=backend)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    for step in range(args.warmup + args.steps):
        rec.begin()
        prompts = [question(i) for i in step_prompts(step, args.prompts)]
        rec.rollout_begin()
        t = time.perf_counter()
        reqs = [GenRequest(messages=msgs, sampling=sampling, session=f"s{step}r{k}")
                for k, (msgs, _) in enumerate((m for m in prompts for _ in range(args.group)))]
        turns = [backend.generate(reqs)]
        if args.turns > 1:  # the same conversation continued, as a lifecycle's multi-turn episode is
            turns.append(backend.generate([
                GenRequest(messages=q.messages + [{"role": "assistant", "content": a.text},
                                                  {"role": "user", "content": FEEDBACK}],
                           sampling=sampling, session=q.session) for q, a in zip(reqs, turns[0], strict=True)]))
        for q in reqs:
            backend.release(q.session)
        rec.cur["generate_s"] += time.perf_counter() - t
        lifecycles = []  # one single-task lifecycle per completion group member: its repeats form the group
        for k, final in enumerate(turns[-1]):
            p, g = divmod(k, args.group)
            r = reward_of(final.text, prompts[p][1])
            rec.rewards.append(r)
            calls = [Experience(pack_id=f"s{step}p{p}", repeat=g, episode_type="solve", position=0, turn=turn,
                                prompt_ids=res.prompt_ids, completion_ids=res.completion_ids, logprobs=res.logprobs,
                                text=res.text, finish_reason=res.finish_reason)
                     for turn, res in enumerate(t[k] for t in turns)]
            record = EpisodeRecord(position=0, task_id=f"p{p}", hints_in="", turns=[], env_reward=r, reward=r,
                                   success=r > 0, format_valid=True, feedback="", completion_tokens=0)
            lifecycles.append(LifecycleResult(pack_id=f"s{step}p{p}", env="", split="train", repeat=g, mode="cod",
                                              episodes=[record],
                                              model_episodes=[ModelEpisode("solve", 0, calls, own_reward=r)]))
        compute_advantages(lifecycles, cfg.advantage)
        rec.rollout_end()
        results = [res for t in turns for res in t]
        rec.cur["tokens"] += sum(len(r.completion_ids) for r in results)
        rec.cur["prompt_tokens"] += sum(len(r.prompt_ids) for r in turns[0])
        rec.add_prompts([r.prompt_ids for r in turns[0]])
        rec.cur["rows"] += len(results)
        rec.cur["truncated"] += sum(r.finish_reason == "length" for r in results)
        trainer.update([ep for lc in lifecycles for ep in lc.model_episodes])
        trainer.step_idx += 1
        rec.end()


# -- orchestration -------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from codrl.backends.embedded import embedded_model_dir

    model_dir = str(embedded_model_dir())
    rec = Recorder(args.warmup)
    (run_trl if args.side == "trl" else run_codrl)(args, model_dir, rec)
    print(CHILD_TAG + json.dumps(rec.summary(args.side, torch.get_num_threads())), flush=True)


def run_side(side: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--prompts", str(args.prompts), "--group", str(args.group),
           "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads), "--turns", str(args.turns)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(args.threads)}
    print(f"== {side}: {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(CHILD_TAG)]
    if proc.returncode != 0 or not lines:
        sys.stdout.write(proc.stdout)
        raise SystemExit(f"{side} side failed (exit {proc.returncode})")
    out = json.loads(lines[-1][len(CHILD_TAG):])
    out["child_s"] = time.perf_counter() - t
    return out


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's totals over rounds: sums of the measured quantities, the largest RSS."""
    out = dict(runs[0])
    for k in (*SUMMED, "steps", "cpu_s", "wall_s", "reward_sum", "reward_n", "child_s"):
        out[k] = sum(r[k] for r in runs)
    for k in ("peak_rss_kib", "setup_rss_kib"):
        out[k] = max(r[k] for r in runs)
    out["prompt_hash"] = "/".join(sorted({r["prompt_hash"] for r in runs}))
    return out


def rates(s: dict[str, Any]) -> dict[str, float]:
    return {"step": s["tokens"] / s["step_s"], "update": s["tokens"] / s["update_s"],
            "gen": s["tokens"] / s["rollout_s"], "step_cpu": s["tokens"] / s["step_cpu_s"],
            "update_cpu": s["tokens"] / s["update_cpu_s"], "gen_cpu": s["tokens"] / s["rollout_cpu_s"]}


def report(res: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, float]:
    """Print one workload's comparison table; return its ratios."""
    c, t = res["codrl"], res["trl"]
    rc, rt = rates(c), rates(t)
    gib = 1024 ** 2
    rows = [
        ("step tok/s (whole RL step)", f"{rc['step']:.1f}", f"{rt['step']:.1f}", rc["step"] / rt["step"]),
        ("update tok/s (fwd/bwd/optim)", f"{rc['update']:.1f}", f"{rt['update']:.1f}", rc["update"] / rt["update"]),
        ("generation tok/s (rollout)", f"{rc['gen']:.1f}", f"{rt['gen']:.1f}", rc["gen"] / rt["gen"]),
        ("step tok per CPU-s", f"{rc['step_cpu']:.1f}", f"{rt['step_cpu']:.1f}", rc["step_cpu"] / rt["step_cpu"]),
        ("update tok per CPU-s", f"{rc['update_cpu']:.1f}", f"{rt['update_cpu']:.1f}",
         rc["update_cpu"] / rt["update_cpu"]),
        ("generation tok per CPU-s", f"{rc['gen_cpu']:.1f}", f"{rt['gen_cpu']:.1f}", rc["gen_cpu"] / rt["gen_cpu"]),
        ("peak RSS GiB", f"{c['peak_rss_kib'] / gib:.2f}", f"{t['peak_rss_kib'] / gib:.2f}",
         c["peak_rss_kib"] / t["peak_rss_kib"]),
        ("setup RSS GiB (before step 1)", f"{c['setup_rss_kib'] / gib:.2f}", f"{t['setup_rss_kib'] / gib:.2f}",
         c["setup_rss_kib"] / max(1, t["setup_rss_kib"])),
        ("measured steps", str(c["steps"]), str(t["steps"]), None),
        ("completion tokens", str(c["tokens"]), str(t["tokens"]), c["tokens"] / t["tokens"]),
        ("prompt tokens", str(c["prompt_tokens"]), str(t["prompt_tokens"]), None),
        ("prompt token-id hash (all steps)", c["prompt_hash"], t["prompt_hash"], None),
        ("completions hitting max tokens", f"{c['truncated']}/{c['rows']}", f"{t['truncated']}/{t['rows']}", None),
        ("step s / rollout s / update s", f"{c['step_s']:.1f}/{c['rollout_s']:.1f}/{c['update_s']:.1f}",
         f"{t['step_s']:.1f}/{t['rollout_s']:.1f}/{t['update_s']:.1f}", None),
        ("generate() s (inside rollout)", f"{c['generate_s']:.1f}", f"{t['generate_s']:.1f}", None),
        ("process CPU s / wall s (measured)", f"{c['cpu_s']:.0f}/{c['wall_s']:.0f}",
         f"{t['cpu_s']:.0f}/{t['wall_s']:.0f}", None),
        ("mean reward (all steps)", f"{c['reward_sum'] / c['reward_n']:.3f}",
         f"{t['reward_sum'] / t['reward_n']:.3f}", None),
        ("child processes wall s", f"{c['child_s']:.0f}", f"{t['child_s']:.0f}", None),
    ]
    import torch
    import trl

    print()
    print(f"workload: {'two turns (reply, fixed feedback, reply)' if args.turns > 1 else 'single turn'}; "
          f"{args.prompts} prompts x group {args.group} per step, max {args.max_new_tokens} new tokens per reply, "
          f"{args.warmup} warm-up + {args.steps} measured steps x {args.rounds} round(s), LoRA r={LORA_R} on "
          f"{'/'.join(LORA_TARGETS)}, beta 0, torch threads {c['threads']} (both sides)")
    print(f"versions: torch {torch.__version__}, trl {trl.__version__}; load average {os.getloadavg()[0]:.2f}")
    w = max(len(r[0]) for r in rows)
    print(f"{'':{w}}  {'codrl':>14}  {'TRL':>14}  {'codrl/TRL':>9}")
    for name, a, b, ratio in rows:
        print(f"{name:{w}}  {a:>14}  {b:>14}  {'' if ratio is None else f'{ratio:9.3f}'}")
    if t["prompt_hash"] != c["prompt_hash"]:
        print("WARNING: the two sides saw different prompt token ids (chat template applied differently)")
    return {"speedup": rc["step"] / rt["step"], "train_speedup": rc["update"] / rt["update"],
            "mem_ratio": c["peak_rss_kib"] / t["peak_rss_kib"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["trl", "codrl"], help="internal: run one side in this process")
    ap.add_argument("--steps", type=int, default=3, help="measured steps")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up steps run first and excluded")
    ap.add_argument("--prompts", type=int, default=2, help="distinct prompts per step")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (GRPO group size)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run each side this many times, alternating the order (codrl first in odd rounds)")
    ap.add_argument("--quick", action="store_true", help="sanity run: 1 step, 1 prompt, 16 new tokens, no warm-up")
    ap.add_argument("--workloads", default="single,multi",
                    help="comma-separated: single (one reply per prompt), multi (reply, feedback, reply)")
    ap.add_argument("--turns", type=int, default=1, help=argparse.SUPPRESS)  # internal: a child's workload
    args = ap.parse_args()
    if args.quick:
        args.steps, args.warmup, args.prompts, args.max_new_tokens = 1, 0, 1, 16
    if min(args.steps, args.prompts, args.group, args.max_new_tokens, args.threads, args.rounds) < 1 or args.warmup < 0:
        ap.error("--steps, --prompts, --group, --max-new-tokens, --threads and --rounds must be >= 1, --warmup >= 0")
    workloads = [w for w in args.workloads.split(",") if w]
    if not workloads or set(workloads) - {"single", "multi"}:
        ap.error(f"--workloads: a comma-separated list of single, multi; got {args.workloads!r}")
    if args.side:
        child(args)
        return
    t0 = time.perf_counter()
    result: dict[str, float] = {}
    for workload in workloads:
        args.turns = 2 if workload == "multi" else 1
        runs: dict[str, list[dict[str, Any]]] = {"codrl": [], "trl": []}
        for r in range(args.rounds):
            for side in ("codrl", "trl") if r % 2 == 0 else ("trl", "codrl"):
                out = run_side(side, args)
                runs[side].append(out)
                x = rates(out)
                print(f"   {workload} round {r + 1} {side}: step {x['step']:.1f} tok/s, update {x['update']:.1f} "
                      f"tok/s, CPU share {out['cpu_s'] / out['wall_s']:.0%}", flush=True)
        ratios = report({side: merge(rs) for side, rs in runs.items()}, args)
        suffix = "_multiturn" if workload == "multi" else ""
        result.update({k + suffix: v for k, v in ratios.items()})
    print(f"\ntotal bench time {time.perf_counter() - t0:.0f}s")
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
