"""A tiny policy for the toy CoD world: a real transformers causal LM with a word-level tokenizer.

The tiny policy is a small ``LlamaForCausalLM`` paired with a ``PreTrainedTokenizerFast`` whose
model is a word-level vocabulary split on whitespace, with a ChatML-like chat template whose
rendering is a sequence of whitespace-separated words. Because it is an ordinary transformers
model and tokenizer, it runs through exactly the code path of a real LLM
(:class:`~codrl.backends.hf.HFBackend`, the lifecycle runner, the trainer), only fast on a CPU.

The vocabulary is built from the text that the environment and the lifecycle actually produce
(system prompt, observations, feedback, the solve and update-context prompts of
:mod:`codrl.rollout.prompts`), plus every key, value and ``key=value`` word of the table, so no
prompt the lifecycle can build with that environment contains an unknown word.

:func:`warmup_reader` gives the policy what an instruction-tuned LLM already has: it can answer in
the expected format and READ a hints block. It never shows a hint-writing target; writing useful
hints is left for reinforcement learning. The hint language the reader learns:

* a pair ``q=v`` for the queried key ``q`` -> answer ``v`` (the last such pair if several);
* else bare value words -> answer the last of them;
* else (no hints, or only other keys' pairs and other words) -> guess a value uniformly.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codrl.algo.losses import token_logprobs
from codrl.envs.base import Pack, Task
from codrl.toy.secret_table import SecretTable, fact
from codrl.rollout.experience import Turn
from codrl.rollout.prompts import solve_user_message, update_messages

PAD = "<pad>"
UNK = "<unk>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
#: Special tokens, in id order (``<pad>`` is id 0).
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, IM_START, IM_END)
#: Chat roles the template writes as words.
ROLES: tuple[str, ...] = ("system", "user", "assistant")

#: ChatML-like template whose output is whitespace-separated words. The generation prompt ends
#: with a space so that a reply prefix (e.g. ``Hints:``) stays a word of its own.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|> {{ message['role'] }} {{ message['content'] }} <|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)

#: Reader warm-up cases and their probabilities: no hints, a pair for the queried key, bare values
#: but no pair for the queried key, or non-empty hints that say nothing about the query.
READER_CASES: tuple[str, ...] = ("empty", "pair", "bare", "none")
READER_CASE_PROBS: tuple[float, ...] = (0.2, 0.45, 0.2, 0.15)
#: Case probabilities and longest hints of the first warm-up phase, which teaches key matching
#: alone (short hints, nearly all with a pair for the key and one for another key): mixed with
#: the other cases from the start, matching is learned late or not at all for some seeds.
MATCHING_PHASE_PROBS: tuple[float, ...] = (0.05, 0.85, 0.05, 0.05)
MATCHING_PHASE_WORDS = 3


# -- vocabulary ---------------------------------------------------------------------------------
def _require_table(env: Any) -> SecretTable:
    if not isinstance(env, SecretTable):
        raise TypeError(f"the tiny policy is built for the secret_table environment, got {type(env).__name__}")
    return env


def table_words(env: SecretTable) -> list[str]:
    """Every key, value and ``key=value`` word of ``env``'s tables."""
    return [*env.keys, *env.values, *(fact(k, v) for k in env.keys for v in env.values)]


def lifecycle_words(env: SecretTable, *, packs: int = 8, seed: int = 0) -> set[str]:
    """Whitespace-separated words of the texts the lifecycle builds with ``env``.

    Plays sample packs of both splits with every possible kind of reply (each value and a
    malformed one), and renders the solve prompts and update-context prompts exactly as
    :mod:`codrl.rollout.lifecycle` does. The model's own replies and hints consist of vocabulary
    words, so words of fixed texts are all that needs collecting.
    """
    env = _require_table(env)
    words: set[str] = set(ROLES)
    replies = [*env.values, "", "?"]
    for split in ("train", "test"):
        for i in range(packs):
            pack = env.sample_pack(split, seed, i, 2)
            for task in pack.tasks:
                for reply in replies:
                    episode = env.start(pack, task)
                    obs = episode.reset()
                    step = episode.step(reply)
                    turns = [Turn(observation=obs, reply=reply, feedback=step.feedback, valid=step.valid,
                                  reward=step.reward)] * max(1, env.max_turns)
                    texts = [env.system_prompt, obs, step.feedback, solve_user_message("", obs),
                             solve_user_message(fact(task.spec["key"], env.values[0]), obs)]
                    for hints in ("", fact(task.spec["key"], env.values[0])):
                        for reward in (0.0, 1.0, step.reward):
                            texts.extend(m["content"] for m in update_messages(
                                env.system_prompt, hints, obs, turns, reward, step.feedback))
                    for text in texts:
                        words.update(text.split())
    words.update(table_words(env))
    return words - set(SPECIAL_TOKENS)


