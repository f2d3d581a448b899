"""Tests of the tiny word-level policy (a real transformers model) for the Secret Table world."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codrl.toy import policy as tiny
from codrl.backends.hf import HFBackend
from codrl.toy.policy import (IM_END, IM_START, PAD, UNK, build_tiny_policy, num_params, reader_accuracy,
                                 reader_example, save_policy, solve_prompt_ids, unknown_words, warmup_reader)
from codrl.envs import make_env
from codrl.toy.secret_table import SecretTable, fact
from codrl.rollout.config import RolloutConfig
from codrl.rollout.experience import Turn
from codrl.rollout.lifecycle import LifecycleRunner, make_jobs
from codrl.rollout.prompts import solve_user_message, update_messages

CFG = RolloutConfig(pack_size=4, repeats=2, hint_min_chars=1, max_new_tokens_solve=2,
                    max_new_tokens_update=8, update_reply_prefix="Hints:")


@pytest.fixture(autouse=True)
def one_thread():
    """A model this small runs fastest on one thread; on a busy CPU more threads thrash."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def env() -> SecretTable:
    return make_env("secret_table")


@pytest.fixture(scope="module")
def policy(env):
    return build_tiny_policy(env, seed=0)


def encode(tok, messages, prefix=""):
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefix
    return tok(text, add_special_tokens=False)["input_ids"]


def read_hints(hints: str, key: str, values) -> str | None:
    """Reference reading of the hint language (independent of the module's sampler)."""
    words = hints.split()
    pairs = [w.split("=", 1)[1] for w in words if w.startswith(key + "=") and w.split("=", 1)[1] in values]
    if pairs:
        return pairs[-1]
    bare = [w for w in words if w in values]
    return bare[-1] if bare else None


# -- tokenizer and model --------------------------------------------------------------------------
def test_build(env, policy):
    model, tok = policy
    vocab = tok.get_vocab()
    assert [vocab[t] for t in (PAD, UNK, IM_START, IM_END)] == [0, 1, 2, 3]
    assert tok.eos_token == IM_END and tok.pad_token == PAD and tok.unk_token == UNK
    for word in [*env.keys, *env.values, "Hints:", "Query:", *(fact(k, v) for k in env.keys for v in env.values)]:
        assert word in vocab, word
    assert model.config.vocab_size == len(tok) < 200
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tok.eos_token_id
    assert model.config.tie_word_embeddings and 50_000 < num_params(model) < 1_000_000
    assert not model.training


