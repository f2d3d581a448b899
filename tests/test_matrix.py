"""`codrl matrix`: models x evaluation sets, killed mid-run and resumed; bad input before any load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from codrl.toy.policy import build_tiny_policy, save_policy
from codrl.toy.secret_table import SecretTable

TOY_ROLLOUT = {"max_new_tokens_solve": 3, "max_new_tokens_update": 4, "update_reply_prefix": "Hints:",
               "hint_min_chars": 1, "hint_length_start": 3, "hint_length_end": 4}


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "codrl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def write(tmp: Path, data: dict) -> Path:
    path = tmp / "matrix.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("tiny")
    env = SecretTable()
    out = []
    for seed in (0, 1):
        model, tok = build_tiny_policy(env, seed=seed)
        out.append(save_policy(model, tok, root / f"tiny{seed}"))
    return out


@pytest.mark.slow
def test_matrix_2x3_killed_and_resumed(tmp_path: Path, tiny_models: list[Path]) -> None:
    out = tmp_path / "matrix"
    cfg = write(tmp_path, {
        "models": [{"name": f"tiny{i}", "path": str(p)} for i, p in enumerate(tiny_models)],
        "evals": [{"env": "secret_table", "variant": v, "pack_size": 3, "packs": 6, "repeats": 2}
                  for v in ("cod", "nohint", "ralph-first")],
        "rollout": TOY_ROLLOUT, "output_dir": str(out)})
    proc = subprocess.Popen([sys.executable, "-m", "codrl.cli", "matrix", "--config", str(cfg), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    finished: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        finished = sorted(out.glob("cells/*/*/results.json"))
        finished = [f for f in finished if not f.parent.name.endswith(".partial")]
        if len(finished) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the matrix ended before it could be killed: {proc.stderr.read()!r}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    finished = [f for f in sorted(out.glob("cells/*/*/results.json")) if not f.parent.name.endswith(".partial")]
    assert 2 <= len(finished) < 6
    before = {f: f.stat().st_mtime_ns for f in finished}
    assert not (out / "matrix.json").exists()

    resumed = run_cli("matrix", "--config", str(cfg), "--no-progress", timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    for f, mtime in before.items():  # finished cells were not recomputed
        assert f.stat().st_mtime_ns == mtime, f
    assert "all 3 cells done, skipped" in resumed.stdout or len(before) < 3
    result = json.loads((out / "matrix.json").read_text())
    assert result["complete"] is True
    assert sorted(result["cells"]) == ["tiny0", "tiny1"]
    for row in result["cells"].values():
        assert len(row) == 3
        for cell in row.values():
            assert len(cell["positions"]) == 3 and cell["n_packs"] == 6
    assert not list(out.glob("cells/*/*.partial"))
    md = (out / "matrix.md").read_text()
    assert "| tiny0 |" in md and "| tiny1 |" in md and "missing" not in md
    assert len((out / "matrix.csv").read_text().splitlines()) == 1 + 6
    assert (out / "matrix.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"models": [{"name": "m", "path": "/no/such/model"}]}, ["model 'm'", "/no/such/model", "config.json"]),
        ({"evals": [{"env": "nope"}]}, ["evals.0.env", "'nope'", "frozenlake"]),
        ({"evals": [{"env": "frozenlake", "variant": "sometimes"}]}, ["evals.0.variant", "'cod'", "'ralph-first'"]),
        ({"evals": [{"env": "frozenlake", "env_params": {"bogus": 1}}]}, ["bogus", "unknown key", "allowed keys"]),
        ({"models": [{"name": "a"}, {"name": "a"}]}, ["models: names must be unique"]),
    ],
)
def test_bad_matrix_config_is_one_line_before_loading(tmp_path: Path, change: dict, needles: list[str]) -> None:
    data = {"models": [{"name": "base", "path": "embedded"}], "evals": [{"env": "frozenlake"}],
            "output_dir": str(tmp_path / "out")}
    data.update(change)
    t0 = time.monotonic()
    proc = run_cli("matrix", "--config", str(write(tmp_path, data)))
    one_error_line(proc, *needles)
    assert time.monotonic() - t0 < 60  # no model was loaded
    assert not (tmp_path / "out" / "cells").exists()


def test_unreachable_endpoint_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = {"models": [{"name": "api", "endpoint": f"http://127.0.0.1:{port}/v1"}], "evals": [{"env": "frozenlake"}],
            "output_dir": str(tmp_path / "out")}
    proc = run_cli("matrix", "--config", str(write(tmp_path, data)))
    one_error_line(proc, "model 'api'", "does not answer")


@pytest.mark.slow
def test_matrix_from_options(tmp_path: Path, tiny_models: list[Path]) -> None:
    out = tmp_path / "m"
    proc = run_cli("matrix", "-m", str(tiny_models[0]), "-m", str(tiny_models[1]), "-e", "secret_table",
                   "-e", "secret_table/nohint", "--packs", "3", "-k", "2", "-r", "1", "--output-dir", str(out),
                   "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "matrix.json").read_text())
    assert result["complete"] and result["models"] == ["tiny0", "tiny1"]
    assert result["eval_labels"] == ["secret_table/cod/k2", "secret_table/nohint/k2"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-m", "embedded"], "at least one --model and one --eval"),
        (["-c", "x.yaml", "-m", "embedded", "-e", "frozenlake"], "not both"),
        (["-m", "embedded", "-e", "frozenlake/often"], "evals.0.variant"),
        (["-m", "/no/such/folder", "-e", "frozenlake"], "no config.json"),
    ],
)
def test_matrix_options_bad_input(tmp_path: Path, args: list[str], needle: str) -> None:
    one_error_line(run_cli("matrix", *args, "--output-dir", str(tmp_path / "o")), needle)


@pytest.mark.parametrize(("variant", "mode", "ralph", "summary_mode"), [
    ("cod", "cod", "none", "cod"),
    ("nohint", "nohint", "none", "nohint"),
    ("curator", "curator", "none", "curator"),
    ("ralph-first", "cod", "first", "ralph"),
    ("ralph-expand", "cod", "expand", "ralph"),
    ("ralph-first-nohint", "nohint", "first", "ralph-nohint"),
    ("ralph-first-curator", "curator", "first", "ralph-curator"),
    ("ralph-expand-nohint", "nohint", "expand", "ralph-nohint"),
    ("ralph-expand-curator", "curator", "expand", "ralph-curator"),
])
def test_variants_map_to_context_and_ralph(variant: str, mode: str, ralph: str, summary_mode: str) -> None:
    from codrl.eval.matrix import VARIANT_MODE, VARIANTS, MatrixConfig, eval_config, variant_settings

    assert variant in VARIANTS and VARIANT_MODE[variant] == summary_mode
    assert variant_settings(variant) == (mode, ralph)
    cfg = MatrixConfig(models=[{"name": "m"}], evals=[{"env": "frozenlake", "variant": variant, "pack_size": 3}],
                       rollout={"curator_max_lessons": 5})
    ev = eval_config(cfg, cfg.evals[0])
    assert (ev.rollout.mode, ev.rollout.ralph, ev.contexts) == (mode, ralph, [mode])
    assert ev.rollout.result_mode == summary_mode and ev.rollout.curator_max_lessons == 5
    assert cfg.evals[0].label == f"frozenlake/{variant}/k3"


def test_variant_settings_rejects_unknown() -> None:
    from codrl.errors import CodrlError
    from codrl.eval.matrix import variant_settings

    with pytest.raises(CodrlError, match="'ralph-first-curator'"):
        variant_settings("ralph-often")


def test_curator_and_ralph_nohint_cells_read_and_resume(tmp_path: Path) -> None:
    """Cells of the new variants are evaluated with a scripted engine, read back by their summary
    mode, and skipped when the matrix runs again."""
    from codrl.backends.scripted import FunctionBackend
    from codrl.eval.matrix import MatrixConfig, run_matrix

    variants = ("curator", "ralph-first-nohint", "ralph-expand-curator")
    cfg = MatrixConfig(models=[{"name": "echo"}],
                       evals=[{"env": "secret_table", "variant": v, "pack_size": 2, "packs": 3} for v in variants],
                       rollout=TOY_ROLLOUT, output_dir=str(tmp_path / "m"))
    engines: list[FunctionBackend] = []

    def factory(spec: object) -> FunctionBackend:
        engines.append(FunctionBackend(
            lambda r: "ADD: value 3" if "Current lessons" in r.messages[-1]["content"] else "3"))
        return engines[-1]

    result = run_matrix(cfg, progress=False, backend_factory=factory)
    assert result.complete and engines[0].requests
    for v in variants:
        cell = result.cells["echo"][f"secret_table/{v}/k2"]
        assert len(cell.positions) == 2
        assert cell.n_packs == (6 if "expand" in v else 3)  # expand: one pack per task
    again = run_matrix(cfg, progress=False, backend_factory=factory)
    assert len(engines) == 1 and again.cells == result.cells  # every cell skipped