def build_tokenizer(words: Iterable[str]) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over ``words`` (sorted, after the special tokens).

    Pre-tokenization splits on whitespace only; decoding joins words with single spaces. The eos
    token is ``<|im_end|>``, the pad token ``<pad>``; the chat template is :data:`CHAT_TEMPLATE`.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    plain = sorted({w for w in words if w and not any(c.isspace() for c in w)} - set(SPECIAL_TOKENS))
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *plain])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, unk_token=UNK, eos_token=IM_END,
        additional_special_tokens=[IM_START], clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def unknown_words(tokenizer: Any, text: str) -> list[str]:
    """The words of ``text`` that ``tokenizer`` maps to ``<unk>`` (empty when all are known)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.unk_token_id not in ids:
        return []
    return [w for w in text.split() if tokenizer.convert_tokens_to_ids(w) == tokenizer.unk_token_id]


# -- model ----------------------------------------------------------------------------------
def build_tiny_policy(env: SecretTable, *, hidden: int = 64, layers: int = 2, heads: int = 4,
                      intermediate: int = 256, max_positions: int = 1024, init_std: float | None = None,
                      seed: int = 0) -> tuple[Any, Any]:
    """Build a fresh tiny ``LlamaForCausalLM`` and its word-level tokenizer for ``env``.

    Returns ``(model, tokenizer)``; the model is in eval mode, float32, on the CPU, with tied
    input/output embeddings and ``<|im_end|>`` as its end-of-sequence token (in the model config
    and its generation config, which :class:`~codrl.backends.hf.HFBackend` reads). Weights start
    normal with std ``init_std``
    (default ``hidden ** -0.5``: the transformers default of 0.02 suits wide models and leaves a
    64-wide model on a long plateau), and every ``k=v`` word starts at the sum of the embeddings of
    ``k`` and ``v``. ``seed`` fixes the initial weights (a forked RNG; the global one is untouched).
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    env = _require_table(env)
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    tok = build_tokenizer(lifecycle_words(env))
    pad, bos, eos = (tok.convert_tokens_to_ids(t) for t in (PAD, IM_START, IM_END))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        initializer_range=hidden ** -0.5 if init_std is None else init_std,
        pad_token_id=pad, bos_token_id=bos, eos_token_id=eos,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    _compose_pair_embeddings(model, tok, env)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    model.eval()
    return model, tok


def _compose_pair_embeddings(model: Any, tokenizer: Any, env: SecretTable) -> None:
    """Start every ``k=v`` word at the sum of the embeddings of ``k`` and ``v``.

    A subword LLM would read ``b=3`` as ``b``, ``=``, ``3``; the word-level tokenizer makes it one
    token, and this initialisation gives it back that structure (learning it from scratch is what
    slows a tiny reader down most).
    """
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        for k in env.keys:
            for v in env.values:
                ids = tokenizer.convert_tokens_to_ids([fact(k, v), k, v])
                emb[ids[0]] = emb[ids[1]] + emb[ids[2]]


