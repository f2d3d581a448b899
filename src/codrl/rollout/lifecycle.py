"""Lifecycle rollouts: play packs of related tasks, interleaving solve and update-context episodes.

Each lifecycle is a generator (:func:`play_lifecycle`) that *yields* a :class:`GenRequest` whenever
it needs the model and receives the :class:`GenResult`. :class:`LifecycleRunner` drives many such
generators at once: every round it collects the pending request of every active lifecycle and
sends them to the backend in one batched call, so a turn never waits for an unrelated lifecycle to
finish its task, and the model sees large batches.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from codrl.backends.base import Backend, GenRequest, GenResult, SamplingParams
from codrl.envs.base import CoDEnv, Pack, StepResult, expand_ralph, ralph_pack
from codrl.rollout.config import RolloutConfig, result_mode
from codrl.rollout.contexts import make_context
from codrl.rollout.experience import EpisodeRecord, Experience, LifecycleResult, ModelEpisode, Turn
from codrl.rollout.prompts import ramp, solve_user_message

LifecycleGen = Generator[GenRequest, GenResult, LifecycleResult]
T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    """One lifecycle to play: a pack of an environment, and which repeat it is."""

    env: CoDEnv
    pack: Pack
    repeat: int


def _experience(pack: Pack, repeat: int, kind: str, position: int, turn: int, res: GenResult) -> Experience:
    return Experience(pack_id=pack.pack_id, repeat=repeat, episode_type=kind, position=position,  # type: ignore[arg-type]
                      turn=turn, prompt_ids=res.prompt_ids, completion_ids=res.completion_ids,
                      logprobs=res.logprobs, text=res.text, finish_reason=res.finish_reason,
                      token_exact=res.token_exact, env=pack.env)


def turn_penalty(reward: float, turns_used: int, max_turns: int, coef: float) -> float:
    """The efficiency term of a solve: ``max(0, r - coef * turns_used / max_turns)`` when ``r > 0``.

    A failure (``r <= 0``) is returned unchanged, so the term never turns a failure into a
    penalty; ``max_turns`` below 1 counts as 1.
    """
    if reward <= 0.0 or coef == 0.0:
        return reward
    return max(0.0, reward - coef * turns_used / max(1, max_turns))


def solve_reward(env_reward: float, turns_used: int, max_turns: int, longest_reply: int,
                 cfg: RolloutConfig) -> float:
    """The task reward credit assignment uses, from the environment's reward ``r``::

        r' = max(0, r - turn_penalty_coef * turns_used / max_turns)   if r > 0, else r
        reward = r' - length_penalty_coef * ramp(longest_reply, length_penalty_start, length_penalty_end)

    ``longest_reply`` is the longest reply of the episode in tokens; the length ramp (codrl's own)
    applies to every episode, the turn term (the reference's) only to rewarded ones.
    """
    reward = turn_penalty(env_reward, turns_used, max_turns, cfg.turn_penalty_coef)
    return reward - cfg.length_penalty_coef * ramp(longest_reply, cfg.length_penalty_start, cfg.length_penalty_end)


def env_error_text(error: Exception, doing: str) -> str:
    """Feedback of an episode whose environment raised: the exception's type only. Its message stays
    out of every model-visible text, since an environment's message may quote its hidden world."""
    if isinstance(error, EnvTimeout):
        return f"The environment did not answer within {error.seconds:g}s while {doing}. The task ended with reward 0."
    return f"The environment failed while {doing} ({type(error).__name__}). The task ended with reward 0."


#: Feedback of a solve episode whose next model call would pass the context window.
CONTEXT_FULL = ("Context full: the conversation and the reply budget would pass the model's context window. "
                "The task ended with reward 0.")


class EnvTimeout(Exception):
    """An environment call ran past ``rollout.env_step_timeout_s`` and was abandoned."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within {seconds:g}s")
        self.seconds = seconds


def call_env(fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
    """``fn(*args)``, or :class:`EnvTimeout` when it runs past ``timeout_s`` (None: no limit).

    With a limit the call runs in a daemon thread. An abandoned call cannot be stopped (Python has
    no way to kill a thread): its thread runs on until the call returns, and a daemon thread never
    keeps the process from exiting. Its episode has ended by then, so what it returns is dropped.
    """
    if timeout_s is None:
        return fn(*args)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread as it is
            box["error"] = e

    worker = threading.Thread(target=target, name="codrl-env-call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise EnvTimeout(timeout_s)
    if "error" in box:
        raise box["error"]
    return box["value"]


def play_lifecycle(env: CoDEnv, pack: Pack, repeat: int, cfg: RolloutConfig, mode: str = "cod",
                   session: str | None = None, seed: int | None = None, *,
                   on_episode: Callable[[EpisodeRecord], None] | None = None) -> LifecycleGen:
    """Play one pass through ``pack``: solve task 0 -> update context -> solve task 1 -> ...

    Yields generation requests and returns the finished :class:`LifecycleResult`. The context
    between tasks is a :class:`~codrl.rollout.contexts.Context` of kind ``mode`` (``cod``,
    ``nohint``, ``curator`` or an import path): it writes the update step's prompt and turns the
    reply into the next task's hints; a context without an update step (``nohint``) solves every
    task with no hints. Updates are experiences of type ``"update"`` with their own reward. The context step is
    told the task's reward only when ``env.reward_visible``; otherwise no prompt of the lifecycle
    contains it. ``on_episode`` is
    called with each task's record as soon as its episode is complete, after the update step
    that followed it (so ``record.hints_out`` is final). Every request
    carries ``session`` (default: a fresh id), so an engine can keep this lifecycle's KV cache
    between its calls; whoever drives the generator releases it at the end. With ``seed``, the
    lifecycle's n-th request samples from stream ``seed + n * 7919``: what a lifecycle samples then
    depends on nothing but its seed (not on batching, concurrency or the order results come back).
    """
    calls = 0

    def request(messages: list[dict[str, str]], params: SamplingParams, prefix: str) -> GenRequest:
        nonlocal calls
        calls += 1
        req_seed = None if seed is None else (seed + (calls - 1) * 7919) % 2**62
        return GenRequest(messages, params, prefix, session=session, seed=req_seed, max_context=cfg.max_context)

    session = session or f"{pack.pack_id}/{repeat}/{uuid.uuid4().hex[:12]}"
    prefix = env.reply_prefix if cfg.use_reply_prefix else ""
    solve_params = SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens_solve, tuple(env.stop_strings))
    update_params = SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens_update)
    context = make_context(mode, cfg)  # this lifecycle's own context state
    episodes: list[EpisodeRecord] = []
    model_episodes: list[ModelEpisode] = []
    last = len(pack.tasks) - 1
    state = env.new_state(pack)  # this lifecycle's own world state; dropped when the generator ends
    for task in pack.tasks:
        k = task.position
        try:
            episode = call_env(env.start, pack, task, state, timeout_s=cfg.env_step_timeout_s)
            first_obs = call_env(episode.reset, timeout_s=cfg.env_step_timeout_s)
        except Exception as e:  # noqa: BLE001 - the environment's bug, not the model's: see on_env_error
            if cfg.on_env_error == "raise":
                raise
            record = EpisodeRecord(position=k, task_id=task.task_id, hints_in=context.hints, turns=[], env_reward=0.0,
                                   reward=0.0, success=False, format_valid=True,
                                   feedback=env_error_text(e, "starting the task"), completion_tokens=0,
                                   env_error=True)
            episodes.append(record)  # no episode to learn from; the context carries over unchanged
            if on_episode is not None:
                on_episode(record)
            continue
        messages = [{"role": "system", "content": env.system_prompt},
                    {"role": "user", "content": solve_user_message(context.hints, first_obs)}]
        turns: list[Turn] = []
        solve_exps: list[Experience] = []
        env_reward, feedback, all_valid, longest, total = 0.0, "", True, 0, 0
        env_failed = False
        overflows = 0
        for turn in range(cfg.max_turns_cap):
            res = yield request(messages, solve_params, prefix)
            if res.finish_reason == "overflow":  # not sent: the episode ends here, as a failure
                overflows += 1
                break
            reply = prefix + res.text
            try:
                step = call_env(episode.step, reply, timeout_s=cfg.env_step_timeout_s)
            except Exception as e:  # noqa: BLE001 - see on_env_error
                if cfg.on_env_error == "raise":
                    raise
                env_failed = True
                step = StepResult(None, 0.0, True, env_error_text(e, "scoring this reply"), True,
                                  {"event": "env_error"})
            exp = _experience(pack, repeat, "solve", k, turn, res)
            solve_exps.append(exp)
            n_tok = len(res.completion_ids) if res.token_exact else len(res.text.split())
            longest, total = max(longest, n_tok), total + n_tok
            all_valid = all_valid and step.valid
            turns.append(Turn(observation=messages[-1]["content"], reply=reply, feedback=step.feedback,
                              valid=step.valid, reward=step.reward))
            env_reward, feedback = step.reward, step.feedback
            if step.done:
                break
            messages = messages + [{"role": "assistant", "content": reply},
                                   {"role": "user", "content": step.observation or step.feedback}]
        else:
            env_reward, feedback = 0.0, f"Turn cap of {cfg.max_turns_cap} reached. Task failed."
        if overflows:
            env_reward, feedback = 0.0, CONTEXT_FULL
        reward = solve_reward(env_reward, len(turns), env.max_turns, longest, cfg)
        if solve_exps:
            model_episodes.append(ModelEpisode("solve", k, solve_exps, own_reward=reward))
        record = EpisodeRecord(position=k, task_id=task.task_id, hints_in=context.hints, turns=turns,
                               env_reward=env_reward, reward=reward, success=env_reward >= env.success_threshold,
                               format_valid=all_valid, feedback=feedback, completion_tokens=total,
                               env_error=env_failed, context_overflows=overflows)
        episodes.append(record)
        shown_reward = env_reward if env.reward_visible else None  # a hidden score never reaches the model
        if context.updates and k < last:
            msgs, update_prefix = context.update_request(env.system_prompt, first_obs, turns, shown_reward, feedback)
            res = yield request(msgs, update_params, update_prefix)
            if res.finish_reason == "overflow":  # not sent: the update is skipped, the hints stay
                record.context_overflows += 1
                record.hints_out = context.hints
            else:
                n_tok = len(res.completion_ids) if res.token_exact else len(res.text.split())
                upd = context.apply(res.text, n_tok)
                model_episodes.append(ModelEpisode("update", k, [_experience(pack, repeat, "update", k, 0, res)],
                                                   own_reward=upd.own_reward))
                record.hints_out, record.hint_reward, record.hint_valid = context.hints, upd.own_reward, upd.valid
                for key, value in upd.details.items():
                    setattr(record, key, value)
        if on_episode is not None:
            on_episode(record)
    return LifecycleResult(pack_id=pack.pack_id, env=env.name, split=pack.split, repeat=repeat, mode=result_mode(mode),
                           episodes=episodes, model_episodes=model_episodes, reward_visible=env.reward_visible)


def make_jobs(envs_and_packs: Sequence[tuple[CoDEnv, Pack]], cfg: RolloutConfig) -> list[Job]:
    """Expand packs into jobs: Ralph-loop variants applied, each pack repeated ``cfg.repeats`` times."""
    jobs: list[Job] = []
    for env, pack in envs_and_packs:
        if cfg.ralph == "first":
            variants = [ralph_pack(pack)]
        elif cfg.ralph == "expand":
            variants = expand_ralph(pack)
        else:
            variants = [pack]
        for p in variants:
            jobs.extend(Job(env, p, r) for r in range(cfg.repeats))
    return jobs


def job_seeds(n: int, seed: int | None = None) -> list[int]:
    """One sampling seed per job: from a generator seeded with ``seed``, else the global torch RNG."""
    import torch  # here: playing a lifecycle (an outside program driving the generator) needs no torch

    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**62, (n,), generator=gen).tolist()


def seeds_for(jobs: Sequence[Job], seeds: Sequence[int] | None) -> Sequence[int]:
    """``seeds`` checked to hold one per job, or drawn from the global torch RNG in job order."""
    if seeds is None:
        return job_seeds(len(jobs))
    if len(seeds) != len(jobs):
        raise ValueError(f"{len(seeds)} seeds for {len(jobs)} jobs")
    return seeds


class LifecycleRunner:
    """Plays many lifecycles concurrently, batching their model calls.

    Up to ``cfg.max_concurrent`` lifecycles are live at once; their requests go to
    :meth:`Backend.serve`, which returns each result as soon as it is ready, so a lifecycle's next
    request can start while others are still decoding (continuous batching in the transformers
    backend; rounds of batched calls elsewhere). A finished lifecycle's KV cache is released at
    once and the next job is admitted. ``on_done`` is called with each finished lifecycle (e.g. to
    advance a progress bar), ``on_episode`` with each finished task episode.
    """

    def __init__(self, backend: Backend, cfg: RolloutConfig) -> None:
        self.backend = backend
        self.cfg = cfg
        self.served = 0  # model calls answered
        #: Stamped on every experience played (the trainer sets it to the number of updates so far).
        self.policy_version = 0

    def run(self, jobs: Sequence[Job], on_done: Callable[[LifecycleResult], None] | None = None,
            seeds: Sequence[int] | None = None,
            on_episode: Callable[[int, EpisodeRecord], None] | None = None) -> list[LifecycleResult]:
        """Play every job; results come back in job order.

        ``seeds`` (one per job) make each lifecycle's sampling a function of its seed alone; by
        default they are drawn from the global torch RNG, in job order. ``on_episode(i, record)``
        is called with the job index ``i`` as soon as a task's episode of job ``i`` is complete,
        after the context update that followed it (``record.hints_out`` is final), in the order
        episodes finish. Results are named by :func:`~codrl.rollout.config.result_mode`: the
        context (``cod``, ``nohint``, ``curator``), or ``ralph``, ``ralph-nohint``,
        ``ralph-curator`` for Ralph loops; the context is carried between a loop's attempts.
        """
        mode = result_mode(self.cfg.mode, self.cfg.ralph)
        results: list[LifecycleResult | None] = [None] * len(jobs)
        live: dict[int, tuple[LifecycleGen, str | None]] = {}
        queue = list(range(len(jobs)))[::-1]
        seeds = seeds_for(jobs, seeds)
        version = self.policy_version

        def finish(i: int, stop: StopIteration) -> None:
            session = live.pop(i)[1]
            if session is not None:
                self.backend.release(session)  # the lifecycle is over: free its KV cache at once
            result: LifecycleResult = stop.value
            result.mode = mode
            for exp in result.experiences:
                exp.policy_version = version
            results[i] = result
            if on_done is not None:
                on_done(result)

        def admit() -> dict[Hashable, GenRequest]:
            started: dict[Hashable, GenRequest] = {}
            while queue and len(live) < self.cfg.max_concurrent:
                i = queue.pop()
                job = jobs[i]
                hook = None if on_episode is None else functools.partial(on_episode, i)
                gen = play_lifecycle(job.env, job.pack, job.repeat, self.cfg, mode=self.cfg.mode, seed=seeds[i],
                                     on_episode=hook)
                live[i] = (gen, None)
                try:
                    req = next(gen)
                except StopIteration as stop:
                    finish(i, stop)
                    continue
                live[i] = (gen, req.session)
                started[i] = req
            return started

        def on_result(i: Hashable, out: GenResult) -> dict[Hashable, GenRequest]:
            assert isinstance(i, int)
            self.served += 1
            gen = live[i][0]
            try:
                req = gen.send(out)
            except StopIteration as stop:
                finish(i, stop)
                return admit()
            live[i] = (gen, req.session)
            return {i: req}

        self.backend.serve(admit(), on_result)
        return [r for r in results if r is not None]
