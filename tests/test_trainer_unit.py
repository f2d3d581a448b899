"""Trainer building blocks on a tiny random transformers model: merging turns, micro-batches."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from codrl.algo.losses import PolicyLossConfig, policy_loss, token_logprobs
from codrl.rollout.experience import Experience, ModelEpisode
from codrl.train.batching import collate, micro_batches, to_sequences


def exp(turn: int, prompt: list[int], completion: list[int], position: int = 0) -> Experience:
    return Experience(pack_id="p", repeat=0, episode_type="solve", position=position, turn=turn, prompt_ids=prompt,
                      completion_ids=completion, logprobs=[-0.5] * len(completion), text="")


def episode(*calls: Experience, adv: float = 1.0) -> ModelEpisode:
    return ModelEpisode("solve", calls[0].position, list(calls), own_reward=0.0, advantage=adv)


def test_merge_turns_that_extend_each_other() -> None:
    t0 = exp(0, [1, 2, 3], [4, 5])
    t1 = exp(1, [1, 2, 3, 4, 5, 6, 7], [8])
    t2 = exp(2, [1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11])
    (seq,) = to_sequences([episode(t0, t1, t2)])
    assert seq.input_ids == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert seq.mask == [0, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    assert seq.num_trained == 5
    assert [lp for lp, m in zip(seq.old_logprobs, seq.mask) if m] == [-0.5] * 5


def test_turns_that_do_not_extend_stay_separate() -> None:
    t0 = exp(0, [1, 2, 3], [4, 5])
    t1 = exp(1, [1, 2, 3, 9, 5, 6], [8])  # re-tokenized differently: no merge
    other_episode = episode(exp(0, [1, 2, 3, 4, 5, 6], [7], position=1))
    seqs = to_sequences([episode(t0, t1), other_episode])
    assert len(seqs) == 3
    assert sum(s.num_trained for s in seqs) == 4
    assert len(to_sequences([episode(t0, t1), other_episode], merge_turns=False)) == 3


def test_only_sampled_token_exact_calls_are_trained() -> None:
    sampled = exp(0, [1, 2], [3])
    empty = exp(1, [1, 2, 3, 4], [])  # an overflowed or empty reply: nothing sampled
    text_only = Experience(pack_id="p", repeat=0, episode_type="solve", position=0, turn=2, prompt_ids=[],
                           completion_ids=[], logprobs=[], text="hi", token_exact=False)
    (seq,) = to_sequences([episode(sampled, empty, text_only, adv=-0.5)])
    assert seq.input_ids == [1, 2, 3] and seq.advantage == -0.5
    assert to_sequences([episode(empty)]) == []


def test_micro_batches_respect_token_budget() -> None:
    seqs = to_sequences([episode(exp(0, list(range(n)), [1], position=n)) for n in range(5, 40, 3)])
    batches = micro_batches(seqs, 64)
    assert sum(len(b) for b in batches) == len(seqs)
    for b in batches:
        assert len(b) == 1 or len(b) * max(s.num_tokens for s in b) <= 64


def test_merged_loss_equals_per_turn_loss() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))
    turns = [exp(0, [1, 2, 3], [4, 5]), exp(1, [1, 2, 3, 4, 5, 6, 7], [8, 9]),
             exp(2, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11])]
    cfg = PolicyLossConfig(variant="ppo_clip")

    def loss_of(merge: bool) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        seqs = to_sequences([episode(*turns)], merge_turns=merge)
        n = sum(s.num_trained for s in seqs)
        total = 0.0
        for mb in micro_batches(seqs, 10_000):
            b = collate(mb, 0, torch.device("cpu"))
            lp = token_logprobs(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                b["input_ids"])
            loss, _ = policy_loss(lp, b["old_logprobs"], b["advantages"], b["mask"], cfg, num_tokens=n)
            loss.backward()
            total += float(loss.detach())
        return total, [p.grad.clone() for p in model.parameters()]

    merged, g_merged = loss_of(True)
    separate, g_sep = loss_of(False)
    assert abs(merged - separate) < 1e-5
    for a, b in zip(g_merged, g_sep):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_failing_metric_sink_is_dropped_with_one_warning(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A metric sink that raises (a tracking server gone away) is reported once and skipped; the
    other sinks keep their metrics and training is never stopped by it."""
    import logging

    from codrl.train.config import LogConfig
    from codrl.train.loggers import Loggers

    class Broken:
        def log(self, scalars, step):  # type: ignore[no-untyped-def]
            raise ConnectionError("tracking server unreachable")

        def close(self) -> None:
            pass

    class Kept:
        def __init__(self) -> None:
            self.seen: list[tuple[dict, int]] = []

        def log(self, scalars, step):  # type: ignore[no-untyped-def]
            self.seen.append((dict(scalars), step))

        def close(self) -> None:
            pass

    loggers = Loggers(LogConfig(backends=[]), tmp_path, {})
    kept = Kept()
    loggers.sinks = [Broken(), kept]
    with caplog.at_level(logging.WARNING, logger="codrl.train.loggers"):
        loggers.log({"reward/pos0": 0.5, "flag": True, "nan": float("nan"), "text": "x"}, 1)
        loggers.log({"reward/pos0": 0.7}, 2)
    assert kept.seen == [({"reward/pos0": 0.5}, 1), ({"reward/pos0": 0.7}, 2)]
    assert [r.getMessage() for r in caplog.records if "Broken failed at step 1" in r.getMessage()]
    assert len(caplog.records) == 1 and loggers.sinks == [kept]


def test_lost_ray_train_worker_error_names_the_node() -> None:
    from pathlib import Path

    from codrl.distributed.ray_train import lost_worker_error

    class ActorDiedError(Exception):
        pass

    node = "25abcfe26f29755a92ec923bcf57cf03b100cdaf671368ddd1a18878"
    cause = ActorDiedError(f"The actor died because its node has died. Node Id: {node}\nmore detail")
    wrapper = RuntimeError("Training failed due to worker errors")
    wrapper.__cause__ = cause
    err = lost_worker_error(wrapper, Path("/runs/x"))
    assert err is not None and "\n" not in str(err)
    assert f"lost on node {node}: ActorDiedError: The actor died because its node has died" in str(err)
    assert "/runs/x/checkpoints" in str(err) and "--resume" in str(err)
    assert lost_worker_error(ValueError("rollout.repeats must be >= 1"), Path("/runs/x")) is None
