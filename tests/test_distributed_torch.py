"""torch.distributed training (codrl.distributed.torch_dist): row balancing, DDP and FSDP2 gradients
equal to the single-process ones, generation under FSDP2, and torchrun runs that resume exactly,
also on another world size.

Multi-process tests run two CPU processes on gloo (``torch.multiprocessing`` for the gradient
checks, ``torchrun`` for whole training runs); the NCCL variant needs two GPUs.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from codrl.backends.base import GenRequest, SamplingParams
from codrl.backends.hf import HFBackend
from codrl.toy.policy import build_tiny_policy, save_policy, warmup_reader
from codrl.distributed.torch_dist import (
    DistContext,
    TrainedModel,
    init_from_env,
    optimizer_by_name,
    optimizer_by_position,
    param_names,
    wrap_model,
)
from codrl.toy.secret_table import SecretTable
from codrl.rollout.experience import Experience, ModelEpisode
from codrl.train.batching import (
    TrainSeq,
    balance_by_tokens,
    micro_batches,
    rank_micro_batches,
    split_rows,
    to_sequences,
)
from codrl.train.config import DistributedConfig, TrainConfig
from codrl.train.update import PolicyUpdate

sys.path.insert(0, str(Path(__file__).parent))
from toy_config import toy_train_config  # noqa: E402

WORLD = 2
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


# -- balancing (pure) -----------------------------------------------------------------------------
@pytest.mark.parametrize("parts", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(6))
def test_balance_deals_every_row_once_within_the_lpt_bound(parts: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(0, 8, (1,), generator=gen))
    tokens = torch.randint(1, 200, (n,), generator=gen).tolist()
    bins = balance_by_tokens(tokens, parts)
    assert len(bins) == parts
    assert sorted(i for b in bins for i in b) == list(range(n))
    assert all(b == sorted(b) for b in bins)
    loads = [sum(tokens[i] for i in b) for b in bins]
    if tokens:
        # greedy list scheduling: no bin ends more than one item above the mean ...
        assert max(loads) <= sum(tokens) / parts + max(tokens)
        # ... and LPT is within 4/3 - 1/(3m) of the best split (brute force on these small inputs)
        best = min(max(sum(t for t, p in zip(tokens, assign, strict=True) if p == b) for b in range(parts))
                   for assign in itertools.product(range(parts), repeat=n))
        assert max(loads) <= (4 / 3 - 1 / (3 * parts)) * best + 1e-9
    assert balance_by_tokens(tokens, parts) == bins  # deterministic


def test_balance_rejects_zero_parts() -> None:
    with pytest.raises(ValueError, match="parts"):
        balance_by_tokens([1, 2], 0)


def row(n: int) -> TrainSeq:
    return TrainSeq(list(range(n)), [0] + [1] * (n - 1), [0.0] * n, 1.0)


def test_one_rank_keeps_rows_and_micro_batches_as_they_were() -> None:
    seqs = [row(n) for n in (9, 3, 9, 14, 3, 7)]
    (share,) = split_rows(seqs, 1)
    assert [id(s) for s in share] == [id(s) for s in seqs]
    assert rank_micro_batches([share], 30, 0) == micro_batches(seqs, 30)


def test_every_rank_gets_as_many_micro_batches() -> None:
    seqs = [row(n) for n in (40, 3, 4, 5, 6)]
    shares = split_rows(seqs, 2)
    assert [sum(s.num_tokens for s in sh) for sh in shares] == [40, 18]
    cut = [rank_micro_batches(shares, 10, r) for r in range(2)]
    assert len(cut[0]) == len(cut[1]) == 3  # rank 1 cuts 3 micro-batches, rank 0 one and two empty ones
    assert cut[0][1:] == [[], []]
    assert sorted(id(s) for c in cut for mb in c for s in mb) == sorted(id(s) for s in seqs)


# -- single process ---------------------------------------------------------------------------------
def test_without_torchrun_the_context_is_a_lone_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_from_env(DistributedConfig(), "cpu")
    assert (ctx.rank, ctx.world_size, ctx.active, ctx.is_main) == (0, 1, False, True)
    assert ctx.gather_objects({"a": 1}) == [{"a": 1}]
    assert ctx.sum_across_ranks({"a": 1.5}) == {"a": 1.5}
    model = nn.Linear(2, 2)
    assert type(wrap_model(model, ctx, "fsdp")) is TrainedModel  # strategies only apply under torch.distributed


def test_optimizer_state_by_name_and_back() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[0].bias.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    names = param_names(model, opt)
    assert names == ["0.weight", "1.weight", "1.bias"]
    by_name = optimizer_by_name(state, names)
    assert set(by_name["state"]) == set(names) and by_name["param_groups"][0]["params"] == names
    assert optimizer_by_position(by_name, names) == state


# -- gradients on two processes vs one ----------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def synthetic_rows() -> list[TrainSeq]:
    """Nine rows of different lengths, advantages of both signs, logprobs off the policy's; four of
    them share their first 10 tokens (a micro-batch of them computes that prefix once)."""
    gen = torch.Generator().manual_seed(1)
    shared = torch.randint(1, 32, (10,), generator=gen).tolist()
    episodes = []
    for i, (p, c) in enumerate([(3, 2), (17, 6), (5, 3), (9, 8), (4, 2), (12, 5), (6, 4), (20, 3), (8, 7)]):
        ids = torch.randint(1, 32, (p + c,), generator=gen).tolist()
        if i in (1, 3, 5, 7):
            ids[:10] = shared
        lp = (-0.5 - torch.rand(c, generator=gen)).tolist()
        call = Experience(pack_id=f"p{i}", repeat=0, episode_type="solve", position=0, turn=0,
                          prompt_ids=ids[:p], completion_ids=ids[p:], logprobs=lp, text="")
        episodes.append(ModelEpisode("solve", 0, [call], own_reward=0.0, advantage=(-1.0) ** i * (0.5 + i / 10)))
    return to_sequences(episodes, merge_turns=False)


def tiny_model(lora: bool, device: str) -> nn.Module:
    torch.manual_seed(0)
    model: nn.Module = LlamaForCausalLM(LlamaConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True))
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    return model.to(device)


def full(t: torch.Tensor) -> torch.Tensor:
    """A whole CPU copy of a tensor or of a DTensor's shards."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()


