"""What the training proxy records: each lifecycle's tagged model calls, rewards and end, kept token-exact.

A :class:`Recorder` holds the open lifecycles (:class:`LifecycleLog`) behind one lock, since HTTP
handlers and the trainer's thread reach them at once. Bad tags and bad reward or end calls raise a
:class:`ProxyError` that the server turns into an OpenAI-style error body; a failing call never
changes what was recorded before it.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from codrl.backends.base import GenResult, Message
from codrl.rollout.experience import (
    EpisodeRecord,
    EpisodeType,
    Experience,
    LifecycleResult,
    ModelEpisode,
    Turn,
)

#: Feedback of a task whose reward never came.
NO_REWARD_FEEDBACK = "no reward reported"


class ProxyError(Exception):
    """A bad call: HTTP ``status``, a message naming the problem, the request field (``param``) and a ``code``."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


@dataclass
class RecordedCall:
    """One recorded model call: its tags, the request's messages (for drift-free continuation) and its experience."""

    messages: list[Message]
    experience: Experience


@dataclass
class LifecycleLog:
    """One open lifecycle: its pack, the calls recorded so far, the rewards reported and whether it ended."""

    name: str
    pack_id: str
    repeat: int
    env: str
    split: str
    num_tasks: int
    task_ids: list[str]
    calls: list[RecordedCall] = field(default_factory=list)
    rewards: dict[int, float] = field(default_factory=dict)
    feedback: dict[int, str] = field(default_factory=dict)
    overflows: Counter[int] = field(default_factory=Counter)
    ended: threading.Event = field(default_factory=threading.Event)

    def check_position(self, position: int, param: str) -> None:
        """Raise a 400 unless ``position`` is a task of this lifecycle, 0..num_tasks-1."""
        if not 0 <= position < self.num_tasks:
            raise ProxyError(400, f"{param}: {position} is outside the task positions of lifecycle {self.name!r} "
                                  f"(0..{self.num_tasks - 1})", code="position_out_of_range", param=param)

    def check_open(self) -> None:
        """Raise a 409 once the lifecycle has ended."""
        if self.ended.is_set():
            raise ProxyError(409, f"lifecycle {self.name!r} has already ended", code="lifecycle_ended",
                             param="lifecycle")

    def continued_call(self, messages: list[Message]) -> RecordedCall | None:
        """The latest recorded call that ``messages`` continue: its messages, then its reply verbatim."""
        for call in reversed(self.calls):
            n = len(call.messages)
            if (len(messages) > n and messages[:n] == call.messages
                    and messages[n] == {"role": "assistant", "content": call.experience.text}):
                return call
        return None

    def result(self, mode: str, failed: str | None) -> LifecycleResult:
        """The lifecycle as a :class:`LifecycleResult` (see :meth:`Recorder.result`)."""
        groups: dict[tuple[EpisodeType, int], list[RecordedCall]] = {}
        for call in self.calls:
            groups.setdefault((call.experience.episode_type, call.experience.position), []).append(call)
        episodes = [ModelEpisode(kind, position, [c.experience for c in calls],
                                 own_reward=self.rewards.get(position, 0.0) if kind == "solve" else 0.0)
                    for (kind, position), calls in groups.items()]
        hints = {pos: calls[-1].experience.text for (kind, pos), calls in groups.items() if kind == "update"}
        records = []
        for k in range(self.num_tasks):
            solve = groups.get(("solve", k), [])
            reward = self.rewards.get(k, 0.0)
            feedback = failed if failed is not None else self.feedback.get(k, NO_REWARD_FEEDBACK)
            turns = [Turn(observation=c.messages[-1]["content"], reply=c.experience.text, feedback="", valid=True,
                          reward=0.0) for c in solve]
            if turns:
                turns[-1].feedback, turns[-1].reward = feedback, reward
            records.append(EpisodeRecord(
                position=k, task_id=self.task_ids[k], hints_in=hints.get(k - 1, ""), turns=turns,
                env_reward=reward, reward=reward, success=reward > 0.0, format_valid=True, feedback=feedback,
                completion_tokens=sum(len(c.experience.completion_ids) for c in solve), hints_out=hints.get(k),
                env_error=failed is not None, context_overflows=self.overflows[k]))
        return LifecycleResult(pack_id=self.pack_id, env=self.env, split=self.split, repeat=self.repeat, mode=mode,
                               episodes=records, model_episodes=episodes)


