"""The scripted engines: a scripted agent played through the real lifecycle runner, and the
one-function engine of tests.

A hand-computed Secret Table lifecycle pins the whole flow (fresh agent per task, the hints the
agent writes reach the next task's prompt, the reward it is shown); FrozenLake's multi-turn
episodes check that the transcript the agent is given is the one the runner recorded; the oracle
scores 1.0 everywhere and the memoryless (``nohint``) learner does not improve.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from codrl.backends.base import GenRequest
from codrl.backends.scripted import FunctionBackend, ScriptedBackend
from codrl.envs import Pack, make_env
from codrl.envs.scripted import agents_for
from codrl.envs.scripted.base import AgentFactory, TurnText
from codrl.eval.checklist import checklist_config, play_pack, reward_matrix
from codrl.rollout.config import RolloutConfig
from codrl.rollout.experience import LifecycleResult
from codrl.rollout.lifecycle import Job, LifecycleRunner
from codrl.rollout.prompts import UPDATE_SYSTEM, solve_user_message

TABLE = make_env("secret_table")
LAKE = make_env("frozenlake")


def spying(make_agent: AgentFactory, seen: list[tuple[str, list[TurnText], float | None]]) -> AgentFactory:
    """``make_agent`` whose agents record every ``write_hints`` call (hints in, transcript, reward)."""

    def factory(pack: Pack, rng: np.random.Generator) -> Any:
        agent = make_agent(pack, rng)
        inner = agent.write_hints

        def write_hints(hints: str, transcript: list[TurnText], reward: float | None) -> str:
            seen.append((hints, list(transcript), reward))
            return inner(hints, transcript, reward)

        agent.write_hints = write_hints  # type: ignore[method-assign]
        return agent

    return factory


def play(env: Any, pack: Pack, make_agent: AgentFactory, cfg: RolloutConfig, seed: int = 0
         ) -> tuple[LifecycleResult, ScriptedBackend]:
    backend = ScriptedBackend(make_agent, pack, np.random.default_rng(seed))
    [result] = LifecycleRunner(backend, cfg).run([Job(env, pack, 0)], seeds=[0])
    return result, backend


def test_hand_computed_secret_table_lifecycle() -> None:
    pack = TABLE.sample_pack("test", 0, 0, 3)
    assert pack.world["table"]["b"] == "3" and [t.spec["key"] for t in pack.tasks] == ["b"] * 3
    seen: list[tuple[str, list[TurnText], float | None]] = []
    result, backend = play(TABLE, pack, spying(agents_for("secret_table").learner, seen),
                           checklist_config(TABLE, 3))
    # task 0: the learner knows nothing and guesses 1 or 2 (the value is 3): "Wrong. b=3" teaches it
    guess = str(1 + np.random.default_rng(0).integers(2))
    assert [ep.env_reward for ep in result.episodes] == [0.0, 1.0, 1.0]
    assert [ep.turns[0].reply for ep in result.episodes] == [guess, "3", "3"]
    assert [ep.hints_in for ep in result.episodes] == ["", "b=3", "b=3"]
    assert [ep.hints_out for ep in result.episodes] == ["b=3", "b=3", None]
    # the agent is told exactly what the model would be: the turn, its feedback, the shown reward
    assert seen == [("", [TurnText("Query: b ?", guess, "Wrong. b=3")], 0.0),
                    ("b=3", [TurnText("Query: b ?", "3", "Correct. b=3")], 1.0)]
    # solve, update, solve, update, solve; the written hints head the next task's prompt
    reqs = backend.requests
    assert ["U" if r.messages[0]["content"] == UPDATE_SYSTEM else "S" for r in reqs] == list("SUSUS")
    with_hints = solve_user_message("b=3", "Query: b ?")
    assert [r.messages[1]["content"] for r in reqs[::2]] == ["Query: b ?", with_hints, with_hints]
    assert all(r.session == reqs[0].session for r in reqs)


def test_transcripts_are_what_the_runner_recorded() -> None:
    """Multi-turn FrozenLake episodes: each transcript given to the learner is the recorded episode."""
    for i in range(3):
        pack = LAKE.sample_pack("test", 0, i, 4)
        seen: list[tuple[str, list[TurnText], float | None]] = []
        result, _ = play(LAKE, pack, spying(agents_for("frozenlake").learner, seen), checklist_config(LAKE, 4), seed=i)
        assert len(seen) == 3
        for ep, (hints, transcript, reward) in zip(result.episodes, seen):
            assert hints == ep.hints_in and reward == ep.env_reward
            assert [(t.reply, t.feedback) for t in transcript] == [(t.reply, t.feedback.strip()) for t in ep.turns]
            assert transcript[0].observation == LAKE.start(pack, pack.tasks[ep.position]).reset()
            assert [t.observation for t in transcript[1:]] == [t.observation for t in ep.turns[1:]]
        assert any(len(t) > 1 for _, t, _ in seen)


def test_hidden_reward_stays_hidden_from_the_agent() -> None:
    env = make_env("pde", nx=65, nt=401)
    seen: list[tuple[str, list[TurnText], float | None]] = []
    rewards = play_pack(env, env.sample_pack("test", 0, 0, 3), spying(agents_for("pde").learner, seen),
                        np.random.default_rng(0))
    assert [r for _, _, r in seen] == [None, None] and max(rewards) > 0


@pytest.mark.parametrize("name", ["frozenlake", "secret_table", "alchemy"])
def test_oracle_scores_one_at_every_position(name: str) -> None:
    env = make_env(name)
    m = reward_matrix(env, agents_for(name).oracle, packs=12, pack_size=4)
    if name == "alchemy":  # a few alchemy tasks cannot be finished within the material
        assert m.mean() > 0.9
    else:
        assert (m == 1.0).all()


def test_memoryless_learner_does_not_improve() -> None:
    learner = agents_for("secret_table").learner
    with_hints = reward_matrix(TABLE, learner, packs=60, pack_size=4)
    memoryless = reward_matrix(TABLE, learner, packs=60, pack_size=4, use_hints=False)
    assert (with_hints[:, 1:] == 1.0).all() and with_hints[:, 0].mean() < 0.5  # learned from task 0's feedback
    assert abs(memoryless[:, -1].mean() - memoryless[:, 0].mean()) < 0.15
    assert memoryless[:, 1:].mean() < 0.5
    # the memoryless control is the nohint context: no update step, never any hints
    pack = TABLE.sample_pack("test", 0, 0, 3)
    result, backend = play(TABLE, pack, learner, checklist_config(TABLE, 3, use_hints=False))
    assert result.mode == "nohint" and all(ep.hints_in == "" for ep in result.episodes)
    assert all(r.messages[0]["content"] != UPDATE_SYSTEM for r in backend.requests)


def test_reply_prefix_and_reasoning_updates_play_the_same() -> None:
    """The prefill is taken off the agent's reply, and the hints block's two forms carry the same hints."""
    pack = LAKE.sample_pack("test", 0, 1, 4)
    learner = agents_for("frozenlake").learner
    base, _ = play(LAKE, pack, learner, checklist_config(LAKE, 4))
    for change in ({"use_reply_prefix": True}, {"update_reasoning": True}):
        cfg = checklist_config(LAKE, 4).model_copy(update=change)
        other, _ = play(LAKE, pack, learner, cfg)
        assert [(e.env_reward, e.hints_in, [t.reply for t in e.turns]) for e in other.episodes] == \
            [(e.env_reward, e.hints_in, [t.reply for t in e.turns]) for e in base.episodes]
    assert base.episodes[-1].hints_in  # the learner wrote something


def test_context_rejecting_short_hints_keeps_the_old_ones() -> None:
    """With the default ``hint_min_chars`` a 3-character block is invalid: the context keeps the old
    hints (here none), and the backend reads the next prompt with the hints the context kept."""
    pack = TABLE.sample_pack("test", 0, 0, 3)
    cfg = checklist_config(TABLE, 3).model_copy(update={"hint_min_chars": 8})
    result, _ = play(TABLE, pack, agents_for("secret_table").learner, cfg)
    assert [ep.hint_valid for ep in result.episodes[:-1]] == [False, False]
    assert [ep.hints_in for ep in result.episodes] == ["", "", ""]


def test_curator_and_sessionless_requests_are_clear_errors() -> None:
    pack = TABLE.sample_pack("test", 0, 0, 2)
    cfg = checklist_config(TABLE, 2).model_copy(update={"mode": "curator"})
    with pytest.raises(ValueError, match="'curator' is not allowed"):
        play(TABLE, pack, agents_for("secret_table").learner, cfg)
    backend = ScriptedBackend(agents_for("secret_table").learner, pack, np.random.default_rng(0))
    with pytest.raises(ValueError, match="session"):
        backend.generate([GenRequest([{"role": "system", "content": "x"}, {"role": "user", "content": "Query: b ?"}])])


def test_function_backend_is_a_one_line_engine() -> None:
    backend = FunctionBackend(lambda req: "remember b=3" if req.messages[0]["content"] == UPDATE_SYSTEM else "3")
    cfg = RolloutConfig(pack_size=2, repeats=2)
    pack = TABLE.sample_pack("test", 0, 0, 2)
    results = LifecycleRunner(backend, cfg).run([Job(TABLE, pack, 0), Job(TABLE, pack, 1)], seeds=[0, 1])
    assert [ep.env_reward for r in results for ep in r.episodes] == [1.0] * 4
    assert [ep.hints_in for ep in results[0].episodes] == ["", "remember b=3"]
    assert backend.stats.generate_calls == len(backend.calls) == 3 and len(backend.calls[0]) == 2
    assert all(not e.token_exact and e.completion_ids == [] for r in results for e in r.experiences)
