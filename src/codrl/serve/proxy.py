"""The training proxy: an OpenAI-compatible server in front of a codrl Backend that records every call.

An agent of any kind talks to ``/v1/chat/completions`` as to any OpenAI-compatible server; the
proxy samples with the policy (one engine thread, requests batched) and records each call that is
tagged with a lifecycle token-exactly (prompt ids, sampled ids, their logprobs, the policy
version). Rewards arrive through ``POST /codrl/v1/reward``, the lifecycle's end through
``POST /codrl/v1/end``; the trainer reads the lifecycle back as a
:class:`~codrl.rollout.experience.LifecycleResult` (:meth:`TrainingProxy.result`). docs/serve.md
has the endpoints, the tags and an example.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from typing import Any

import fastapi
import jinja2
import uvicorn
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from codrl.backends.base import Backend, GenRequest, GenResult, Message, SamplingParams
from codrl.rollout.config import RolloutConfig
from codrl.rollout.experience import EpisodeType, LifecycleResult
from codrl.serve.engine import EngineThread
from codrl.serve.recorder import LifecycleLog, ProxyError, Recorder
from codrl.serve.reencode import continued_prompt_ids

#: Reply budget of a request that names none, when the proxy has no RolloutConfig.
DEFAULT_MAX_TOKENS = 512
#: Tag headers (the request's ``metadata`` keys are the same names, lower-case, ``codrl_...``).
TAG_HEADERS = {"lifecycle": "x-codrl-lifecycle", "episode": "x-codrl-episode", "position": "x-codrl-position"}


# -- request bodies -------------------------------------------------------------------------------
class ChatMessage(BaseModel):
    """One chat message; ``content`` is text or a list of content parts whose text parts are joined."""

    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def as_message(self) -> Message:
        """The message as the backends take it: ``{"role", "content"}`` with text content."""
        if isinstance(self.content, list):
            text = "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        else:
            text = self.content or ""
        return {"role": self.role, "content": text}


class ChatCompletionRequest(BaseModel):
    """The fields of an OpenAI chat completion request that the proxy reads (others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    metadata: dict[str, Any] | None = None


class Tags(BaseModel):
    """Which lifecycle, episode type and task position a call belongs to."""

    lifecycle: str | None = None
    episode: EpisodeType | None = None
    position: int | None = None


class RewardRequest(BaseModel):
    """``POST /codrl/v1/reward``: a task's reward and optional feedback text."""

    lifecycle: str
    position: int
    reward: float = Field(allow_inf_nan=False)
    feedback: str | None = None


class EndRequest(BaseModel):
    """``POST /codrl/v1/end``: the lifecycle is over."""

    lifecycle: str


# -- errors ---------------------------------------------------------------------------------------
def error_response(status: int, message: str, *, code: str, param: str | None = None) -> JSONResponse:
    """An OpenAI-style error body ``{"error": {"message", "type", "param", "code"}}``."""
    kind = {401: "authentication_error", 500: "server_error"}.get(status, "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    """A 400 naming the first bad field of a request body (or saying the body is not JSON)."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    if first.get("type") == "json_invalid" or param is None:
        return error_response(400, "body: the request body must be a JSON object", code="invalid_json")
    return error_response(400, f"{param}: {first.get('msg')}", code="invalid_value", param=param)


def _parse_tags(metadata: dict[str, Any] | None, headers: Any) -> Tags:
    """A call's tags from its ``metadata`` (``codrl_*`` keys), falling back to the ``X-Codrl-*`` headers."""
    meta = metadata or {}
    values = {name: meta.get(f"codrl_{name}", headers.get(header)) for name, header in TAG_HEADERS.items()}
    try:
        return Tags.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        name = str(first["loc"][0])
        raise ProxyError(400, f"codrl_{name}: {values[name]!r} is not allowed; "
                              + ("allowed values: 'solve', 'update'" if name == "episode" else first["msg"]),
                         code="invalid_tag", param=f"metadata.codrl_{name}") from None


# -- the proxy ------------------------------------------------------------------------------------
class TrainingProxy:
    """An OpenAI-compatible server in front of a codrl Backend that records every call token-exactly.

    ``cfg`` (a rollout config) fixes the sampling of recorded calls: its temperature and top-p
    (the trainer's logprobs assume them, whatever a request asks), its reply budgets per episode
    type where a request names none, and its ``max_context``. ``api_key``: requests must send it as
    a bearer token. ``require_lifecycle``: untagged calls are refused instead of served unrecorded.
    """

    def __init__(self, backend: Backend, *, model_name: str = "codrl-policy", cfg: RolloutConfig | None = None,
                 api_key: str | None = None, require_lifecycle: bool = False) -> None:
        self.backend = backend
        self.model_name = model_name
        self.cfg = cfg
        self.api_key = api_key
        self.require_lifecycle = require_lifecycle
        #: Stamped on every recorded call (Experience.policy_version); the trainer bumps it after an update.
        self.policy_version = 0
        self.recorder = Recorder()
        self.engine = EngineThread(backend)
        self.app = self._build_app()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- in-process API --------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the app with uvicorn in a daemon thread; returns the base URL ``http://host:port/v1``."""
        if self._server is not None:
            raise RuntimeError("the proxy is already serving")
        server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, name="codrl-serve-http", daemon=True)
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise OSError(f"cannot serve on {host}:{port} (see the log above)")
            time.sleep(0.01)
        self._server, self._thread = server, thread
        bound = server.servers[0].sockets[0].getsockname()[1]
        return f"http://{host}:{bound}/v1"

    def stop(self) -> None:
        """Stop serving (HTTP server and engine thread)."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join()
            self._server = self._thread = None
        self.engine.stop()

    def open_lifecycle(self, lifecycle: str, *, pack_id: str, repeat: int, env: str, split: str,
                       num_tasks: int, task_ids: list[str] | None = None) -> None:
        """Start recording calls tagged with ``lifecycle`` (task ids default to the positions)."""
        ids = list(task_ids) if task_ids is not None else [str(k) for k in range(num_tasks)]
        self.recorder.open(LifecycleLog(lifecycle, pack_id, repeat, env, split, num_tasks, ids))

    def wait(self, lifecycle: str, timeout: float | None) -> bool:
        """Block until ``POST /codrl/v1/end`` arrived for ``lifecycle`` (True) or ``timeout`` seconds passed."""
        return self.recorder.wait(lifecycle, timeout)

    def result(self, lifecycle: str, *, failed: str | None = None) -> LifecycleResult:
        """The recorded lifecycle (see :meth:`codrl.serve.recorder.Recorder.result`)."""
        return self.recorder.result(lifecycle, self.cfg.mode if self.cfg else "cod", failed)

    def close_lifecycle(self, lifecycle: str) -> None:
        """Forget ``lifecycle`` and its cached states (after :meth:`result`)."""
        self.recorder.close(lifecycle)
        self.engine.release(lifecycle)

    # -- HTTP ------------------------------------------------------------------------------------
    def _build_app(self) -> fastapi.FastAPI:
        app = fastapi.FastAPI(title="codrl training proxy", dependencies=[fastapi.Depends(self._authorize)])
        app.add_exception_handler(ProxyError, self._proxy_error)  # type: ignore[arg-type]
        app.add_exception_handler(RequestValidationError, self._invalid)  # type: ignore[arg-type]
        app.add_exception_handler(StarletteHTTPException, self._http_error)  # type: ignore[arg-type]
        app.add_exception_handler(Exception, self._server_error)
        app.get("/v1/models")(self._models)
        app.post("/v1/chat/completions")(self._chat)
        app.post("/codrl/v1/reward")(self._reward)
        app.post("/codrl/v1/end")(self._end)
        return app

    def _authorize(self, request: fastapi.Request) -> None:
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise ProxyError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                             code="invalid_api_key")

    @staticmethod
    async def _proxy_error(_: fastapi.Request, exc: ProxyError) -> JSONResponse:
        return error_response(exc.status, exc.message, code=exc.code, param=exc.param)

    @staticmethod
    async def _invalid(_: fastapi.Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @staticmethod
    async def _http_error(request: fastapi.Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                              code="not_found" if exc.status_code == 404 else "http_error")

    @staticmethod
    async def _server_error(_: fastapi.Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"the engine failed: {type(exc).__name__}: {exc}", code="server_error")

    async def _models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                            "owned_by": "codrl"}]}

    async def _chat(self, body: ChatCompletionRequest, request: fastapi.Request) -> dict[str, Any]:
        if body.stream:
            raise ProxyError(400, "stream: streaming is not supported; send stream=false", code="unsupported_parameter",
                             param="stream")
        if body.n != 1:
            raise ProxyError(400, f"n: only n=1 is supported, got {body.n}", code="unsupported_parameter", param="n")
        tags = _parse_tags(body.metadata, request.headers)
        messages = [m.as_message() for m in body.messages]
        log: LifecycleLog | None = None
        episode: EpisodeType = tags.episode or "solve"
        position = 0
        if tags.lifecycle is not None:
            log, episode, position = self.recorder.tag(tags.lifecycle, tags.episode, tags.position)
        elif self.require_lifecycle:
            raise ProxyError(400, "codrl_lifecycle: this proxy records every call; tag it with metadata "
                                  "codrl_lifecycle or the X-Codrl-Lifecycle header", code="missing_lifecycle",
                             param="metadata.codrl_lifecycle")
        sampling = self._sampling(body, episode)
        version = self.policy_version
        job = functools.partial(self._gen_request, messages, sampling, body.seed, log)
        result = await asyncio.wrap_future(self.engine.submit(job))
        if log is not None:
            self.recorder.record(log, episode, position, messages, result, version)
        if result.finish_reason == "overflow":
            window = min(n for n in (self.backend.context_window, self.cfg.max_context if self.cfg else None) if n)
            raise ProxyError(400, f"messages: the prompt plus max_tokens={sampling.max_new_tokens} passes the "
                                  f"context window of {window} tokens; shorten the messages or lower max_tokens",
                             code="context_length_exceeded", param="messages")
        return self._completion(result)

    async def _reward(self, body: RewardRequest) -> dict[str, Any]:
        self.recorder.reward(body.lifecycle, body.position, body.reward, body.feedback)
        return {"lifecycle": body.lifecycle, "position": body.position, "reward": body.reward}

    async def _end(self, body: EndRequest) -> dict[str, Any]:
        calls = self.recorder.end(body.lifecycle)
        return {"lifecycle": body.lifecycle, "ended": True, "calls": calls}

    # -- sampling --------------------------------------------------------------------------------
    def _sampling(self, body: ChatCompletionRequest, episode: EpisodeType) -> SamplingParams:
        """The request's sampling settings (the rollout config's temperature and top-p win when given)."""
        cfg = self.cfg
        budget = (cfg.max_new_tokens_solve if episode == "solve" else cfg.max_new_tokens_update) if cfg \
            else DEFAULT_MAX_TOKENS
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        return SamplingParams(
            temperature=cfg.temperature if cfg else (1.0 if body.temperature is None else body.temperature),
            top_p=cfg.top_p if cfg else (1.0 if body.top_p is None else body.top_p),
            max_new_tokens=body.max_completion_tokens or body.max_tokens or budget, stop=stop)

    def _gen_request(self, messages: list[Message], sampling: SamplingParams, seed: int | None,
                     log: LifecycleLog | None) -> GenRequest:
        """The engine request of a call (run on the engine thread: it encodes). Engines that encode
        prompts themselves get the prompt ids here, so a template error fails this call alone, and
        a conversation continuing a recorded reply gets that reply's sampled ids verbatim."""
        request = GenRequest(messages, sampling, session=log.name if log else None, seed=seed,
                             max_context=self.cfg.max_context if self.cfg else None)
        encode = getattr(self.backend, "encode_prompt", None)
        if encode is None:
            return request
        call = self.recorder.continued_call(log, messages) if log is not None else None
        if call is not None:
            exp = call.experience
            request.prompt_ids = continued_prompt_ids(
                self.backend.tokenizer, messages, prev_messages=call.messages,  # type: ignore[attr-defined]
                prev_prompt_ids=exp.prompt_ids, prev_completion_ids=exp.completion_ids, prev_text=exp.text,
                eos_ids=self.backend.eos_ids, chat_template_kwargs=self.backend.chat_template_kwargs)  # type: ignore[attr-defined]
        if request.prompt_ids is None:
            try:
                request.prompt_ids = encode(request)
            except jinja2.TemplateError as e:
                raise ProxyError(400, f"messages: the model's chat template cannot render them ({e})",
                                 code="invalid_value", param="messages") from None
        return request

    def _completion(self, result: GenResult) -> dict[str, Any]:
        """An OpenAI ``chat.completion`` object for one sampled reply."""
        prompt_tokens, completion_tokens = len(result.prompt_ids), len(result.completion_ids)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": "length" if result.finish_reason == "length" else "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

