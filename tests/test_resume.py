"""Kill a training run with SIGKILL mid-run, resume it, and match an uninterrupted run exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from codrl.toy.policy import build_tiny_policy, save_policy
from codrl.toy.secret_table import SecretTable

sys.path.insert(0, str(Path(__file__).parent))
from toy_config import toy_train_config  # noqa: E402

STEPS = 6


def write_config(tmp: Path, model_dir: Path) -> Path:
    cfg = toy_train_config(model_dir, steps=STEPS, packs_per_step=8, save_every=1, seed=3)
    path = tmp / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(config: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "codrl.cli", "train", "--config", str(config),
                             "--output-dir", str(out), *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def latest_step(out: Path) -> int:
    pointer = out / "checkpoints" / "latest"
    return int(pointer.read_text().split("-")[1]) if pointer.is_file() else 0


@pytest.mark.slow
@pytest.mark.fault
def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    env = SecretTable()
    model, tok = build_tiny_policy(env, seed=0)
    model_dir = save_policy(model, tok, tmp_path / "tiny")
    config = write_config(tmp_path, model_dir)

    ref = train(config, tmp_path / "ref")
    assert ref.wait(timeout=600) == 0, ref.stderr.read().decode() if ref.stderr else ""

    run = train(config, tmp_path / "run")
    deadline = time.time() + 600
    while latest_step(tmp_path / "run") < 2 and time.time() < deadline and run.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # land inside a later step
    assert run.poll() is None, "training finished before it could be killed"
    run.send_signal(signal.SIGKILL)
    run.wait()
    killed_at = latest_step(tmp_path / "run")
    assert 2 <= killed_at < STEPS

    resumed = train(config, tmp_path / "run", "--resume")
    err = resumed.communicate(timeout=600)[1].decode()
    assert resumed.returncode == 0, err

    ref_hist = json.loads((tmp_path / "ref" / "history.json").read_text())
    run_hist = json.loads((tmp_path / "run" / "history.json").read_text())
    # no lost and no duplicated step
    assert [h["step"] for h in run_hist] == list(range(1, STEPS + 1))
    for a, b in zip(ref_hist, run_hist):
        for key in ("reward/mean", "reward/pos0", "reward/pos2", "tokens/trained"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), (a["step"], key)
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5, abs=1e-7)
    w_ref = torch.load(tmp_path / "ref" / "checkpoints" / f"step-{STEPS:06d}" / "trainable.pt")
    w_run = torch.load(tmp_path / "run" / "checkpoints" / f"step-{STEPS:06d}" / "trainable.pt")
    for name, t in w_ref.items():
        assert torch.allclose(t, w_run[name], atol=1e-6), name
