"""Stage parameters from the command line and TOML: merge, coerce, validate, and list them.

Precedence: dataclass defaults < `--config FILE` tables < `--set stage.key=value` (the command line wins).
Every problem is reported as a `UsageError` one-liner before any work starts.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Iterable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class UsageError(Exception):
    """A user mistake in parameters or options; its message is the whole one-line explanation."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(value: Any, kind: type, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise UsageError(f"{where}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise UsageError(f"{where}: expected a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: expected a whole number, got {value!r}") from None
    if kind is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(number):  # NaN passes every min/max check and crashes the stage later
            raise UsageError(f"{where}: expected a finite number, got {value!r}")
        return number
    return str(value)


def _check_rules(value: Any, meta: dict, where: str) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise UsageError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    if "min" in meta and value < meta["min"]:
        raise UsageError(f"{where}: must be at least {meta['min']}, got {value}")
    if "max" in meta and value > meta["max"]:
        raise UsageError(f"{where}: must be at most {meta['max']}, got {value}")


def _field_types(params_class: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(params_class)}


def build(params_class: type, table: str, overrides: dict[str, Any], warn=lambda message: None):
    """A validated `params_class` instance from `overrides` (name -> raw value); `table` names it in errors.

    A parameter's old name (the class's `renamed` table) is accepted with a one-line note through `warn`."""
    fields = _field_types(params_class)
    renamed = getattr(params_class, "renamed", {})
    values = {}
    for name, raw in overrides.items():
        if name in renamed:
            warn(f"note: {table}.{name} is now spelled {table}.{renamed[name]}; the old name will stop working "
                 "in the next release")
            name = renamed[name]
        if name not in fields:
            known = ", ".join(f"{table}.{n}" for n in fields) or "none"
            raise UsageError(f"unknown parameter {table}.{name} (known: {known})")
        kind = type(fields[name].default)
        values[name] = _coerce(raw, kind, f"{table}.{name}")
    for name, f in fields.items():
        _check_rules(values.get(name, f.default), f.metadata, f"{table}.{name}")
    return params_class(**values)


def parse_sets(assignments: Iterable[str], tables: Iterable[str]) -> dict[str, dict[str, str]]:
    """`["vae.latent_dim=8", ...]` -> `{"vae": {"latent_dim": "8"}}`, rejecting unknown tables."""
    tables = tuple(tables)
    result: dict[str, dict[str, str]] = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        table, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise UsageError(f"--set {text!r}: write it as STAGE.PARAM=VALUE, e.g. --set vae.latent_dim=8")
        if table not in tables:
            raise UsageError(f"--set {text!r}: unknown stage {table!r} (stages with parameters: {', '.join(tables)})")
        result.setdefault(table, {})[name] = value.strip()
    return result


def read_config(path: Path, tables: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The `[stage]` tables of a TOML file; anything else in it is an error rather than silently ignored."""
    tables = tuple(tables)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"config file {path} is not valid TOML: {error}") from None
    for table, values in data.items():
        if table not in tables or not isinstance(values, dict):
            raise UsageError(f"config file {path}: unknown table [{table}] (known: {', '.join(tables)})")
    return data


def merge(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for table, values in layer.items():
            merged.setdefault(table, {}).update(values)
    return merged


def as_dict(params) -> dict[str, Any]:
    return dataclasses.asdict(params)


def hashed_dict(params) -> dict[str, Any]:
    """The parameters that change results; location-only settings are left to the data fingerprint."""
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.metadata.get("hashed", True)}


def describe(params_class: type, table: str) -> list[str]:
    """One line per parameter: `table.name = default  help [rules]`, for `pipeline params`."""
    lines = []
    for f in dataclasses.fields(params_class):
        rules = []
        if "choices" in f.metadata:
            rules.append("one of " + "|".join(map(str, f.metadata["choices"])))
        if "min" in f.metadata:
            rules.append(f">= {f.metadata['min']}")
        if "max" in f.metadata:
            rules.append(f"<= {f.metadata['max']}")
        suffix = f"  [{', '.join(rules)}]" if rules else ""
        lines.append(f"  {table}.{f.name} = {f.default!r}\n      {f.metadata.get('help', '')}{suffix}")
    return lines
