"""The small SecretTable training config shared by the tiny-policy trainer tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def toy_train_config(model_dir: Path, **over: Any) -> dict[str, Any]:
    """A TrainConfig dict for the tiny policy on SecretTable (fast on CPU); ``over`` replaces keys."""
    data: dict[str, Any] = {
        "envs": [{"name": "secret_table"}],
        "rollout": {"pack_size": 3, "repeats": 4, "max_new_tokens_solve": 3, "max_new_tokens_update": 4,
                    "update_reply_prefix": "Hints:", "hint_min_chars": 1, "hint_length_start": 3,
                    "hint_length_end": 4},
        "model": {"path": str(model_dir), "lora": None},
        "optim": {"lr": 1e-3},
        "eval": {"at_start": False, "at_end": False},
        "log": {"backends": [], "progress": False},
    }
    data.update(over)
    return data
