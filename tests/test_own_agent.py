"""Training an agent program of one's own (``codrl train --agent CMD``) through the training proxy.

The program is examples/own_agent/agent.py: the official openai client and plain Python, no codrl.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from codrl.config import load_yaml
from codrl.errors import CodrlError
from codrl.serve.tasks import TaskSourceEnv, load_packs
from codrl.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_agent"
AGENT = f"{sys.executable} {EXAMPLE / 'agent.py'}"


def config(tmp_path: Path, command: str = AGENT, **fields: Any) -> TrainConfig:
    return load_yaml(TrainConfig, EXAMPLE / "train.yaml",
                     {"agent": {"command": command, "tasks": str(EXAMPLE / "tasks.jsonl")},
                      "output_dir": str(tmp_path / "run"), **fields})


# -- the task source ------------------------------------------------------------------------------
def test_task_source_packs_are_drawn_like_an_environments(tmp_path: Path) -> None:
    env = TaskSourceEnv(str(EXAMPLE / "tasks.jsonl"))
    n = len(env.packs)
    first = [env.sample_pack("train", 0, i, 3).pack_id for i in range(n)]
    assert sorted(first) == sorted(pid for pid, _ in env.packs)  # every pack once per pass
    assert first == [env.sample_pack("train", 0, i, 3).pack_id for i in range(n)]  # deterministic
    assert first != [env.sample_pack("train", 1, i, 3).pack_id for i in range(n)]  # shuffled by the seed
    pack = env.sample_pack("train", 0, 0, 2)
    assert len(pack.tasks) == 2 and pack.tasks[0].spec == dict(env.packs[[p for p, _ in env.packs].index(pack.pack_id)][1][0])
    with pytest.raises(CodrlError, match="played by the agent program"):
        env.start(pack, pack.tasks[0])


def test_task_source_from_an_import_path_and_bad_sources(tmp_path: Path) -> None:
    module = tmp_path / "my_tasks.py"
    module.write_text("def packs():\n    return [[{'q': 1}, {'q': 2}], {'pack_id': 'named', 'tasks': [{'q': 3}]}]\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert load_packs("my_tasks:packs") == [(None, [{"q": 1}, {"q": 2}]), ("named", [{"q": 3}])]
    finally:
        sys.path.remove(str(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('[{"q": 1}]\nnot json\n')
    with pytest.raises(CodrlError, match=r"bad.jsonl:2: not JSON"):
        load_packs(str(bad))
    bad.write_text('{"tasks": []}\n')
    with pytest.raises(CodrlError, match="non-empty list of task objects"):
        load_packs(str(bad))
    with pytest.raises(CodrlError, match="no such file"):
        load_packs(str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize(("fields", "needle"), [
    ({"eval": {"at_end": True}}, "eval.at_end: an agent program is measured by its training rewards"),
    ({"envs": [{"name": "frozenlake"}]}, "envs: an agent program plays the packs of agent.tasks"),
    ({"distributed": {"async_rollouts": True}}, "in-process training proxy"),
])
def test_agent_config_errors_name_the_field(tmp_path: Path, fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(CodrlError, match=needle):
        config(tmp_path, **fields)


def test_train_without_a_command_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"agent: {{tasks: {json.dumps(str(EXAMPLE / 'tasks.jsonl'))}}}\n"
                   "eval: {at_start: false, at_end: false}\n"
                   f"output_dir: {json.dumps(str(tmp_path / 'run'))}\n")
    res = subprocess.run([sys.executable, "-m", "codrl.cli", "train", "-c", str(cfg)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode != 0
    assert "agent.command: no program to run" in res.stderr + res.stdout


# -- real runs on the embedded model --------------------------------------------------------------
@pytest.mark.slow
def test_agent_lifecycles_are_token_exact_and_credited_like_in_process(tmp_path: Path) -> None:
    """One step in process: every trained token is a sampled one, the advantages equal those of the
    same lifecycles computed in process, and a killed program loses only its own lifecycle."""
    from codrl.algo.advantages import compute_advantages
    from codrl.train.batching import to_sequences
    from codrl.train.trainer import Trainer

    killer = tmp_path / "killed_once.py"
    cfg = config(tmp_path, f"{sys.executable} {killer}", steps=1, packs_per_step=2,
                 rollout={"repeats": 2, "pack_size": 2})
    trainer = Trainer(cfg)
    target = trainer.plan(0)[0][0].pack.pack_id  # its repeat 1 is killed at once
    killer.write_text(
        "import os, runpy, signal\n"
        f"if os.environ['CODRL_LIFECYCLE'].startswith({target + '#1#'!r}):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"runpy.run_path({str(EXAMPLE / 'agent.py')!r}, run_name='__main__')\n")
    seen: dict[str, Any] = {}
    update = trainer.update

    def spy(episodes: list) -> dict[str, float]:
        seen["episodes"] = episodes
        seen["advantages"] = [ep.advantage for ep in episodes]
        return update(episodes)

    trainer.update = spy  # type: ignore[method-assign]
    try:
        results = trainer.rollout(0)
        seen["results"] = copy.deepcopy(results)
        trainer.rollout = lambda step: results  # type: ignore[method-assign]
        m = trainer.step()
    finally:
        trainer.close()
    killed = [r for r in results if r.pack_id == target and r.repeat == 1]
    others = [r for r in results if r not in killed]
    assert len(results) == 4 and len(killed) == 1
    for r in killed:
        assert r.env_errors == len(r.episodes) and not r.model_episodes
        assert "exited with code -9" in r.episodes[0].feedback
    assert others and all(not r.env_errors and r.model_episodes for r in others)
    tok = trainer.tokenizer
    for r in others:
        assert len(r.episodes) == 2 and {ep.episode_type for ep in r.model_episodes} == {"solve", "update"}
        for c in r.experiences:
            assert c.token_exact and c.completion_ids and len(c.logprobs) == len(c.completion_ids)
            assert tok.decode(c.completion_ids, skip_special_tokens=True).strip() == c.text.strip()
    # every trained token is a sampled one: the rows' trained positions are the calls' sampled ids
    rows = to_sequences(seen["episodes"], merge_turns=False)
    sampled = [c.completion_ids for ep in seen["episodes"] for c in ep.calls if c.completion_ids and c.token_exact]
    assert [[t for t, k in zip(row.input_ids, row.mask) if k] for row in rows] == sampled
    # credit: the same lifecycles, scored in process, give the advantages the trainer trained with
    trained = [r for r in seen["results"] if r.pack_id not in {k.pack_id for k in killed}] \
        if cfg.rollout.on_env_error == "drop_group" else seen["results"]
    compute_advantages(trained, cfg.advantage)
    assert [ep.advantage for r in trained for ep in r.model_episodes] == pytest.approx(seen["advantages"])
    assert m["rollout/env_errors"] == sum(r.env_errors for r in results)


@pytest.mark.slow
def test_codrl_train_agent_two_steps_moves_the_adapter(tmp_path: Path) -> None:
    """The README's command on the embedded model: two steps, checkpoints, a moved adapter."""
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "codrl.cli", "train", "--config", str(EXAMPLE / "train.yaml"),
                          "--agent", AGENT, "--steps", "2", "--output-dir", str(out), "packs_per_step=1",
                          "rollout.repeats=3", "log.progress=false"],
                         capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2]
    assert all("reward/pos0" in h and h["tokens/trained"] > 0 for h in history)
    assert history[-1]["train/adapter_delta"] > 0  # the model the program talks to was trained
    assert (out / "checkpoints" / "latest").is_file()
    logs = list((out / "agent").glob("*.log"))
    assert len(logs) == 6  # one program run per lifecycle: 2 steps x 1 pack x 3 repeats
