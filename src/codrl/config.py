"""Loading typed configs from YAML, with errors that name the field and the allowed values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ValidationError

from codrl.errors import CodrlError

M = TypeVar("M", bound=BaseModel)


def _check_env_name(name: str) -> str:
    from codrl.envs import check_name

    try:
        return check_name(name)
    except CodrlError as e:
        raise ValueError(str(e)) from None


#: A config field naming an environment: a built-in name, a plug-in name or an import path,
#: checked (module imported) when the config is validated.
EnvName = Annotated[str, AfterValidator(_check_env_name)]


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at the parent of ``loc`` (for 'unknown key' messages)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or (ann,)
        nxt = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nxt is None:
            # list[Model]
            for a in args:
                for inner in getattr(a, "__args__", ()):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        nxt = inner
        if nxt is None:
            return []
        current = nxt
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def format_validation_error(model: type[BaseModel], err: ValidationError, source: str = "config") -> CodrlError:
    """Turn a pydantic error into a one-line :class:`CodrlError` naming each bad field."""
    parts = []
    for e in err.errors():
        loc = tuple(e.get("loc", ()))
        name = ".".join(str(p) for p in loc) or "(root)"
        if e.get("type") == "extra_forbidden":
            allowed = _allowed_fields(model, loc)
            parts.append(f"{name}: unknown key; allowed keys: {', '.join(allowed)}")
        elif e.get("type") == "missing":
            parts.append(f"{name}: required field is missing")
        else:
            msg = e.get("msg", "invalid value")
            got = e.get("input")
            got_s = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            parts.append(f"{name}: {msg}{got_s}")
    return CodrlError(f"invalid {source}: " + "; ".join(parts))


def validate(model: type[M], data: dict[str, Any], source: str = "config") -> M:
    """Validate ``data`` against ``model``, raising a :class:`CodrlError` on failure."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise format_validation_error(model, e, source) from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping of fields in a YAML config file, with one-line errors for a missing or bad file."""
    p = Path(path)
    if not p.is_file():
        raise CodrlError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise CodrlError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CodrlError(f"config file {p} must hold a mapping of fields, got {type(data).__name__}")
    return data


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Command-line ``KEY=VALUE`` items as a nested mapping: dotted keys name nested fields
    (``rollout.repeats=8``), values are read as YAML scalars or flow collections (``8``, ``1e-5``,
    ``true``, ``[cod, nohint]``). A malformed item is a :class:`CodrlError` naming it."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            raise CodrlError(f"override {item!r}: must be KEY=VALUE with a dotted field name, e.g. rollout.repeats=8")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        set_dotted(out, [p.strip() for p in parts], value, item)
    return out


def set_dotted(data: dict[str, Any], parts: Sequence[str], value: Any, what: str = "") -> None:
    """Set ``data[parts[0]][parts[1]]... = value``, creating mappings on the way; a field on the
    way that holds something else than a mapping is a :class:`CodrlError`."""
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise CodrlError(f"override {what or '.'.join(parts)!r}: {'.'.join(parts[:i + 1])} is not a group of "
                             "fields")
        node = nxt
    node[parts[-1]] = value


def merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, nested mappings field by field (``base`` unchanged)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(model: type[M], path: str | Path, overrides: Mapping[str, Any] | None = None) -> M:
    """Load and validate a YAML config file, with ``overrides`` (a nested mapping, e.g. from
    :func:`parse_overrides`) merged in field by field and validated like the file."""
    p = Path(path)
    data = merge(read_yaml_mapping(p), overrides or {})
    return validate(model, data, source=f"config {p}")


def dump_yaml(cfg: BaseModel, path: str | Path) -> None:
    """Write a config as YAML (used to record the resolved config of a run)."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
