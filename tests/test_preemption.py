"""Preemption and storage faults: SIGTERM stops at a step boundary with a checkpoint (exit 0) and a
resume matches an uninterrupted run; a damaged checkpoint is passed over for the previous one; a
save on a full disk fails with a clear error and leaves the previous checkpoint intact."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

from codrl.errors import CodrlError
from codrl.train.config import TrainConfig
from codrl.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from toy_config import toy_train_config  # noqa: E402

pytestmark = pytest.mark.fault
STEPS = 5


def _config(model_dir: Path, out: Path, **over: object) -> dict:
    return toy_train_config(model_dir, **{"steps": STEPS, "packs_per_step": 8, "seed": 3, "output_dir": str(out),
                                          **over})


def _train(config: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "codrl.cli", "train", "--config", str(config), "--output-dir",
                             str(out), *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigterm_at_random_moments_then_resume_matches_uninterrupted(tiny_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(_config(tiny_dir, tmp_path / "unused", save_every=0)))
    ref = _train(config, tmp_path / "ref")
    assert ref.wait(timeout=900) == 0, ref.stderr.read() if ref.stderr else ""

    rng = np.random.default_rng(11)
    stops = 0
    for attempt in range(STEPS + 2):
        run = _train(config, tmp_path / "run", *(["--resume"] if attempt else []))
        assert run.stdout is not None
        for line in run.stdout:  # the first finished step of this process, then a seeded pause
            if line.startswith("step "):
                break
        try:
            run.wait(timeout=float(rng.uniform(0.0, 1.5)))
        except subprocess.TimeoutExpired:
            run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=900)
        assert run.returncode == 0, err[-2000:]
        if "stopped by SIGTERM" in out:
            stops += 1
        else:
            break
    assert stops >= 1 and (tmp_path / "run" / "history.json").is_file()
    ref_hist = json.loads((tmp_path / "ref" / "history.json").read_text())
    run_hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in run_hist] == list(range(1, STEPS + 1))  # no step lost or repeated
    for a, b in zip(ref_hist, run_hist, strict=True):
        for key in ("reward/mean", "reward/pos0", "reward/pos2", "tokens/trained"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), (a["step"], key)
    last = f"step-{STEPS:06d}"
    w_ref = torch.load(tmp_path / "ref" / "checkpoints" / last / "trainable.pt")
    w_run = torch.load(tmp_path / "run" / "checkpoints" / last / "trainable.pt")
    assert all(torch.allclose(t, w_run[n], atol=1e-6) for n, t in w_ref.items())


def _two_checkpoints(tiny_dir: Path, out: Path) -> TrainConfig:
    cfg = TrainConfig.model_validate(_config(tiny_dir, out, steps=2, save_every=1))
    trainer = Trainer(cfg, console=Console(file=io.StringIO()))
    trainer.train()
    trainer.close()
    return cfg


def _damage(path: Path, how: str) -> Path:
    if how == "truncated":
        f = path / "trainable.pt"
        f.write_bytes(f.read_bytes()[:100])
    elif how == "missing_tensor":
        f = path / "trainable.pt"
        tensors = torch.load(f)
        tensors.pop(sorted(tensors)[0])
        torch.save(tensors, f)
    elif how == "bad_json":
        f = path / "state.json"
        f.write_text('{"step": 2, "rng": ')
    else:
        f = path / "optimizer.pt"
        f.unlink()
    return f


@pytest.mark.parametrize("how", ["truncated", "missing_tensor", "bad_json", "missing_file"])
def test_damaged_checkpoint_falls_back_to_the_previous(tiny_dir: Path, tmp_path: Path, how: str) -> None:
    cfg = _two_checkpoints(tiny_dir, tmp_path)
    newest = tmp_path / "checkpoints" / "step-000002"
    damaged = _damage(newest, how)
    text = io.StringIO()
    trainer = Trainer(cfg, console=Console(file=text, width=400))
    assert trainer.resume() and trainer.step_idx == 1
    out = text.getvalue()
    assert f"checkpoint {newest} is damaged and was skipped" in out, out
    assert "resumed from" in out and "step-000001" in out
    if how == "missing_tensor":
        assert "lacks 1 tensor" in out
    assert damaged.parent == newest


def test_save_on_a_full_disk_fails_clearly_and_keeps_the_previous(tiny_dir: Path, tmp_path: Path) -> None:
    if os.getuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small tmpfs needs root to mount")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is refused here")
    try:
        cfg = TrainConfig.model_validate(_config(tiny_dir, disk / "run", steps=3, save_every=1))
        trainer = Trainer(cfg, console=Console(file=io.StringIO()))
        trainer.step()
        first = trainer.save()
        stat = os.statvfs(disk)
        with open(disk / "filler", "wb") as f:  # leave 16 KiB: far less than a checkpoint
            f.write(b"\0" * (stat.f_bavail * stat.f_frsize - 16 * 1024))
        trainer.step()
        with pytest.raises(CodrlError, match=r"checkpoint step 2 could not be written .*No space left on device.* "
                                             r"\(the previous checkpoint .*step-000001 is intact\)"):
            trainer.save()
        assert (disk / "run" / "checkpoints" / "latest").read_text() == first.name
        assert not list((disk / "run" / "checkpoints").glob(".tmp-*"))  # the partial copy is gone
        (disk / "filler").unlink()
        again = Trainer(cfg, console=Console(file=io.StringIO()))
        assert again.resume() and again.step_idx == 1
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