def save_policy(model: Any, tokenizer: Any, path: str | Path) -> Path:
    """Save the model and tokenizer into folder ``path`` (loadable by ``HFBackend.from_pretrained``)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def num_params(model: Any) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# -- reader warm-up ---------------------------------------------------------------------------
def _junk_words(env: SecretTable, tokenizer: Any) -> list[str]:
    """Vocabulary words that are neither values nor ``key=value`` pairs (nor special tokens)."""
    meaningful = set(env.values) | {fact(k, v) for k in env.keys for v in env.values} | set(SPECIAL_TOKENS)
    return sorted(w for w in tokenizer.get_vocab() if w not in meaningful)


def reader_example(env: SecretTable, rng: np.random.Generator, junk: Sequence[str], case: str,
                   max_hint_words: int = 12) -> tuple[str, str, str | None]:
    """Draw one reader example of ``case`` (one of :data:`READER_CASES`).

    Returns ``(hints, key, answer)``: the hints text, the queried key, and the answer the hint
    language prescribes (None when the reader should guess uniformly).
    """
    if case not in READER_CASES:
        raise ValueError(f"reader case must be one of {READER_CASES}, got {case!r}")
    key = env.keys[int(rng.integers(env.num_keys))]
    if case == "empty":
        return "", key, None
    others = [k for k in env.keys if k != key]
    n = int(rng.integers(1, max_hint_words + 1))

    def value() -> str:
        return env.values[int(rng.integers(env.num_values))]

    def filler(allow_bare: bool) -> str:
        u = float(rng.random())
        if u < 0.45 and others:
            return other_pair()
        if u < 0.7 and allow_bare:
            return value()
        return junk[int(rng.integers(len(junk)))] if junk else value() if allow_bare else key

    def other_pair() -> str:
        return fact(others[int(rng.integers(len(others)))], value())

    words = [filler(case != "none") for _ in range(n)]
    answer: str | None = None
    if case == "pair":
        # one pair for the key (two, the last one winning, now and then) and most often a pair
        # for another key as a distractor, so that reading has to match the key
        n_key = 2 if max_hint_words > 1 and rng.random() < 0.1 else 1
        n_other = 1 if others and n_key < max_hint_words and rng.random() < 0.75 else 0
        words += [filler(True) for _ in range(n_key + n_other - n)]
        order = rng.permutation(len(words)).tolist()
        if n_other:
            words[order[n_key]] = other_pair()
        slots = sorted(order[:n_key])
        for s in slots:
            words[s] = fact(key, value())
        answer = words[slots[-1]].split("=", 1)[1]
    elif case == "bare":
        slot = int(rng.integers(n))
        words[slot] = value()
        answer = [w for w in words if w in env.values][-1]
    return " ".join(words), key, answer


def _solve_messages(env: SecretTable, hints: str, key: str) -> list[dict[str, str]]:
    """The solve chat for a question about ``key`` with ``hints``, as the lifecycle builds it."""
    world = {"table": {k: env.values[0] for k in env.keys}, "asked": [key]}
    task = Task(task_id="reader/0", position=0, spec={"key": key})
    pack = Pack(pack_id="reader", env=env.name, split="train", world=world, tasks=(task,))
    obs = env.start(pack, task).reset()
    return [{"role": "system", "content": env.system_prompt},
            {"role": "user", "content": solve_user_message(hints, obs)}]


def _prompt_ids(env: SecretTable, tokenizer: Any, chats: list[list[dict[str, str]]]) -> list[list[int]]:
    """Token ids of chats as :class:`~codrl.backends.hf.HFBackend` encodes them (batched)."""
    texts = tokenizer.apply_chat_template(chats, tokenize=False, add_generation_prompt=True)
    texts = [t + env.reply_prefix for t in texts]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def solve_prompt_ids(env: SecretTable, tokenizer: Any, hints: str, key: str) -> list[int]:
    """Token ids of the solve prompt for a question about ``key`` with ``hints``, built exactly
    as the lifecycle and :class:`~codrl.backends.hf.HFBackend` build it."""
    return _prompt_ids(env, tokenizer, [_solve_messages(env, hints, key)])[0]


def _draw_batch(env: SecretTable, tokenizer: Any, rng: np.random.Generator, junk: Sequence[str], size: int,
                max_hint_words: int, case: str | None = None,
                probs: Sequence[float] = READER_CASE_PROBS) -> list[tuple[list[int], str, str | None, str]]:
    drawn = []
    for _ in range(size):
        c = case or READER_CASES[int(rng.choice(len(READER_CASES), p=probs))]
        drawn.append((*reader_example(env, rng, junk, c, max_hint_words), c))
    ids = _prompt_ids(env, tokenizer, [_solve_messages(env, hints, key) for hints, key, _, _ in drawn])
    return [(p, key, answer, c) for p, (_, key, answer, c) in zip(ids, drawn)]


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


@torch.no_grad()
def reader_accuracy(model: Any, tokenizer: Any, env: SecretTable, *, n: int = 256, seed: int = 12345,
                    max_hint_words: int = 12) -> dict[str, float]:
    """Measure how the policy reads hints, on ``n`` fresh solve prompts per reader case.

    Keys: ``acc_pair`` and ``acc_bare`` (greedy answer equals the prescribed one), ``chance_empty``
    and ``chance_none`` (expected success of sampling the answer against a random true value, i.e.
    the mean probability of the true value: about ``1/num_values`` for a uniform guesser), and
    ``max_prob_empty`` (mean probability of the likeliest value with no hints), ``format_empty``
    (probability mass on value tokens with no hints).
    """
    env = _require_table(env)
    rng = np.random.default_rng(seed)
    junk = _junk_words(env, tokenizer)
    value_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(env.values)))
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for case in READER_CASES:
            batch = _draw_batch(env, tokenizer, rng, junk, n, max_hint_words, case)
            ids, mask = _pad([b[0] for b in batch], tokenizer.pad_token_id)
            logits = model(input_ids=ids, attention_mask=mask).logits
            last = mask.sum(1) - 1
            probs = torch.softmax(logits[torch.arange(len(batch)), last].float(), dim=-1)
            if case in ("pair", "bare"):
                targets = torch.tensor(tokenizer.convert_tokens_to_ids([b[2] for b in batch]))
                out[f"acc_{case}"] = float((probs.argmax(-1) == targets).float().mean())
            else:
                truth = value_ids[torch.as_tensor(rng.integers(env.num_values, size=n))]
                out[f"chance_{case}"] = float(probs.gather(1, truth[:, None]).mean())
                if case == "empty":
                    out["max_prob_empty"] = float(probs[:, value_ids].max(-1).values.mean())
                    out["format_empty"] = float(probs[:, value_ids].sum(-1).mean())
    finally:
        if was_training:
            model.train()
    return out


def warmup_reader(model: Any, tokenizer: Any, env: SecretTable, *, steps: int = 600, batch_size: int = 64,
                  lr: float = 2e-3, seed: int = 0, max_hint_words: int = 12, eval_size: int = 256,
                  weight_decay: float = 0.0, curriculum: float = 0.3,
                  num_threads: int | None = 1) -> dict[str, float]:
    """Supervised reading warm-up: solve prompts with hints in, the prescribed answer out.

    Prompts are rendered as the lifecycle renders solve prompts (system prompt, hints block above
    the observation, chat template with the generation prompt); the target is one value token
    then ``<|im_end|>``, chosen by the hint language of the module docstring (a uniformly random
    value when the hints say nothing about the query). No update-context prompt is ever used, so
    the policy is never shown how to write hints. The loss is the token cross-entropy on the
    target tokens only; AdamW with a linear warm-up (5% of the steps) then a cosine decay. The
    first ``curriculum`` fraction of the steps is a matching phase: short hints, nearly all with a
    pair for the queried key next to a pair for another key (see :data:`MATCHING_PHASE_PROBS`).

    ``num_threads`` caps torch's intra-op threads while training (restored afterwards; None leaves
    them alone): a model this small gains nothing from several threads, and on a busy CPU they
    can make a step ten times slower. Trains ``model`` in place and returns ``steps``,
    ``seconds``, ``loss_first``, ``loss_final`` (mean of the last 10 steps) and the metrics of
    :func:`reader_accuracy` on ``eval_size`` held-out prompts per case (skipped when 0).
    """
    env = _require_table(env)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if not 0.0 <= curriculum <= 1.0:
        raise ValueError(f"curriculum must be a fraction in [0, 1], got {curriculum}")
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
    saved_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        report = _train_reader(model, tokenizer, env, steps, batch_size, lr, seed, max_hint_words, weight_decay,
                               curriculum)
        if eval_size > 0:
            report.update(reader_accuracy(model, tokenizer, env, n=eval_size, seed=seed + 10_000,
                                          max_hint_words=max_hint_words))
    finally:
        torch.set_num_threads(saved_threads)
    return report


def _train_reader(model: Any, tokenizer: Any, env: SecretTable, steps: int, batch_size: int, lr: float,
                  seed: int, max_hint_words: int, weight_decay: float, ramp: float) -> dict[str, float]:
    rng = np.random.default_rng([seed, 7])
    junk = _junk_words(env, tokenizer)
    eos = int(tokenizer.eos_token_id)
    value_ids = tokenizer.convert_tokens_to_ids(list(env.values))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    warm = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + float(np.cos(np.pi * (step - warm) / max(1, steps - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    try:
        for step in range(steps):
            matching = step < ramp * steps
            words = min(max_hint_words, MATCHING_PHASE_WORDS) if matching else max_hint_words
            probs = MATCHING_PHASE_PROBS if matching else READER_CASE_PROBS
            rows, spans = [], []
            for prompt, _key, answer, _case in _draw_batch(env, tokenizer, rng, junk, batch_size, words, None, probs):
                answer_id = (tokenizer.convert_tokens_to_ids(answer) if answer is not None
                             else value_ids[int(rng.integers(env.num_values))])
                rows.append([*prompt, answer_id, eos])
                spans.append(len(prompt))
            ids, attn = _pad(rows, tokenizer.pad_token_id)
            target = torch.zeros_like(ids, dtype=torch.float32)
            for i, p in enumerate(spans):
                target[i, p: p + 2] = 1.0
            logprobs = token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids)
            mask = target[:, 1:]
            loss = -(logprobs * mask).sum() / mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    finally:
        model.eval()
    return {"steps": float(steps), "seconds": time.perf_counter() - start,
            "loss_first": losses[0], "loss_final": float(np.mean(losses[-10:]))}
