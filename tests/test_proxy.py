"""The training proxy (codrl serve): OpenAI-compatible serving, token-exact records, drift-free continuation, errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from codrl.backends.base import GenRequest, SamplingParams
from codrl.backends.hf import HFBackend
from codrl.serve import TrainingProxy


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    """A fresh (untrained) tiny word-level policy: it samples any word, special tokens included."""
    from codrl.toy.policy import build_tiny_policy
    from codrl.toy.secret_table import SecretTable

    model, tok = build_tiny_policy(SecretTable(), seed=0)
    return HFBackend(model, tok)


@pytest.fixture
def proxy(backend: HFBackend) -> Iterator[TrainingProxy]:
    p = TrainingProxy(backend)
    p.open_lifecycle("L", pack_id="pack-0", repeat=1, env="secret_table", split="train", num_tasks=2,
                     task_ids=["t0", "t1"])
    yield p
    p.stop()


@pytest.fixture
def client(proxy: TrainingProxy) -> TestClient:
    return TestClient(proxy.app)


def chat(client: TestClient, messages: list[dict[str, str]], *, seed: int = 0, max_tokens: int = 8,
         headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    body = {"model": "codrl-policy", "messages": messages, "max_tokens": max_tokens, "seed": seed, **extra}
    return client.post("/v1/chat/completions", json=body, headers=headers or {})


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The OpenAI-style error body of ``response``, checked for its status and shape."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


USER = [{"role": "user", "content": "hello"}]


def test_openai_client_round_trip_records_token_exact(proxy: TrainingProxy, backend: HFBackend) -> None:
    base_url = proxy.start()
    client = openai.OpenAI(base_url=base_url, api_key="unused")
    assert [m.id for m in client.models.list().data] == ["codrl-policy"]
    out = client.chat.completions.create(model="codrl-policy", messages=USER, max_tokens=8, seed=7,  # type: ignore[arg-type]
                                         metadata={"codrl_lifecycle": "L", "codrl_position": "0"})
    [call] = proxy.result("L").experiences
    direct = backend.generate([GenRequest(USER, SamplingParams(max_new_tokens=8), seed=7)])[0]
    assert out.choices[0].message.content == call.text == direct.text
    assert call.prompt_ids == direct.prompt_ids and call.completion_ids == direct.completion_ids
    assert call.logprobs == pytest.approx(direct.logprobs, abs=1e-4)
    assert backend.tokenizer.decode(call.completion_ids, skip_special_tokens=True) == call.text
    assert out.usage is not None and out.usage.completion_tokens == len(call.completion_ids)
    assert (call.pack_id, call.repeat, call.env, call.episode_type, call.position, call.turn) == (
        "pack-0", 1, "secret_table", "solve", 0, 0)


def test_tags_from_headers_and_defaults(client: TestClient, proxy: TrainingProxy) -> None:
    chat(client, USER, headers={"X-Codrl-Lifecycle": "L"})  # solve at the current position, 0
    chat(client, USER, headers={"X-Codrl-Lifecycle": "L", "X-Codrl-Episode": "update"})
    assert client.post("/codrl/v1/reward", json={"lifecycle": "L", "position": 0, "reward": 0.5}).status_code == 200
    chat(client, USER, metadata={"codrl_lifecycle": "L"})  # one reward reported: position 1
    chat(client, USER)  # untagged: served, not recorded
    proxy.policy_version = 3
    chat(client, USER, metadata={"codrl_lifecycle": "L", "codrl_episode": "solve", "codrl_position": 1})
    calls = proxy.result("L").experiences
    assert [(c.episode_type, c.position, c.turn, c.policy_version) for c in calls] == [
        ("solve", 0, 0, 0), ("update", 0, 0, 0), ("solve", 1, 0, 0), ("solve", 1, 1, 3)]


def drifting_seed(backend: HFBackend, messages: list[dict[str, str]], *, temperature: float = 1.0,
                  max_tokens: int = 8, seeds: int = 32) -> int:
    """A seed whose reply re-tokenizes to other ids than were sampled (the end-of-sequence token aside)."""
    params = SamplingParams(temperature=temperature, max_new_tokens=max_tokens)
    outs = backend.generate([GenRequest(messages, params, seed=s) for s in range(seeds)])
    for seed, out in enumerate(outs):
        sampled = [t for t in out.completion_ids if t not in backend.eos_ids]
        if backend.tokenizer(out.text, add_special_tokens=False)["input_ids"] != sampled:
            return seed
    raise AssertionError(f"no reply of {seeds} seeds re-tokenizes differently")


def check_continuation(client: TestClient, proxy: TrainingProxy, backend: HFBackend, seed: int, *,
                       temperature: float = 1.0, max_tokens: int = 8) -> bool:
    """Send a reply back in a follow-up; check the follow-up's prompt holds its sampled ids verbatim.
    Returns whether re-tokenizing the conversation gives the same prompt ids."""
    first = chat(client, USER, seed=seed, max_tokens=max_tokens, temperature=temperature,
                 metadata={"codrl_lifecycle": "L"}).json()["choices"][0]["message"]["content"]
    follow = [*USER, {"role": "assistant", "content": first}, {"role": "user", "content": "again"}]
    assert chat(client, follow, max_tokens=max_tokens, temperature=temperature,
                metadata={"codrl_lifecycle": "L"}).status_code == 200
    a, b = proxy.result("L").experiences[-2:]
    assert a.text == first
    assert b.prompt_ids[: a.num_tokens] == a.input_ids  # training rows hold exactly what was sampled
    return backend.encode_prompt(GenRequest(follow)) == b.prompt_ids


def test_follow_up_reuses_sampled_ids_where_retokenizing_differs(client: TestClient, proxy: TrainingProxy,
                                                                 backend: HFBackend) -> None:
    seed = drifting_seed(backend, USER)
    assert not check_continuation(client, proxy, backend, seed)


def test_follow_up_without_drift_matches_the_chat_template(client: TestClient, proxy: TrainingProxy,
                                                           backend: HFBackend) -> None:
    outs = backend.generate([GenRequest(USER, SamplingParams(max_new_tokens=8), seed=s) for s in range(32)])
    seed = next(s for s, o in enumerate(outs) if backend.tokenizer(o.text, add_special_tokens=False)["input_ids"]
                == [t for t in o.completion_ids if t not in backend.eos_ids])
    assert check_continuation(client, proxy, backend, seed)


def test_edited_reply_is_encoded_from_text(client: TestClient, proxy: TrainingProxy, backend: HFBackend) -> None:
    chat(client, USER, metadata={"codrl_lifecycle": "L"})
    edited = [*USER, {"role": "assistant", "content": "hints"}, {"role": "user", "content": "again"}]
    chat(client, edited, metadata={"codrl_lifecycle": "L"})
    assert proxy.result("L").experiences[-1].prompt_ids == backend.encode_prompt(GenRequest(edited))


@pytest.mark.slow
def test_subword_drift_with_the_embedded_model(embedded_backend: HFBackend) -> None:
    proxy = TrainingProxy(embedded_backend)
    proxy.open_lifecycle("L", pack_id="p", repeat=0, env="e", split="train", num_tasks=1)
    try:
        seed = drifting_seed(embedded_backend, USER, temperature=1.5, max_tokens=16, seeds=8)
        assert not check_continuation(TestClient(proxy.app), proxy, embedded_backend, seed, temperature=1.5,
                                      max_tokens=16)
    finally:
        proxy.stop()


def test_errors_are_openai_style_and_keep_records(client: TestClient, proxy: TrainingProxy) -> None:
    chat(client, USER, metadata={"codrl_lifecycle": "L"})
    assert error_of(chat(client, USER, metadata={"codrl_lifecycle": "nope"}), 404)["code"] == "lifecycle_not_found"
    err = error_of(client.post("/codrl/v1/reward", json={"lifecycle": "L", "position": 2, "reward": 1.0}), 400)
    assert (err["code"], err["param"]) == ("position_out_of_range", "position") and "0..1" in err["message"]
    assert error_of(client.post("/codrl/v1/reward", json={"lifecycle": "x", "position": 0, "reward": 1}),
                    404)["code"] == "lifecycle_not_found"
    err = error_of(chat(client, USER, max_tokens=2000, metadata={"codrl_lifecycle": "L"}), 400)
    assert err["code"] == "context_length_exceeded" and "1024" in err["message"]
    err = error_of(client.post("/v1/chat/completions", content=b"{not json",
                               headers={"Content-Type": "application/json"}), 400)
    assert err["code"] == "invalid_json"
    assert error_of(chat(client, USER, stream=True), 400)["param"] == "stream"
    err = error_of(chat(client, USER, metadata={"codrl_lifecycle": "L", "codrl_episode": "think"}), 400)
    assert "'solve', 'update'" in err["message"]
    assert error_of(chat(client, USER, temperature=-1), 400)["param"] == "temperature"
    assert client.post("/codrl/v1/end", json={"lifecycle": "L"}).json() == {"lifecycle": "L", "ended": True,
                                                                            "calls": 1}
    assert error_of(client.post("/codrl/v1/end", json={"lifecycle": "L"}), 409)["code"] == "lifecycle_ended"
    assert error_of(chat(client, USER, metadata={"codrl_lifecycle": "L"}), 409)["code"] == "lifecycle_ended"
    result = proxy.result("L")
    assert len(result.experiences) == 1 and result.context_overflows == 1


def test_api_key_and_required_lifecycle(backend: HFBackend) -> None:
    proxy = TrainingProxy(backend, api_key="k", require_lifecycle=True)
    try:
        client = TestClient(proxy.app)
        assert error_of(client.get("/v1/models"), 401)["code"] == "invalid_api_key"
        auth = {"Authorization": "Bearer k"}
        assert client.get("/v1/models", headers=auth).status_code == 200
        assert error_of(chat(client, USER, headers=auth), 400)["code"] == "missing_lifecycle"
    finally:
        proxy.stop()


def test_concurrent_requests_are_batched(proxy: TrainingProxy, backend: HFBackend) -> None:
    base_url = proxy.start()
    gate = threading.Event()

    def held() -> GenRequest:  # keeps the engine busy until every request below is queued
        gate.wait(10)
        return GenRequest(USER, SamplingParams(max_new_tokens=1))

    before = backend.stats.generate_calls
    blocker = proxy.engine.submit(held)
    replies: list[str] = []

    def ask(i: int) -> None:
        client = openai.OpenAI(base_url=base_url, api_key="unused")
        out = client.chat.completions.create(model="codrl-policy", messages=USER, max_tokens=4, seed=i,  # type: ignore[arg-type]
                                             metadata={"codrl_lifecycle": "L"})
        replies.append(out.choices[0].message.content or "")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while proxy.engine.queued() < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join(30)
    blocker.result(10)
    assert len(replies) == 6 and len(proxy.result("L").experiences) == 6
    assert backend.stats.generate_calls - before < 6


def test_result_builds_the_lifecycle(client: TestClient, proxy: TrainingProxy) -> None:
    chat(client, [{"role": "user", "content": "task zero"}], metadata={"codrl_lifecycle": "L"})
    chat(client, USER, metadata={"codrl_lifecycle": "L", "codrl_episode": "update", "codrl_position": 0})
    client.post("/codrl/v1/reward", json={"lifecycle": "L", "position": 0, "reward": 1.0, "feedback": "solved"})
    dup = client.post("/codrl/v1/reward", json={"lifecycle": "L", "position": 0, "reward": 0.0})
    assert error_of(dup, 409)["code"] == "reward_already_reported"
    assert proxy.wait("L", 0.01) is False
    client.post("/codrl/v1/end", json={"lifecycle": "L"})
    assert proxy.wait("L", 1.0) is True

    result = proxy.result("L")
    assert (result.pack_id, result.env, result.split, result.repeat) == ("pack-0", "secret_table", "train", 1)
    assert [e.task_id for e in result.episodes] == ["t0", "t1"]
    assert result.task_rewards == [1.0, 0.0]
    assert [e.feedback for e in result.episodes] == ["solved", "no reward reported"]
    assert result.episodes[0].turns[0].observation == "task zero"
    assert result.episodes[0].hints_out == result.episodes[1].hints_in == result.experiences[1].text
    assert [(m.episode_type, m.position, m.own_reward, len(m.calls)) for m in result.model_episodes] == [
        ("solve", 0, 1.0, 1), ("update", 0, 0.0, 1)]
    failed = proxy.result("L", failed="agent crashed")
    assert all(e.env_error and e.feedback == "agent crashed" for e in failed.episodes)
    assert len(failed.experiences) == 2
    proxy.close_lifecycle("L")
    with pytest.raises(KeyError, match="'L'"):
        proxy.result("L")


def test_serve_help_teaches_the_endpoints() -> None:
    from typer.testing import CliRunner

    from codrl.cli import app

    out = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    assert all(s in out for s in ("/v1/chat/completions", "/codrl/v1/reward", "/codrl/v1/end", "X-Codrl-Lifecycle"))


def test_a_template_error_fails_its_call_alone(client: TestClient, backend: HFBackend,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_tool = ("{% for m in messages %}{% if m['role'] == 'tool' %}"
                   "{{ raise_exception('no tool messages') }}{% endif %}{% endfor %}")
    monkeypatch.setattr(backend.tokenizer, "chat_template", refuse_tool + backend.tokenizer.chat_template)
    err = error_of(chat(client, [{"role": "tool", "content": "a"}], metadata={"codrl_lifecycle": "L"}), 400)
    assert err["param"] == "messages" and "no tool messages" in err["message"]
    assert chat(client, USER, metadata={"codrl_lifecycle": "L"}).status_code == 200
