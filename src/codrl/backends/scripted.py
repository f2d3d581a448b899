"""Engines without a model: each reply is computed by code, for tests and for measuring environments.

:class:`FunctionBackend` answers every request with ``reply(request)``: the one-line engine of a
test. :class:`ScriptedBackend` plays a scripted agent (:mod:`codrl.envs.scripted`) through the real
lifecycle runner. It keeps one state per session (one live lifecycle) built from what it sees:

* a **solve turn** is a request whose system prompt is not a context step's. The first turn of a
  task (system + one user message) starts a fresh agent from ``make_agent(pack, rng)`` and reads
  the hints and the observation off :func:`~codrl.rollout.prompts.solve_user_message` (the hints
  are the ones this session's last update wrote, or the ones the context kept); a later turn must
  continue this backend's own last reply, and its last user message is the observation.
* a **context update** is a request whose system prompt is
  :data:`~codrl.rollout.prompts.UPDATE_SYSTEM` (the ``cod`` context). Everything in its prompt is
  known to the backend except each turn's feedback and the reward (shown only where the
  environment shows it): they are read between the pieces of the prompt that
  :func:`~codrl.rollout.prompts.update_messages` renders around them. The agent's
  :meth:`~codrl.envs.scripted.base.ScriptedAgent.write_hints` becomes the reply the context
  parses: a ``Hints:`` block, or the delimited block with ``update_reasoning``.

The ``nohint`` context has no update step, so every task starts with empty hints; the ``curator``
context asks for list operations, which a scripted agent does not write (a clear error). Results
carry text only (``token_exact`` False): the backend measures, it does not train.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from codrl.backends.base import Backend, GenRequest, GenResult
from codrl.envs.base import Pack
from codrl.envs.scripted.base import AgentFactory, ScriptedAgent, TurnText
from codrl.rollout.config import RolloutConfig
from codrl.rollout.curator import CURATOR_SYSTEM
from codrl.rollout.experience import Turn
from codrl.rollout.prompts import (
    HINTS_END,
    HINTS_START,
    NO_HINT,
    UPDATE_REASONING_INSTRUCTIONS,
    UPDATE_SYSTEM,
    parse_hints,
    parse_hints_block,
    solve_user_message,
    update_messages,
)

#: The ``Hints:`` header of an update reply (the default prefill; written where a request has another).
HINTS_HEADER: str = RolloutConfig.model_fields["update_reply_prefix"].default
#: A reward whose rendering marks where the update prompt shows the reward.
_REWARD_PROBE = 0.123456789
_SLOT_RE = re.compile("\x00\\d+\x00")


def _slot(i: int) -> str:
    """A placeholder no prompt contains, standing for the i-th unknown text of a rendered prompt."""
    return f"\x00{i}\x00"


def _between(text: str, pieces: list[str]) -> list[str] | None:
    """The texts between consecutive ``pieces`` when ``text`` starts with the first and holds the
    rest in order (each found at its first occurrence); None when one is missing."""
    if not text.startswith(pieces[0]):
        return None
    pos, out = len(pieces[0]), []
    for piece in pieces[1:]:
        end = text.find(piece, pos)
        if end < 0:
            return None
        out.append(text[pos:end])
        pos = end + len(piece)
    return out


class FunctionBackend(Backend):
    """A text engine whose reply to each request is ``reply(request)``; it keeps every batch it served."""

    token_exact = False

    def __init__(self, reply: Callable[[GenRequest], str]) -> None:
        super().__init__()
        self.reply = reply
        #: Every batched call, in order (:attr:`requests` flattens them).
        self.calls: list[list[GenRequest]] = []

    @property
    def requests(self) -> list[GenRequest]:
        """Every request served, in order."""
        return [r for call in self.calls for r in call]

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        self.calls.append(list(requests))
        self.stats.generate_calls += 1
        self.stats.requests += len(requests)
        return [GenResult(text=self.reply(req), token_exact=False) for req in requests]


@dataclass
class _Task:
    """The task a session is playing: its agent, the hints it was given and its turns so far."""

    agent: ScriptedAgent
    hints: str
    observations: list[str] = field(default_factory=list)
    #: The agent's replies, and the same replies as the runner records them (reply prefix included).
    replies: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)


@dataclass
class _Session:
    """What one lifecycle has shown the backend: the environment's system prompt, the hints the next
    task may carry (most likely first) and the task being played."""

    system_prompt: str = ""
    hints: tuple[str, ...] = ("",)
    task: _Task | None = None


class ScriptedBackend(FunctionBackend):
    """Plays the lifecycles of one ``pack`` with a scripted agent, a fresh one per task from
    ``make_agent(pack, rng)``: the only memory across tasks is the hints text."""

    def __init__(self, make_agent: AgentFactory, pack: Pack, rng: np.random.Generator) -> None:
        super().__init__(self._answer)
        self.make_agent = make_agent
        self.pack = pack
        self.rng = rng
        self._sessions: dict[str, _Session] = {}

    def release(self, session: str) -> None:
        self._sessions.pop(session, None)

    def _answer(self, req: GenRequest) -> str:
        if req.session is None:
            raise ValueError("ScriptedBackend: request.session is None; the lifecycle runner sets one per lifecycle")
        session = self._sessions.setdefault(req.session, _Session())
        system = req.messages[0]["content"]
        if system == CURATOR_SYSTEM:
            raise ValueError("ScriptedBackend: rollout.mode 'curator' is not allowed (a scripted agent writes "
                             "hints, not lesson operations); allowed values: 'cod', 'nohint'")
        if system == UPDATE_SYSTEM:
            return self._update(session, req)
        return self._solve(session, req)

    def _solve(self, session: _Session, req: GenRequest) -> str:
        if len(req.messages) == 2:  # a task's first turn
            hints, observation = self._split_first(session, req.messages[1]["content"])
            session.system_prompt = req.messages[0]["content"]
            session.task = _Task(self.make_agent(self.pack, self.rng), hints)
        else:
            if session.task is None or req.messages[-2]["content"] != session.task.sent[-1]:
                raise ValueError(f"ScriptedBackend: a solve request of session {req.session!r} does not continue "
                                 "this backend's last reply")
            observation = req.messages[-1]["content"]
        task = session.task
        reply = task.agent.act(task.hints, observation)
        text = reply.removeprefix(req.reply_prefix)  # a reply without the prefill is sent after it, as a model's
        task.observations.append(observation)
        task.replies.append(reply)
        task.sent.append(req.reply_prefix + text)
        return text

    @staticmethod
    def _split_first(session: _Session, message: str) -> tuple[str, str]:
        """The hints and the observation of a task's first user message."""
        for hints in session.hints:
            head = solve_user_message(hints, "")
            if message.startswith(head):
                return hints, message[len(head):]
        return "", message

    def _update(self, session: _Session, req: GenRequest) -> str:
        task = session.task
        if task is None:
            raise ValueError(f"ScriptedBackend: an update request of session {req.session!r} before any solve turn")
        reasoning = UPDATE_REASONING_INSTRUCTIONS in req.messages[-1]["content"]
        feedback, reward = self._read_update(session.system_prompt, task, req.messages[-1]["content"], reasoning)
        transcript = [TurnText(o, r, f) for o, r, f in zip(task.observations, task.replies, feedback, strict=True)]
        hints = task.agent.write_hints(task.hints, transcript, reward)
        if reasoning:
            text = f"{HINTS_START}\n{hints}\n{HINTS_END}"
            parsed = parse_hints_block(text)
        else:
            text = (HINTS_HEADER + hints).removeprefix(req.reply_prefix)
            parsed = parse_hints(req.reply_prefix + text)
        # The context takes the parsed hints, or keeps the old ones (or clears them) if it finds them invalid.
        session.hints = tuple(dict.fromkeys(h for h in (parsed, task.hints, NO_HINT, "") if h is not None))
        session.task = None
        return text

    @staticmethod
    def _read_update(system_prompt: str, task: _Task, content: str, reasoning: bool) -> tuple[list[str], float | None]:
        """Each turn's feedback and the reward (None: not shown) of an update prompt about ``task``."""
        n = len(task.sent)
        turns = [Turn(observation="", reply=reply, feedback=_slot(i), valid=True, reward=0.0)
                 for i, reply in enumerate(task.sent)]

        def pieces(reward: float | None) -> list[str]:
            msgs = update_messages(system_prompt, task.hints, task.observations[0], turns, reward, _slot(n),
                                   reasoning=reasoning)
            return _SLOT_RE.split(msgs[-1]["content"])

        shown = pieces(_REWARD_PROBE)
        head, _, tail = shown[n].rpartition(f"{_REWARD_PROBE:g}")  # piece n: last feedback .. final feedback
        values = _between(content, shown[:n] + [head, tail] + shown[n + 1:])
        if values is not None:
            return values[:n], float(values[n])
        values = _between(content, pieces(None))
        if values is None:
            raise ValueError("ScriptedBackend: the update prompt does not match the task this session played "
                             "(rollout.mode must be 'cod' or 'nohint')")
        return values[:n], None
