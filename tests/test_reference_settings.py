"""What the study measures, and the reference settings that reproduce it.

* A hidden score stays hidden: PDE Discovery's score never reaches a prompt (cod and curator
  contexts), and the check finds the score as soon as the environment shows it.
* ``model.chat_template_kwargs`` reach the chat template (transformers and vLLM encoding, an
  OpenAI-compatible endpoint, a training config).
* The turn penalty's formula, on its own and in played lifecycles.
* The re-weighting scopes ``pack_position``, ``pack``, ``env``, ``batch``, and the old names' error.
* The update step's options: ``update_reasoning``, ``on_hint_parse_failure``, the length line.
* Optimal Control's previous-policy evidence and malformed-reply reward.
* The reference configs load and set what the reference's final configs set.

Lifecycles are played by the real runner and the real environments; the engine is
:class:`PlayedBy`, which answers solve requests with the environments' own scripted agents (one
per task, reading the observation the request carries) and context steps with fixed text.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from codrl.algo.advantages import RENAMED_SCOPES, SCOPES, AdvantageConfig, compute_advantages, scope_key
from codrl.backends.base import Backend, GenRequest, GenResult, SamplingParams
from codrl.config import load_yaml, validate
from codrl.envs import Pack, make_env
from codrl.envs.control import OptimalControl
from codrl.envs.pde import PDEDiscovery
from codrl.envs.pde.library import format_equation
from codrl.envs.scripted import agents_for
from codrl.envs.scripted.pde import OracleAgent
from codrl.errors import CodrlError
from codrl.eval.checklist import play_pack
from codrl.rollout.config import RolloutConfig
from codrl.rollout.curator import CURATOR_SYSTEM
from codrl.rollout.experience import LifecycleResult
from codrl.rollout.lifecycle import LifecycleRunner, make_jobs, solve_reward, turn_penalty
from codrl.rollout.prompts import HINTS_END, HINTS_START, NO_HINT, UPDATE_SYSTEM, parse_hints_block
from codrl.view.data import lifecycle_row

sys.path.insert(0, str(Path(__file__).parent))
from support import lifecycle_result, serve_in_thread  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
Agent = Any  # a scripted agent: act(hints, observation) -> reply


# --------------------------------------------------------------------------------------------
# the engine: scripted agents behind the Backend interface


def is_context(req: GenRequest) -> bool:
    """A context step (hints rewrite or curator), not a solve turn."""
    return req.messages[0]["content"] in (UPDATE_SYSTEM, CURATOR_SYSTEM)


class PlayedBy(Backend):
    """Answers solve requests with a fresh scripted agent per task of each lifecycle and context
    steps with ``context_reply(request)``; keeps every (request, reply) per session, in order."""

    def __init__(self, packs: list[Pack], agent_for: Callable[[Pack], Agent],
                 context_reply: Callable[[GenRequest], str]) -> None:
        super().__init__()
        self.packs = {p.pack_id: p for p in packs}
        self.agent_for = agent_for
        self.context_reply = context_reply
        self.log: dict[str, list[tuple[GenRequest, str]]] = {}
        self._agents: dict[str, Agent] = {}

    def pack_of(self, session: str) -> Pack:
        return next(p for pid, p in self.packs.items() if session.startswith(pid + "/"))

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        out = []
        for req in requests:
            assert req.session is not None
            if is_context(req):
                text = self.context_reply(req)
            else:
                if len(req.messages) == 2:  # a task's first turn: a fresh agent, as in the checklist
                    self._agents[req.session] = self.agent_for(self.pack_of(req.session))
                text = self._agents[req.session].act("", req.messages[-1]["content"])
                text = text[len(req.reply_prefix):] if text.startswith(req.reply_prefix) else text
            self.log.setdefault(req.session, []).append((req, text))
            prompt = "".join(m["content"] for m in req.messages).encode()
            out.append(GenResult(text=text, prompt_ids=list(prompt), completion_ids=list(text.encode()),
                                 logprobs=[-0.5] * len(text.encode())))
        return out


def play(env: Any, packs: list[Pack], cfg: RolloutConfig, agent_for: Callable[[Pack], Agent],
         context_reply: Callable[[GenRequest], str] = lambda req: "Hints:\nkeep going") -> tuple[
             list[LifecycleResult], PlayedBy]:
    backend = PlayedBy(packs, agent_for, context_reply)
    jobs = make_jobs([(env, p) for p in packs], cfg)
    return LifecycleRunner(backend, cfg).run(jobs, seeds=list(range(len(jobs)))), backend


# --------------------------------------------------------------------------------------------
# 1. a hidden score stays hidden


class OffOracle(OracleAgent):
    """The PDE oracle, but its commit scales every true coefficient by ``factor``: the score is
    ``1 / (1 + |factor - 1|)``, a fractional number a leak would print."""

    def __init__(self, equation: dict[str, float], factor: float) -> None:
        super().__init__(equation)
        self.factor = factor

    def act(self, hints: str, observation: str) -> str:
        reply = super().act(hints, observation)
        if "commit" in reply:
            off = {t: round(c * self.factor, 4) for t, c in self.equation.items()}
            return f"<answer>commit {format_equation(off)}</answer>"
        return reply


PDE_PACKS = 30
PDE_CFG = {"pack_size": 4, "repeats": 2, "use_reply_prefix": False}


def pde_agent(pack: Pack) -> OffOracle:
    index = int(pack.pack_id.rsplit("/", 1)[1])
    return OffOracle(pack.world["equation"], 1.0 + (0.05 + 0.013 * index) * (-1) ** index)


def curator_or_hints(req: GenRequest) -> str:
    return "ADD: regress the remembered terms first" if req.messages[0]["content"] == CURATOR_SYSTEM \
        else "refit the law found so far"


def score_sightings(results: list[LifecycleResult], backend: PlayedBy) -> tuple[list[tuple[str, int]], int]:
    """(session, task) pairs where a request after the task's commit shows the task's score
    (as ``{r:g}``, how a prompt would print it, or with 5 decimals), and how many
    (later request, finished task) pairs were checked."""
    by_key = {(r.pack_id, r.repeat): r for r in results}
    sightings, checked = [], 0
    for session, log in backend.log.items():
        pack_id, repeat, _ = session.rsplit("/", 2)
        result = by_key[(pack_id, int(repeat))]
        ends = [i for i, (req, text) in enumerate(log) if not is_context(req) and "commit" in text]
        assert len(ends) == len(result.episodes)  # every task ended with a commit
        for k, end in enumerate(ends):
            r = result.episodes[k].env_reward
            assert 0.5 < r < 1.0  # fractional: a leak would be visible
            marks = (f"{r:g}", f"{r:.5f}")
            for req, _ in log[end + 1:]:
                checked += 1
                if any(mark in m["content"] for m in req.messages for mark in marks):
                    sightings.append((session, k))
    return sightings, checked


@pytest.mark.parametrize("mode", ["cod", "curator"])
def test_pde_score_never_reaches_a_later_prompt(mode: str) -> None:
    env = make_env("pde")
    assert env.reward_visible is False
    packs = [env.sample_pack("test", 0, i, 4) for i in range(PDE_PACKS)]
    cfg = RolloutConfig(mode=mode, **PDE_CFG)
    results, backend = play(env, packs, cfg, pde_agent, curator_or_hints)
    sightings, checked = score_sightings(results, backend)
    assert checked > 1000  # 30 packs x 2 repeats, 3 finished tasks each followed by several requests
    assert sightings == []
    updates = [req for log in backend.log.values() for req, _ in log if is_context(req)]
    assert len(updates) == PDE_PACKS * 2 * 3
    assert not any("Reward of this task" in req.messages[-1]["content"] for req in updates)
    assert all(r.reward_visible is False and r.to_json()["reward_visible"] is False for r in results)


@pytest.mark.parametrize("mode", ["cod", "curator"])
def test_the_check_finds_the_score_when_hiding_is_off(mode: str) -> None:
    env = PDEDiscovery()
    env.reward_visible = True  # this instance shows its score, as every prompt did before
    packs = [env.sample_pack("test", 0, i, 4) for i in range(3)]
    results, backend = play(env, packs, RolloutConfig(mode=mode, **PDE_CFG), pde_agent, curator_or_hints)
    sightings, _ = score_sightings(results, backend)
    assert len(set(sightings)) == 3 * 2 * 3  # every finished task but the last, in every lifecycle


def test_scripted_learner_sees_what_the_model_sees() -> None:
    env = make_env("pde", nx=65, nt=401)
    given: list[float | None] = []
    learner = agents_for("pde").learner

    def spying(pack: Pack, rng: np.random.Generator) -> Any:
        agent = learner(pack, rng)
        inner = agent.write_hints

        def write_hints(hints: str, transcript: Any, reward: float | None) -> str:
            given.append(reward)
            return inner(hints, transcript, reward)

        agent.write_hints = write_hints
        return agent

    pack = env.sample_pack("test", 0, 0, 4)
    rewards = play_pack(env, pack, spying, np.random.default_rng(0))
    assert given == [None] * 3 and max(rewards) > 0  # one update between consecutive tasks
    fl = make_env("frozenlake")
    given.clear()
    learner = agents_for("frozenlake").learner
    fl_rewards = play_pack(fl, fl.sample_pack("test", 0, 0, 3), spying, np.random.default_rng(0))
    assert given == pytest.approx(fl_rewards[:-1])  # a visible reward still reaches the learner


def test_viewer_marks_a_hidden_score() -> None:
    env = make_env("pde")
    packs = [env.sample_pack("test", 0, 0, 2)]
    (result,), _ = play(env, packs, RolloutConfig(pack_size=2, repeats=1, use_reply_prefix=False), pde_agent)
    row = lifecycle_row(result.to_json(), 0, 1000)
    assert [ep["rh"] for ep in row["eps"]] == [True, True]
    assert row["eps"][0]["er"] == pytest.approx(result.episodes[0].env_reward)  # people still see it
    shown = lifecycle_row({**result.to_json(), "reward_visible": True}, 0, 1000)
    assert [ep["rh"] for ep in shown["eps"]] == [False, False]


# --------------------------------------------------------------------------------------------
# 2. chat-template arguments reach the template

THINK = "<think> </think>"


def branching_template() -> str:
    """The tiny model's chat template, but the generation prompt gains an empty thinking block when
    ``enable_thinking`` is false (as Qwen3's template does)."""
    from codrl.toy.policy import CHAT_TEMPLATE

    gen = "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
    assert gen in CHAT_TEMPLATE
    return CHAT_TEMPLATE.replace(gen, "{% if add_generation_prompt %}<|im_start|> assistant "
                                      "{% if enable_thinking is defined and not enable_thinking %}"
                                      f"{THINK} {{% endif %}}{{% endif %}}")


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    from codrl.toy.policy import build_tiny_policy

    model, tok = build_tiny_policy(make_env("secret_table"), hidden=16, layers=1, heads=2, intermediate=32)
    tok.chat_template = branching_template()
    return model, tok


CHAT = [{"role": "system", "content": "You recall values."}, {"role": "user", "content": "value of a ?"}]


def test_chat_template_kwargs_reach_the_template(tiny: tuple[Any, Any]) -> None:
    from codrl.backends.hf import HFBackend
    from codrl.backends.vllm_backend import encode_chat_prompt

    model, tok = tiny
    on = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    off = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert THINK not in on and off.endswith(f"{THINK} ")  # the template does branch
    req = GenRequest(CHAT, SamplingParams(temperature=1.0, max_new_tokens=3), reply_prefix="a=1", seed=1)
    plain = HFBackend(model, tok, kv_cache_mb=0)
    thinking_off = HFBackend(model, tok, kv_cache_mb=0, chat_template_kwargs={"enable_thinking": False})
    ids_off = tok(off + "a=1", add_special_tokens=False)["input_ids"]
    ids_on = tok(on + "a=1", add_special_tokens=False)["input_ids"]
    assert ids_off != ids_on
    assert thinking_off.generate([req])[0].prompt_ids == ids_off  # the engine's own prompt, end to end
    assert plain.generate([req])[0].prompt_ids == ids_on
    assert encode_chat_prompt(tok, req, {"enable_thinking": False}) == ids_off  # the vLLM engine's encoding
    assert encode_chat_prompt(tok, req) == ids_on


def test_training_config_carries_chat_template_kwargs(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    from codrl.toy.policy import save_policy
    from codrl.train.config import TrainConfig
    from codrl.train.policy import build_policy

    folder = save_policy(*tiny, tmp_path / "tiny")
    cfg = validate(TrainConfig, {"envs": [{"name": "secret_table"}],
                                 "model": {"path": str(folder), "lora": None,
                                           "chat_template_kwargs": {"enable_thinking": False}}}, source="test")
    backend = build_policy(cfg)
    tok = backend.tokenizer
    assert backend.chat_template_kwargs == {"enable_thinking": False}
    off = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    on = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert backend.encode_prompt(GenRequest(CHAT)) == tok(off, add_special_tokens=False)["input_ids"]
    default = build_policy(cfg.model_copy(update={"model": cfg.model.model_copy(update={"chat_template_kwargs": {}})}))
    assert default.encode_prompt(GenRequest(CHAT)) == tok(on, add_special_tokens=False)["input_ids"]


class _TemplateServer(BaseHTTPRequestHandler):
    """A small OpenAI-compatible endpoint: it renders each chat with a real chat template and the
    request's ``chat_template_kwargs`` (as vLLM does) and answers with the rendered prompt."""

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook
        self._send({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)  # type: ignore[attr-defined]
        text = self.server.tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            body["messages"], tokenize=False, add_generation_prompt=True, **body.get("chat_template_kwargs", {}))
        self._send({"id": "x", "object": "chat.completion", "created": 0, "model": "tiny",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture()
def template_server(tiny: tuple[Any, Any]) -> Iterator[str]:
    with serve_in_thread(_TemplateServer, tokenizer=tiny[1], bodies=[]) as srv:
        yield srv


def test_endpoint_requests_carry_chat_template_kwargs(template_server: Any) -> None:
    from codrl.backends.openai_backend import OpenAIBackend

    url = f"http://127.0.0.1:{template_server.server_address[1]}/v1"
    off = OpenAIBackend(url, chat_template_kwargs={"enable_thinking": False}, max_retries=0)
    plain = OpenAIBackend(url, max_retries=0)
    req = GenRequest(CHAT, SamplingParams(temperature=0.0, max_new_tokens=8))
    try:
        assert THINK in off.generate([req])[0].text
        assert THINK not in plain.generate([req])[0].text
        # with a reply prefix sent as a final assistant message the arguments still travel
        cont = OpenAIBackend(url, prefill="continue_final_message", chat_template_kwargs={"enable_thinking": False})
        cont.generate([GenRequest(CHAT, reply_prefix="a=")])
        cont.close()
    finally:
        off.close()
        plain.close()
    bodies = template_server.bodies
    assert bodies[0]["chat_template_kwargs"] == {"enable_thinking": False}
    assert "chat_template_kwargs" not in bodies[1]
    assert bodies[2]["chat_template_kwargs"] == {"enable_thinking": False} and bodies[2]["continue_final_message"]


def test_cli_rejects_template_kwargs_that_are_not_an_object() -> None:
    from codrl.cli import _template_kwargs

    assert _template_kwargs('{"enable_thinking": false}') == {"enable_thinking": False}
    assert _template_kwargs(None) == {}
    with pytest.raises(CodrlError, match="--chat-template-kwargs must be a JSON object"):
        _template_kwargs("enable_thinking=false")


# --------------------------------------------------------------------------------------------
# 3. the turn penalty


def test_turn_penalty_formula() -> None:
    assert turn_penalty(1.0, 2, 8, 0.1) == pytest.approx(1.0 - 0.1 * 2 / 8)
    assert turn_penalty(0.04, 8, 8, 0.1) == 0.0  # floored at 0
    assert turn_penalty(0.0, 8, 8, 0.1) == 0.0  # a failure stays 0
    assert turn_penalty(-0.1, 1, 1, 0.1) == -0.1  # a malformed reply's own penalty is left alone
    assert turn_penalty(0.7, 1, 0, 0.5) == pytest.approx(0.7 - 0.5 * 1)  # max_turns below 1 counts as 1
    assert turn_penalty(0.7, 5, 8, 0.0) == 0.7
    cfg = RolloutConfig(turn_penalty_coef=0.2, length_penalty_coef=0.1, length_penalty_start=10, length_penalty_end=20)
    assert solve_reward(0.9, 3, 6, 15, cfg) == pytest.approx(max(0.0, 0.9 - 0.2 * 3 / 6) - 0.1 * 0.5)
    assert solve_reward(0.0, 6, 6, 25, cfg) == pytest.approx(-0.1)  # only codrl's length ramp hits failures
    with pytest.raises(ValidationError, match="turn_penalty_coef"):
        RolloutConfig(turn_penalty_coef=-0.1)


def test_turn_penalty_in_played_lifecycles() -> None:
    env = make_env("frozenlake")
    packs = [env.sample_pack("test", 0, i, 3) for i in range(6)]
    cfg = RolloutConfig(pack_size=3, repeats=1, use_reply_prefix=False, turn_penalty_coef=0.1,
                        length_penalty_coef=0.0, mode="nohint")
    oracle = agents_for("frozenlake").oracle
    rng = np.random.default_rng(0)
    solved, _ = play(env, packs, cfg, lambda p: oracle(p, rng))
    for res in solved:
        for ep in res.episodes:
            assert ep.env_reward == 1.0
            assert ep.reward == pytest.approx(1.0 - 0.1 * len(ep.turns) / env.max_turns)
    randomly, _ = play(env, packs, cfg, lambda p: agents_for("frozenlake").random(p, rng))
    failures = [ep for res in randomly for ep in res.episodes if ep.env_reward == 0.0]
    assert failures and all(ep.reward == 0.0 for ep in failures)


# --------------------------------------------------------------------------------------------
# 4. re-weighting scopes


def exp_(env: str, pack: str, repeat: int, reward: float, tokens: int) -> LifecycleResult:
    return lifecycle_result(pack, repeat, [reward], tokens=tokens, env=env)


def scoped_batch() -> list[LifecycleResult]:
    """Two environments, three packs (K = 1, 2 repeats each), advantages +-0.5 with tokens chosen so
    that pack a1 sums to -1 (1 vs 3 tokens), pack a2 to +1 (environment A: 0), pack b1 to -0.5
    (environment B, and the batch: -0.5)."""
    return [exp_("A", "a1", 0, 1.0, 1), exp_("A", "a1", 1, 0.0, 3),
            exp_("A", "a2", 0, 1.0, 3), exp_("A", "a2", 1, 0.0, 1),
            exp_("B", "b1", 0, 1.0, 1), exp_("B", "b1", 1, 0.0, 2)]


def weighted(results: list[LifecycleResult]) -> float:
    return sum(ep.advantage * ep.sampled_tokens for r in results for ep in r.model_episodes)


@pytest.mark.parametrize(("scope", "changed"), [
    ("pack_position", {"a1", "b1"}), ("pack", {"a1", "b1"}), ("env", {"b1"}), ("batch", {"a1", "a2", "b1"}),
])
def test_reweight_scopes_group_as_named(scope: str, changed: set[str]) -> None:
    plain, exps = scoped_batch(), scoped_batch()
    compute_advantages(plain, AdvantageConfig())
    metrics = compute_advantages(exps, AdvantageConfig(reweight=scope))  # type: ignore[arg-type]
    moved = {e.pack_id for p, e in zip(plain, exps, strict=True)
             if e.model_episodes[0].advantage != pytest.approx(p.model_episodes[0].advantage)}
    assert moved == changed
    groups: dict[Any, list[LifecycleResult]] = {}
    for e in exps:
        groups.setdefault(scope_key(e, e.model_episodes[0], scope), []).append(e)  # type: ignore[arg-type]
    assert len(groups) == {"pack_position": 3, "pack": 3, "env": 2, "batch": 1}[scope]
    assert all(weighted(g) >= -1e-9 for g in groups.values())  # each scope's sum is made non-negative
    reweighted = {scope_key(e, e.model_episodes[0], scope)  # type: ignore[arg-type]
                  for e in exps if e.pack_id in changed}
    assert metrics["reweight_frac"] == pytest.approx(len(reweighted) / len(groups))


def test_pack_position_scope_splits_positions() -> None:
    r = lifecycle_result("p", 0, [1.0, 1.0], env="A")
    e0, e1 = r.model_episodes
    assert scope_key(r, e0, "pack_position") != scope_key(r, e1, "pack_position")
    assert scope_key(r, e0, "pack") == scope_key(r, e1, "pack") == "p"
    assert scope_key(r, e0, "env") == "A" and scope_key(r, e0, "batch") == ()
    assert set(SCOPES) == {"pack_position", "pack", "env", "batch"}


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED_SCOPES.items()))
def test_old_scope_names_fail_naming_the_new_one(old: str, new: str) -> None:
    with pytest.raises(ValidationError) as err:
        AdvantageConfig(reweight=old)  # type: ignore[arg-type]
    (first,) = err.value.errors()
    assert f"use {new!r}" in first["msg"] and "\n" not in first["msg"]
    from codrl.train.config import TrainConfig

    with pytest.raises(CodrlError) as cerr:
        validate(TrainConfig, {"envs": [{"name": "frozenlake"}], "advantage": {"reweight": old}}, source="run.yaml")
    message = str(cerr.value)
    assert "\n" not in message and "advantage.reweight" in message and f"use {new!r}" in message


def test_played_experiences_carry_their_environment() -> None:
    fl, pde = make_env("frozenlake"), make_env("pde")
    rng = np.random.default_rng(0)
    cfg = RolloutConfig(pack_size=2, repeats=1, use_reply_prefix=False)
    (res,), _ = play(fl, [fl.sample_pack("test", 0, 0, 2)], cfg, lambda p: agents_for("frozenlake").oracle(p, rng))
    assert {e.env for e in res.experiences} == {"frozenlake"}
    (res,), _ = play(pde, [pde.sample_pack("test", 0, 0, 2)], cfg, pde_agent)
    assert {e.env for e in res.experiences} == {"pde"}


# --------------------------------------------------------------------------------------------
# 5. the update step's options


def fl_lifecycle(cfg: RolloutConfig, replies: list[str]) -> tuple[LifecycleResult, list[GenRequest]]:
    """One FrozenLake lifecycle; the context steps answer ``replies`` in order."""
    env = make_env("frozenlake")
    pack = env.sample_pack("test", 0, 1, len(replies) + 1)
    rng = np.random.default_rng(0)
    answers = iter(replies)
    (res,), backend = play(env, [pack], cfg, lambda p: agents_for("frozenlake").random(p, rng),
                           lambda req: next(answers))
    updates = [req for log in backend.log.values() for req, _ in log if is_context(req)]
    return res, updates


@pytest.mark.parametrize(("policy", "after_failure"), [("keep", "code 1 moves Left"), ("clear", NO_HINT)])
def test_on_hint_parse_failure(policy: str, after_failure: str) -> None:
    cfg = RolloutConfig(pack_size=4, repeats=1, use_reply_prefix=False, on_hint_parse_failure=policy)
    res, _ = fl_lifecycle(cfg, ["code 1 moves Left", "", "code 2 moves Up"])  # the 2nd block is empty
    eps = res.episodes
    assert [e.hint_valid for e in eps[:3]] == [True, False, True]
    assert eps[1].hints_in == "code 1 moves Left"
    assert eps[2].hints_in == after_failure and eps[1].hints_out == after_failure
    assert eps[3].hints_in == "code 2 moves Up"
    assert eps[1].hint_reward == pytest.approx(-cfg.hint_penalty_coef)


def test_update_reasoning_parses_the_delimited_block() -> None:
    cfg = RolloutConfig(pack_size=3, repeats=1, use_reply_prefix=False, update_reasoning=True,
                        on_hint_parse_failure="clear", update_length_line=1000)
    block = f"Code 1 took me left, so it means Left.\n{HINTS_START}\n- code 1 moves Left\n{HINTS_END}"
    res, updates = fl_lifecycle(cfg, [block, "Hints: code 2 moves Up"])  # the 2nd has no delimited block
    assert res.episodes[1].hints_in == "- code 1 moves Left"
    assert res.episodes[2].hints_in == NO_HINT and res.episodes[1].hint_valid is False
    for req in updates:
        assert req.reply_prefix == ""  # reasoning first: no prefilled 'Hints:'
        user = req.messages[-1]["content"]
        assert HINTS_START in user and HINTS_END in user
        assert user.endswith("Keep your whole reply within 1000 tokens.")
    quoted = f"The format is {HINTS_START} ... {HINTS_END}.\n{HINTS_START}\nHints: real notes\n{HINTS_END}\n"
    assert parse_hints_block(quoted) == "real notes"
    assert parse_hints_block(f"{HINTS_START}\nno end") is None
    default, defaults = fl_lifecycle(RolloutConfig(pack_size=2, repeats=1, use_reply_prefix=False), ["x"])
    assert defaults[0].reply_prefix == "Hints:\n" and "Keep your whole reply" not in defaults[0].messages[-1]["content"]


# --------------------------------------------------------------------------------------------
# 6. Optimal Control options

POLICY = "clip(0.4 * (x_target - x) - v, -1, 1)"


def test_control_shows_the_previous_policy_per_lifecycle() -> None:
    env = make_env("control", show_previous_policy=True)
    pack = env.sample_pack("test", 0, 0, 3)
    state, other = env.new_state(pack), env.new_state(pack)
    first = env.start(pack, pack.tasks[0], state)
    assert "Evidence from an earlier task" not in first.reset()
    done = first.step(f"<answer>{POLICY}</answer>")
    obs = env.start(pack, pack.tasks[1], state).reset()
    spec = pack.tasks[0].spec
    assert f"its policy: {POLICY}" in obs
    assert f"its reward: {done.reward:.4f}" in obs
    assert f"x_end - x_target = {done.info['x_end'] - spec['x_target']:+.4f}" in obs
    assert f"v_end - v_target = {done.info['v_end'] - spec['v_target']:+.4f}" in obs
    assert f"target x_target = {spec['x_target']:.2f}" in obs
    assert "Evidence from an earlier task" not in env.start(pack, pack.tasks[1], other).reset()  # another repeat
    # a policy that fails at run time or does not parse leaves the earlier evidence in place
    env.start(pack, pack.tasks[1], state).step("<answer>1 / (t - t)</answer>")
    env.start(pack, pack.tasks[1], state).step("no answer")
    assert f"its policy: {POLICY}" in env.start(pack, pack.tasks[2], state).reset()
    plain = make_env("control")
    st = plain.new_state(pack)
    plain.start(pack, pack.tasks[0], st).step(f"<answer>{POLICY}</answer>")
    assert "Evidence" not in plain.start(pack, pack.tasks[1], st).reset()  # off by default
    with pytest.raises(ValueError, match="ControlState"):
        env.start(pack, pack.tasks[0], env.new_state(make_env("control").sample_pack("test", 0, 1, 1)))


def test_control_previous_policy_in_played_lifecycles() -> None:
    env = make_env("control", show_previous_policy=True)
    packs = [env.sample_pack("test", 0, i, 3) for i in range(2)]
    oracle = agents_for("control").oracle
    rng = np.random.default_rng(0)
    cfg = RolloutConfig(pack_size=3, repeats=2, use_reply_prefix=False, mode="nohint")
    results, backend = play(env, packs, cfg, lambda p: oracle(p, rng))
    for session, log in backend.log.items():
        first_prompts = [req.messages[-1]["content"] for req, _ in log if len(req.messages) == 2]
        replies = [text for req, text in log]
        assert "Evidence" not in first_prompts[0]
        for k in (1, 2):  # each later task shows the previous task's expression of this lifecycle
            expr = replies[k - 1].split("<answer>")[1].split("</answer>")[0].strip()
            assert f"its policy: {expr}" in first_prompts[k]


def test_control_malformed_reward() -> None:
    env = make_env("control_hard", malformed_reward=-0.1)
    assert env.reward_range == (-0.1, 1.0) and env.chance_reward is not None
    pack = env.sample_pack("test", 0, 0, 1)
    res = env.start(pack, pack.tasks[0]).step("u = x")
    assert (res.reward, res.valid, res.done) == (-0.1, False, True)
    assert "reward -0.1" in res.feedback
    default = make_env("control_hard")
    out = default.start(pack, pack.tasks[0]).step("u = x")
    assert (out.reward, out.valid) == (0.0, False) and default.reward_range == (0.0, 1.0)
    for bad in (0.5, -2.0, "x"):
        with pytest.raises(ValueError, match="malformed_reward"):
            OptimalControl(malformed_reward=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="show_previous_policy"):
        OptimalControl(show_previous_policy="yes")  # type: ignore[arg-type]
    # in a lifecycle the negative reward is the task's reward: the turn penalty leaves failures alone
    cfg = RolloutConfig(pack_size=1, repeats=1, use_reply_prefix=False, turn_penalty_coef=0.1, length_penalty_coef=0.0)
    (lc,), _ = play(env, [pack], cfg, lambda p: type("Bad", (), {"act": lambda self, h, o: "no tags"})())
    assert lc.episodes[0].reward == pytest.approx(-0.1) and lc.episodes[0].format_valid is False


# --------------------------------------------------------------------------------------------
# 7. the reference configs


def config_class(data: dict[str, Any]) -> type:
    from codrl.eval.matrix import MatrixConfig
    from codrl.eval.ralph import RalphConfig
    from codrl.eval.runner import EvalConfig
    from codrl.train.config import TrainConfig

    if "models" in data:
        return MatrixConfig
    if "target" in data:
        return RalphConfig
    if "envs" in data:
        return TrainConfig
    return EvalConfig


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads(path: Path) -> None:
    import yaml

    data = yaml.safe_load(path.read_text())
    load_yaml(config_class(data), path)


REFERENCE = ["frozenlake_gpu.yaml", "control_gpu.yaml", "pde_gpu.yaml", "gridnav_gpu.yaml", "mixed_gpu.yaml"]


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_configs_set_the_reference_settings(name: str) -> None:
    from codrl.train.config import TrainConfig

    cfg = load_yaml(TrainConfig, CONFIGS / name)
    r, a, loss = cfg.rollout, cfg.advantage, cfg.loss
    assert (r.pack_size, cfg.eval.pack_size, r.repeats, r.temperature, cfg.packs_per_step) == (4, 8, 8, 1.0, 32)
    assert cfg.optim.lr == pytest.approx(1e-6) and cfg.model.lora is None
    assert (loss.variant, loss.kl_coef) == ("rec_oneside_nois", 0.0)
    assert loss.clip_eps_low == pytest.approx(0.2) and loss.clip_eps_high == pytest.approx(0.2)
    assert (a.estimator, a.std_norm, a.reweight) == ("cod", "none", "batch")
    assert r.hint_penalty_coef == pytest.approx(0.1)
    assert cfg.model.chat_template_kwargs == {"enable_thinking": False}
    assert cfg.distributed.max_staleness == 20
    assert (r.update_reasoning, r.on_hint_parse_failure) == (True, "clear")
    # the turn penalty where the reference's length penalty coefficient is set (FrozenLake, Alchemy)
    names = {e.name for e in cfg.envs}
    assert r.turn_penalty_coef == pytest.approx(0.1 if names & {"frozenlake", "alchemy"} else 0.0)
    assert r.length_penalty_coef == 0.0
    if "control_hard" in names:
        params = cfg.envs[0].params
        assert params == {"show_previous_policy": True, "malformed_reward": -0.1}


def test_reference_doc_maps_every_setting() -> None:
    doc = (CONFIGS.parent / "docs" / "reference.md").read_text()
    for key in ("advantage.reweight", "rollout.turn_penalty_coef", "model.chat_template_kwargs",
                "rollout.update_reasoning", "rollout.on_hint_parse_failure", "rollout.update_length_line",
                "show_previous_policy", "malformed_reward", "distributed.max_staleness", "reward_visible"):
        assert key in doc, key
    assert "docs/reference.md" in (CONFIGS.parent / "README.md").read_text()


def test_env_scope_in_a_played_mixture() -> None:
    fl, al = make_env("frozenlake"), make_env("alchemy")
    packs = [fl.sample_pack("train", 0, 0, 2), al.sample_pack("train", 0, 0, 2)]
    cfg = RolloutConfig(pack_size=2, repeats=3, use_reply_prefix=False, mode="nohint")
    rng = np.random.default_rng(3)  # here FrozenLake's token-weighted sum is positive, Alchemy's negative
    fl_agents = agents_for("frozenlake")

    def agent(pack: Pack) -> Agent:  # FrozenLake: half the tasks by its oracle, so its rewards vary too
        if pack.env == "frozenlake":
            return (fl_agents.oracle if rng.random() < 0.5 else fl_agents.random)(pack, rng)
        return agents_for(pack.env).random(pack, rng)

    backend = PlayedBy(packs, agent, lambda req: "")
    jobs = make_jobs([(fl, packs[0]), (al, packs[1])], cfg)
    results = LifecycleRunner(backend, cfg).run(jobs, seeds=list(range(len(jobs))))
    exps = [e for r in results for e in r.experiences]
    assert {(e.pack_id.split("/")[0], e.env) for e in exps} == {("frozenlake", "frozenlake"), ("alchemy", "alchemy")}
    assert {scope_key(r, ep, "env") for r in results for ep in r.model_episodes} == {"frozenlake", "alchemy"}
    alone = {env: copy.deepcopy([r for r in results if r.env == env]) for env in ("frozenlake", "alchemy")}
    whole = copy.deepcopy(results)
    compute_advantages(whole, AdvantageConfig(reweight="batch"))
    metrics = compute_advantages(results, AdvantageConfig(reweight="env"))
    assert metrics["reweight_frac"] > 0

    def advs(rs: list[LifecycleResult]) -> list[float]:
        return [ep.advantage for r in rs for ep in r.model_episodes]

    assert advs(results) != pytest.approx(advs(whole))  # not the batch's grouping
    for env, subset in alone.items():  # the env scope re-weights each environment as a batch of its own
        compute_advantages(subset, AdvantageConfig(reweight="batch"))
        assert advs([r for r in results if r.env == env]) == pytest.approx(advs(subset))
