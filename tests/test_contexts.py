"""Contexts: one type per kind of context, a registry, variants' names, and a context of your own
(examples/notes_context.py) used by import path in codrl eval, codrl train and codrl matrix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from codrl.errors import CodrlError
from codrl.rollout.config import RolloutConfig, result_mode
from codrl.rollout.contexts import (
    CONTEXTS,
    Context,
    CuratorContext,
    HintsContext,
    NoHintContext,
    Variant,
    context_class,
    make_context,
)
from codrl.rollout.experience import Turn

sys.path.insert(0, str(Path(__file__).parent))
from toy_config import toy_train_config  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PLUGIN = "notes_context:NotesContext"


@pytest.fixture
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


def test_registry_names_and_errors(examples_on_path: None) -> None:
    assert CONTEXTS == ("cod", "nohint", "curator")
    assert [context_class(n) for n in CONTEXTS] == [HintsContext, NoHintContext, CuratorContext]
    assert context_class(PLUGIN).name == "notes" and issubclass(context_class(PLUGIN), Context)
    with pytest.raises(CodrlError, match="'sometimes' is not allowed; allowed values: 'cod', 'nohint', 'curator'"):
        context_class("sometimes")
    with pytest.raises(CodrlError, match="cannot import"):
        context_class("no_such_module_xyz:Thing")
    with pytest.raises(CodrlError, match="not a subclass"):
        context_class("codrl.rollout.prompts:ramp")
    with pytest.raises(ValueError, match="is not allowed"):
        RolloutConfig(mode="sometimes")
    assert RolloutConfig(mode=PLUGIN).result_mode == "notes"


@pytest.mark.parametrize(("context", "ralph", "mode", "label"), [
    ("cod", "none", "cod", "cod"), ("nohint", "none", "nohint", "nohint"), ("curator", "none", "curator", "curator"),
    ("cod", "first", "ralph", "ralph-first"), ("nohint", "expand", "ralph-nohint", "ralph-expand-nohint"),
    ("curator", "first", "ralph-curator", "ralph-first-curator"), (PLUGIN, "none", "notes", PLUGIN),
    (PLUGIN, "expand", "ralph-notes", f"ralph-expand-{PLUGIN}"),
])
def test_variant_names_round_trip(context: str, ralph: str, mode: str, label: str, examples_on_path: None) -> None:
    v = Variant(context, ralph)
    assert (v.mode, v.label) == (mode, label) and Variant.parse(label) == v
    assert result_mode(context, ralph) == mode


def test_builtin_contexts_apply_replies() -> None:
    cfg = RolloutConfig(hint_min_chars=4)
    turns = [Turn(observation="obs", reply="r", feedback="fb", valid=True, reward=1.0)]
    cod = make_context("cod", cfg)
    msgs, prefix = cod.update_request("system", "obs", turns, 1.0, "fb")
    assert prefix == "Hints:\n" and "obs" in msgs[-1]["content"]
    assert cod.apply("- code 2 is left", 6).valid and cod.hints == "- code 2 is left"
    bad = cod.apply("", 1)
    assert not bad.valid and bad.own_reward == -cfg.hint_penalty_coef and cod.hints == "- code 2 is left"  # kept
    assert not make_context("nohint", cfg).updates
    cur = make_context("curator", cfg)
    upd = cur.apply("ADD: avoid the holes\n", 5)
    assert upd.valid and cur.hints and upd.details["curator_ops"]["added"] == 1
    with pytest.raises(ValueError, match="not allowed"):
        make_context("often", cfg)


def test_plugin_context_keeps_a_bounded_note_list(examples_on_path: None) -> None:
    ctx = make_context(PLUGIN, RolloutConfig(hint_min_chars=3))
    msgs, prefix = ctx.update_request("system", "obs", [], None, "fb")
    assert prefix == "Note:" and "Reward of this task" not in msgs[0]["content"]  # a hidden reward stays hidden
    for i in range(8):
        assert ctx.apply(f" code {i} moves left\nmore text", 5).valid
    assert ctx.hints.splitlines() == [f"- code {i} moves left" for i in range(2, 8)]
    assert not ctx.apply("", 1).valid and len(ctx.hints.splitlines()) == 6


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "codrl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_plugin_context_in_codrl_eval(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = _cli("eval", "--model", str(tiny_dir), "--env", "secret_table", "--packs", "2", "-k", "3", "-r", "1",
                "--contexts", f"cod,{PLUGIN}", "--out", str(out), "rollout.max_new_tokens_solve=3",
                "rollout.max_new_tokens_update=4", "rollout.hint_min_chars=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary["modes"] == ["cod", "notes"]
    lines = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    notes = [lc for lc in lines if lc["mode"] == "notes"]
    assert len(notes) == 2 and all(len(lc["episodes"]) == 3 for lc in notes)
    bad = _cli("eval", "--env", "secret_table", "--contexts", "cod,nope_module:Nope", timeout=60)
    assert bad.returncode == 2 and "--contexts: context 'nope_module:Nope': cannot import" in bad.stderr


def test_plugin_context_in_codrl_train(tiny_dir: Path, tmp_path: Path, examples_on_path: None) -> None:
    from codrl.train.config import TrainConfig
    from codrl.train.trainer import Trainer

    data = toy_train_config(tiny_dir, steps=1, packs_per_step=2, save_every=0, output_dir=str(tmp_path))
    data["rollout"]["mode"] = PLUGIN
    data["eval"] = {"packs": 2, "at_start": False, "at_end": True}
    trainer = Trainer(TrainConfig.model_validate(data))
    history = trainer.train()
    trainer.close()
    assert history and history[-1]["train/groups"] > 0
    assert [p.position for p in trainer.evals["secret_table"][1].positions["notes"]] == [0, 1, 2]


def test_plugin_context_in_codrl_matrix(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    proc = _cli("matrix", "-m", str(tiny_dir), "-e", f"secret_table/{PLUGIN}", "-e", "secret_table/ralph-first",
                "--packs", "2", "-k", "2", "-r", "1", "--output-dir", str(out), "--no-progress",
                "rollout.max_new_tokens_solve=3", "rollout.max_new_tokens_update=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "matrix.json").read_text())
    assert result["complete"] and len(result["eval_labels"]) == 2
    cells = next(iter(result["cells"].values()))
    plugin_cell = next(v for k, v in cells.items() if "notes_context" in k)
    assert len(plugin_cell["positions"]) == 2
