"""Token-exact experiences and lifecycle records.

Every model call of a lifecycle rollout becomes one :class:`Experience`: the exact prompt token
ids the model saw, the exact sampled completion ids with their logprobs, and a loss mask that
covers only the model's own (sampled) tokens. Text is kept for logs; it is never re-tokenized for
training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

EpisodeType = Literal["solve", "update"]


@dataclass
class Experience:
    """One model call inside a lifecycle rollout.

    ``position`` is the task index: for a solve episode the task being solved, for an
    update-context episode the task whose outcome it summarises (its hints serve task
    ``position + 1``). Rewards and advantages belong to the episode, not to its calls: see
    :class:`ModelEpisode`.
    """

    pack_id: str
    repeat: int
    episode_type: EpisodeType
    position: int
    turn: int
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str = "stop"
    token_exact: bool = True
    #: Version of the weights that sampled it (the number of updates they had seen).
    policy_version: int = 0
    #: Name of the environment the pack comes from (groups a mixture by environment).
    env: str = ""

    @property
    def input_ids(self) -> list[int]:
        """Prompt and completion, the sequence a trainer runs the policy on."""
        return self.prompt_ids + self.completion_ids

    @property
    def loss_mask(self) -> list[int]:
        """1 on the model's own sampled tokens, 0 on prompt/prefix/environment tokens."""
        return [0] * len(self.prompt_ids) + [1] * len(self.completion_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass
class ModelEpisode:
    """The model calls of one solve or update-context episode of a lifecycle, with its own reward.

    A solve episode's calls are its turns; an update episode has one call. ``own_reward`` is the
    episode's own reward: the penalised task reward of a solve, the context's reward of an update
    (:meth:`codrl.rollout.contexts.Context.apply`). ``advantage`` is filled in by
    :func:`codrl.algo.advantages.compute_advantages` and shared by every sampled token of the
    episode.
    """

    episode_type: EpisodeType
    position: int
    calls: list[Experience]
    own_reward: float
    advantage: float = 0.0

    @property
    def sampled_tokens(self) -> int:
        """Sampled tokens of the episode, all calls together."""
        return sum(len(c.completion_ids) for c in self.calls)


@dataclass
class Turn:
    """One exchange of a solve episode, as text (for logs and the update-context prompt)."""

    observation: str
    reply: str  # full reply, reply prefix included
    feedback: str
    valid: bool
    reward: float


@dataclass
class EpisodeRecord:
    """One solve episode and the context update that followed it, as text."""

    position: int
    task_id: str
    hints_in: str  # the hints block the solve prompt carried ("" for none)
    turns: list[Turn]
    env_reward: float  # raw environment reward
    reward: float  # env_reward minus the solution length penalty
    success: bool
    format_valid: bool  # every reply of the episode parsed
    feedback: str  # final environment feedback
    completion_tokens: int
    hints_out: str | None = None  # hints written after this task (None: no update ran)
    hint_reward: float = 0.0
    hint_valid: bool = True
    #: Curator mode: what the curator step after this task did to the lesson list
    #: (``added``, ``revised``, ``removed``, ``rejected``, ``none`` operations and ``ignored``
    #: non-operation lines); None in the other modes or when no curator step ran.
    curator_ops: dict[str, int] | None = None
    #: The environment raised in this task's ``start``, ``reset`` or ``step`` (the episode was
    #: scored as a failure; ``feedback`` names the exception).
    env_error: bool = False
    #: Model calls of this task (its solve turns and the update after it) not sent because the
    #: prompt and its reply budget would pass the context window (``rollout.max_context`` or the
    #: engine's): a solve episode ends as a failure, an update is skipped.
    context_overflows: int = 0


@dataclass
class LifecycleResult:
    """A finished lifecycle rollout: one pass through a pack."""

    pack_id: str
    env: str
    split: str
    repeat: int
    mode: str  # "cod" | "nohint" | "curator" | "ralph" | "ralph-nohint" | "ralph-curator"
    episodes: list[EpisodeRecord]
    #: The policy's episodes in the order they were played (solve 0, update 0, solve 1, ...);
    #: a task whose episode made no model call (the environment failed to start it) has none.
    model_episodes: list[ModelEpisode]
    #: Whether the model was shown each task's reward after the task (the environment's
    #: :attr:`~codrl.envs.base.CoDEnv.reward_visible`); reports show rewards to people either way.
    reward_visible: bool = True

    @property
    def task_rewards(self) -> list[float]:
        """Penalised task rewards r_0..r_{K-1} (what credit assignment uses)."""
        return [e.reward for e in self.episodes]

    @property
    def experiences(self) -> list[Experience]:
        """Every model call of the lifecycle, in the order they were made."""
        return [c for ep in self.model_episodes for c in ep.calls]

    @property
    def env_rewards(self) -> list[float]:
        return [e.env_reward for e in self.episodes]

    @property
    def env_errors(self) -> int:
        """Episodes of this lifecycle in which the environment raised."""
        return sum(e.env_error for e in self.episodes)

    @property
    def context_overflows(self) -> int:
        """Model calls of this lifecycle not sent because they would pass the context window."""
        return sum(e.context_overflows for e in self.episodes)

    def to_json(self) -> dict[str, Any]:
        """Full trajectory record (no token ids) for JSONL output: a :class:`TrajectoryRecord`'s fields."""
        return TrajectoryRecord.model_validate({
            "pack_id": self.pack_id,
            "env": self.env,
            "split": self.split,
            "repeat": self.repeat,
            "mode": self.mode,
            "reward_visible": self.reward_visible,
            "task_rewards": self.task_rewards,
            "episodes": [asdict(e) for e in self.episodes],
        }).model_dump(mode="json")


class TurnJSON(BaseModel):
    """One turn of a ``trajectories.jsonl`` episode (see :class:`Turn`)."""

    model_config = ConfigDict(extra="ignore")

    observation: str = ""
    reply: str = ""
    feedback: str = ""
    valid: bool = True
    reward: float = 0.0


class EpisodeJSON(BaseModel):
    """One episode of a ``trajectories.jsonl`` record (the fields of :class:`EpisodeRecord`).

    Records written by earlier versions lack the newer fields; they read with the defaults
    (``env_reward`` missing: the episode's ``reward``)."""

    model_config = ConfigDict(extra="ignore")

    position: int
    task_id: str = ""
    hints_in: str = ""
    turns: list[TurnJSON] = []
    env_reward: float = 0.0
    reward: float = 0.0
    success: bool = False
    format_valid: bool = True
    feedback: str = ""
    completion_tokens: int = 0
    hints_out: str | None = None
    hint_reward: float = 0.0
    hint_valid: bool = True
    curator_ops: dict[str, int] | None = None
    env_error: bool = False
    context_overflows: int = 0

    @model_validator(mode="before")
    @classmethod
    def _env_reward(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("env_reward") is None and "reward" in data:
            data = {**data, "env_reward": data["reward"]}
        return data


class TrajectoryRecord(BaseModel):
    """One line of ``trajectories.jsonl``: a lifecycle as text. Written by
    :meth:`LifecycleResult.to_json` and read back by the viewer with the same type."""

    model_config = ConfigDict(extra="ignore")

    pack_id: str
    env: str = ""
    split: str = ""
    repeat: int = 0
    mode: str = "cod"
    reward_visible: bool = True
    task_rewards: list[float] = []
    episodes: list[EpisodeJSON] = []
