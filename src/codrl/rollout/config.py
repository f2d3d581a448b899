"""Knobs of a lifecycle rollout (typed, YAML-loadable, CPU-friendly defaults)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from codrl.rollout.contexts import CONTEXTS, Variant, check_context

#: A config field naming a context: a built-in name (:data:`CONTEXTS`) or an import path
#: ``package.module:ClassName`` of a :class:`~codrl.rollout.contexts.Context` (checked on validation).
ContextName = Annotated[str, AfterValidator(check_context)]

__all__ = ["CONTEXTS", "ContextName", "RolloutConfig", "result_mode"]


class RolloutConfig(BaseModel):
    """How a pack is played. Defaults follow docs/method.md where it gives a value."""

    model_config = ConfigDict(extra="forbid")

    pack_size: int = Field(4, ge=1, description="K: tasks per pack (lifecycle length)")
    repeats: int = Field(4, ge=1, description="R: rollouts of the same pack (the GRPO group)")
    mode: ContextName = Field(
        "cod", description="context between tasks: cod: the model rewrites a free-form hints block; nohint: no "
                           "context, the update step is skipped (baseline); curator: the model edits a numbered "
                           "lesson list with ADD/REVISE/REMOVE operations applied by code; or the import path "
                           "'package.module:ClassName' of a codrl.rollout.contexts.Context of your own")
    ralph: Literal["none", "first", "expand"] = Field(
        "none", description="Ralph loop: repeat each pack's first task K times, or expand every task into its own "
                            "pack; the context (mode) is carried between attempts (nohint: independent attempts)")
    temperature: float = Field(1.0, ge=0.0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens_solve: int = Field(32, ge=1, description="token budget of one solve reply")
    max_new_tokens_update: int = Field(64, ge=1, description="token budget of one context update (a hints block "
                                       "or a curator reply)")
    use_reply_prefix: bool = Field(True, description="prefill replies with the environment's reply prefix")
    update_reply_prefix: str = Field("Hints:\n", description="prefill of the update-context reply (not used with "
                                     "update_reasoning)")
    update_reasoning: bool = Field(False, description="cod context: the update step reasons briefly, then writes "
                                   "the hints between '--- Start of updated hints ---' and '--- End of updated "
                                   "hints ---' (no prefill; parsed from the last such block) instead of a "
                                   "prefilled 'Hints:' block")
    on_env_error: Literal["fail_episode", "drop_group", "raise"] = Field(
        "fail_episode", description="an exception in the environment's start, reset or step (e.g. a plug-in's "
                                    "bug): fail_episode: the episode ends as a scored failure whose feedback names "
                                    "the exception; drop_group: the same, and training leaves out every lifecycle "
                                    "of that pack; raise: stop the run. Counted in rollout/env_errors")
    max_context: int | None = Field(
        None, ge=1, description="context window in tokens (prompt + reply budget) below the engine's own; a "
                                "request that would pass the window is not sent: a solve episode ends as a "
                                "scored failure ('context full'), an update is skipped and keeps the old hints; "
                                "counted in rollout/context_overflow/all and per position. null: the engine's window (where it knows it)")
    env_step_timeout_s: float | None = Field(
        None, gt=0, description="seconds an environment's start, reset or step may take; one that runs longer is "
                                "abandoned and handled like a raising one (on_env_error); null: no limit. The "
                                "call runs in a daemon thread, which is left to finish on its own (Python cannot "
                                "stop a thread): give plug-in code that can hang its own internal timeouts")
    on_hint_parse_failure: Literal["keep", "clear"] = Field(
        "keep", description="an invalid hints block (none parsed, or shorter than hint_min_chars): keep the "
                            "previous hints, or clear them to 'no hint available' (the reference's behaviour); "
                            "the update episode scores -hint_penalty_coef either way (cod context only)")
    update_length_line: int | None = Field(None, ge=1, description="tokens named by a 'Keep your whole reply "
                                           "within N tokens.' line at the end of the update (and curator) "
                                           "prompt; null: no such line")
    curator_reply_prefix: str = Field("Operations:\n", description="prefill of the curator reply (a header "
                                      "line the operation parser skips)")
    curator_max_lessons: int = Field(8, ge=1, description="curator mode: most lessons the list holds "
                                     "(further ADDs are rejected)")
    curator_max_chars: int = Field(160, ge=8, description="curator mode: a lesson is cut at this many characters")
    max_concurrent: int = Field(64, ge=1, description="lifecycles played at once (their model calls are batched)")
    max_turns_cap: int = Field(64, ge=1, description="safety cap on turns of one solve episode")
    # rewards (docs/method.md, section 2: length_penalty_coef 0.1, hint_penalty_coef 0.1)
    length_penalty_coef: float = Field(0.1, ge=0.0, description="max penalty for an over-long solution")
    length_penalty_start: int = Field(24, ge=0, description="solution length (tokens, longest reply) where the ramp starts")
    length_penalty_end: int = Field(32, ge=1, description="solution length where the penalty reaches its max")
    turn_penalty_coef: float = Field(0.0, ge=0.0, description="efficiency term of a successful solve: a task "
                                     "reward r > 0 becomes max(0, r - turn_penalty_coef * turns_used / "
                                     "max_turns) (failures, r <= 0, are left alone); the reference uses 0.1 "
                                     "on FrozenLake and Alchemy")
    hint_penalty_coef: float = Field(0.1, ge=0.0, description="penalty for an unparseable or too-short hints block "
                                     "(curator: a reply with no accepted operation that is not NONE)")
    hint_min_chars: int = Field(8, ge=0, description="hints shorter than this are 'too short'")
    hint_length_coef: float = Field(0.1, ge=0.0, description="max penalty for over-long hints")
    hint_length_start: int = Field(48, ge=0, description="hints length (tokens) where the ramp starts")
    hint_length_end: int = Field(64, ge=1, description="hints length where the penalty reaches its max")

    @model_validator(mode="after")
    def _ramps(self) -> RolloutConfig:
        if self.length_penalty_end <= self.length_penalty_start:
            raise ValueError("length_penalty_end must be > length_penalty_start")
        if self.hint_length_end <= self.hint_length_start:
            raise ValueError("hint_length_end must be > hint_length_start")
        return self

    @property
    def result_mode(self) -> str:
        """Name of the results this config plays (:func:`result_mode`)."""
        return result_mode(self.mode, self.ralph)


def result_mode(mode: str, ralph: str = "none") -> str:
    """The mode name lifecycle results carry (:attr:`~codrl.rollout.contexts.Variant.mode`): the
    context (``cod``, ``nohint``, ``curator``) for plain packs; ``ralph`` (model-written notes),
    ``ralph-nohint`` (independent attempts) or ``ralph-curator`` for Ralph loops."""
    return Variant(mode, ralph).mode
