"""KV-cache reuse in the transformers backend: exact, bounded, and actually reusing.

Exactness is checked two ways: against the same engine with reuse turned off (same seeds: same
tokens, logprobs within 1e-4), and against a plain teacher-forced forward pass of the whole
sequence (the logprob of every sampled token).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from codrl.backends.base import GenRequest, SamplingParams
from codrl.backends.hf import HFBackend
from codrl.backends.kv_cache import PrefixStore, common_prefix, shared_prefixes
from codrl.envs import make_env
from codrl.rollout.config import RolloutConfig
from codrl.rollout.lifecycle import LifecycleRunner, make_jobs


# -- the store -------------------------------------------------------------------------------------
@given(st.lists(st.integers(0, 3), max_size=30), st.lists(st.integers(0, 3), max_size=30))
def test_common_prefix_matches_a_plain_loop(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    assert common_prefix(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)) == n


def _kv(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32).reshape(1, 1, 1, n, 1).expand(2, 2, 1, n, 1).contiguous()


def test_lookup_serves_the_longest_prefix_and_respects_the_limit():
    store = PrefixStore(budget_bytes=10**6)
    store.put(np.array([1, 2, 3, 4]), _kv(4))
    store.put(np.array([1, 2, 9, 9, 9]), _kv(5))
    n, kv = store.lookup(np.array([1, 2, 9, 9, 7]), limit=10)
    assert n == 4 and kv.shape[3] == 4
    n, _ = store.lookup(np.array([1, 2, 3, 4, 5]), limit=3)
    assert n == 3
    assert store.lookup(np.array([5, 5]), limit=2) == (0, None)


def test_sessions_are_replaced_and_released():
    store = PrefixStore(budget_bytes=10**6)
    store.put(np.array([1, 2, 3]), _kv(3), session="a")
    store.put(np.array([1, 2, 3, 4, 5]), _kv(5), session="a")
    store.put(np.array([7, 8]), _kv(2), session="b")
    assert len(store) == 2
    store.release("a")
    assert len(store) == 1 and store.covered(np.array([1, 2, 3])) == 0


def test_budget_evicts_least_recently_used():
    one = _kv(4).nbytes
    store = PrefixStore(budget_bytes=2 * one)
    store.put(np.array([1, 1, 1, 1]), _kv(4))
    store.put(np.array([2, 2, 2, 2]), _kv(4))
    store.lookup(np.array([1, 1, 1, 1]), limit=4)  # touch: [2, ...] is now the oldest
    store.put(np.array([3, 3, 3, 3]), _kv(4))
    assert store.nbytes <= 2 * one and store.stats.evictions == 1
    assert store.covered(np.array([1, 1, 1, 1])) == 4 and store.covered(np.array([2, 2, 2, 2])) == 0


def test_disabled_store_keeps_nothing():
    store = PrefixStore(budget_bytes=0)
    store.put(np.array([1, 2]), _kv(2))
    assert len(store) == 0 and store.lookup(np.array([1, 2]), 2) == (0, None)


def test_shared_prefixes_nest_and_never_cover_the_last_token():
    sys_prompt = list(range(100, 140))
    a = np.array(sys_prompt + [1] * 20 + [5])
    b = np.array(sys_prompt + [1] * 20 + [5])  # a repeat: the whole prompt is shared
    c = np.array(sys_prompt + [2] * 20)
    store = PrefixStore(budget_bytes=10**6)
    got = sorted(len(p) for p in shared_prefixes([a, b, c], store, min_tokens=16))
    assert got == [40, len(a) - 1]
    store.put(np.array(sys_prompt), _kv(40))
    assert [len(p) for p in shared_prefixes([a, b, c], store, min_tokens=16)] == [len(a) - 1]
    assert shared_prefixes([a], store, min_tokens=1) == []


# -- the engine on a tiny random model (fast) ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from codrl.toy.policy import build_tiny_policy
    from codrl.toy.secret_table import SecretTable

    return build_tiny_policy(SecretTable(), seed=3)


def _chats(n: int, shared: str = "the table keeps secrets") -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": shared}, {"role": "user", "content": " ".join(["a=1"] * (1 + i % 4))}]
            for i in range(n)]


def _run(backend: HFBackend, reqs: list[GenRequest], seed: int = 0):
    torch.manual_seed(seed)
    return backend.generate(reqs)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_equals_uncached_and_teacher_forcing(tiny, temperature):
    model, tok = tiny
    params = SamplingParams(temperature=temperature, max_new_tokens=12)
    first = [GenRequest(m, params, session=f"s{i}") for i, m in enumerate(_chats(6))]
    cached, plain = HFBackend(model, tok), HFBackend(model, tok, kv_cache_mb=0)
    outs = {name: _run(b, first) for name, b in (("cached", cached), ("plain", plain))}
    # Second turn: prompts extend the first turn, so the cached engine reuses it.
    second = [GenRequest(r.messages + [{"role": "assistant", "content": o.text}, {"role": "user", "content": "b=2"}],
                         params, session=r.session) for r, o in zip(first, outs["cached"], strict=True)]
    outs2 = {name: _run(b, second, seed=1) for name, b in (("cached", cached), ("plain", plain))}
    assert cached.stats.cached_tokens > 0.5 * cached.stats.prompt_tokens
    assert plain.stats.cached_tokens == 0
    for a, b in zip(outs["cached"] + outs2["cached"], outs["plain"] + outs2["plain"], strict=True):
        assert a.completion_ids == b.completion_ids and a.text == b.text
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
        ids = torch.tensor([a.prompt_ids + a.completion_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(a.prompt_ids) - 1: -1].float()
        scale = temperature if temperature > 0 else 1.0
        ref = torch.log_softmax(logits / scale, -1).gather(1, torch.tensor(a.completion_ids)[:, None]).squeeze(1)
        np.testing.assert_allclose(a.logprobs, ref.numpy(), atol=1e-4)


def test_samples_do_not_depend_on_batch_composition(tiny):
    """Mixed sampling settings in one batch give what each request gets on its own."""
    model, tok = tiny
    settings = [SamplingParams(temperature=1.0, max_new_tokens=10), SamplingParams(temperature=0.0, max_new_tokens=5),
                SamplingParams(temperature=0.7, top_p=0.8, max_new_tokens=12, stop=("=",))]
    reqs = [GenRequest(m, settings[i % 3], seed=100 + i) for i, m in enumerate(_chats(7))]
    together = HFBackend(model, tok).generate(reqs)
    alone = [HFBackend(model, tok, kv_cache_mb=0).generate([r])[0] for r in reversed(reqs)][::-1]
    assert [o.completion_ids for o in together] == [o.completion_ids for o in alone]


def test_weight_change_clears_the_cache(tiny):
    model, tok = tiny
    import copy

    model = copy.deepcopy(model)
    backend = HFBackend(model, tok)
    req = GenRequest(_chats(1)[0], SamplingParams(temperature=0.0, max_new_tokens=6), session="s")
    backend.generate([req])
    assert len(backend.store) == 1
    with torch.no_grad():
        next(model.parameters()).add_(0.5)  # an in-place update, as an optimizer step does
    out = backend.generate([req])[0]
    fresh = HFBackend(model, tok, kv_cache_mb=0).generate([req])[0]
    assert out.completion_ids == fresh.completion_ids
    # the cached engine decodes over a stored prefix, the fresh one prefills it: other shapes, so
    # logprobs agree to float32 rounding, not bit for bit
    np.testing.assert_allclose(out.logprobs, fresh.logprobs, atol=1e-5)


def test_finished_rows_leave_the_decode_batch(tiny):
    model, tok = tiny
    backend = HFBackend(model, tok, kv_cache_mb=0)
    # one row stops at once (its reply prefix ends in a stop string), the others run the full length
    params = SamplingParams(temperature=1.0, max_new_tokens=24, stop=("=",))
    reqs = [GenRequest(m, params, seed=i) for i, m in enumerate(_chats(8))]
    outs = backend.generate(reqs)
    steps = max(len(o.completion_ids) for o in outs) - 1
    generated = sum(len(o.completion_ids) for o in outs) - len(outs)  # tokens sampled in decode steps
    assert backend.stats.decode_rows >= generated
    if min(len(o.completion_ids) for o in outs) < steps // 2:
        assert backend.stats.decode_rows < len(outs) * steps


def test_runner_releases_every_session(tiny):
    from codrl.toy.secret_table import SecretTable

    model, tok = tiny
    env = SecretTable()
    cfg = RolloutConfig(pack_size=2, repeats=2, max_new_tokens_solve=8, max_new_tokens_update=8)
    jobs = make_jobs([(env, env.sample_pack("train", 0, i, 2)) for i in range(2)], cfg)
    backend = HFBackend(model, tok)
    LifecycleRunner(backend, cfg).run(jobs)
    assert backend.stats.cached_tokens > 0
    assert all(e.session is None for e in backend.store._entries)  # lifecycles over: sessions freed


def test_lifecycle_samples_do_not_depend_on_concurrency(tiny):
    """Each lifecycle samples from its own seeded streams: one at a time or eight at once, with or
    without reuse, the same seed gives the same lifecycles."""
    from codrl.toy.secret_table import SecretTable

    model, tok = tiny
    env = SecretTable()
    runs = []
    for concurrent, mb in ((1, 0), (8, 1024)):
        cfg = RolloutConfig(pack_size=2, repeats=2, max_concurrent=concurrent, max_new_tokens_solve=8,
                            max_new_tokens_update=8)
        jobs = make_jobs([(env, env.sample_pack("train", 0, i, 2)) for i in range(2)], cfg)
        torch.manual_seed(5)
        runs.append(LifecycleRunner(HFBackend(model, tok, kv_cache_mb=mb), cfg).run(jobs))
    for a, b in zip(*runs, strict=True):
        assert [e.completion_ids for e in a.experiences] == [e.completion_ids for e in b.experiences]


# -- the embedded model on real lifecycles (slow) ------------------------------------------------
def _teacher_forced(model, exp, temperature: float) -> np.ndarray:
    ids = torch.tensor([exp.prompt_ids + exp.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(exp.prompt_ids) - 1: -1].float()
    scale = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits / scale, -1).gather(1, torch.tensor(exp.completion_ids)[:, None]).squeeze(1).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_embedded_frozenlake_lifecycles_are_exact(embedded_backend, temperature):
    """Reuse on vs off on real lifecycles; every sampled token's logprob vs a teacher-forced pass.

    fp32 logits of differently shaped batches differ at the 1e-6 level, so a sampled token can
    flip where its uniform draw lies within about 1e-5 of a CDF boundary (a few per 100,000
    tokens); from there that lifecycle legitimately diverges. Greedy runs must match exactly;
    sampled runs must match up to such a flip (in at most one of the four lifecycles).
    """
    env = make_env("frozenlake", min_size=4, max_size=4, max_env_steps=3, max_agent_steps=3)
    cfg = RolloutConfig(pack_size=2, repeats=2, temperature=temperature, max_new_tokens_solve=16,
                        max_new_tokens_update=32)
    jobs = make_jobs([(env, env.sample_pack("test", 0, i, 2)) for i in range(2)], cfg)
    model, tok = embedded_backend.model, embedded_backend.tokenizer
    runs = {}
    for name, mb in (("cached", 1024), ("plain", 0)):
        backend = HFBackend(model, tok, kv_cache_mb=mb)
        torch.manual_seed(7)
        runs[name] = (backend, LifecycleRunner(backend, cfg).run(jobs))
    cached, plain = runs["cached"], runs["plain"]
    assert cached[0].stats.prefill_tokens < 0.5 * plain[0].stats.prefill_tokens
    diverged = 0
    for ra, rb in zip(cached[1], plain[1], strict=True):
        for a in ra.experiences:  # token-exact: logprobs are those of a plain forward pass
            np.testing.assert_allclose(a.logprobs, _teacher_forced(model, a, temperature), atol=1e-4)
        for a, b in zip(ra.experiences, rb.experiences, strict=False):
            assert a.prompt_ids == b.prompt_ids
            n = common_prefix(np.array(a.completion_ids), np.array(b.completion_ids))
            np.testing.assert_allclose(a.logprobs[:n], b.logprobs[:n], atol=1e-4)
            if n < max(len(a.completion_ids), len(b.completion_ids)):
                diverged += 1
                break
        else:
            assert len(ra.experiences) == len(rb.experiences)
            assert [e.reward for e in ra.episodes] == [e.reward for e in rb.episodes]
    assert diverged == 0 if temperature == 0 else diverged <= 1


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_cached_equals_uncached(tiny, dtype):
    """The same engine on a GPU: reuse changes nothing (bf16 compared at bf16 precision)."""
    import copy

    model, tok = tiny
    model = copy.deepcopy(model).to("cuda", dtype)
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    first = [GenRequest(m, params, session=f"s{i}", seed=i) for i, m in enumerate(_chats(6))]
    cached, plain = HFBackend(model, tok), HFBackend(model, tok, kv_cache_mb=0)
    a1, b1 = cached.generate(first), plain.generate(first)
    second = [GenRequest(r.messages + [{"role": "assistant", "content": o.text}, {"role": "user", "content": "b=2"}],
                         params, session=r.session, seed=10 + i) for i, (r, o) in enumerate(zip(first, a1, strict=True))]
    a2, b2 = cached.generate(second), plain.generate(second)
    assert cached.stats.cached_tokens > 0
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    same = 0
    for a, b in zip(a1 + a2, b1 + b2, strict=True):
        if a.completion_ids == b.completion_ids:
            same += 1
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=tol)
    assert same == len(a1 + a2) if dtype == torch.float32 else same >= len(a1 + a2) // 2
