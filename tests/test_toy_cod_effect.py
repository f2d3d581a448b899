"""Fast version of bench/toy_cod_effect.py: CoD credit teaches hint writing; per-task GRPO does not.

Both tests start from the same warmed-up policy (one reading warm-up for the module, kept in a
shared folder through the bench's ``--warm-dir``). 12 RL steps of 16 packs separate the estimators
by a wide margin: on this budget cod's late positions reach about 0.9 while grpo's stay at chance
(0.25), against the 0.25 margins asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from support import load_bench  # noqa: E402

BUDGET = ["--seeds", "1", "--steps", "12", "--warmup-steps", "600", "--eval-packs", "48"]


@pytest.fixture(scope="module")
def warm_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Where the bench keeps the warmed-up policy; the first test to run fills it."""
    return str(tmp_path_factory.mktemp("toy_warm"))


def result_of(out: str) -> dict[str, str]:
    return dict(kv.split("=") for kv in out.strip().splitlines()[-1].split()[1:])


@pytest.mark.slow
def test_cod_credit_beats_per_task_grpo_on_late_positions(capsys: pytest.CaptureFixture[str],
                                                          warm_dir: str) -> None:
    load_bench("toy_cod_effect").main([*BUDGET, "--warm-dir", warm_dir])
    out = capsys.readouterr().out
    result = result_of(out)
    cod_first, cod_late, grpo_late = (float(result[k]) for k in ("cod_first", "cod_late", "grpo_late"))
    assert cod_late > cod_first + 0.25, out
    assert cod_late > grpo_late + 0.25, out


@pytest.mark.slow
def test_asynchronous_steps_still_learn_the_effect(capsys: pytest.CaptureFixture[str], warm_dir: str) -> None:
    """Each step's rollouts played by the weights one update old, while the previous step trains:
    the late positions still clear chance by a wide margin within the same budget, and no logged
    staleness exceeds 1."""
    load_bench("toy_cod_effect").main([*BUDGET, "--warm-dir", warm_dir, "--estimators", "cod", "--async-lookahead", "1"])
    out = capsys.readouterr().out
    result = result_of(out)
    assert float(result["cod_late"]) >= 0.7, out
    assert int(result["staleness_max"]) == 1, out  # ran ahead (1), never further
