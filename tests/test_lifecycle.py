"""The lifecycle runner: solve/update interleaving, hints flow, experiences, batching, Ralph modes.

Fast tests drive the real runner and the real FrozenLake-Obscure environment with
:class:`ByteEngine`, a small deterministic token-exact engine whose reply is a pure function
of the request (so any call order gives the same lifecycles). Its token ids are the UTF-8 bytes of
a plain rendering of the chat (prompt) and of the reply text (completion).

Slow tests (``-m slow``) use the embedded SmolLM2-135M-Instruct model (``embedded_backend``
fixture in conftest.py).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import asdict

import pytest
import torch

from codrl.backends.base import Backend, GenRequest, GenResult
from codrl.backends.scripted import FunctionBackend
from codrl.envs import Pack, Task, make_env
from codrl.envs.frozenlake import FORMAT_HINT, make_spec, parse_action
from codrl.rollout.config import RolloutConfig
from codrl.rollout.experience import EpisodeRecord, Experience, LifecycleResult
from codrl.rollout.lifecycle import Job, LifecycleRunner, make_jobs
from codrl.rollout.prompts import UPDATE_SYSTEM, update_messages

Rule = Callable[[GenRequest], str]


# --------------------------------------------------------------------------------------------
# the scripted engine


def render(req: GenRequest) -> str:
    """A plain chat rendering (the scripted engine's 'template'), reply prefix included."""
    return "".join(f"<|{m['role']}|>{m['content']}\n" for m in req.messages) + "<|assistant|>" + req.reply_prefix


def byte_ids(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def is_update(req: GenRequest) -> bool:
    return req.messages[0]["content"] == UPDATE_SYSTEM


def always(text: str) -> Rule:
    return lambda req: text


def hashed_code(req: GenRequest) -> str:
    """A deterministic 'policy': an action code drawn from a hash of the last user message."""
    h = int(hashlib.sha256(req.messages[-1]["content"].encode()).hexdigest(), 16)
    return f"{1 + h % 4}</answer>"


_PREV_RE = re.compile(r"Previous hints:\n(.*?)\n\nTask:\n", re.DOTALL)


def previous_hints(req: GenRequest) -> str:
    m = _PREV_RE.search(req.messages[-1]["content"])
    assert m is not None, "update prompt without a 'Previous hints:' section"
    return m.group(1)


def versioned_hints(req: GenRequest) -> str:
    """Hints that count how many updates came before: 'version n+1' after 'version n'."""
    prev = previous_hints(req)
    n = 0 if prev == "(none yet)" else int(re.search(r"version (\d+)", prev).group(1))  # type: ignore[union-attr]
    return f"code 1 was tried; version {n + 1}"


class ByteEngine(FunctionBackend):
    """Deterministic test double of a token-exact engine: a :class:`FunctionBackend` that answers with
    ``solve`` or ``update`` and gives the UTF-8 bytes of :func:`render` and of the reply as token ids."""

    token_exact = True

    def __init__(self, solve: Rule = always("1</answer>"), update: Rule = versioned_hints) -> None:
        super().__init__(lambda req: (update if is_update(req) else solve)(req))

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        out = []
        for req, res in zip(requests, super().generate(requests), strict=True):
            completion = byte_ids(res.text)
            out.append(GenResult(text=res.text, prompt_ids=byte_ids(render(req)), completion_ids=completion,
                                 logprobs=[-((t % 7) + 1) / 8 for t in completion], finish_reason="stop"))
        return out


# --------------------------------------------------------------------------------------------
# helpers

ENV = make_env("frozenlake")


def cfg_(**kw: object) -> RolloutConfig:
    base: dict[str, object] = {"pack_size": 3, "repeats": 1}
    base.update(kw)
    return RolloutConfig(**base)  # type: ignore[arg-type]


def sampled_jobs(cfg: RolloutConfig, n_packs: int = 1, split: str = "train", seed: int = 0) -> list[Job]:
    return make_jobs([(ENV, ENV.sample_pack(split, seed, i, cfg.pack_size)) for i in range(n_packs)], cfg)


def play(jobs: list[Job], cfg: RolloutConfig, backend: Backend | None = None
         ) -> tuple[list[LifecycleResult], ByteEngine]:
    backend = backend or ByteEngine()
    return LifecycleRunner(backend, cfg).run(jobs), backend  # type: ignore[return-value]


def hand_pack(rows: list[str], mapping: dict[str, str], k: int = 1) -> Pack:
    spec = make_spec(rows)
    return Pack(pack_id="hand", env="frozenlake", split="test", world={"mapping": dict(mapping)},
                tasks=tuple(Task(task_id=f"hand/{i}", position=i, spec=spec) for i in range(k)))


def first_obs(pack: Pack, position: int) -> str:
    return ENV.start(pack, pack.tasks[position]).reset()


def kinds(requests: list[GenRequest]) -> str:
    return "".join("U" if is_update(r) else "S" for r in requests)


def expected_ramp(length: int, start: int, end: int) -> float:
    return min(1.0, max(0.0, (length - start) / (end - start)))


def check_aligned(exps: list[Experience], requests: list[GenRequest]) -> None:
    """One experience per model call, in call order, each carrying that call's exact tokens."""
    assert len(exps) == len(requests)
    for exp, req in zip(exps, requests):
        assert exp.episode_type == ("update" if is_update(req) else "solve")
        assert exp.prompt_ids == byte_ids(render(req))


RIGHT_FIRST = {"1": "Right", "2": "Down", "3": "Left", "4": "Up"}


# --------------------------------------------------------------------------------------------
# lifecycle order and the flow of hints


def test_lifecycle_order_and_hints_k3():
    cfg = cfg_(pack_size=3)
    jobs = sampled_jobs(cfg)
    [res], be = play(jobs, cfg)
    reqs = be.requests
    assert re.fullmatch(r"S+US+US+", kinds(reqs)), kinds(reqs)
    check_aligned(res.experiences, reqs)
    pack = jobs[0].pack
    eps = res.episodes
    assert [e.position for e in eps] == [0, 1, 2]
    assert [e.task_id for e in eps] == [t.task_id for t in pack.tasks]
    # hints written after task j (versioned by the scripted engine)
    assert [e.hints_out for e in eps] == ["code 1 was tried; version 1", "code 1 was tried; version 2", None]
    assert [e.hints_in for e in eps] == ["", "code 1 was tried; version 1", "code 1 was tried; version 2"]
    for exp, req in zip(res.experiences, reqs):
        user = req.messages[1]["content"]
        k = exp.position
        if exp.episode_type == "solve":
            assert req.messages[0] == {"role": "system", "content": ENV.system_prompt}
            assert req.reply_prefix == ENV.reply_prefix
            if k == 0:  # task 0 has no hints: its first user message is the bare observation
                assert user == first_obs(pack, 0)
                assert "Hints:" not in user
            else:  # every turn of task k shows the hints written after task k-1, above the map
                assert user == f"Hints:\n{eps[k - 1].hints_out}\n\n{first_obs(pack, k)}"
            # later turns carry the earlier replies and observations
            assert len(req.messages) == 2 + 2 * exp.turn
        else:
            assert req.reply_prefix == cfg.update_reply_prefix
            prev = "(none yet)" if k == 0 else eps[k - 1].hints_out
            assert previous_hints(req) == prev
            assert f"Reward of this task: {eps[k].env_reward:g}" in user
            assert len(eps[k].turns) == user.count("You answered:")


def test_nohint_mode_no_updates():
    cfg = cfg_(pack_size=3, mode="nohint", repeats=2)
    jobs = sampled_jobs(cfg, n_packs=2)
    results, be = play(jobs, cfg)
    assert be.requests and not any(is_update(r) for r in be.requests)
    for job, res in zip(jobs, results):
        assert res.mode == "nohint"
        assert all(e.episode_type == "solve" for e in res.experiences)
        for ep in res.episodes:
            assert ep.hints_in == "" and ep.hints_out is None
            assert ep.turns[0].observation == first_obs(job.pack, ep.position)
    assert not any("Hints:" in m["content"] for r in be.requests for m in r.messages)


# --------------------------------------------------------------------------------------------
# experiences and rewards


def test_experiences_one_per_call_fields():
    cfg = cfg_(pack_size=3, repeats=1)
    jobs = sampled_jobs(cfg, n_packs=3)
    be = ByteEngine(solve=hashed_code)
    results = []
    for job in jobs:  # one at a time so each lifecycle's requests are known
        n0 = len(be.requests)
        [res] = LifecycleRunner(be, cfg).run([job])
        check_aligned(res.experiences, be.requests[n0:])
        results.append(res)
    assert sum(len(r.experiences) for r in results) == len(be.requests)
    for res in results:
        k = len(res.episodes)
        assert res.task_rewards == [e.reward for e in res.episodes]
        updates = [e for e in res.experiences if e.episode_type == "update"]
        assert [(e.position, e.turn) for e in updates] == [(j, 0) for j in range(k - 1)]
        solve_eps = {m.position: m for m in res.model_episodes if m.episode_type == "solve"}
        for pos, ep in enumerate(res.episodes):
            solves = [e for e in res.experiences if e.episode_type == "solve" and e.position == pos]
            assert [e.turn for e in solves] == list(range(len(ep.turns)))
            assert solve_eps[pos].calls == solves and solve_eps[pos].own_reward == ep.reward
            assert ep.completion_tokens == sum(len(e.completion_ids) for e in solves)
            assert ep.format_valid == all(t.valid for t in ep.turns)
        for m in res.model_episodes:
            assert all((c.episode_type, c.position) == (m.episode_type, m.position) for c in m.calls)
            if m.episode_type == "update":
                assert m.own_reward == res.episodes[m.position].hint_reward
        for exp in res.experiences:
            assert exp.pack_id == res.pack_id and exp.repeat == res.repeat
            assert exp.token_exact and len(exp.logprobs) == len(exp.completion_ids) > 0
            # the loss mask covers exactly the completion: 0 on the prompt, 1 on every sampled token
            mask = exp.loss_mask
            assert len(mask) == len(exp.input_ids) == exp.num_tokens
            assert mask == [0] * len(exp.prompt_ids) + [1] * len(exp.completion_ids)
            assert bytes(t for t, m in zip(exp.input_ids, mask) if m).decode() == exp.text
            if exp.episode_type == "update":
                assert res.episodes[exp.position].hint_reward == 0.0
    # the hashed policy makes lifecycles differ: some fail, some succeed or move
    assert len({tuple(len(e.turns) for e in r.episodes) for r in results}) > 1


@pytest.mark.parametrize(("start", "end", "ramp"), [
    (4, 20, 15 / 16),  # longest reply 19 tokens: inside the ramp
    (19, 40, 0.0),     # at the start: no penalty
    (2, 19, 1.0),      # at the end: full penalty
    (0, 10, 1.0),      # past the end
])
def test_solve_length_penalty_ramp_uses_longest_reply(start, end, ramp):
    # one row S F F F G and code 1 = Right: four replies "1" reach the goal (reward 1)
    pack = hand_pack(["SFFFG"], RIGHT_FIRST)
    # reply of turn t: PADS[t] spaces then "1</answer>" -> 10, 19, 13, 10 tokens (bytes);
    # the longest reply (19) is neither the first nor the last one
    pads = [0, 9, 3, 0]
    solve = lambda req: " " * pads[sum(m["role"] == "assistant" for m in req.messages)] + "1</answer>"  # noqa: E731
    cfg = cfg_(pack_size=1, length_penalty_coef=0.5, length_penalty_start=start, length_penalty_end=end)
    [res], _ = play([Job(ENV, pack, 0)], cfg, ByteEngine(solve=solve))
    [ep] = res.episodes
    assert [len(e.completion_ids) for e in res.experiences] == [10, 19, 13, 10]
    assert ep.env_reward == 1.0 and ep.success and ep.format_valid
    assert ep.reward == pytest.approx(1.0 - 0.5 * ramp)
    assert ramp == expected_ramp(19, start, end)
    assert [m.own_reward for m in res.model_episodes] == [pytest.approx(1.0 - 0.5 * ramp)]
    assert res.task_rewards == [ep.reward]


def test_length_penalty_applies_to_failures_too():
    """A failed long solution scores 0 - penalty (method.md: task reward minus the length penalty)."""
    pack = hand_pack(["SHG"], RIGHT_FIRST)  # code 1 walks into the hole
    cfg = cfg_(pack_size=1, length_penalty_coef=0.3, length_penalty_start=2, length_penalty_end=4)
    [res], _ = play([Job(ENV, pack, 0)], cfg)
    assert res.episodes[0].env_reward == 0.0
    assert res.episodes[0].reward == pytest.approx(-0.3)


@pytest.mark.parametrize("bad", ["", "short", "  \n\t  ", "Hints:"])
def test_invalid_hints_penalised_and_previous_kept(bad):
    good = "code 1 moves Right."

    def update(req: GenRequest) -> str:
        return good if previous_hints(req) == "(none yet)" else bad

    cfg = cfg_(pack_size=3, hint_penalty_coef=0.25)
    pack = hand_pack(["SFFFG"], RIGHT_FIRST, k=3)
    [res], be = play([Job(ENV, pack, 0)], cfg, ByteEngine(update=update))
    e0, e1, e2 = res.episodes
    assert (e0.hint_valid, e0.hint_reward, e0.hints_out) == (True, 0.0, good)
    assert (e1.hint_valid, e1.hint_reward) == (False, -0.25)
    assert e1.hints_out == good  # the invalid block does not replace what was learned
    assert e2.hints_in == good
    updates = [m for m in res.model_episodes if m.episode_type == "update"]
    assert [u.own_reward for u in updates] == [0.0, -0.25]
    task2 = [r for r, x in zip(be.requests, res.experiences) if x.episode_type == "solve" and x.position == 2]
    assert task2 and all(r.messages[1]["content"].startswith(f"Hints:\n{good}\n\n") for r in task2)
    # the penalty is the update episode's own reward only: task rewards are untouched
    assert res.task_rewards == [1.0, 1.0, 1.0]


def test_unparseable_hints_without_reply_prefix():
    """With no update prefill, a reply without a 'Hints:' block does not parse."""
    replies = {"(none yet)": "I think code 1 is right."}  # no block -> unparseable

    def update(req: GenRequest) -> str:
        return replies.get(previous_hints(req), "x")

    cfg = cfg_(pack_size=2, update_reply_prefix="", hint_penalty_coef=0.1)
    [res], be = play([Job(ENV, hand_pack(["SFFFG"], RIGHT_FIRST, k=2), 0)], cfg, ByteEngine(update=update))
    e0, e1 = res.episodes
    assert (e0.hint_valid, e0.hint_reward, e0.hints_out) == (False, -0.1, "")
    assert e1.hints_in == ""
    # and a proper block parses
    replies["(none yet)"] = "Notes first.\nHints: code 1 moves Right."
    [res], _ = play([Job(ENV, hand_pack(["SFFFG"], RIGHT_FIRST, k=2), 0)], cfg, ByteEngine(update=update))
    assert (res.episodes[0].hint_valid, res.episodes[0].hint_reward) == (True, 0.0)
    assert res.episodes[1].hints_in == "code 1 moves Right."


@pytest.mark.parametrize(("n_bytes", "ramp"), [(10, 0.0), (20, 0.5), (30, 1.0), (45, 1.0)])
def test_hint_length_ramp(n_bytes, ramp):
    text = ("abcdefghij" * 5)[:n_bytes]  # valid (>= 8 chars) hints of n_bytes tokens
    cfg = cfg_(pack_size=2, hint_length_coef=0.2, hint_length_start=10, hint_length_end=30)
    [res], _ = play([Job(ENV, hand_pack(["SFFFG"], RIGHT_FIRST, k=2), 0)], cfg,
                    ByteEngine(update=always(text)))
    ep = res.episodes[0]
    assert ep.hint_valid and ep.hints_out == text  # over-long hints are still used, only penalised
    assert ep.hint_reward == pytest.approx(-0.2 * ramp)
    assert res.episodes[1].hints_in == text


def test_text_only_engine_uses_word_counts():
    """Engines without token ids (token_exact False) are scored on whitespace-separated words."""

    # 1 then 3 words: "1</answer>" / "1</answer> a b"; the penalty ramp spans 1..5 words
    solve = lambda req: "1</answer>" + (" a b" if len(req.messages) > 2 else "")  # noqa: E731
    cfg = cfg_(pack_size=1, length_penalty_coef=0.4, length_penalty_start=1, length_penalty_end=5)
    [res], _ = play([Job(ENV, hand_pack(["SFG"], RIGHT_FIRST), 0)], cfg, FunctionBackend(solve))
    [ep] = res.episodes
    assert ep.success and ep.completion_tokens == 1 + 3
    assert ep.reward == pytest.approx(1.0 - 0.4 * 0.5)
    assert all(not e.token_exact and e.completion_ids == [] and e.loss_mask == [] for e in res.experiences)


# --------------------------------------------------------------------------------------------
# batching


def test_concurrent_lifecycles_batch_calls_and_match_sequential():
    cfg_seq = cfg_(pack_size=2, repeats=2, max_concurrent=1)
    cfg_par = cfg_(pack_size=2, repeats=2, max_concurrent=8)
    jobs = sampled_jobs(cfg_par, n_packs=4)
    assert len(jobs) == 8
    seq_runner, par_runner = LifecycleRunner(ByteEngine(solve=hashed_code), cfg_seq), \
        LifecycleRunner(ByteEngine(solve=hashed_code), cfg_par)
    seq, par = seq_runner.run(jobs), par_runner.run(jobs)
    seq_be, par_be = seq_runner.backend, par_runner.backend
    assert isinstance(seq_be, ByteEngine) and isinstance(par_be, ByteEngine)
    n_requests = sum(len(r.experiences) for r in seq)
    # sequential: one request per engine call
    assert seq_be.stats.generate_calls == n_requests and all(len(c) == 1 for c in seq_be.calls)
    # concurrent: a text engine serves rounds of every active lifecycle, so the number of engine
    # calls is the length (in model calls) of the longest lifecycle
    assert par_be.stats.generate_calls == max(len(r.experiences) for r in par)
    assert par_runner.served == seq_runner.served == n_requests
    assert par_be.stats.generate_calls * 3 <= seq_be.stats.generate_calls
    assert len(par_be.calls[0]) == 8
    assert par_be.stats.requests == seq_be.stats.requests == n_requests
    # identical content, in job order
    assert [(r.pack_id, r.repeat) for r in par] == [(j.pack.pack_id, j.repeat) for j in jobs]
    assert [r.to_json() for r in par] == [r.to_json() for r in seq]
    assert [[asdict(e) for e in r.experiences] for r in par] == [[asdict(e) for e in r.experiences] for r in seq]


@pytest.mark.parametrize("max_concurrent", [1, 3, 5])
def test_max_concurrent_respected(max_concurrent):
    cfg = cfg_(pack_size=2, repeats=2, max_concurrent=max_concurrent)
    jobs = sampled_jobs(cfg, n_packs=4)
    done: list[LifecycleResult] = []
    be = ByteEngine(solve=hashed_code)
    results = LifecycleRunner(be, cfg).run(jobs, on_done=done.append)
    sizes = [len(c) for c in be.calls]
    assert max(sizes) == max_concurrent
    assert sum(sizes) == sum(len(r.experiences) for r in results)
    assert len(done) == len(jobs) and {id(r) for r in done} == {id(r) for r in results}
    assert [(r.pack_id, r.repeat) for r in results] == [(j.pack.pack_id, j.repeat) for j in jobs]


# --------------------------------------------------------------------------------------------
# Ralph-loop modes


def test_ralph_first_repeats_first_task():
    cfg = cfg_(pack_size=3, repeats=2, ralph="first")
    packs = [ENV.sample_pack("test", 0, i, 3) for i in range(2)]
    jobs = make_jobs([(ENV, p) for p in packs], cfg)
    assert len(jobs) == 2 * 2
    results, be = play(jobs, cfg)
    for job, res in zip(jobs, results):
        orig = packs[[p.pack_id for p in packs].index(job.pack.pack_id.removesuffix("/ralph"))]
        assert res.mode == "ralph" and res.pack_id == orig.pack_id + "/ralph"
        assert [t.spec for t in job.pack.tasks] == [orig.tasks[0].spec] * 3
        assert [t.position for t in job.pack.tasks] == [0, 1, 2]
        assert len({t.task_id for t in job.pack.tasks}) == 3
        # the same map at every position, with the hints carried forward (Ralph loops write hints)
        assert [ep.turns[0].observation.split("Map", 1)[1] for ep in res.episodes] == \
            [first_obs(orig, 0).split("Map", 1)[1]] * 3
        assert [e.hints_in for e in res.episodes][1:] == [e.hints_out for e in res.episodes][:-1]
        assert sum(e.episode_type == "update" for e in res.experiences) == 2


def test_ralph_expand_makes_one_pack_per_task():
    cfg = cfg_(pack_size=3, repeats=2, ralph="expand")
    packs = [ENV.sample_pack("test", 0, i, 3) for i in range(2)]
    jobs = make_jobs([(ENV, p) for p in packs], cfg)
    assert len(jobs) == 2 * 3 * 2
    results, _ = play(jobs, cfg)
    seen = set()
    for job, res in zip(jobs, results):
        base, _, j = job.pack.pack_id.rpartition("/ralph")
        orig = packs[[p.pack_id for p in packs].index(base)]
        assert [t.spec for t in job.pack.tasks] == [orig.tasks[int(j)].spec] * 3
        assert res.mode == "ralph" and len(res.episodes) == 3
        seen.add((base, int(j), job.repeat))
    assert seen == {(p.pack_id, j, r) for p in packs for j in range(3) for r in range(2)}


# --------------------------------------------------------------------------------------------
# malformed replies


@pytest.mark.parametrize("bad", [
    "",
    "garbage",
    "Up",
    "5</answer>",
    "1</answer",
    "1 </ answer>",
    "\U0001f9ca\x00\u202e</answer><answer>",
    "1" * 200_000,
    "x" * 200_000 + "</answer>",
])
def test_malformed_solve_reply_is_a_scored_failure(bad):
    cfg = cfg_(pack_size=2)
    pack = hand_pack(["SFFFG"], RIGHT_FIRST, k=2)  # a valid "1" would move right, not fail
    [res], be = play([Job(ENV, pack, 0)], cfg, ByteEngine(solve=always(bad)))
    assert kinds(be.requests) == "SUS"  # one reply per task, then the lifecycle goes on
    for ep in res.episodes:
        assert len(ep.turns) == 1
        assert ep.env_reward == 0.0 and not ep.success and not ep.format_valid
        assert not ep.turns[0].valid
        assert FORMAT_HINT in ep.feedback
        # the only penalty on top of the 0 is the solution length penalty
        n = len(bad.encode())
        assert ep.reward == pytest.approx(-cfg.length_penalty_coef * expected_ramp(
            n, cfg.length_penalty_start, cfg.length_penalty_end))
    assert parse_action(ENV.reply_prefix + bad) is None


# --------------------------------------------------------------------------------------------
# slow: the real embedded model


def _rebuild_requests(env, pack: Pack, ep: EpisodeRecord, cfg: RolloutConfig) -> tuple[list[GenRequest], GenRequest]:
    """The chats the runner must have sent for ``ep``, rebuilt from the logged text record."""
    prefix = env.reply_prefix if cfg.use_reply_prefix else ""
    solves, messages = [], [{"role": "system", "content": env.system_prompt}]
    for t in ep.turns:
        messages = messages + [{"role": "user", "content": t.observation}]
        solves.append(GenRequest(messages, reply_prefix=prefix))
        messages = messages + [{"role": "assistant", "content": t.reply}]
    obs = env.start(pack, pack.tasks[ep.position]).reset()
    update = GenRequest(update_messages(env.system_prompt, ep.hints_in, obs, ep.turns, ep.env_reward, ep.feedback),
                        reply_prefix=cfg.update_reply_prefix)
    return solves, update


class _Recording(Backend):
    """Pass-through wrapper that keeps every (request, result) pair."""

    def __init__(self, inner: Backend) -> None:
        super().__init__()
        self.inner = inner
        self.max_batch_size = inner.max_batch_size
        self.log: list[tuple[GenRequest, GenResult]] = []

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        out = self.inner.generate(requests)
        self.log.extend(zip(requests, out))
        return out


@pytest.fixture
def one_thread():
    """Run torch on one thread for the test (restored after).

    The models here are tiny and this machine has 2 cores: when other processes also use the CPU,
    two torch threads spin on each other and run several times slower than one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@torch.inference_mode()
def _teacher_forced_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    ids = torch.tensor([prompt + completion], dtype=torch.long)
    hidden = model.model(input_ids=ids).last_hidden_state[0, len(prompt) - 1:-1]
    logits = model.lm_head(hidden).float()
    lp = torch.log_softmax(logits / temperature, dim=-1)
    return lp.gather(1, torch.tensor(completion).unsqueeze(1)).squeeze(1)


@pytest.mark.slow
def test_real_model_token_exact(embedded_backend, one_thread):
    """Every experience holds the exact ids the model saw and sampled, with their true logprobs."""
    backend = embedded_backend
    tok, model = backend.tokenizer, backend.model
    env = make_env("frozenlake", max_env_steps=2, max_agent_steps=2)
    cfg = RolloutConfig(pack_size=2, repeats=2, temperature=0.8, max_new_tokens_solve=10,
                        max_new_tokens_update=12)
    packs = [env.sample_pack("test", 0, i, 2) for i in range(1)]
    jobs = make_jobs([(env, p) for p in packs], cfg)
    torch.manual_seed(0)
    rec = _Recording(backend)
    t0 = time.perf_counter()
    results = LifecycleRunner(rec, cfg).run(jobs)
    t_roll = time.perf_counter() - t0
    exps = [e for r in results for e in r.experiences]
    assert len(exps) == len(rec.log)
    # the prompts the engine got are exactly the prompts the experiences hold
    assert sorted(tuple(res.prompt_ids) for _, res in rec.log) == sorted(tuple(e.prompt_ids) for e in exps)
    worst = 0.0
    for job, res in zip(jobs, results):
        for ep in res.episodes:
            solves, update = _rebuild_requests(env, job.pack, ep, cfg)
            mine = [e for e in res.experiences if e.position == ep.position]
            expected = solves + ([update] if ep.hints_out is not None else [])
            assert [e.episode_type for e in mine] == ["solve"] * len(solves) + ["update"] * (len(expected) - len(solves))
            for exp, req in zip(mine, expected):
                assert exp.prompt_ids == backend.encode_prompt(req)
                assert tok.decode(exp.completion_ids, skip_special_tokens=True) == exp.text
                assert exp.loss_mask == [0] * len(exp.prompt_ids) + [1] * len(exp.completion_ids)
                assert len(exp.logprobs) == len(exp.completion_ids) >= 1
                ids = exp.completion_ids
                assert all(t not in backend.eos_ids for t in ids[:-1])  # nothing after an end-of-turn
                if exp.finish_reason == "length":
                    budget = cfg.max_new_tokens_solve if exp.episode_type == "solve" else cfg.max_new_tokens_update
                    assert len(ids) == budget
                elif ids[-1] not in backend.eos_ids:  # stopped by a stop string: cut right at it
                    assert exp.episode_type == "solve" and "</answer>" in exp.text
                    assert "</answer>" not in tok.decode(ids[:-1])
                ref = _teacher_forced_logprobs(model, exp.prompt_ids, ids, cfg.temperature)
                diff = float((ref - torch.tensor(exp.logprobs)).abs().max())
                worst = max(worst, diff)
                assert diff < 1e-3, (exp.episode_type, exp.position, exp.turn, diff)
    print(f"\n[token-exact] {len(exps)} experiences, rollout {t_roll:.1f}s, max |logprob diff| {worst:.2e}")


@pytest.mark.slow
def test_real_model_frozenlake_reply_prefix_format_rate(embedded_backend, one_thread):
    """End to end: FrozenLake-Obscure with the reply prefix, hints included; most replies parse."""
    env = make_env("frozenlake", max_env_steps=3, max_agent_steps=3)
    cfg = RolloutConfig(pack_size=2, repeats=2, max_new_tokens_solve=12, max_new_tokens_update=16)
    jobs = make_jobs([(env, env.sample_pack("test", 1, i, 2)) for i in range(2)], cfg)
    torch.manual_seed(1)
    t0 = time.perf_counter()
    results = LifecycleRunner(embedded_backend, cfg).run(jobs)
    dt = time.perf_counter() - t0
    turns = [t for r in results for ep in r.episodes for t in ep.turns]
    episodes = [ep for r in results for ep in r.episodes]
    reply_rate = sum(t.valid for t in turns) / len(turns)
    episode_rate = sum(ep.format_valid for ep in episodes) / len(episodes)
    success = sum(ep.success for ep in episodes) / len(episodes)
    print(f"\n[format] {len(turns)} replies in {len(episodes)} episodes ({dt:.1f}s): format-valid replies "
          f"{reply_rate:.2f}, fully valid episodes {episode_rate:.2f}, success {success:.2f}")
    assert reply_rate >= 0.5, f"format-valid reply rate {reply_rate:.2f}"