def update_result(ctx: DistContext, strategy: str, lora: bool, device: str) -> dict[str, Any]:
    """What one update does on this rank: recomputed old logprobs, gradients (a full mini-batch, and
    one of a single row, so that a rank has none), metrics, the clipped step's norm and weights.
    With LoRA the loss has a KL term to the adapter-free reference."""
    model = tiny_model(lora, device)
    parallel = wrap_model(model, ctx, strategy)
    # SGD: the step is linear in the clipped gradient (Adam's first step, about lr * sign(g), would
    # magnify rounding where a gradient is near 0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    cfg = TrainConfig.model_validate({"envs": [{"name": "secret_table"}], "micro_batch_tokens": 40,
                                      "optim": {"grad_clip": 0.05}, "loss": {"kl_coef": 0.1 if lora else 0.0}})
    update = PolicyUpdate(cfg, model, optimizer, 0, parallel)
    rows = synthetic_rows()

    recomputed = copy.deepcopy(rows)
    update.recompute_old_logprobs(recomputed, [recomputed])
    mine = balance_by_tokens([s.num_tokens for s in rows], ctx.world_size)[ctx.rank]
    old = {k: v for part in ctx.gather_objects({i: recomputed[i].old_logprobs for i in mine}) for k, v in part.items()}

    def grads(mini: list[TrainSeq]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        optimizer.zero_grad(set_to_none=True)
        parallel.engine.train()
        sums = ctx.sum_across_ranks(update.accumulate(mini))
        return {n: full(p.grad) for n, p in model.named_parameters() if p.requires_grad}, sums

    one_row, _ = grads(rows[:1])
    mini, metrics = grads(rows)
    norm = update.step(0)
    weights = {n: full(p) for n, p in model.named_parameters() if p.requires_grad}
    return {"old": old, "one_row": one_row, "grads": mini, "metrics": metrics, "norm": norm, "weights": weights}


def join_group(rank: int, port: int, strategy: str, device: str) -> DistContext:
    """This worker's context, initialised from torchrun's variables as a launch would set them."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    return init_from_env(DistributedConfig(strategy=strategy), device)  # type: ignore[arg-type]


def run_rank(rank: int, port: int, strategy: str, device: str, out: str, work: Callable[[DistContext], Any]) -> None:
    """One spawned rank: join the group, run ``work``, rank 0 saves what it returns to ``out``."""
    ctx = join_group(rank, port, strategy, device)
    try:
        result = work(ctx)
        if ctx.is_main:
            torch.save(result, out)
        ctx.barrier()  # every rank done with its collectives before the group is torn down
    finally:
        ctx.close()
    # Leave without interpreter teardown: gloo's worker threads, destroyed there, now and then
    # abort a finished spawn child ("terminate called without an active exception").
    os._exit(0)


def grad_worker(rank: int, port: int, strategy: str, lora: bool, device: str, out: str) -> None:
    def work(ctx: DistContext) -> dict[str, Any]:
        assert ctx.active and ctx.world_size == WORLD and ctx.rank == rank
        return update_result(ctx, strategy, lora, device)

    run_rank(rank, port, strategy, device, out, work)


def assert_same_update(got: dict[str, Any], ref: dict[str, Any], rtol: float = 1e-5) -> None:
    assert sorted(got["old"]) == list(range(len(synthetic_rows())))
    for i, lp in ref["old"].items():
        assert got["old"][i] == pytest.approx(lp, rel=rtol, abs=1e-6), i
    for key in ("one_row", "grads", "weights"):
        assert got[key].keys() == ref[key].keys()
        for name, t in ref[key].items():
            assert float(t.abs().max()) > 0, (key, name)  # every trainable tensor takes part
            torch.testing.assert_close(got[key][name], t, rtol=rtol, atol=rtol * float(t.abs().max()),
                                       msg=lambda m, k=key, n=name: f"{k} {n}: {m}")
    assert got["metrics"].keys() == ref["metrics"].keys()
    for k, v in ref["metrics"].items():
        assert got["metrics"][k] == pytest.approx(v, rel=rtol, abs=1e-7), k
    assert got["norm"] == pytest.approx(ref["norm"], rel=rtol)
    assert ref["norm"] > 0.05  # the step was clipped, by the global norm


def spawn_update(strategy: str, lora: bool, device: str, tmp_path: Path) -> dict[str, Any]:
    """The result of :func:`update_result` on rank 0 of two processes."""
    out = tmp_path / f"{strategy}.pt"
    mp.spawn(grad_worker, args=(free_port(), strategy, lora, device, str(out)), nprocs=WORLD, join=True)
    return torch.load(out)  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ddp_lora_update_equals_single_process(tmp_path: Path) -> None:
    """LoRA with a KL term to the adapter-free reference: gradients, metrics and the clipped step
    of two DDP ranks equal one process's on the same rows."""
    got = spawn_update("ddp", True, "cpu", tmp_path)
    assert_same_update(got, update_result(DistContext(), "ddp", True, "cpu"))


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fsdp_update_equals_single_process(lora: bool, tmp_path: Path) -> None:
    """Sharded with FSDP2 (full fine-tuning with tied embeddings in the root, or LoRA with its KL
    reference passes through the root): the gathered gradients, the step clipped by the global
    norm and the gathered weights equal one process's."""
    got = spawn_update("fsdp", lora, "cpu", tmp_path)
    assert_same_update(got, update_result(DistContext(), "fsdp", lora, "cpu"))


@TWO_GPUS
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_nccl_update_equals_single_process(strategy: str, tmp_path: Path) -> None:
    """The same checks on two GPUs: backend auto picks nccl, each rank on cuda:LOCAL_RANK."""
    lora = strategy == "ddp"
    got = spawn_update(strategy, lora, "cuda", tmp_path)
    ref = update_result(DistContext(device=torch.device("cuda:0")), strategy, lora, "cuda:0")
    assert_same_update(got, ref, rtol=1e-4)  # GPU kernels differ more with batch shapes


# -- generation under FSDP2 ------------------------------------------------------------------------
def hello_requests(n: int) -> list[GenRequest]:
    return [GenRequest([{"role": "user", "content": "hello"}], SamplingParams(1.0, 1.0, 6), seed=s) for s in range(n)]


def samples(backend: HFBackend, n: int) -> list[tuple[list[int], list[float]]]:
    return [(r.completion_ids, r.logprobs) for r in backend.generate(hello_requests(n))]


def generation_worker(rank: int, port: int, model_dir: str, out: str) -> None:
    """Rounds of generation (rank 0: three replies, rank 1: none) with an update after each;
    rank 0 keeps its samples and the full weights each round sampled from."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    def work(ctx: DistContext) -> list[Any]:
        backend = HFBackend.from_pretrained(model_dir)
        parallel = wrap_model(backend.model, ctx, "fsdp")
        optimizer = torch.optim.AdamW(backend.model.parameters(), lr=1e-2)
        cfg = TrainConfig.model_validate({"envs": [{"name": "secret_table"}], "micro_batch_tokens": 40})
        update = PolicyUpdate(cfg, backend.model, optimizer, backend.pad_id, parallel)
        rounds = []
        for _ in range(2):
            used = get_model_state_dict(backend.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            with parallel.generation() as gathered:
                assert gathered
                backend.store.clear()
                rounds.append((samples(backend, 3 if rank == 0 else 0), used))
            optimizer.zero_grad()
            update.accumulate(synthetic_rows())
            update.step(0)
        return rounds

    run_rank(rank, port, "fsdp", "cpu", out, work)


#: Logprobs of the same tokens from FSDP2's gathered parameters on a one-thread rank and from a plain
#: module in the test process: another computation path (other kernels, thread counts, reduction
#: orders), so float32 rounding differs, by up to a few 1e-7 (2.4e-7 seen on an AMD EPYC).
GENERATION_LOGPROB_ATOL = 1e-5


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fsdp_generation_with_uneven_ranks(tmp_path: Path) -> None:
    """Ranks that generate different amounts (one none at all) neither deadlock nor disturb the
    updates between rounds, and rank 0 samples the very tokens an unsharded copy of the weights of
    that round samples, with the same logprobs up to float rounding."""
    model, tok = build_tiny_policy(SecretTable(), seed=0)
    model_dir = save_policy(model, tok, tmp_path / "tiny")
    out = tmp_path / "gen.pt"
    mp.spawn(generation_worker, args=(free_port(), str(model_dir), str(out)), nprocs=WORLD, join=True)
    rounds = torch.load(out)
    plain = HFBackend.from_pretrained(str(model_dir))
    assert not torch.equal(rounds[0][1]["model.norm.weight"], rounds[1][1]["model.norm.weight"])  # updated
    for got, used in rounds:
        plain.model.load_state_dict(used)
        want = samples(plain, 3)
        assert [ids for ids, _ in got] == [ids for ids, _ in want]  # token ids: exact
        for (_, lp_got), (_, lp_want) in zip(got, want, strict=True):
            assert lp_got == pytest.approx(lp_want, rel=0, abs=GENERATION_LOGPROB_ATOL)


# -- whole runs under torchrun ------------------------------------------------------------------------
STEPS = 3
KILLED_AT = 1


def torchrun_train(config: Path, out: Path, nproc: int, *extra: str) -> None:
    """``codrl train`` on ``nproc`` processes (torchrun), or in one plain process."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                 "--master-port", str(free_port())] if nproc > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    res = subprocess.run([*launcher, "-m", "codrl.cli", "train", "--config", str(config), "--output-dir", str(out),
                          *extra], check=False, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warmed-up tiny policy (rewards vary, so gradients are not zero), its config (full
    fine-tuning: FSDP2 under torchrun; an evaluation at the end), an uninterrupted 2-process run
    and one stopped after step 1."""
    tmp = tmp_path_factory.mktemp("toy")
    env = SecretTable()
    model, tok = build_tiny_policy(env, seed=0)
    warmup_reader(model, tok, env, steps=60, eval_size=0)
    model_dir = save_policy(model, tok, tmp / "tiny")
    config = tmp / "toy.yaml"
    config.write_text(yaml.safe_dump(toy_train_config(model_dir, steps=STEPS, packs_per_step=4, save_every=1,
                                                      seed=3, eval={"at_start": False, "packs": 3})))
    torchrun_train(config, tmp / "ref", 2)
    torchrun_train(config, tmp / "part", 2, "--steps", str(KILLED_AT))
    return tmp


def history(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / "history.json").read_text())


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / f"step-{STEPS:06d}" / "trainable.pt")


def assert_same_run(got: Path, ref: Path, rel: float, atol: float) -> None:
    ref_hist, got_hist = history(ref), history(got)
    assert [h["step"] for h in got_hist] == list(range(1, STEPS + 1))
    assert len({h["reward/mean"] for h in ref_hist}) > 1 or ref_hist[0]["train/grad_norm"] > 0
    for a, b in zip(ref_hist, got_hist, strict=True):
        for key in ("reward/mean", "reward/pos0", "reward/pos2", "tokens/trained"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), (a["step"], key)
        for key in ("train/loss", "train/grad_norm", "train/entropy"):
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-7), (a["step"], key)
    w_ref, w_got = weights(ref), weights(got)
    assert w_ref.keys() == w_got.keys()
    for name, t in w_ref.items():
        torch.testing.assert_close(w_got[name], t, rtol=0, atol=atol)


def assert_same_evaluation(got: Path, ref: Path) -> None:
    """The final evaluation played the same lifecycles (same seeds, whichever rank played them).

    Exact: rank 0 summarises the gathered lifecycles in job order, so both sides run the same
    summary code on the same rewards, and rewards are functions of the sampled token ids."""
    def summary(out: Path) -> dict[str, Any]:
        return json.loads((out / "eval" / f"step-{STEPS:06d}" / "results.json").read_text())["summary"]

    assert summary(got) == summary(ref)


def resumed_copy(toy_runs: Path, name: str) -> Path:
    out = toy_runs / name
    shutil.copytree(toy_runs / "part", out)
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_torchrun_resume_matches_uninterrupted(toy_runs: Path) -> None:
    """Two processes stopped after step 1 and resumed give the uninterrupted two-process run."""
    out = resumed_copy(toy_runs, "resumed2")
    torchrun_train(toy_runs / "toy.yaml", out, 2, "--resume")
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert_same_run(out, toy_runs / "ref", rel=1e-6, atol=1e-7)
    assert_same_evaluation(out, toy_runs / "ref")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_process_checkpoint_resumes_in_one_process(toy_runs: Path) -> None:
    """A checkpoint written by two FSDP2 ranks resumes in one process and continues as the
    two-process run does: the same lifecycles (per-job seeds), the same losses and weights up to
    float rounding (rows are summed in other groupings)."""
    out = resumed_copy(toy_runs, "resumed1")
    torchrun_train(toy_runs / "toy.yaml", out, 1, "--resume")
    assert_same_run(out, toy_runs / "ref", rel=1e-5, atol=2e-5)
    assert_same_evaluation(out, toy_runs / "ref")  # one process plays them all, two shared them


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_lora_run_matches_single_process(toy_runs: Path) -> None:
    """LoRA with a KL term (DDP under torchrun, rank 0 writing the adapter checkpoints) trains as
    one process does."""
    lora = {"path": str(toy_runs / "tiny"), "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}
    config = toy_runs / "lora.yaml"
    config.write_text(yaml.safe_dump(toy_train_config(toy_runs / "tiny", steps=STEPS, packs_per_step=4, seed=3,
                                                      model=lora, loss={"kl_coef": 0.1})))
    torchrun_train(config, toy_runs / "lora2", 2)
    torchrun_train(config, toy_runs / "lora1", 1)
    assert (toy_runs / "lora2" / "checkpoints" / f"step-{STEPS:06d}" / "model" / "adapter_config.json").is_file()
    assert_same_run(toy_runs / "lora2", toy_runs / "lora1", rel=1e-5, atol=1e-6)
