"""Typed environment parameters: every built-in declares a Params model, bad values are one-line errors.

Each built-in environment class validates its keyword parameters through its nested ``Params``
(pydantic); :func:`~codrl.envs.registry.make_env` validates a name's defaults plus the given
parameters the same way, and ``codrl envs NAME`` lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from codrl.cli import app
from codrl.envs import BUILTIN, CoDEnv, env_names, make_env
from codrl.envs.base import EnvParams, ParamsError
from codrl.envs.registry import param_rows, params_model, resolve
from codrl.errors import CodrlError
from codrl.eval.runner import build_env
from codrl.toy.secret_table import SecretTable

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: Per built-in name: a value outside a closed set of choices, one below its minimum.
BAD: dict[str, list[tuple[dict[str, Any], str, str]]] = {
    "frozenlake": [({"min_size": 1}, "min_size", "greater than or equal to 2"),
                   ({"min_size": 5, "max_size": 4}, "max_size", ">= min_size (5)")],
    "alchemy": [({"variant": "medium"}, "variant", "'easy' or 'hard'"),
                ({"base_elements": 0}, "base_elements", "greater than or equal to 1")],
    "terminal": [({"goal_feedback": "loud"}, "goal_feedback", "'checks' or 'terse'"),
                 ({"max_turns": 0}, "max_turns", "greater than or equal to 1")],
    "gridnav": [({"variant": "easy"}, "variant", "'train' or 'hard'"),
                ({"reveal_radius": -1}, "reveal_radius", "greater than or equal to 0")],
    "control": [({"preset": "extreme"}, "preset", "'easy', 'medium' or 'hard'"),
                ({"horizon": 0}, "horizon", "greater than or equal to 1")],
    "pde": [({"variant": "easy"}, "variant", "'train' or 'hard'"),
            ({"turns": 1}, "turns", "greater than or equal to 2")],
    "diagnosis": [({"misleading": "sometimes"}, "misleading", "'mixed', 'uninformative', 'reversed' or 'none'"),
                  ({"conditions_per_clinic": 0}, "conditions_per_clinic", "greater than or equal to 1")],
    "code": [({"variant": "medium"}, "variant", "'base' or 'hard'"),
             ({"memory_mb": 10}, "memory_mb", "greater than or equal to 64")],
    "secret_table": [({"style": "prose"}, "style", "'toy' or 'chat'"),
                     ({"num_values": 1}, "num_values", "greater than or equal to 2")],
}


def builtin_factory(name: str) -> type[CoDEnv]:
    factory, _ = resolve(name)
    assert isinstance(factory, type) and issubclass(factory, CoDEnv)
    return factory


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_declares_described_params(name: str) -> None:
    factory = builtin_factory(name)
    model = params_model(factory)
    assert model is factory.Params and model is not None and issubclass(model, EnvParams)
    assert model.model_config.get("extra") == "forbid"
    for field, info in model.model_fields.items():
        assert info.description and info.description.strip(), f"{name}: {field} has no description"
        assert not info.is_required(), f"{name}: {field} has no default"


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_defaults_build_the_env_with_the_names_values(name: str) -> None:
    env = make_env(name)
    _, defaults, _ = BUILTIN[name]
    assert env.name == name
    for key, value in defaults.items():
        assert getattr(env, key) == value


def test_every_bad_value_case_is_a_builtin_class() -> None:
    covered = {builtin_factory(name) for name in BAD}
    assert covered == {builtin_factory(name) for name in BUILTIN}


@pytest.mark.parametrize(("name", "params", "field", "allowed"),
                         [(name, p, f, a) for name, cases in BAD.items() for p, f, a in cases])
def test_bad_value_is_one_line_naming_env_field_and_rule(name: str, params: dict[str, Any], field: str,
                                                         allowed: str) -> None:
    with pytest.raises(CodrlError) as made:
        make_env(name, **params)
    message = str(made.value)
    assert "\n" not in message and f"env {name!r}" in message
    assert f"{field}: " in message and allowed in message
    assert not isinstance(made.value, ValueError)  # build_env passes it on as it is
    with pytest.raises(ParamsError) as direct:  # the class itself: the same rule, still a ValueError
        builtin_factory(name)(**params)
    assert isinstance(direct.value, ValueError) and f"{field}: " in str(direct.value) and allowed in str(direct.value)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_unknown_parameter_lists_the_allowed_ones(name: str) -> None:
    with pytest.raises(CodrlError) as e:
        make_env(name, bogus=1)
    message = str(e.value)
    model = params_model(builtin_factory(name))
    assert model is not None
    assert "\n" not in message and "bogus: unknown key" in message
    assert all(field in message for field in model.model_fields)


def test_build_env_does_not_wrap_the_message_twice() -> None:
    with pytest.raises(CodrlError) as e:
        build_env("alchemy_hard", {"max_rounds": 0})
    assert str(e.value).count("alchemy_hard") == 1 and "max_rounds: " in str(e.value)


def test_variant_knobs_follow_the_variant_unless_given() -> None:
    hard = make_env("alchemy", variant="hard", tiers=None)
    assert (hard.max_rounds, hard.limited_materials, hard.tiers) == (15, True, (3, 4))
    assert hard.chance_reward is not None  # the variant's own knobs: the measured level holds
    custom = make_env("gridnav_hard", max_moves=6)
    assert (custom.min_moves, custom.max_moves, custom.chance_reward) == (3, 6, None)
    with pytest.raises(CodrlError, match="max_moves: Value error, must be >= min_moves \\(7\\)"):
        make_env("gridnav", min_moves=7)  # the variant's max_moves (6) is below it


def test_ranges_take_a_value_or_an_ordered_pair() -> None:
    assert make_env("alchemy", base_elements=5).base_elements == (5, 5)
    assert make_env("diagnosis", conditions_per_clinic=[2, 5]).conditions_per_clinic == (2, 5)
    with pytest.raises(CodrlError, match="tiers: Value error, a \\(low, high\\) range needs low <= high"):
        make_env("alchemy", tiers=(4, 3))
    with pytest.raises(CodrlError, match="a_range: Input should be a valid tuple"):
        make_env("control", a_range=0.8)  # a pair only: no single value
    with pytest.raises(CodrlError, match="max_rounds: Input should be a valid integer"):
        make_env("alchemy", max_rounds=True)


def test_plugin_without_params_keeps_its_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    assert params_model(resolve("coin_env:CoinEnv")[0]) is None
    assert [row[0] for row in param_rows("coin_env:CoinEnv")][:2] == ["name", "marks"]

    class Wider(SecretTable):
        """A subclass that takes a keyword of its own: its signature is its contract, not the parent's Params."""

        def __init__(self, extra: int = 0, **params: Any) -> None:
            super().__init__(**params)
            self.extra = extra

    assert Wider.params_model() is None and SecretTable.params_model() is SecretTable.Params
    assert Wider(extra=2, num_keys=3).num_keys == 3


def test_cli_lists_a_names_parameters_with_its_defaults() -> None:
    result = CliRunner().invoke(app, ["envs", "alchemy_hard"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("alchemy_hard: Alchemy-Random")
    variant = next(line.split() for line in lines if line.split()[:1] == ["variant"])
    assert variant[1:5] == ["'easy'", "|", "'hard'", "'hard'"]  # type, then the name's default
    rounds = next(line.split() for line in lines if line.split()[:1] == ["max_rounds"])
    assert rounds[1:3] == ["int", "15"]
    listed = {line.split()[0] for line in lines[2:] if line.strip()}
    assert listed == set(builtin_factory("alchemy_hard").Params.model_fields)


def test_cli_without_a_name_lists_every_environment() -> None:
    result = CliRunner().invoke(app, ["envs"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == env_names()


def test_cli_unknown_name_exits_2_with_the_allowed_names() -> None:
    result = CliRunner().invoke(app, ["envs", "nope"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'nope'" in errors[0]
    assert all(name in errors[0] for name in env_names())
