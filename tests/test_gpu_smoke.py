"""bench/gpu_smoke.py: a tiny CPU run end to end, the one-line CUDA error, and the 0.5B bf16 run on CUDA."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from support import load_bench  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_smoke.py"
#: codrl dependencies outside the script's documented needs (torch, transformers, numpy, pydantic, pyyaml).
NOT_NEEDED = ("accelerate", "gguf", "matplotlib", "openai", "peft", "rich", "scipy", "tensorboard", "typer")
#: Runs the bench as ``__main__`` with the arguments after ``-c``, every module of NOT_NEEDED made
#: unimportable (a ``None`` entry in ``sys.modules`` makes ``import`` fail and ``find_spec`` find nothing).
PROBE = (f"import runpy, sys; sys.modules.update(dict.fromkeys({NOT_NEEDED!r})); sys.argv = sys.argv[1:]; "
         "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_bench(*args: str, timeout: float) -> dict[str, float]:
    """Run the bench in a fresh interpreter without the NOT_NEEDED modules; return its RESULT values."""
    proc = subprocess.run([sys.executable, "-c", PROBE, str(BENCH), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    key, *pairs = proc.stdout.strip().splitlines()[-1].split()
    assert key == "RESULT", proc.stdout
    return {k: float(v) for k, v in (p.split("=", 1) for p in pairs)}


def check_result(result: dict[str, float]) -> None:
    assert set(result) == {"gen_tok_s", "train_tok_s", "peak_mem_gib"}, result
    assert all(math.isfinite(v) and v > 0 for v in result.values()), result


@pytest.mark.slow
def test_tiny_cpu_run_reports_positive_rates_with_core_dependencies_only() -> None:
    check_result(run_bench("--device", "cpu", "--size", "tiny", "--dtype", "float32", "--lifecycles", "4",
                           "--repeats", "2", "--pack-size", "2", "--max-new-tokens", "8", timeout=120))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown without CUDA")
def test_cuda_without_cuda_is_a_one_line_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_bench("gpu_smoke").main(["--device", "cuda"])
    message = str(exit_info.value.code)
    assert "CUDA is not available" in message and "\n" not in message


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_billion_bf16_cuda_run() -> None:
    check_result(run_bench("--device", "cuda", "--size", "0.5b", "--dtype", "bfloat16", timeout=300))
