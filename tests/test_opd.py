"""On-policy distillation: teachers loaded and checked at start-up, scored on the sampled tokens,
and their term in the update (codrl.train.teachers, codrl.algo.distill)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from codrl.algo.distill import distill_advantages
from codrl.algo.losses import PolicyLossConfig, token_logprobs
from codrl.backends.hf import HFBackend
from codrl.errors import CodrlError
from codrl.rollout.experience import Experience, ModelEpisode
from codrl.toy.policy import build_tiny_policy, save_policy
from codrl.toy.secret_table import SecretTable
from codrl.train.batching import TrainSeq, to_sequences
from codrl.train.config import TrainConfig
from codrl.train.teachers import load_teachers
from codrl.train.update import PolicyUpdate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from support import load_bench  # noqa: E402


def opd_config(student: Path | str, teachers: list[dict[str, Any]], **over: Any) -> TrainConfig:
    """A distillation config on SecretTable (one environment unless ``envs`` is given)."""
    return TrainConfig.model_validate({"envs": [{"name": "secret_table"}],
                                       "model": {"path": str(student), "lora": None},
                                       "loss": {"variant": "opd"}, "teachers": teachers, **over})


def episodes(tokenizer: Any) -> list[ModelEpisode]:
    """Solve and update episodes at positions 0 and 1 that share a prompt prefix (token ids of the
    tiny vocabulary; the rollout logprobs are recomputed by the update)."""
    g = torch.Generator().manual_seed(3)
    vocab = len(tokenizer)
    shared = torch.randint(4, vocab, (12,), generator=g).tolist()
    out = []
    for i in range(6):
        prompt = shared + torch.randint(4, vocab, (3 + i,), generator=g).tolist()
        completion = torch.randint(4, vocab, (4,), generator=g).tolist()
        kind = "update" if i % 3 == 2 else "solve"
        call = Experience(pack_id="p", repeat=i, episode_type=kind, position=i % 2, turn=0, prompt_ids=prompt,
                          completion_ids=completion, logprobs=[0.0] * 4, text="", env="secret_table")
        out.append(ModelEpisode(kind, i % 2, [call], own_reward=0.0, advantage=0.5 if i % 2 else -0.5))
    return out


def gradients_of(cfg: TrainConfig) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Gradients of one accumulation of the student of ``cfg`` on :func:`episodes`, and its KL metrics."""
    student = HFBackend.from_pretrained(cfg.model.path)
    student.model.train()
    update = PolicyUpdate(cfg, student.model, torch.optim.SGD(student.model.parameters(), lr=0.1), student.pad_id)
    rows = to_sequences(episodes(student.tokenizer))
    update.recompute_old_logprobs(rows, [rows])
    assert update.teachers is not None
    update.teachers.score(rows, update.temperature)
    update.accumulate(rows)
    grads = [p.grad.detach().clone() for p in student.model.parameters() if p.grad is not None]
    return grads, update.teachers.metrics(lambda sums: sums)


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A different tiny policy with the same vocabulary as ``tiny_dir`` (another seed, no warm-up)."""
    model, tok = build_tiny_policy(SecretTable(), seed=1)
    return save_policy(model, tok, tmp_path_factory.mktemp("other") / "policy")


def test_teacher_equal_to_student_gives_zero_term_and_zero_gradient(tiny_dir: Path, other_dir: Path) -> None:
    """Teacher == student: the per-token KL is zero at every position, and so is the gradient; another
    teacher gives a nonzero KL and gradient."""
    grads, kl = gradients_of(opd_config(tiny_dir, [{"envs": ["secret_table"], "path": str(tiny_dir)}]))
    assert grads and max(float(g.abs().max()) for g in grads) < 1e-6
    assert set(kl) >= {"opd/pos0/kl", "opd/pos1/kl", "opd/secret_table/pos0/kl", "opd/secret_table/pos1/kl"}
    assert all(abs(v) < 1e-5 for v in kl.values())
    grads, kl = gradients_of(opd_config(tiny_dir, [{"envs": ["secret_table"], "path": str(other_dir)}]))
    assert max(float(g.abs().max()) for g in grads) > 1e-3
    assert all(abs(v) > 1e-2 for v in kl.values())


def test_a_training_step_with_the_student_as_teacher_logs_zero_kl(tiny_dir: Path, tmp_path: Path) -> None:
    """One trainer step distilling the student into itself: solve and update episodes of both pack
    positions are scored by the teacher, and the logged KL is zero at every position."""
    from codrl.train.trainer import Trainer

    cfg = opd_config(tiny_dir, [{"envs": ["secret_table"], "path": str(tiny_dir)}], steps=1, packs_per_step=2,
                     rollout={"pack_size": 2, "repeats": 2, "max_new_tokens_solve": 3, "max_new_tokens_update": 4,
                              "update_reply_prefix": "Hints:", "hint_min_chars": 1},
                     eval={"at_start": False, "at_end": False}, log={"backends": [], "progress": False},
                     save_every=0, output_dir=str(tmp_path))
    trainer = Trainer(cfg)
    logged: dict[str, float] = {}
    trainer._log = lambda metrics, step: logged.update(metrics)  # type: ignore[method-assign]
    try:
        trainer.evaluate("step-000000")  # at the start the teacher is evaluated too, once
        m = trainer.step()
    finally:
        trainer.close()
    kl = {k: v for k, v in m.items() if k.startswith("train/opd/")}
    assert set(kl) == {f"train/opd/{e}pos{p}/kl" for e in ("", "secret_table/") for p in (0, 1)}
    assert all(abs(v) < 1e-5 for v in kl.values())
    assert {"teacher/secret_table/pos0", "eval/pos0"} <= set(logged)
    assert logged["teacher/secret_table/pos0"] == logged["eval/pos0"]  # the student is its own teacher
    assert (tmp_path / "teacher" / "eval" / "secret_table" / "results.json").is_file()


def test_teacher_logprobs_equal_a_teacher_forced_pass(tiny_dir: Path, other_dir: Path) -> None:
    """The teacher's logprobs of the sampled tokens are those of its plain forward on the student's
    token ids (prefix sharing included), and 0 on the prompt."""
    cfg = opd_config(tiny_dir, [{"envs": ["secret_table"], "path": str(other_dir)}], micro_batch_tokens=64)
    teachers = load_teachers(cfg)
    assert teachers is not None
    teacher = teachers.backends["secret_table"].model
    assert not any(p.requires_grad for p in teacher.parameters())
    rows = to_sequences(episodes(teachers.backends["secret_table"].tokenizer))
    teachers.score(rows, temperature=0.7)
    for row in rows:
        ids = torch.tensor([row.input_ids])
        with torch.no_grad():
            expected = token_logprobs(teacher(input_ids=ids).logits, ids, 0.7)[0]
        got = torch.tensor(row.teacher_logprobs[1:])
        on = torch.tensor(row.mask[1:]).bool()
        assert torch.allclose(got[on], expected[on], atol=1e-5)
        assert not got[~on].any()


def test_mixed_form_adds_the_weighted_term_to_the_rl_advantage() -> None:
    """A_t = A_rl + opd_coef * (log p_teacher - log p_student) in the mixed form; the term alone under opd."""
    lp, teacher = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    adv = torch.tensor([0.3])
    mixed = distill_advantages(adv, lp, teacher, PolicyLossConfig(opd_coef=2.0))
    assert torch.allclose(mixed, torch.tensor([[0.3 - 1.0, 0.3 + 2.0]]))
    assert torch.allclose(distill_advantages(adv, lp, teacher, PolicyLossConfig(variant="opd")),
                          torch.tensor([[-0.5, 1.0]]))


def test_tokenizer_mismatch_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    """A teacher whose vocabulary differs from the student's is refused at start-up."""
    model, tok = build_tiny_policy(SecretTable(num_values=6), seed=0)
    folder = save_policy(model, tok, tmp_path / "teacher")
    with pytest.raises(CodrlError, match=r"teachers\[0\]\.path: the teacher's tokenizer is not the student's"):
        load_teachers(opd_config(tiny_dir, [{"envs": ["secret_table"], "path": str(folder)}]))


