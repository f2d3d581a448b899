"""Finding environments by name: built-ins, import paths and installed plug-ins.

An environment is named in a config or on the command line in one of three ways:

* a built-in name (``frozenlake``, ``alchemy_hard``, ...; see :data:`BUILTIN`);
* an import path ``package.module:Attribute`` naming a :class:`~codrl.envs.base.CoDEnv` subclass
  or a function returning an instance (a user's own environment in a file of their own);
* a name that an installed package registers in the entry-point group ``codrl.envs``
  (``[project.entry-points."codrl.envs"] my_env = "my_package.envs:MyEnv"``).

Every failure is a :class:`~codrl.errors.CodrlError` naming the problem and the allowed values.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from codrl.config import validate
from codrl.envs.base import CoDEnv, EnvParams
from codrl.errors import CodrlError

#: Entry-point group through which installed packages register environments.
ENTRY_POINT_GROUP = "codrl.envs"

#: Built-in environment name -> (import path of its class, default keyword parameters, one-line summary).
BUILTIN: dict[str, tuple[str, dict[str, Any], str]] = {
    "frozenlake": ("codrl.envs.frozenlake:FrozenLakeObscure", {},
                   "FrozenLake-Obscure: grid walk whose action codes hide their directions (4-5 maps)"),
    "frozenlake_hard": ("codrl.envs.frozenlake:FrozenLakeObscure",
                        {"name": "frozenlake_hard", "min_size": 6, "max_size": 7},
                        "FrozenLake-Obscure on larger 6-7 maps"),
    "alchemy": ("codrl.envs.alchemy:AlchemyRandom", {},
                "Alchemy-Random: craft target elements from a hidden random recipe graph (8 rounds)"),
    "alchemy_hard": ("codrl.envs.alchemy:AlchemyRandom", {"name": "alchemy_hard", "variant": "hard"},
                     "Alchemy-Random with consumable materials, dead ends and 15 rounds"),
    "terminal": ("codrl.envs.terminal:Terminal", {},
                 "Terminal: file tasks in a simulated shell with a remote server; the site setup is shared"),
    "gridnav": ("codrl.envs.gridnav:GridNavigation", {},
                "Grid Navigation: rook moves over a hidden cost map revealed as you go (8-12 grids)"),
    "gridnav_hard": ("codrl.envs.gridnav:GridNavigation", {"name": "gridnav_hard", "variant": "hard"},
                     "Grid Navigation on 10-14 grids, 5 hills, 3-5 moves, reveal radius 1"),
    "control": ("codrl.envs.control:OptimalControl", {},
                "Optimal Control: steer hidden linear dynamics with one policy expression (medium preset)"),
    "control_hard": ("codrl.envs.control:OptimalControl", {"name": "control_hard", "preset": "hard"},
                     "Optimal Control with far targets and fast starts (hard preset)"),
    "pde": ("codrl.envs.pde:PDEDiscovery", {},
            "PDE Discovery: sample a reaction-diffusion field and identify its hidden reaction term"),
    "pde_hard": ("codrl.envs.pde:PDEDiscovery", {"name": "pde_hard", "variant": "hard"},
                 "PDE Discovery with 1-3 hidden terms and other templates"),
    "diagnosis": ("codrl.envs.diagnosis:Diagnosis", {},
                  "Diagnosis dialogue: ask, test and diagnose patients of a clinic with a hidden profile"),
    "code": ("codrl.envs.code:CodeEnv", {},
             "Code: write functions for a shop's code base with hidden house conventions, run against hidden tests"),
    "code_hard": ("codrl.envs.code:CodeEnv", {"name": "code_hard", "variant": "hard"},
                  "Code with a 1-based ledger API, a quantity-0 rule and one failure shown per report"),
    "secret_table": ("codrl.toy.secret_table:SecretTable", {},
                     "SecretTable: recall a hidden key -> value table (style toy: the tiny policy; chat: real models)"),
}


def _plugins() -> dict[str, str]:
    """Entry-point name -> import path, for installed packages that register environments."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def env_names() -> list[str]:
    """Every environment name that :func:`make_env` accepts besides import paths, sorted."""
    return sorted({*BUILTIN, *_plugins()})


def _allowed() -> str:
    return ", ".join(env_names()) + ", or an import path 'package.module:ClassName'"


