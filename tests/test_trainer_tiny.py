"""Trainer paths on the tiny policy (fast): LoRA + KL to the adapter-free reference, full fine-tuning,
recomputed old logprobs, several optimizer steps per rollout batch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from codrl.train.config import TrainConfig
from codrl.train.trainer import Trainer
from codrl.train.rollouts import rollout_logprobs_are_old

sys.path.insert(0, str(Path(__file__).parent))
from toy_config import toy_train_config  # noqa: E402




def config(model_dir: Path, out: Path, **over: object) -> TrainConfig:
    data = toy_train_config(model_dir, steps=1, packs_per_step=4, save_every=0, output_dir=str(out))
    data.update(over)
    return TrainConfig.model_validate(data)


def test_lora_with_kl_to_reference(tiny_dir: Path, tmp_path: Path) -> None:
    cfg = config(tiny_dir, tmp_path, model={"path": str(tiny_dir), "lora": {"r": 4, "alpha": 8,
                 "target_modules": ["q_proj", "v_proj"]}}, loss={"kl_coef": 0.1, "kl_estimator": "k3"})
    trainer = Trainer(cfg)
    assert all("lora_" in n for n, p in trainer.model.named_parameters() if p.requires_grad)
    m = trainer.step()
    assert "train/kl" in m and m["train/kl"] >= 0.0
    assert m["train/grad_norm"] >= 0.0


def test_kl_needs_lora(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = Trainer(config(tiny_dir, tmp_path, loss={"kl_coef": 0.1}))
    results = trainer.rollout(0)
    with pytest.raises(ValueError, match="LoRA"):
        trainer.update([ep for r in results for ep in r.model_episodes])


def test_full_finetune_recompute_and_minibatches(tiny_dir: Path, tmp_path: Path) -> None:
    cfg = config(tiny_dir, tmp_path, old_logprobs="recompute", updates_per_step=2, steps=2, save_every=1,
                 log={"backends": ["tensorboard"], "progress": False})
    trainer = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    history = trainer.train()
    assert [h["step"] for h in history] == [1, 2]
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    for key in ("reward/pos0", "reward/pos2", "train/loss", "train/entropy", "adv/return_mean"):
        assert key in history[-1]
    assert (tmp_path / "checkpoints" / "step-000002" / "model" / "config.json").is_file()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "history.json").is_file()


def test_rollout_uses_updated_weights(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = Trainer(config(tiny_dir, tmp_path))
    assert trainer.backend.model is trainer.model  # no copy: the next rollout samples the new weights
    assert rollout_logprobs_are_old(trainer.cfg, trainer.backend)


def test_mixture_metrics_and_evaluation_per_environment(tiny_dir: Path, tmp_path: Path) -> None:
    """A weighted mixture: per-environment step metrics, evaluation of every training env and an
    extra evaluation env, one report folder and one plot panel per environment."""
    envs = [{"name": "secret_table", "weight": 1.0},
            {"name": "secret_table", "params": {"name": "secret_pairs", "keys_per_pack": 2}, "weight": 3.0}]
    extra = [{"name": "secret_table", "params": {"name": "secret_held_out", "keys_per_pack": 3}}]
    cfg = config(tiny_dir, tmp_path, envs=envs, packs_per_step=8,
                 eval={"at_start": False, "at_end": True, "packs": 3, "envs": extra},
                 log={"backends": ["tensorboard"], "progress": False})
    trainer = Trainer(cfg)
    assert [e.name for e in trainer.eval_envs] == ["secret_table", "secret_pairs", "secret_held_out"]
    history = trainer.train()
    m = history[-1]
    played = {p[0].name for p in trainer.plan.packs(0)}
    assert played == {"secret_table", "secret_pairs"}  # 8 packs at weights 1:3 drew both
    for name in played:
        assert f"reward/{name}/mean" in m and f"reward/{name}/pos0" in m and f"reward/{name}/pos2" in m
    for name in ("secret_table", "secret_pairs", "secret_held_out"):
        assert (tmp_path / "eval" / "step-000001" / name / "results.json").is_file()
        assert set(trainer.evals[name]) == {1}
    assert (tmp_path / "reward_by_position.png").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(tmp_path / "tb")).Reload().Tags()["scalars"]
    assert "eval/secret_held_out/pos0" in tags and "reward/secret_pairs/pos0" in tags


def test_lora_checkpoint_loads_merged_for_evaluation(tiny_dir: Path, tmp_path: Path) -> None:
    """A LoRA checkpoint's model/ folder (a peft adapter) evaluates like a full model: same logits."""
    from codrl.backends.hf import HFBackend

    cfg = config(tiny_dir, tmp_path, model={"path": str(tiny_dir), "lora": {"r": 4, "alpha": 8}},
                 optim={"lr": 5e-2})
    trainer = Trainer(cfg)
    trainer.train()
    folder = tmp_path / "checkpoints" / "step-000001" / "model"
    assert (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()
    loaded = HFBackend.from_pretrained(str(folder))
    ids = torch.tensor([[2, 5, 7, 9, 11]])
    with torch.no_grad():
        want = trainer.model(input_ids=ids).logits
        got = loaded.model(input_ids=ids).logits
        base = HFBackend.from_pretrained(str(tiny_dir)).model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, base, atol=1e-4)  # the adapter really changed the model