def test_missing_teacher_is_refused_naming_the_environment(tiny_dir: Path) -> None:
    """Every environment of the mixture needs a teacher; the error names the one without."""
    envs = [{"name": "secret_table", "params": {"name": "table_a"}},
            {"name": "secret_table", "params": {"name": "table_b"}}]
    cfg = opd_config(tiny_dir, [{"envs": ["table_a"], "path": str(tiny_dir)}], envs=envs)
    with pytest.raises(CodrlError, match="environment 'table_b' of the mixture has no teacher"):
        load_teachers(cfg)


@pytest.mark.parametrize(("over", "message"), [
    ({"loss": {"variant": "opd"}, "teachers": []}, "need at least one teacher"),
    ({"loss": {"variant": "rec_oneside_nois"}}, "the loss does not use them"),
    ({"loss": {"variant": "opd", "opd_coef": 0.5}}, "loss.opd_coef"),
    ({"teachers": [{"envs": ["secret_table"], "endpoint": "http://localhost:1/v1"}]}, "not supported yet"),
    ({"teachers": [{"envs": ["nowhere"], "path": "x"}]}, "'nowhere' is not an environment of the mixture"),
    ({"teachers": [{"envs": ["secret_table"], "path": "/nonexistent/teacher"}]}, r"teachers\[0\]\.path: "),
])
def test_contradicting_settings_are_refused(over: dict[str, Any], message: str, tiny_dir: Path) -> None:
    """Distillation settings that cannot work fail at start-up with the field named."""
    base = {"envs": [{"name": "secret_table"}], "model": {"path": str(tiny_dir), "lora": None},
            "loss": {"variant": "opd"},
            "teachers": [{"envs": ["secret_table"], "path": "x"}]}
    with pytest.raises(CodrlError, match=message):
        load_teachers(TrainConfig.model_validate({**base, **over}))


