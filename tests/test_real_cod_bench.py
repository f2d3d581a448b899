"""Plumbing of bench/real_cod_effect.py at tiny sizes (the tiny policy on SecretTable): both arms
train, the three models are evaluated with both contexts on the same packs, the RESULT line has
every key, and a second run finds every stage cached. The effect itself is the bench's business."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from support import load_bench  # noqa: E402
from toy_config import toy_train_config  # noqa: E402

KEYS = ("base_gain", "cod_gain", "grpo_gain", "cod_minus_grpo_late", "cod_nohint_gain", "minutes", "device")


def test_experiment_stages_result_and_cache(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = toy_train_config(tiny_dir, steps=1, packs_per_step=2, save_every=1,
                           model={"path": str(tiny_dir), "lora": {"r": 4, "alpha": 8}})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    args = ["--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "out"), "--eval-packs", "3",
            "--eval-repeats", "2", "--eval-k", "3", "--no-progress"]
    bench = load_bench("real_cod_effect")
    first = bench.main(args)
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("RESULT ") and [kv.split("=")[0] for kv in last.split()[1:]] == list(KEYS), last
    assert "device=cpu" in last and "means: world secret_table, group of 4 repeats" in out
    for arm in ("cod", "grpo"):
        history = json.loads((tmp_path / "out" / f"train-{arm}" / "history.json").read_text())
        assert len(history) == 1 and "train/groups_with_signal" in history[0]
    for model in ("base", "cod", "grpo"):
        rows = [json.loads(line) for line in (tmp_path / "out" / f"eval-{model}" / "trajectories.jsonl").open()]
        assert sorted({r["mode"] for r in rows}) == ["cod", "nohint"]
        assert len(rows) == 2 * 3 * 2 and all(len(r["episodes"]) == 3 for r in rows)
    # the trained arms were evaluated from their checkpoints, on the base model's packs
    packs = {m: {json.loads(line)["pack_id"] for line in (tmp_path / "out" / f"eval-{m}" / "trajectories.jsonl").open()}
             for m in ("base", "cod", "grpo")}
    assert packs["base"] == packs["cod"] == packs["grpo"] and len(packs["base"]) == 3
    assert "target " in out and (tmp_path / "out" / "reward_by_position.png").is_file()

    again = bench.main(args)  # every stage cached: nothing is trained or played again
    out = capsys.readouterr().out
    assert out.count("[cached]") == 5 and "minutes=0.0" in out
    assert {k: v[0] for k, v in again.items()} == {k: v[0] for k, v in first.items()}

    args[args.index("--eval-packs") + 1] = "2"  # other evaluation settings: the cached reports are stale
    bench.main(args)
    out = capsys.readouterr().out
    assert out.count("[cached]") == 2 and out.count("[stale]") == 3  # the arms stay trained
    for model in ("base", "cod", "grpo"):
        rows = [json.loads(line) for line in (tmp_path / "out" / f"eval-{model}" / "trajectories.jsonl").open()]
        assert len({r["pack_id"] for r in rows}) == 2 and len(rows) == 2 * 2 * 2