@pytest.mark.parametrize("mode,ralph,result", [("cod", "none", "cod"), ("nohint", "none", "nohint"),
                                               ("curator", "none", "curator"), ("cod", "first", "ralph")])
def test_every_context_trains_and_evaluates(tiny_dir: Path, tmp_path: Path, mode: str, ralph: str,
                                            result: str) -> None:
    """Training in any context (and on Ralph packs) logs its evaluation by position and draws its
    curves from the results of the context it played, not from the ``cod`` ones."""
    rollout = {**toy_train_config(tiny_dir)["rollout"], "mode": mode, "ralph": ralph}
    if mode == "curator":
        rollout["max_new_tokens_update"] = 8
    cfg = config(tiny_dir, tmp_path, rollout=rollout, eval={"packs": 2, "at_start": True, "at_end": True},
                 log={"backends": ["tensorboard"], "progress": False})
    trainer = Trainer(cfg)
    logged: dict[str, float] = {}
    trainer._log = lambda metrics, step: logged.update(metrics)  # type: ignore[method-assign]
    history = trainer.train()
    assert history and history[-1]["train/groups"] > 0
    assert {f"eval/pos{i}" for i in range(3)} <= set(logged), sorted(logged)
    summary = trainer.evals["secret_table"][1]
    assert [p.position for p in summary.positions[result]] == [0, 1, 2]
    assert (tmp_path / "reward_by_position.png").is_file()


def test_signal_counts_and_adapter_delta(tiny_dir: Path, tmp_path: Path) -> None:
    """Every step logs how many groups had reward variance; with LoRA the adapter's distance from
    the base model starts at exactly 0 (peft's zero-initialised B) and grows once a group has a signal."""
    from codrl.train.diagnostics import adapter_delta

    cfg = config(tiny_dir, tmp_path, steps=2, model={"path": str(tiny_dir), "lora": {"r": 4, "alpha": 8}},
                 optim={"lr": 1e-2})
    trainer = Trainer(cfg)
    assert adapter_delta(trainer.model) == 0.0
    history = trainer.train()
    for h in history:
        assert 0 <= h["train/groups_with_signal"] <= h["train/groups"]
        assert h["train/groups_with_signal"] == round(h["train/groups"] * (1 - h["adv/degenerate_group_frac"]))
    assert sum(h["train/groups_with_signal"] for h in history) > 0
    assert history[-1]["train/adapter_delta"] > 0.0


def test_verdict_says_when_nothing_was_learned() -> None:
    from codrl.train.diagnostics import verdict

    flat = [{"train/groups": 5, "train/groups_with_signal": 0} for _ in range(3)]
    learned, line = verdict(flat, 0.0)
    assert not learned and line.startswith("0 of 15 groups had reward variance") and "did not change" in line
    learned, line = verdict([{"train/groups": 5, "train/groups_with_signal": 2}, flat[0]], 0.5)
    assert learned and "2 of 10 groups" in line and "1 of 2 steps" in line
    learned, line = verdict([{"train/groups": 5, "train/groups_with_signal": 2}], 0.0)
    assert not learned and "did not move" in line
    assert verdict([{"train/groups": 5, "train/groups_with_signal": 1}], None)[0]  # full fine-tuning


def test_metrics_reach_tensorboard_wandb_and_mlflow(tiny_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """One run logs the same step metrics to all three sinks: TensorBoard event files, an offline
    W&B run and an MLflow run in a local file store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = config(tiny_dir, tmp_path, log={"backends": ["tensorboard", "wandb", "mlflow"], "wandb_mode": "offline",
                                          "progress": False})
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert "reward/pos0" in EventAccumulator(str(tmp_path / "tb")).Reload().Tags()["scalars"]
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and b"reward/pos0" in runs[0].read_bytes()
    from mlflow.tracking import MlflowClient

    client = MlflowClient((tmp_path / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("codrl")
    (run,) = client.search_runs([exp.experiment_id])
    history = client.get_metric_history(run.info.run_id, "reward/pos0")
    assert [m.step for m in history] == [1] and run.info.status == "FINISHED"
    assert run.data.params["rollout.pack_size"] == "3"


def test_old_log_keys_name_their_replacement() -> None:
    from codrl.config import validate
    from codrl.errors import CodrlError

    with pytest.raises(CodrlError, match="log.tensorboard was replaced by log.backends"):
        validate(TrainConfig, {"envs": [{"name": "secret_table"}], "log": {"tensorboard": False}})
    with pytest.raises(CodrlError, match="log.backends.0"):
        validate(TrainConfig, {"envs": [{"name": "secret_table"}], "log": {"backends": ["neptune"]}})