class Recorder:
    """The open lifecycles of a proxy, thread-safe: tagging, recording, rewards, ends and results."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[str, LifecycleLog] = {}

    def open(self, log: LifecycleLog) -> None:
        """Start recording ``log``; a lifecycle name may be open once at a time."""
        if log.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {log.num_tasks}")
        if len(log.task_ids) != log.num_tasks:
            raise ValueError(f"task_ids: {len(log.task_ids)} ids for num_tasks={log.num_tasks}")
        with self._lock:
            if log.name in self._logs:
                raise ValueError(f"lifecycle {log.name!r} is already open")
            self._logs[log.name] = log

    def close(self, name: str) -> None:
        """Forget lifecycle ``name`` (unknown names are ignored)."""
        with self._lock:
            self._logs.pop(name, None)

    def get(self, name: str) -> LifecycleLog:
        """The open lifecycle ``name``; a 404 when there is none."""
        with self._lock:
            log = self._logs.get(name)
        if log is None:
            raise ProxyError(404, f"unknown lifecycle {name!r}: it was never opened or is already closed",
                             code="lifecycle_not_found", param="lifecycle")
        return log

    def tag(self, name: str, episode: EpisodeType | None, position: int | None) -> tuple[LifecycleLog, EpisodeType, int]:
        """Resolve a call's tags: a missing episode is a solve, a missing position the lifecycle's current
        one (the number of rewards reported so far)."""
        log = self.get(name)
        with self._lock:
            log.check_open()
            pos = len(log.rewards) if position is None else position
            log.check_position(pos, "codrl_position")
        return log, episode or "solve", pos

    def continued_call(self, log: LifecycleLog, messages: list[Message]) -> RecordedCall | None:
        """The latest call of ``log`` that ``messages`` continue (:meth:`LifecycleLog.continued_call`)."""
        with self._lock:
            return log.continued_call(messages)

    def record(self, log: LifecycleLog, episode: EpisodeType, position: int, messages: list[Message],
               result: GenResult, policy_version: int) -> None:
        """Append one sampled call; an ``overflow`` result is counted against its position instead."""
        with self._lock:
            if result.finish_reason == "overflow":
                log.overflows[position] += 1
                return
            turn = sum(1 for c in log.calls
                       if (c.experience.episode_type, c.experience.position) == (episode, position))
            log.calls.append(RecordedCall(list(messages), Experience(
                pack_id=log.pack_id, repeat=log.repeat, episode_type=episode, position=position, turn=turn,
                prompt_ids=list(result.prompt_ids), completion_ids=list(result.completion_ids),
                logprobs=list(result.logprobs), text=result.text, finish_reason=result.finish_reason,
                token_exact=result.token_exact, policy_version=policy_version, env=log.env)))

    def reward(self, name: str, position: int, reward: float, feedback: str | None) -> None:
        """Record task ``position``'s reward (once) and feedback."""
        log = self.get(name)
        with self._lock:
            log.check_open()
            log.check_position(position, "position")
            if position in log.rewards:
                raise ProxyError(409, f"position: lifecycle {name!r} already has a reward for position {position}",
                                 code="reward_already_reported", param="position")
            log.rewards[position] = reward
            if feedback is not None:
                log.feedback[position] = feedback

    def end(self, name: str) -> int:
        """End lifecycle ``name`` (once); returns how many calls it recorded."""
        log = self.get(name)
        with self._lock:
            log.check_open()
            log.ended.set()
            return len(log.calls)

    def wait(self, name: str, timeout: float | None) -> bool:
        """Block until lifecycle ``name`` ends or ``timeout`` seconds pass; True when it ended."""
        return self._known(name).ended.wait(timeout)

    def result(self, name: str, mode: str, failed: str | None) -> LifecycleResult:
        """Lifecycle ``name`` as a :class:`LifecycleResult`: one record per task position (its reported
        reward, else 0.0 and :data:`NO_REWARD_FEEDBACK`; every one an ``env_error`` with feedback
        ``failed`` when given) and its calls as model episodes grouped by (episode type, position) in
        call order; a solve episode's own reward is its position's reward, an update's 0.0."""
        log = self._known(name)
        with self._lock:
            return log.result(mode, failed)

    def _known(self, name: str) -> LifecycleLog:
        """The open lifecycle ``name`` for in-process callers (a KeyError naming it, not an HTTP error)."""
        with self._lock:
            if name not in self._logs:
                raise KeyError(f"lifecycle {name!r} is not open (open_lifecycle first)")
            return self._logs[name]
