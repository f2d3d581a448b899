"""OpenAIBackend against a real llama.cpp server (SmolLM2-135M GGUF) and a few fake endpoints."""

from __future__ import annotations

import json
import time
import sys
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from codrl.backends.base import GenRequest, SamplingParams
from codrl.backends.llama_server import free_port
from codrl.backends.openai_backend import (
    PREFIX_INSTRUCTION,
    OpenAIBackend,
    _add_prefix_instruction,
    _strip_prefix,
)
from codrl.errors import CodrlError

sys.path.insert(0, str(Path(__file__).parent))
from support import serve_in_thread  # noqa: E402


@pytest.fixture(scope="module")
def backend(llama_server: str) -> Iterator[OpenAIBackend]:
    """A backend on the live server, model auto-discovered."""
    b = OpenAIBackend(llama_server, timeout=60.0, max_retries=1, concurrency=3)
    yield b
    b.close()


def _ask(text: str, max_new: int = 16, temperature: float = 0.0, prefix: str = "") -> GenRequest:
    return GenRequest(
        messages=[{"role": "user", "content": text}],
        sampling=SamplingParams(temperature=temperature, top_p=1.0, max_new_tokens=max_new),
        reply_prefix=prefix,
    )


# --------------------------------------------------------------------------- real server
# Marked slow: starting llama.cpp and sampling takes ~5-15 s on a loaded 2-core machine.
@pytest.mark.slow
def test_model_auto_discovered(llama_server: str, backend: OpenAIBackend) -> None:
    with urllib.request.urlopen(f"{llama_server}/v1/models", timeout=5) as r:
        listed = json.load(r)["data"][0]["id"]
    assert backend.model == listed
    assert backend.base_url == f"{llama_server}/v1"
    assert backend.token_exact is False


@pytest.mark.slow
def test_batch_of_three(backend: OpenAIBackend) -> None:
    before = (backend.stats.generate_calls, backend.stats.requests,
              backend.stats.prompt_tokens, backend.stats.completion_tokens)  # fmt: skip
    reqs = [
        _ask("What is the capital of France?"),
        _ask("Name a color.", temperature=0.7),
        _ask("Say hello to Bob."),
    ]
    out = backend.generate(reqs)
    assert len(out) == 3
    for res in out:
        assert res.text.strip(), res
        assert res.finish_reason in {"stop", "length"}
        assert res.token_exact is False
        assert res.prompt_ids == [] and res.completion_ids == []
        assert len(res.logprobs) <= 16 and all(lp <= 1e-6 for lp in res.logprobs)
    assert any(res.logprobs for res in out)  # llama.cpp returns logprobs with top_logprobs
    s = backend.stats
    assert s.generate_calls == before[0] + 1
    assert s.requests == before[1] + 3
    assert s.prompt_tokens > before[2]
    assert s.completion_tokens > before[3]


@pytest.mark.slow
def test_max_new_tokens_respected(backend: OpenAIBackend) -> None:
    before = backend.stats.completion_tokens
    (res,) = backend.generate([_ask("Write a long story about a dragon and a knight.", max_new=2)])
    assert res.finish_reason == "length"
    assert backend.stats.completion_tokens - before <= 2
    assert len(res.logprobs) <= 2


@pytest.mark.slow
def test_reply_prefix_not_in_text(backend: OpenAIBackend) -> None:
    prefix = "Answer:"
    out = backend.generate([_ask("What is 2 + 2?", max_new=12, prefix=prefix)] * 2)
    for res in out:
        assert not res.text.lstrip().startswith(prefix), res.text
        assert res.finish_reason in {"stop", "length"}


@pytest.mark.slow
def test_continue_final_message_mode_runs(llama_server: str) -> None:
    b = OpenAIBackend(llama_server, prefill="continue_final_message", max_retries=0)
    try:
        msgs, extra = b._build_call(_ask("Count to five.", prefix="1, 2,"))
        assert msgs[-1] == {"role": "assistant", "content": "1, 2,"}
        assert extra == {"continue_final_message": True, "add_generation_prompt": False}
        (res,) = b.generate([_ask("Count to five.", max_new=8, prefix="1, 2,")])
        assert res.finish_reason in {"stop", "length"}
    finally:
        b.close()


# --------------------------------------------------------------------------- errors
def test_unreachable_endpoint_fails_fast() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(CodrlError) as info:
        OpenAIBackend(f"http://127.0.0.1:{port}/v1", max_retries=1, timeout=5.0)
    elapsed = time.monotonic() - t0
    msg = str(info.value)
    assert elapsed < 10.0
    assert f"http://127.0.0.1:{port}/v1" in msg
    assert "cannot reach OpenAI-compatible endpoint" in msg
    assert "connection refused" in msg
    assert "\n" not in msg


