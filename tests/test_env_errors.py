"""An environment that raises (a plug-in's bug) ends the episode as a scored failure, never the run.

:class:`FaultyTable` is SecretTable with seeded faults: for some tasks ``start`` raises, for others
``step`` does. Played by the tiny policy through the real runner and trainer, each fault is an
episode with reward 0, ``env_error`` set and feedback naming the exception; it is counted in
``rollout/env_errors``; ``rollout.on_env_error: drop_group`` leaves the pack's lifecycles out of
training and ``raise`` stops the run.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from codrl.backends.hf import HFBackend
from codrl.envs.base import Pack, Task
from codrl.toy.secret_table import SecretTable
from codrl.rollout.config import RolloutConfig
from codrl.rollout.lifecycle import LifecycleRunner, make_jobs
from codrl.train.config import TrainConfig
from codrl.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from toy_config import toy_train_config  # noqa: E402

pytestmark = pytest.mark.fault


def fault(task: Task) -> str | None:
    """Which call of ``task`` fails, seeded by its id: ``start``, ``step`` or none."""
    return {0: "start", 1: "step"}.get(zlib.crc32(task.task_id.encode()) % 12)


class FaultyTable(SecretTable):
    """SecretTable whose ``start`` or episode ``step`` raises, each for a seeded twelfth of the tasks."""

    def start(self, pack: Pack, task: Task, state: Any = None) -> Any:
        if fault(task) == "start":
            raise KeyError("world cache miss")
        episode = super().start(pack, task, state)
        if fault(task) == "step":
            def broken(reply: str) -> Any:
                raise ZeroDivisionError("division by zero in the plug-in's scorer")
            episode.step = broken  # type: ignore[method-assign]
        return episode


def play(tiny_dir: Path, on_env_error: str) -> list[Any]:
    env = FaultyTable()
    cfg = RolloutConfig(pack_size=4, repeats=2, max_new_tokens_solve=3, max_new_tokens_update=4,
                        update_reply_prefix="Hints:", on_env_error=on_env_error)  # type: ignore[arg-type]
    backend = HFBackend.from_pretrained(str(tiny_dir))
    try:
        packs = [(env, env.sample_pack("test", 0, i, cfg.pack_size)) for i in range(10)]
        return LifecycleRunner(backend, cfg).run(make_jobs(packs, cfg), seeds=list(range(20)))
    finally:
        backend.close()


def test_faults_are_scored_failures_with_feedback(tiny_dir: Path) -> None:
    results = play(tiny_dir, "fail_episode")
    episodes = [e for r in results for e in r.episodes]
    assert len(episodes) == 10 * 2 * 4  # every task of every lifecycle has its record
    started = [e for e in episodes if e.env_error and not e.turns]
    stepped = [e for e in episodes if e.env_error and e.turns]
    assert started and stepped and sum(r.env_errors for r in results) == len(started) + len(stepped)
    for e in started:
        assert e.reward == 0.0 and "while starting the task (KeyError)." in e.feedback
        assert "world cache miss" not in e.feedback  # the message may quote the hidden world: never shown
    for e in stepped:
        assert e.env_reward == 0.0 and e.format_valid
        assert "while scoring this reply (ZeroDivisionError)." in e.feedback and "plug-in" not in e.feedback
    assert all(not e.env_error for e in episodes if e.turns and "environment failed" not in e.feedback)
    # the context step after a failed step saw the failure, and the lifecycle went on to its last task
    assert all(len(r.episodes) == 4 for r in results)


def test_raise_stops_the_run(tiny_dir: Path) -> None:
    with pytest.raises((KeyError, ZeroDivisionError)):
        play(tiny_dir, "raise")


@pytest.mark.parametrize("policy", ["fail_episode", "drop_group"])
def test_trainer_counts_faults_and_drops_broken_groups(tiny_dir: Path, tmp_path: Path, policy: str) -> None:
    data = toy_train_config(tiny_dir, steps=1, packs_per_step=4, save_every=0, output_dir=str(tmp_path / "run"),
                            envs=[{"name": "test_env_errors:FaultyTable"}])
    data["rollout"] = {**data["rollout"], "on_env_error": policy}
    trainer = Trainer(TrainConfig.model_validate(data))
    try:
        results = trainer.rollout(0)
        broken = {r.pack_id for r in results if r.env_errors}
        assert broken and len(broken) < 4  # the seeded faults hit some of the step's packs, not all
        trainer.step_idx = 0
        metrics = trainer.step()
    finally:
        trainer.close()
    assert metrics["rollout/env_errors"] == sum(r.env_errors for r in results) > 0
    kept = [r for r in results if policy == "fail_episode" or r.pack_id not in broken]
    assert metrics["train/groups"] == len({(e.pack_id, e.episode_type, e.position) for r in kept
                                           for e in r.experiences})


class HangingTable(SecretTable):
    """SecretTable whose ``start`` or ``step`` hangs (for 30 s), each for a seeded twelfth of the tasks."""

    def start(self, pack: Pack, task: Task, state: Any = None) -> Any:
        import time

        if fault(task) == "start":
            time.sleep(30)
        episode = super().start(pack, task, state)
        if fault(task) == "step":
            def hung(reply: str) -> Any:
                time.sleep(30)
            episode.step = hung  # type: ignore[method-assign]
        return episode


def test_hanging_environment_calls_are_abandoned_and_scored(tiny_dir: Path) -> None:
    """With rollout.env_step_timeout_s, a start or step that hangs ends its episode as a scored
    failure after the limit, counted like a raising one; every lifecycle still reaches its last task."""
    import time

    env = HangingTable()
    cfg = RolloutConfig(pack_size=4, repeats=1, max_new_tokens_solve=3, max_new_tokens_update=4,
                        update_reply_prefix="Hints:", env_step_timeout_s=0.3)
    backend = HFBackend.from_pretrained(str(tiny_dir))
    try:
        packs = [(env, env.sample_pack("test", 0, i, cfg.pack_size)) for i in range(6)]
        t0 = time.monotonic()
        results = LifecycleRunner(backend, cfg).run(make_jobs(packs, cfg), seeds=list(range(6)))
        elapsed = time.monotonic() - t0
    finally:
        backend.close()
    episodes = [e for r in results for e in r.episodes]
    hung = [e for e in episodes if e.env_error]
    assert hung and all(len(r.episodes) == 4 for r in results)
    assert all("did not answer within 0.3s" in e.feedback and e.reward == 0.0 for e in hung)
    assert sum(r.env_errors for r in results) == len(hung)
    assert elapsed < 25  # no call waited for its 30 s


def test_context_window_overflow_is_never_sent_silently(tiny_dir: Path, tmp_path: Path) -> None:
    """With rollout.max_context below what the prompts need, no over-long request is sampled (the
    engine answers it at once): a solve episode ends as a scored failure saying the context is full, an update is
    skipped and keeps the old hints, and each is counted (rollout/context_overflow/all and per position)."""
    from codrl.rollout.lifecycle import CONTEXT_FULL

    backend = HFBackend.from_pretrained(str(tiny_dir))
    assert backend.context_window == backend.model.config.max_position_embeddings
    env = SecretTable()
    base = RolloutConfig(pack_size=3, repeats=1, max_new_tokens_solve=3, max_new_tokens_update=4,
                         update_reply_prefix="Hints:")
    packs = [(env, env.sample_pack("test", 0, i, 3)) for i in range(2)]
    try:
        first = len(backend.encode_prompt(_first_request(env, packs[0][1], base)))
        # 1) room for no request at all: every solve overflows, no update runs, nothing is sampled
        tiny = base.model_copy(update={"max_context": 5})
        before = backend.stats.requests
        results = LifecycleRunner(backend, tiny).run(make_jobs(packs, tiny), seeds=[0, 1])
        eps = [e for r in results for e in r.episodes]
        assert all(e.feedback == CONTEXT_FULL and e.reward <= 0 and e.context_overflows >= 1 for e in eps)
        assert backend.stats.requests == before and all(not r.experiences for r in results)
        # 2) room for the first solve prompts but not the longer update prompts
        mid = base.model_copy(update={"max_context": first + 3})
        before = backend.stats.requests
        results = LifecycleRunner(backend, mid).run(make_jobs(packs, mid), seeds=[0, 1])
        sampled = [x for r in results for x in r.experiences]  # one per request the engine sampled
        assert sampled and backend.stats.requests - before == len(sampled)
        assert max(len(x.prompt_ids) + mid.max_new_tokens_solve for x in sampled) <= first + 3  # none over
        updates = [e for r in results for e in r.episodes if e.hints_out is not None]
        assert updates and all(e.context_overflows >= 1 and e.hints_out == e.hints_in for e in updates)
        assert not any(x.episode_type == "update" for x in sampled)
    finally:
        backend.close()

    from codrl.train.step_metrics import overflow_metrics

    m = overflow_metrics(results)
    assert m["rollout/context_overflow/all"] == sum(r.context_overflows for r in results) > 0
    assert m["rollout/context_overflow/pos0"] >= 1 and "rollout/context_overflow/pos2" in m


def _first_request(env: SecretTable, pack: Pack, cfg: RolloutConfig) -> Any:
    from codrl.rollout.lifecycle import play_lifecycle

    return next(play_lifecycle(env, pack, 0, cfg, seed=0))


def test_soak_bench_reports_its_keys() -> None:
    """bench/soak.py on a few steps: it trains, samples memory and files, and ends with its RESULT line."""
    import re
    import subprocess

    bench = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
    proc = subprocess.run([sys.executable, str(bench), "--steps", "6", "--from-step", "2", "--every", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"RESULT rss_growth=-?[\d.]+ open_files_growth=-?\d+ steps_per_min_first=[\d.]+ "
                        r"steps_per_min_last=[\d.]+", last), last