def test_rows_carry_their_environment() -> None:
    """Training rows keep the environment of their episode (merged turns included)."""
    call = Experience(pack_id="p", repeat=0, episode_type="solve", position=0, turn=0, prompt_ids=[1, 2],
                      completion_ids=[3], logprobs=[0.0], text="", env="table_b")
    nxt = Experience(pack_id="p", repeat=0, episode_type="solve", position=0, turn=1, prompt_ids=[1, 2, 3, 4],
                     completion_ids=[5], logprobs=[0.0], text="", env="table_b")
    rows: list[TrainSeq] = to_sequences([ModelEpisode("solve", 0, [call, nxt], own_reward=0.0)])
    assert [r.env for r in rows] == ["table_b"]


def test_example_config_validates() -> None:
    """configs/opd_mixed_cpu.yaml is a valid training config that mixes RL and distillation."""
    cfg = TrainConfig.model_validate(yaml.safe_load((ROOT / "configs" / "opd_mixed_cpu.yaml").read_text()))
    assert cfg.loss.opd_coef > 0 and cfg.teachers


@pytest.mark.slow
def test_toy_bench_ends_with_its_result_line(capsys: pytest.CaptureFixture[str]) -> None:
    """bench/toy_opd.py on a tiny budget trains both teachers and the three students and ends with
    ``RESULT opd_steps= rl_steps= mix_gap=`` (a step count, or none when 0.8 was not reached)."""
    load_bench("toy_opd").main(["--warmup-steps", "20", "--steps", "2", "--teacher-steps", "1",
                                "--packs-per-step", "2", "--repeats", "2", "--eval-packs", "2"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    result = dict(kv.split("=") for kv in last.split()[1:])
    assert list(result) == ["opd_steps", "rl_steps", "mix_gap"]
    assert all(result[k] == "none" or result[k].isdigit() for k in ("opd_steps", "rl_steps"))
    assert float(result["mix_gap"]) <= 1.0