class _FakeHandler(BaseHTTPRequestHandler):
    """Answers /v1/models; chat behaviour is set by the server's ``mode`` attribute."""

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    def do_POST(self) -> None:
        srv: Any = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.bodies.append(body)
        if srv.mode == "500":
            self._send(500, {"error": {"message": "boom"}})
            return
        if srv.mode == "no-logprobs" and body.get("logprobs"):
            self._send(400, {"error": {"message": "logprobs is not supported"}})
            return
        self._send(200, {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": srv.content}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        })  # fmt: skip


@pytest.fixture()
def fake_server() -> Iterator[Any]:
    """A tiny in-process OpenAI-compatible server for error paths."""
    with serve_in_thread(_FakeHandler, mode="ok", content="Answer: four", bodies=[]) as srv:
        yield srv


def test_generate_raises_after_bounded_retries(fake_server: Any) -> None:
    url = f"http://127.0.0.1:{fake_server.server_address[1]}/v1"
    b = OpenAIBackend(url, max_retries=1)
    fake_server.mode = "500"
    with pytest.raises(CodrlError) as info:
        b.generate([_ask("hi")])
    assert url in str(info.value) and "HTTP 500" in str(info.value)
    assert len(fake_server.bodies) == 2  # first try + one retry
    b.close()


def test_logprobs_rejected_falls_back_and_remembers(fake_server: Any) -> None:
    url = f"http://127.0.0.1:{fake_server.server_address[1]}"
    b = OpenAIBackend(url, max_retries=0)
    assert b.model == "fake-model"
    fake_server.mode = "no-logprobs"
    out = b.generate([_ask("2+2?", prefix="Answer:")])
    assert out[0].text == " four" and out[0].logprobs == []
    assert [bool(x.get("logprobs")) for x in fake_server.bodies] == [True, False]
    assert fake_server.bodies[0]["messages"][-1]["content"].endswith(
        PREFIX_INSTRUCTION.format(prefix="Answer:")
    )
    b.generate([_ask("again")])
    assert not fake_server.bodies[-1].get("logprobs")  # remembered
    assert b.stats.prompt_tokens == 10 and b.stats.completion_tokens == 6
    b.close()


# --------------------------------------------------------------------------- helpers
def test_strip_prefix() -> None:
    assert _strip_prefix("Answer: 4", "Answer:") == " 4"
    assert _strip_prefix("  Answer: 4", "Answer:") == " 4"
    assert _strip_prefix("Answer:4", "Answer: ") == "4"
    assert _strip_prefix("4", "Answer:") == "4"
    assert _strip_prefix("x", "") == "x"
    code = "<answer>\n```python\n"  # the coding worlds' prefix: models often echo only the fence
    assert _strip_prefix("<answer>\n```python\nx = 1\n```", code) == "x = 1\n```"
    assert _strip_prefix("```python\nx = 1\n```", code) == "x = 1\n```"
    assert _strip_prefix("```python x = 1", code) == "x = 1"
    assert _strip_prefix("x = 1\n```", code) == "x = 1\n```"
    assert _strip_prefix("<answer>Direction 3", "<answer>Direction ") == "3"


def test_prefix_instruction_goes_to_last_user_message() -> None:
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "u2"},
    ]
    out = _add_prefix_instruction(msgs, "P")
    assert out[-1]["content"] == "u2\n\nBegin your reply with: P"
    assert out[1]["content"] == "u1" and msgs[-1]["content"] == "u2"  # input not mutated


def test_reply_cut_after_first_stop_string(fake_server: Any) -> None:
    """A server that runs past the stop string: the reply ends with it, as in the hf backend."""
    url = f"http://127.0.0.1:{fake_server.server_address[1]}/v1"
    b = OpenAIBackend(url, max_retries=0)
    fake_server.content = "3</answer> and then <answer>Direction 4</answer>"
    req = GenRequest(messages=[{"role": "user", "content": "move"}],
                     sampling=SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=16, stop=("</answer>",)),
                     reply_prefix="<answer>Direction ")
    out = b.generate([req, _ask("no stop strings")])
    assert out[0].text == "3</answer>" and out[0].finish_reason == "stop"
    assert out[1].text == fake_server.content  # no stop strings: nothing is cut
    assert "stop" not in fake_server.bodies[0]  # cut here, not by the server (which would drop it)
    b.close()


def test_request_over_the_context_window_is_an_overflow_result(backend: OpenAIBackend) -> None:
    """The real llama.cpp server (2048-token window) refuses a prompt longer than its window; the
    backend reports that as an ``overflow`` result, which a lifecycle scores as "context full",
    never as an exception. A request that fits is served as usual."""
    over = GenRequest([{"role": "user", "content": "apple " * 3000}], SamplingParams(max_new_tokens=4))
    fits = GenRequest([{"role": "user", "content": "Say hi."}], SamplingParams(temperature=0.0, max_new_tokens=4))
    a, b = backend.generate([over, fits])
    assert (a.finish_reason, a.text, a.completion_ids) == ("overflow", "", [])
    assert b.finish_reason in ("stop", "length") and b.text
