"""A person in the model's seat: the backend behind ``codrl play``.

:class:`HumanBackend` implements :class:`~codrl.backends.base.Backend` by printing each request's
chat and reading the reply from a text stream. :func:`play_pack` drives it with the real
:class:`~codrl.rollout.lifecycle.LifecycleRunner` (one lifecycle, one repeat), so the person sees
exactly the prompts a model is given: the system prompt, the solve prompt with the current
``Hints:`` block above the task, the environment's next observation after each reply, and the
update-context prompt in which they rewrite the hints for the next task.

What the person types is handled as a model's sampled text: it follows the reply prefix (the
environment's, e.g. ``<answer>Direction ``, and ``Hints:`` in update-context episodes), and a
solve reply ends at the first of the request's stop strings, as generation would stop there; a
reply without one gets the first stop string appended. Results carry no token ids
(``token_exact`` False), like any text-only engine.

Lines starting with ``##`` and ``[sent]`` are the game's own notes: the model never sees them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TextIO

from codrl.backends.base import Backend, GenRequest, GenResult, Message, cut_at_stop
from codrl.envs.base import CoDEnv, Episode, Pack, StepResult, Task
from codrl.rollout.config import RolloutConfig
from codrl.rollout.experience import LifecycleResult
from codrl.rollout.lifecycle import Job, LifecycleRunner
from codrl.rollout.prompts import UPDATE_SYSTEM, parse_hints

#: A line holding only this ends a typed reply (end of input ends it too).
END_LINE = "."


class EndOfInput(Exception):
    """The input stream ended before a reply was typed: the game is over."""


def apply_stop(text: str, stop: tuple[str, ...]) -> str:
    """``text`` cut right after its first stop string, or with ``stop[0]`` appended if it has none."""
    cut = cut_at_stop(text, stop)
    if cut is not None:
        return cut
    return text + stop[0] if stop and stop[0] else text


class HumanBackend(Backend):
    """Prints each request and reads the reply from ``stdin``; one request at a time.

    A request that continues the chat shown last prints only its new messages (the assistant
    message just typed is skipped, the person has seen it); any other request prints its whole
    chat, with a system prompt shown before abbreviated. ``echo`` (default:
    when ``stdin`` is not a terminal) prints every reply as sent, so a piped game reads as a
    transcript. ``check_update`` may return a warning about an update-context reply (e.g. hints
    that will be rejected). Raises :class:`EndOfInput` when the input ends before a reply.
    """

    max_batch_size = 1
    token_exact = False

    def __init__(self, stdin: TextIO, stdout: TextIO, *, echo: bool | None = None,
                 check_update: Callable[[str], str | None] | None = None) -> None:
        super().__init__()
        self.stdin = stdin
        self.out = stdout
        self.echo = (not _isatty(stdin)) if echo is None else echo
        self.check_update = check_update
        self._shown: list[Message] = []
        self._systems: set[str] = set()
        self._sent: str | None = None

    def _print(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        self.stats.generate_calls += 1
        results = []
        for req in requests:
            self.stats.requests += 1
            results.append(self._ask(req))
        return results

    def _show(self, messages: list[Message]) -> None:
        n = len(self._shown)
        continued = 0 < n < len(messages) and messages[:n] == self._shown
        if not continued and messages and messages[0]["content"] == UPDATE_SYSTEM:
            self._print("\n## Update the hints: what you write after 'Hints:' is the hints block of the next task.")
        for m in messages[n:] if continued else messages:
            if continued and m["role"] == "assistant" and m["content"] == self._sent:
                continue
            if m["role"] == "system" and m["content"] in self._systems:
                self._print("=== system === (the same text as shown above)")
                continue
            self._print(f"=== {m['role']} ===\n{m['content']}")
            if m["role"] == "system":
                self._systems.add(m["content"])
        self._shown = list(messages)

    def _read(self) -> str:
        lines: list[str] = []
        while True:
            line = self.stdin.readline()
            if not line:
                if not lines:
                    raise EndOfInput
                break
            if line.strip() == END_LINE:
                break
            lines.append(line.rstrip("\r\n"))
        return "\n".join(lines)

    def _ask(self, req: GenRequest) -> GenResult:
        self._show(req.messages)
        self._print(f"=== assistant (you: finish with a line holding only '{END_LINE}') ===")
        self._print(req.reply_prefix, end="")
        typed = self._read()
        text = apply_stop(typed, req.sampling.stop)
        reply = req.reply_prefix + text
        if self.echo or text != typed:
            if self.echo and req.reply_prefix and not req.reply_prefix.endswith("\n"):
                self._print()
            self._print(f"[sent] {reply}")
        self._sent = reply
        is_update = bool(req.messages) and req.messages[0]["content"] == UPDATE_SYSTEM
        if is_update and self.check_update is not None:
            warning = self.check_update(reply)
            if warning:
                self._print(f"## note: {warning}")
        return GenResult(text=text, prompt_ids=[], completion_ids=[], logprobs=[], finish_reason="stop",
                         token_exact=False)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _NarratedEpisode(Episode):
    def __init__(self, inner: Episode, on_done: Callable[[StepResult], None]) -> None:
        self.inner = inner
        self.on_done = on_done

    def reset(self) -> str:
        return self.inner.reset()

    def step(self, reply: str) -> StepResult:
        result = self.inner.step(reply)
        if result.done:
            self.on_done(result)
        return result


class NarratedEnv(CoDEnv):
    """``env`` unchanged for the lifecycle, announcing each task and its outcome on ``out``.

    Every attribute the lifecycle reads (name, prompts, reply prefix, stop strings, turns, the
    lifecycle state) is the wrapped environment's. ``outcomes`` collects the environment reward of
    every finished task, in order.
    """

    def __init__(self, env: CoDEnv, out: TextIO, pack_size: int) -> None:
        self.env = env
        self.out = out
        self.pack_size = pack_size
        self.outcomes: list[float] = []
        for attr in ("name", "system_prompt", "reply_prefix", "stop_strings", "max_turns", "chance_reward",
                     "reward_range", "success_threshold", "reward_visible"):
            setattr(self, attr, getattr(env, attr))

    def sample_world(self, rng: Any) -> dict[str, Any]:
        return self.env.sample_world(rng)

    def sample_task(self, world: dict[str, Any], rng: Any) -> dict[str, Any]:
        return self.env.sample_task(world, rng)

    def new_state(self, pack: Pack) -> Any:
        return self.env.new_state(pack)

    def start(self, pack: Pack, task: Task, state: Any = None) -> Episode:
        k = task.position + 1
        self.out.write(f"\n## Task {k} of {self.pack_size}\n")
        self.out.flush()

        def on_done(step: StepResult) -> None:
            self.outcomes.append(float(step.reward))
            if not self.reward_visible:  # the model never learns this score: neither does its stand-in
                outcome = "its score is hidden from the model (shown when the game is over)"
            else:
                verdict = "solved" if step.reward >= self.success_threshold else "not solved"
                outcome = f"reward {step.reward:g} ({verdict})"
            if not step.valid:
                outcome += ", the reply did not parse"
            self.out.write(f"\n## Task {k} over: {outcome}.\n"
                           f"## Feedback: {step.feedback}\n")
            self.out.flush()

        return _NarratedEpisode(self.env.start(pack, task, state), on_done)


def _print_result(result: LifecycleResult, chance: float | None, out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Rewards by pack position")
    for col in ("position", "reward", "env reward", "solved", "format valid", "hints in (chars)"):
        table.add_column(col, justify="right")
    for e in result.episodes:
        table.add_row(str(e.position), f"{e.reward:g}", f"{e.env_reward:g}", "yes" if e.success else "no",
                      "yes" if e.format_valid else "no", str(len(e.hints_in)))
    console = Console(file=out, highlight=False)
    console.print(table)
    console.print("reward = env reward minus the length penalty of over-long replies, as in training.")
    line = "per-position rewards: " + " ".join(f"{r:g}" for r in result.task_rewards)
    if chance is not None:
        line += f"   (chance level {chance:.3g})"
    console.print(line)


def play_pack(env: CoDEnv, pack: Pack, cfg: RolloutConfig, stdin: TextIO, stdout: TextIO, *,
              reveal: bool = False, echo: bool | None = None) -> LifecycleResult | None:
    """Let a person play one lifecycle of ``pack``; return it, or None when the input ended early.

    ``cfg`` is used as given (``repeats`` and ``max_concurrent`` are forced to 1). ``reveal``
    prints ``pack.world`` as JSON at the end, also after an early end of input.
    """
    cfg = cfg.model_copy(update={"repeats": 1, "max_concurrent": 1, "pack_size": len(pack), "ralph": "none"})

    def check_update(reply: str) -> str | None:
        hints = parse_hints(reply)
        if hints is None:
            return "no 'Hints:' block found: the previous hints stay"
        if len(hints) < cfg.hint_min_chars:
            return f"hints shorter than {cfg.hint_min_chars} characters are rejected: the previous hints stay"
        return None

    def say(text: str) -> None:
        stdout.write(text + "\n")
        stdout.flush()

    prefix = env.reply_prefix if cfg.use_reply_prefix else ""
    say(f"## codrl play {env.name}: pack {pack.pack_id}, {len(pack)} tasks, mode {cfg.mode}.")
    say("## You are the model: every '=== role ===' block below is exactly what the model is given.")
    say(f"## Type your reply after the prompt and finish it with a line holding only '{END_LINE}'. "
        "End of input (Ctrl-D) quits.")
    if prefix:
        say(f"## Solve replies start with the reply prefix {prefix!r}: type what follows it.")
    if env.stop_strings:
        say(f"## A solve reply ends at {env.stop_strings[0]!r}, as generation stops there; "
            "it is added when you leave it out.")
    if cfg.mode == "cod" and len(pack) > 1:
        say("## Between tasks you rewrite the hints that the next task's prompt shows.")
    backend = HumanBackend(stdin, stdout, echo=echo, check_update=check_update)
    narrated = NarratedEnv(env, stdout, len(pack))
    result: LifecycleResult | None = None
    try:
        (result,) = LifecycleRunner(backend, cfg).run([Job(narrated, pack, 0)])
    except EndOfInput:
        done = narrated.outcomes
        say(f"\n## End of input: game over after {len(done)} of {len(pack)} tasks"
            + (f" (env rewards: {' '.join(f'{r:g}' for r in done)})." if done else "."))
    else:
        say("")
        _print_result(result, env.chance_reward, stdout)
    if reveal:
        say("\n## The hidden world (pack.world):")
        say(json.dumps(pack.world, indent=2, sort_keys=True))
    return result