def test_word_level_round_trip(policy):
    _, tok = policy
    ids = tok("Hints:\nb=3  2\n\nQuery: b ?", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["Hints:", "b=3", "2", "Query:", "b", "?"]
    assert tok.decode(ids) == "Hints: b=3 2 Query: b ?"
    assert tok.decode([*ids, tok.eos_token_id], skip_special_tokens=True) == "Hints: b=3 2 Query: b ?"
    assert unknown_words(tok, "Query: zebra ?") == ["zebra"]


def test_chat_template(policy):
    _, tok = policy
    msgs = [{"role": "system", "content": "Secret table."}, {"role": "user", "content": "Query: b ?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text.split() == [IM_START, "system", "Secret", "table.", IM_END, IM_START, "user", "Query:", "b", "?",
                            IM_END, IM_START, "assistant"]
    ids = encode(tok, msgs, "Hints:")
    assert tok.convert_ids_to_tokens(ids[-2:]) == ["assistant", "Hints:"]


def test_build_is_deterministic_and_leaves_global_rng(env):
    state = torch.random.get_rng_state()
    a, _ = build_tiny_policy(env, seed=3)
    b, _ = build_tiny_policy(env, seed=3)
    c, _ = build_tiny_policy(env, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_pair_words_start_composed(env, policy):
    model, tok = policy
    emb = model.get_input_embeddings().weight
    ids = tok.convert_tokens_to_ids(["c=2", "c", "2"])
    assert torch.allclose(emb[ids[0]], emb[ids[1]] + emb[ids[2]])


def test_rejects_other_envs():
    with pytest.raises(TypeError, match="secret_table"):
        build_tiny_policy(make_env("frozenlake"))
    with pytest.raises(ValueError, match="multiple"):
        build_tiny_policy(make_env("secret_table"), hidden=30, heads=4)


@pytest.mark.parametrize("kwargs", [{}, {"num_keys": 6, "num_values": 9, "keys_per_pack": 3}])
def test_no_unknown_words_in_lifecycle_prompts(kwargs):
    env = make_env("secret_table", **kwargs)
    _, tok = build_tiny_policy(env)
    words = [w for w in tok.get_vocab() if w not in (PAD, UNK, IM_START, IM_END)]
    rng = np.random.default_rng(0)
    for i in range(60):
        pack = env.sample_pack("train" if i % 2 else "test", 5, i, 2)
        task = pack.tasks[i % 2]
        hints = " ".join(rng.choice(words, size=int(rng.integers(0, 10))))  # anything the model may write
        reply = " ".join(rng.choice(words, size=int(rng.integers(0, 4))))
        ep = env.start(pack, task)
        obs = ep.reset()
        step = ep.step(reply)
        solve = [{"role": "system", "content": env.system_prompt},
                 {"role": "user", "content": solve_user_message(hints, obs)}]
        turns = [Turn(observation=obs, reply=reply, feedback=step.feedback, valid=step.valid, reward=step.reward)]
        update = update_messages(env.system_prompt, hints, obs, turns, step.reward, step.feedback)
        for msgs, prefix in ((solve, env.reply_prefix), (update, "Hints:"), (update, "Hints:\n")):
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + prefix
            assert unknown_words(tok, text) == [], text


# -- through the real LLM code path ---------------------------------------------------------------
def test_save_load_round_trip(env, policy, tmp_path):
    from transformers import AutoTokenizer

    model, tok = policy
    path = save_policy(model, tok, tmp_path / "tiny")
    backend = HFBackend.from_pretrained(str(path))
    loaded = AutoTokenizer.from_pretrained(str(path))
    pack = env.sample_pack("train", 0, 0, 1)
    ep = env.start(pack, pack.tasks[0])
    obs = ep.reset()
    msgs = [{"role": "system", "content": env.system_prompt},
            {"role": "user", "content": solve_user_message("b=3 4 junk", obs)}]
    ids = encode(tok, msgs)
    assert encode(loaded, msgs) == ids == encode(backend.tokenizer, msgs)
    assert loaded.decode(ids) == tok.decode(ids)
    assert backend.eos_ids == [tok.eos_token_id] and backend.pad_id == tok.pad_token_id
    with torch.no_grad():
        x = torch.tensor([ids])
        assert torch.allclose(model(input_ids=x).logits, backend.model(input_ids=x).logits, atol=1e-5)


def test_runs_through_hf_backend_and_lifecycle(env, policy):
    model, tok = policy
    backend = HFBackend(model, tok)
    cfg = RolloutConfig(pack_size=4, repeats=2, hint_min_chars=3, max_new_tokens_solve=4,
                        max_new_tokens_update=8, update_reply_prefix="Hints:")
    packs = [(env, env.sample_pack("train", 0, i, cfg.pack_size)) for i in range(3)]
    results = LifecycleRunner(backend, cfg).run(make_jobs(packs, cfg))
    assert len(results) == 6
    for res in results:
        assert len(res.episodes) == 4
        kinds = [e.episode_type for e in res.experiences]
        assert kinds.count("solve") == 4 and kinds.count("update") == 3
        for exp in res.experiences:
            assert exp.completion_ids and len(exp.logprobs) == len(exp.completion_ids)
            assert tok.decode(exp.completion_ids, skip_special_tokens=True) == exp.text
            assert tok.unk_token_id not in exp.prompt_ids
            assert len(exp.prompt_ids) < 400
        for e in res.episodes:
            key = e.turns[0].observation.split()[-2]
            assert fact(key, res_table(env, res.pack_id)[key]) in e.feedback.split()


def res_table(env, pack_id):
    _, split, seed, index = pack_id.rsplit("/", 3)
    return env.sample_pack(split, int(seed), int(index), 1).world["table"]


# -- reader warm-up -----------------------------------------------------------------------------
@pytest.mark.parametrize("case", tiny.READER_CASES)
def test_reader_examples_follow_the_hint_language(env, policy, case):
    _, tok = policy
    junk = tiny._junk_words(env, tok)
    assert not set(junk) & (set(env.values) | {fact(k, v) for k in env.keys for v in env.values})
    rng = np.random.default_rng(1)
    for _ in range(300):
        hints, key, answer = reader_example(env, rng, junk, case, max_hint_words=6)
        assert len(hints.split()) <= 6 and key in env.keys
        assert answer == read_hints(hints, key, env.values)
        assert (hints == "") == (case == "empty")
        if case == "pair":
            assert any(w.startswith(key + "=") for w in hints.split())


def test_reader_prompts_match_the_lifecycle(env, policy):
    model, tok = policy
    backend = HFBackend(model, tok)
    pack = env.sample_pack("train", 2, 0, 1)
    task = pack.tasks[0]
    obs = env.start(pack, task).reset()
    msgs = [{"role": "system", "content": env.system_prompt},
            {"role": "user", "content": solve_user_message("a=1 2", obs)}]
    from codrl.backends.base import GenRequest

    expected = backend.encode_prompt(GenRequest(msgs, reply_prefix=env.reply_prefix))
    assert solve_prompt_ids(env, tok, "a=1 2", task.spec["key"]) == expected


def test_short_warmup_lowers_loss_and_never_writes_hints(env, monkeypatch):
    model, tok = build_tiny_policy(env, seed=1)

    def forbidden(*args, **kwargs):
        raise AssertionError("the reader warm-up must not build update-context prompts")

    monkeypatch.setattr(tiny, "update_messages", forbidden)
    before = reader_accuracy(model, tok, env, n=32)
    torch.set_num_threads(2)
    report = warmup_reader(model, tok, env, steps=40, batch_size=16, lr=3e-3, seed=0, eval_size=32)
    assert torch.get_num_threads() == 2  # warm-up trains on one thread, then restores the setting
    assert report["loss_final"] < report["loss_first"] - 1.0
    assert report["format_empty"] > 0.8 > before["format_empty"]  # it answers with a value token
    assert not model.training


def test_warmup_validates(env, policy):
    model, tok = policy
    with pytest.raises(ValueError, match="steps"):
        warmup_reader(model, tok, env, steps=0)
    with pytest.raises(ValueError, match="curriculum"):
        warmup_reader(model, tok, env, steps=1, curriculum=2.0)
    with pytest.raises(ValueError, match="case"):
        reader_example(env, np.random.default_rng(0), [], "other")


@pytest.mark.slow
def test_full_warmup_reads_hints(env):
    model, tok = build_tiny_policy(env, seed=0)
    report = warmup_reader(model, tok, env, seed=0)
    assert report["acc_pair"] >= 0.95 and report["acc_bare"] >= 0.9
    assert abs(report["chance_empty"] - env.chance_reward) < 0.05 and report["max_prob_empty"] < 0.4
    assert abs(report["chance_none"] - env.chance_reward) < 0.05
    # with its own hints the lifecycle then beats chance only where the hints are right
    backend = HFBackend(model, tok)
    packs = [(env, env.sample_pack("test", 0, i, CFG.pack_size)) for i in range(16)]
    results = LifecycleRunner(backend, CFG).run(make_jobs(packs, CFG))
    first = np.mean([r.env_rewards[0] for r in results])
    assert abs(first - env.chance_reward) < 0.2


def test_no_real_path_imports_the_toy() -> None:
    """Toy-only code stays apart: no module outside codrl/toy imports it (the registry names
    secret_table by an import-path string, as it would a plug-in)."""
    import ast
    from pathlib import Path

    import codrl

    root = Path(codrl.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if "toy" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith("codrl.toy")]
    assert not offenders, offenders
