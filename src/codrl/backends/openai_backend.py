"""Generation through an OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp, OpenAI...).

A chat API returns text, not the exact token sequence the model was conditioned on, so this
backend is **not token-exact** (:attr:`OpenAIBackend.token_exact` is False): results carry the
text, the finish reason and, when the server returns them, the log-probabilities of the sampled
tokens, but ``prompt_ids`` and ``completion_ids`` are empty. It is meant for evaluation and
rollouts against served models, not for policy-gradient training.

Reply prefixes
--------------
A :class:`~codrl.backends.base.GenRequest` may carry a ``reply_prefix`` that should start the
assistant reply without being sampled. Two strategies are available (``prefill=``):

``"continue_final_message"`` (vLLM servers)
    The prefix is sent as a trailing assistant message together with
    ``extra_body={"continue_final_message": True, "add_generation_prompt": False}``; the server
    continues that message, and the returned text is exactly the continuation.

``"none"`` (default; works with any server)
    The instruction ``"\\n\\nBegin your reply with: {prefix}"`` is appended to the last user
    message. When the reply starts with the prefix (after leading whitespace), the prefix is
    stripped off, so that :attr:`GenResult.text` holds only what follows it. When the model
    ignores the instruction the text is returned unchanged. Either way the caller rebuilds the
    full reply as ``reply_prefix + text``. ``GenResult.logprobs`` still covers every sampled
    token, an echoed prefix included.

Retries and errors: connection errors, timeouts, HTTP 5xx and 429 are retried ``max_retries``
times with exponential backoff (0.5 s, 1 s, 2 s, ...). A request that still fails raises a
one-line :class:`~codrl.errors.CodrlError` naming the endpoint, e.g. ``cannot reach
OpenAI-compatible endpoint http://127.0.0.1:8000/v1: listing models: connection refused``. The
constructor lists ``/models`` so that an unreachable endpoint fails before any work is done.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import openai

from codrl.backends.base import Backend, GenRequest, GenResult, Message, cut_at_stop
from codrl.errors import CodrlError, bad_choice

__all__ = ["OpenAIBackend", "PREFIX_INSTRUCTION", "PrefillMode"]

log = logging.getLogger(__name__)

PrefillMode = Literal["none", "continue_final_message"]
_PREFILL_MODES: tuple[str, ...] = ("none", "continue_final_message")

#: Appended to the last user message in ``prefill="none"`` mode (``{prefix}`` is filled in).
PREFIX_INSTRUCTION = "\n\nBegin your reply with: {prefix}"

_BACKOFF_BASE_S = 0.5
_BACKOFF_MAX_S = 8.0


@dataclass
class _Reply:
    """One parsed chat completion (internal)."""

    text: str
    finish_reason: str
    logprobs: list[float]
    prompt_tokens: int
    completion_tokens: int


def _normalize_base_url(base_url: str) -> str:
    """Strip trailing slashes and add ``/v1`` when the URL has no path (``http://host:8000``)."""
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise CodrlError(
            f"base_url: {base_url!r} is not a URL; expected e.g. 'http://127.0.0.1:8000/v1'"
        )
    if parts.path in ("", "/"):
        url += "/v1"
    return url


def _root_cause(exc: BaseException) -> str:
    """A short human description of why a request failed, from the exception chain."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cur, openai.APITimeoutError):
            return "request timed out"
        if isinstance(cur, TimeoutError):
            return "request timed out"
        cur = cur.__cause__ or cur.__context__
    # No well-known cause: use the deepest message in the chain.
    last = exc
    cur = exc
    seen.clear()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        last = cur
        cur = cur.__cause__ or cur.__context__
    msg = str(last) or type(last).__name__
    if "refused" in msg.lower():
        return "connection refused"
    return " ".join(msg.split())


def _is_retryable(exc: BaseException) -> bool:
    """Connection errors, timeouts, HTTP 5xx and 429 are worth retrying; other errors are not."""
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code == 429
    return False


def _one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace and cut long server messages so CodrlError stays one line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _strip_prefix(text: str, prefix: str) -> str:
    """Remove what the model echoed of ``prefix`` from the start of ``text``; else return ``text``.

    The caller puts ``prefix`` back in front, so an echo would appear twice. Besides the whole
    prefix, a model often echoes only its last lines (``"```python\n"`` of ``"<answer>\n```python\n"``,
    skipping the tag): every tail of the prefix that starts a line is tried, longest first.
    """
    if not prefix:
        return text
    body = text.lstrip()
    tails = [prefix] + [prefix[i + 1:] for i, ch in enumerate(prefix) if ch == "\n" and prefix[i + 1:].strip()]
    for tail in tails:
        if body.startswith(tail):
            return body[len(tail) :]
        core = tail.rstrip()
        if core and core != tail and body.startswith(core):
            # The prefix ends in whitespace that the caller re-adds: drop the model's own spacing.
            return body[len(core) :].lstrip()
    return text


def _add_prefix_instruction(messages: list[Message], prefix: str) -> list[Message]:
    """Copy ``messages`` with the begin-with instruction appended to the last user message."""
    out = [dict(m) for m in messages]
    instruction = PREFIX_INSTRUCTION.format(prefix=prefix)
    for m in reversed(out):
        if m.get("role") == "user":
            m["content"] = (m.get("content") or "") + instruction
            return out
    out.append({"role": "user", "content": instruction.lstrip()})
    return out


#: How servers refuse a request over the context window (vLLM: "maximum context length"; llama.cpp:
#: "exceed context window", "exceeds the available context size"; OpenAI: "context_length_exceeded").
_CONTEXT_REFUSAL = re.compile(r"context[ _](?:window|length|size)|maximum context", re.IGNORECASE)


class OpenAIBackend(Backend):
    """A :class:`Backend` that samples from an OpenAI-compatible ``/v1/chat/completions`` server.

    Args:
        base_url: Endpoint root, e.g. ``"http://127.0.0.1:8000/v1"``; ``/v1`` is added when the
            URL has no path.
        model: Model id to request; ``None`` takes the first id listed by ``/v1/models``.
        api_key: Bearer key; ``None`` uses ``$OPENAI_API_KEY``, else ``"EMPTY"`` (what local
            servers such as vLLM and llama.cpp accept).
        timeout: Per-request timeout in seconds.
        max_retries: Extra attempts (with exponential backoff) after a connection error, a
            timeout, an HTTP 5xx or a 429. Other HTTP errors are not retried.
        concurrency: How many requests of one :meth:`generate` call are in flight at once.
        prefill: How ``reply_prefix`` is honoured; see the module docstring.
        chat_template_kwargs: Extra arguments of the server's chat template (e.g.
            ``{"enable_thinking": False}``), sent as ``chat_template_kwargs`` in every request's
            body (vLLM and the llama.cpp server read it); nothing is sent when empty.
        context_window: The model's context window in tokens, when known; by default the
            ``max_model_len`` that ``/v1/models`` lists (vLLM), else unknown. A chat API cannot count
            prompt tokens before sending, so a request over the window is the server's to refuse:
            its "context length" refusal comes back as an ``overflow`` result, not an exception.

    Raises:
        CodrlError: At construction, when the endpoint cannot be reached (after the retries),
            when it lists no model and none was given, or on an invalid argument.
    """

    #: A chat API does not expose the exact prompt/completion token ids.
    token_exact: bool = False
    max_batch_size: int = 64

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        concurrency: int = 8,
        prefill: PrefillMode = "none",
        chat_template_kwargs: Mapping[str, Any] | None = None,
        context_window: int | None = None,
    ) -> None:
        super().__init__(chat_template_kwargs)
        self.context_window = context_window
        if prefill not in _PREFILL_MODES:
            raise bad_choice("prefill", prefill, _PREFILL_MODES)
        if concurrency < 1:
            raise CodrlError(f"concurrency: must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise CodrlError(f"max_retries: must be >= 0, got {max_retries}")
        if timeout <= 0:
            raise CodrlError(f"timeout: must be > 0 seconds, got {timeout}")
        self.base_url = _normalize_base_url(base_url)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.concurrency = int(concurrency)
        self.prefill: PrefillMode = prefill
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "EMPTY")
        # Retries are ours (bounded, logged, one error message at the end), not the client's.
        self._client = openai.OpenAI(
            base_url=self.base_url, api_key=key or "EMPTY", timeout=self.timeout, max_retries=0
        )
        self._use_logprobs = True
        self._logprobs_lock = threading.Lock()
        self.model: str = self._resolve_model(model)

    # ----------------------------------------------------------------------------- plumbing
    def _with_retries(self, what: str, call: Any) -> Any:
        """Run ``call()``; retry retryable failures with backoff; raise CodrlError at the end."""
        attempt = 0
        while True:
            try:
                return call()
            except openai.OpenAIError as exc:
                if _is_retryable(exc) and attempt < self.max_retries:
                    delay = min(_BACKOFF_BASE_S * 2**attempt, _BACKOFF_MAX_S)
                    log.warning(
                        "%s at %s failed (%s); retry %d/%d in %.1f s",
                        what,
                        self.base_url,
                        _root_cause(exc),
                        attempt + 1,
                        self.max_retries,
                        delay,
                    )
                    time.sleep(delay)
                    attempt += 1
                    continue
                raise self._to_codrl_error(what, exc, attempt + 1) from exc

    def _to_codrl_error(self, what: str, exc: openai.OpenAIError, attempts: int) -> CodrlError:
        """Turn a client exception into a one-line user-facing error naming the endpoint."""
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        if isinstance(exc, openai.APIConnectionError):
            cause = _root_cause(exc)
            if cause == "request timed out":
                cause = f"{what} timed out after {self.timeout:g} s"
            else:
                cause = f"{what}: {cause}"
            return CodrlError(
                f"cannot reach OpenAI-compatible endpoint {self.base_url}: {cause}{tries}"
            )
        if isinstance(exc, openai.APIStatusError):
            detail = _one_line(getattr(exc, "message", "") or str(exc))
            return CodrlError(
                f"OpenAI-compatible endpoint {self.base_url} answered HTTP {exc.status_code} "
                f"to {what}{tries}: {detail}"
            )
        return CodrlError(
            f"OpenAI-compatible endpoint {self.base_url}: {what} failed{tries}: "
            f"{_one_line(str(exc)) or type(exc).__name__}"
        )

    def _resolve_model(self, model: str | None) -> str:
        """Probe ``/models`` (fail fast when unreachable) and pick the model id."""
        try:
            page = self._with_retries("listing models", lambda: self._client.models.list())
        except CodrlError as err:
            cause = err.__cause__
            # Some endpoints do not implement /models; an explicit model id is then enough.
            if (
                model is not None
                and isinstance(cause, openai.APIStatusError)
                and cause.status_code in (404, 405)
            ):
                return model
            raise
        listed = getattr(page, "data", None) or []
        if self.context_window is None:  # vLLM lists each model's max_model_len
            for m in listed:
                if (model is None or m.id == model) and isinstance(getattr(m, "max_model_len", None), int):
                    self.context_window = int(m.max_model_len)
                    break
        if model is not None:
            return model
        ids = [m.id for m in listed]
        if not ids:
            raise CodrlError(
                f"OpenAI-compatible endpoint {self.base_url} lists no models at /models; "
                "pass model= explicitly"
            )
        return ids[0]

    def _build_call(self, req: GenRequest) -> tuple[list[Message], dict[str, Any] | None]:
        """The messages and extra body to send for one request, per the prefill mode."""
        prefix = req.reply_prefix
        if not prefix:
            return [dict(m) for m in req.messages], None
        if self.prefill == "continue_final_message":
            msgs = [dict(m) for m in req.messages]
            msgs.append({"role": "assistant", "content": prefix})
            return msgs, {"continue_final_message": True, "add_generation_prompt": False}
        return _add_prefix_instruction(req.messages, prefix), None

    def _create(
        self,
        messages: list[Message],
        req: GenRequest,
        extra: dict[str, Any] | None,
        logprobs: bool,
    ) -> Any:
        """One chat.completions.create call (no retries)."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": req.sampling.temperature,
            "top_p": req.sampling.top_p,
            "max_tokens": req.sampling.max_new_tokens,
        }
        if logprobs:
            # top_logprobs=1: some servers (llama.cpp) only return logprobs when it is set.
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = 1
        if self.chat_template_kwargs:
            extra = {**(extra or {}), "chat_template_kwargs": dict(self.chat_template_kwargs)}
        if extra:
            kwargs["extra_body"] = extra
        return self._client.chat.completions.create(**kwargs)

    def _generate_one(self, req: GenRequest) -> _Reply:
        """Sample one reply, with retries and the logprobs fallback."""
        messages, extra = self._build_call(req)
        use_lp = self._use_logprobs
        try:
            resp = self._with_retries(
                "chat completion", lambda: self._create(messages, req, extra, use_lp)
            )
        except CodrlError as err:
            cause = err.__cause__
            rejected = isinstance(cause, openai.APIStatusError) and cause.status_code in (400, 413, 422)
            if rejected and _CONTEXT_REFUSAL.search(str(cause)):  # over the model's window: not the model's reply
                return _Reply(text="", finish_reason="overflow", logprobs=[], prompt_tokens=0, completion_tokens=0)
            if not (use_lp and rejected):
                raise
            # The server may not support logprobs: retry once without; remember if that works.
            resp = self._with_retries(
                "chat completion", lambda: self._create(messages, req, extra, False)
            )
            with self._logprobs_lock:
                if self._use_logprobs:
                    log.warning(
                        "%s rejected logprobs=True (%s); continuing without logprobs",
                        self.base_url,
                        _one_line(str(cause), 200),
                    )
                self._use_logprobs = False
        return self._parse(resp, req.reply_prefix, req.sampling.stop)

    def _parse(self, resp: Any, prefix: str, stop: tuple[str, ...] = ()) -> _Reply:
        """Extract text, finish reason, logprobs and usage from a ChatCompletion."""
        choices = getattr(resp, "choices", None) or []
        if not choices:
            raise CodrlError(
                f"OpenAI-compatible endpoint {self.base_url} returned no choices for a chat "
                "completion"
            )
        choice = choices[0]
        message = getattr(choice, "message", None)
        text = (getattr(message, "content", None) or "") if message is not None else ""
        if prefix and self.prefill == "none":
            text = _strip_prefix(text, prefix)
        finish = "length" if getattr(choice, "finish_reason", None) == "length" else "stop"
        lps: list[float] = []
        lp_obj = getattr(choice, "logprobs", None)
        content = getattr(lp_obj, "content", None) if lp_obj is not None else None
        if content:
            lps = [float(t.logprob) for t in content if getattr(t, "logprob", None) is not None]
        cut = cut_at_stop(text, stop)
        if cut is not None:
            text, finish, lps = cut, "stop", []  # logprobs of the dropped tail cannot be told apart
        usage = getattr(resp, "usage", None)
        return _Reply(
            text=text,
            finish_reason=finish,
            logprobs=lps,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0) if usage else 0,
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0) if usage else 0,
        )

    # ----------------------------------------------------------------------------- public API
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Sample one reply per request, in order, with up to ``concurrency`` in flight.

        Raises:
            CodrlError: When a request still fails after the bounded retries (unreachable
                endpoint, timeout, HTTP error). Remaining queued requests are cancelled.
        """
        self.stats.generate_calls += 1
        if not requests:
            return []
        pool = ThreadPoolExecutor(
            max_workers=min(self.concurrency, len(requests)), thread_name_prefix="codrl-openai"
        )
        replies: list[_Reply] = []
        try:
            futures: list[Future[_Reply]] = [pool.submit(self._generate_one, r) for r in requests]
            for fut in futures:
                replies.append(fut.result())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        self.stats.requests += len(requests)
        results: list[GenResult] = []
        for rep in replies:
            self.stats.prompt_tokens += rep.prompt_tokens
            self.stats.completion_tokens += rep.completion_tokens
            results.append(
                GenResult(
                    text=rep.text,
                    logprobs=rep.logprobs,
                    finish_reason=rep.finish_reason,
                    token_exact=False,
                )
            )
        return results

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()