def _import(path: str, name: str, field: str = "env") -> Any:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise CodrlError(f"{field} {name!r}: an import path must look like 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise CodrlError(f"{field} {name!r}: cannot import module {module_name!r} ({e}); "
                         f"allowed values: {_allowed()}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CodrlError(f"{field} {name!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def resolve(name: str, field: str = "env") -> tuple[Callable[..., Any], dict[str, Any]]:
    """The factory and default parameters that ``name`` stands for (without building anything).

    ``field`` is how error messages name the value (``env``, ``--env``, ``envs.0.name``).
    """
    if not isinstance(name, str) or not name:
        raise CodrlError(f"{field}: expected a name, got {name!r}; allowed values: {_allowed()}")
    if name in BUILTIN:
        path, defaults, _ = BUILTIN[name]
        return _import(path, name, field), dict(defaults)
    if ":" in name:  # an import path (entry-point names hold no colon)
        return _import(name, name, field), {}
    plugins = _plugins()
    if name in plugins:
        return _import(plugins[name], name, field), {}
    raise CodrlError(f"{field}: {name!r} is not allowed; allowed values: {_allowed()}")


def _resolve_env(name: str, field: str = "env") -> tuple[Callable[..., Any], dict[str, Any]]:
    """:func:`resolve`, and a check that the factory is a CoDEnv subclass or a function."""
    factory, defaults = resolve(name, field)
    if not callable(factory) or (inspect.isclass(factory) and not issubclass(factory, CoDEnv)):
        raise CodrlError(f"{field} {name!r}: {factory!r} is not a CoDEnv subclass or a function returning one")
    return factory, defaults


def check_name(name: str, field: str = "env") -> str:
    """Validate an environment name (importing an import path's module); return it unchanged."""
    _resolve_env(name, field)
    return name


def params_model(factory: Callable[..., Any]) -> type[EnvParams] | None:
    """The typed parameters of an environment factory (None: a function, or a plug-in without Params)."""
    return factory.params_model() if inspect.isclass(factory) and issubclass(factory, CoDEnv) else None


def make_env(name: str, /, **params: Any) -> CoDEnv:
    """Build environment ``name`` with keyword ``params`` on top of the name's defaults.

    Raises :class:`CodrlError` for an unknown name or import path, for parameters its ``Params``
    refuses (one line naming ``name``, each bad field and what is allowed) and for an object that
    is not an environment. A plug-in without ``Params`` gets its unknown keywords refused here;
    its own ``TypeError``/``ValueError`` for bad values passes through (callers that face users
    wrap them, see :func:`codrl.eval.runner.build_env`).
    """
    factory, defaults = _resolve_env(name)
    merged = {**defaults, **params}
    model = params_model(factory)
    if model is not None:
        validate(model, merged, source=f"parameters of env {name!r}")
    else:
        _check_params(name, factory, params)
    env = factory(**merged)
    if not isinstance(env, CoDEnv):
        raise CodrlError(f"env {name!r}: {factory!r} returned {type(env).__name__}, not a CoDEnv")
    return env


def _check_params(name: str, factory: Callable[..., Any], params: dict[str, Any]) -> None:
    """Reject unknown keyword parameters up front, listing the ones the environment takes."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    ps = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps):
        return
    allowed = [p.name for p in ps if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise CodrlError(f"env {name!r}: unknown parameter(s) {', '.join(unknown)}; "
                         f"allowed parameters: {', '.join(allowed)}")


def param_rows(name: str) -> list[tuple[str, str, str, str]]:
    """``(name, type, default, description)`` of each parameter of environment ``name``, the name's
    own defaults applied (``alchemy_hard``: ``variant`` is ``hard``, and so are the knobs it sets).

    A plug-in without ``Params`` lists its constructor's keywords, without types or descriptions.
    """
    factory, defaults = _resolve_env(name)
    model = params_model(factory)
    if model is None:
        sig = inspect.signature(factory)
        return [(p.name, "" if p.annotation is p.empty else str(p.annotation),
                 "(required)" if p.default is p.empty else repr(p.default), "")
                for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    values = validate(model, defaults, source=f"defaults of env {name!r}")
    return [(field, _type_text(info.annotation), repr(getattr(values, field)), info.description or "")
            for field, info in model.model_fields.items()]


def _type_text(annotation: Any) -> str:
    """A short readable form of a Params annotation: constraints left to the description."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_text(args[0])
    if origin is Literal:  # a long list of choices is left to the description
        return " | ".join(repr(a) for a in args) if len(args) <= 4 else "str"
    if origin in (Union, UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"({_type_text(args[0])}, ...)"
        return "(" + ", ".join(_type_text(a) for a in args) + ")"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def describe(name: str) -> str:
    """One line on what ``name`` is: a built-in's summary, else its class docstring's first line."""
    if name in BUILTIN:
        return BUILTIN[name][2]
    factory, _ = resolve(name)
    doc = inspect.getdoc(factory) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
