"""The ``agent`` section of a training config: an agent program of your own as the environment."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AgentConfig(BaseModel):
    """Train a program that talks to an OpenAI-compatible API (``codrl train --agent CMD``).

    For each lifecycle the trainer starts ``command`` with the training proxy's address, the
    lifecycle's id and its pack's tasks in its environment; the program solves the tasks in order,
    keeps its own context and reports each task's reward (docs/own_agent.md). A program that exits
    before ending its lifecycle, or runs past ``timeout_s``, fails its lifecycle, handled as
    ``rollout.on_env_error`` says (``drop_group``: its pack is left out of the update; otherwise
    its tasks score 0).
    """

    model_config = ConfigDict(extra="forbid")

    tasks: str = Field(description="where packs come from: a JSONL file (one pack per line: a list of task "
                                   "objects, or {\"pack_id\": ..., \"tasks\": [...]}) or an import path "
                                   "'package.module:function' returning such packs")
    command: str | None = Field(None, description="the program, started once per lifecycle (a shell-free "
                                                  "command line; `codrl train --agent CMD` sets it)")
    name: str = Field("agent", min_length=1, description="the name its packs and metrics carry")
    timeout_s: float = Field(600.0, gt=0, description="seconds a lifecycle may take before its program is "
                                                      "killed and the lifecycle fails")
    api_key: str = Field("codrl", min_length=1, description="the key the program sends (OPENAI_API_KEY); the "
                                                            "proxy listens on 127.0.0.1 only")
