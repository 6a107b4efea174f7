"""Typed configuration: frozen dataclasses, ``key=value`` overrides and validation.

Every configurable object (task, backbone, method, training schedule) has a frozen dataclass whose
fields carry their type and, through :func:`param`, their allowed range or choices. Command-line
overrides are strings ``key=value`` with dotted keys (``train.lr=1e-3``, ``method.dual_lr=2e-4``);
a key without a namespace is accepted when exactly one namespace has it.

Guarantees
----------
* Overrides are parsed to the field's declared type; booleans accept only
  ``true/false/yes/no/on/off/1/0``, never Python's truthiness of a non-empty string, and numbers
  must be finite (``inf``, ``-inf`` and ``nan`` are refused).
* :func:`validate` checks every field against its declared type, range and choices, and raises a
  :class:`ConfigError` whose one-line message names the key, the value and what is allowed.
* :func:`config_hash` depends only on the resolved values, not on how they were given.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal, Mapping, Sequence, get_args, get_origin

__all__ = [
    "ConfigError",
    "param",
    "parse_overrides",
    "apply_overrides",
    "validate",
    "to_dict",
    "config_hash",
    "TrainConfig",
]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~"}


class ConfigError(ValueError):
    """A configuration value or key that is not allowed; the message is one line."""


def param(default: Any, *, help: str = "", choices: Sequence[Any] | None = None,
          ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with a help text and the constraints :func:`validate` enforces."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None,
            "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples or frozen dataclasses for defaults of frozen configs")
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# Parsing of one value to a declared type
# ---------------------------------------------------------------------------------------------
def _resolve_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return "a comma-separated list"
    if tp is type(None):
        return "none"
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number",
            str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def parse_value(text: Any, tp: Any, key: str) -> Any:
    """Convert ``text`` (a string from the command line, or an already typed value) to ``tp``."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and (text is None or (isinstance(text, str) and text.strip().lower() in _NONE)):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(text, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        finite = any(str(e).endswith("expected a finite number") for e in errors)
        raise ConfigError(f"{key}={text!r}: expected {_type_name(tp)}" + ("; numbers must be finite" if finite else ""))
    if origin is Literal:
        allowed = get_args(tp)
        for a in allowed:
            if text == a or (isinstance(text, str) and str(a) == text.strip()):
                return a
        raise ConfigError(f"{key}={text!r}: expected {_type_name(tp)}")
    if origin is tuple:
        inner = get_args(tp)
        elem = inner[0] if inner else str
        if isinstance(text, str):
            items = [t for t in (s.strip() for s in text.strip("()[] ").split(",")) if t]
        elif isinstance(text, (list, tuple)):
            items = list(text)
        else:
            raise ConfigError(f"{key}={text!r}: expected {_type_name(tp)}")
        return tuple(parse_value(i, elem, key) for i in items)
    if tp is bool:
        if isinstance(text, bool):
            return text
        if isinstance(text, str) and text.strip().lower() in _TRUE:
            return True
        if isinstance(text, str) and text.strip().lower() in _FALSE:
            return False
        raise ConfigError(f"{key}={text!r}: expected a boolean (true/false)")
    if tp is int:
        if isinstance(text, bool):
            raise ConfigError(f"{key}={text!r}: expected an integer")
        if isinstance(text, int):
            return text
        if isinstance(text, float) and text.is_integer():
            return int(text)
        try:
            return int(str(text).strip().replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected an integer") from None
    if tp is float:
        if isinstance(text, bool):
            raise ConfigError(f"{key}={text!r}: expected a number")
        try:
            value = float(text)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond floats
            raise ConfigError(f"{key}={text!r}: expected a number") from None
        if not math.isfinite(value):  # nan, inf, -inf: no setting accepts them
            raise ConfigError(f"{key}={text!r}: expected a finite number")
        return value
    if tp is str:
        if not isinstance(text, str):
            raise ConfigError(f"{key}={text!r}: expected a string")
        return text
    if tp is Any:
        return text
    raise ConfigError(f"{key}: cannot parse values of type {tp!r}")


# ---------------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------------
def closest_key(key: str, candidates: Sequence[str], cutoff: float = 0.6) -> str | None:
    """The candidate (a dotted key) closest to the unknown ``key``, or None when none is close.

    A candidate is compared as a whole and by its last component (``hiden`` -> ``model.hidden``,
    ``train.lrr`` -> ``train.lr``, ``trian.lr`` -> ``train.lr``); the best score wins.
    """
    leaf = key.rsplit(".", 1)[-1]
    best, best_score = None, cutoff
    for cand in sorted(candidates):
        score = max(difflib.SequenceMatcher(None, key, cand).ratio(),
                    difflib.SequenceMatcher(None, leaf, cand.rsplit(".", 1)[-1]).ratio())
        if score > best_score or (best is None and score >= cutoff):
            best, best_score = cand, score
    return best


def unknown_key_message(key: str, candidates: Sequence[str], probe: str | None = None) -> str:
    """``unknown key 'hiden'; did you mean model.hidden? allowed: ...`` (one line).

    ``probe`` is the part of ``key`` compared with the candidates (default: all of it).
    """
    close = closest_key(probe or key, candidates)
    hint = f"; did you mean {close}?" if close else ";"
    return f"unknown key {key!r}{hint} allowed: {', '.join(sorted(candidates))}"


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": "1", "c": "x"}``; a malformed item raises."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        if key in out:
            raise ConfigError(f"override {key!r} is given twice")
        out[key] = value
    return out


def apply_overrides(cfg: Any, overrides: Mapping[str, Any], prefix: str = "") -> Any:
    """A copy of the frozen dataclass ``cfg`` with dotted ``overrides`` applied and parsed.

    Unknown keys raise :class:`ConfigError` listing the allowed keys.
    """
    if not overrides:
        return cfg
    hints = _resolve_hints(type(cfg))
    names = {f.name for f in fields(cfg)}
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        full = f"{prefix}{key}"
        if head not in names:
            raise ConfigError(unknown_key_message(full, [prefix + n for n in names], probe=prefix + head))
        current = getattr(cfg, head)
        if rest:
            if not is_dataclass(current):
                raise ConfigError(f"unknown key {full!r}: {prefix}{head} has no sub-keys")
            nested.setdefault(head, {})[rest] = value
        elif is_dataclass(current) and not isinstance(value, type(current)):
            raise ConfigError(f"{full}: set its sub-keys ({full}.KEY=VALUE), not the group itself")
        else:
            direct[head] = parse_value(value, hints[head], full)
    for head, sub in nested.items():
        direct[head] = apply_overrides(getattr(cfg, head), sub, prefix=f"{prefix}{head}.")
    return replace(cfg, **direct)


def validate(cfg: Any, prefix: str = "") -> None:
    """Check types, ranges and choices of every field of ``cfg``; raise :class:`ConfigError`."""
    hints = _resolve_hints(type(cfg))
    for f in fields(cfg):
        key = prefix + f.name
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            validate(value, prefix=key + ".")
            continue
        # type: re-parse the value; a correctly typed value parses to itself
        parsed = parse_value(value, hints[f.name], key)
        if parsed != value or type(parsed) is not type(value):
            raise ConfigError(f"{key}={value!r}: expected {_type_name(hints[f.name])}")
        meta = f.metadata or {}
        if value is None:
            continue
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key}={value!r}: allowed values are {', '.join(map(str, choices))}")
        for bound, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                                ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
            b = meta.get(bound)
            if b is None:
                continue
            values = value if isinstance(value, tuple) else (value,)
            for v in values:
                if not ok(v, b):
                    raise ConfigError(f"{key}={value!r}: must be {word} {b}")
    check = getattr(cfg, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{exc}" if prefix and not str(exc).startswith(prefix) else str(exc)) from None


def to_dict(cfg: Any) -> Any:
    """A JSON-ready nested dict of a (possibly nested) config dataclass."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def config_hash(resolved: Mapping[str, Any]) -> str:
    """sha256 (hex, first 16 digits) of the canonical JSON of a resolved configuration."""
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def help_rows(cfg: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for each leaf of ``cfg``, for ``relaxbench ls --verbose``."""
    rows = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            rows.extend(help_rows(value, prefix + f.name + "."))
        else:
            rows.append((prefix + f.name, value, (f.metadata or {}).get("help", "")))
    return rows


@dataclass(frozen=True)
class TrainConfig:
    """The primal optimisation schedule, identical for every method in a comparison.

    Defaults come from the task (and the backbone's per-task overrides); methods never change
    them, so a comparison between methods changes one thing only.
    """

    epochs: int = param(1000, help="training epochs", ge=1)
    batch_size: int = param(100, help="training minibatch size", ge=1)
    drop_last: bool = param(False, help="drop the last incomplete training batch of each epoch")
    augment: str = param("none", help="transform each training sample by a random element: none, or a "
                         "Haar-random rotation (the task's rotation case)", choices=("none", "rotation"))
    lr: float = param(5e-4, help="Adam learning rate of the primal variables", gt=0)
    weight_decay: float = param(1e-12, help="Adam (L2) weight decay", ge=0)
    optimizer: str = param("adam", help="primal optimiser", choices=("adam", "adamw", "sgd"))
    grad_clip: float | None = param(None, help="clip the gradient norm to this value", gt=0)
    eval_every: int = param(5, help="evaluate every k epochs (and at the last)", ge=1)
    eval_batch_size: int = param(500, help="batch size of evaluation", ge=1)
    equivariance_samples: int = param(3, help="group elements per equivariance measurement", ge=1)
    dtype: str = param("float32", help="floating-point type of the model and data",
                       choices=("float32", "float64"))
    divergence_threshold: float = param(1e6, help="a train loss above this marks the run diverged", gt=0)
    divergence_patience: int = param(0, help="0: the first training step whose loss is above divergence_threshold "
                                     "ends the run as diverged; k > 0: only k consecutive epochs whose mean "
                                     "loss is above it do (a spike the run recovers from goes on); a non-finite "
                                     "loss always ends it", ge=0)
    compile: str = param("auto", help="torch.compile the training forward: on, off, or auto (on for runs of "
                         ">= 20000 steps, where the one-off compilation pays for itself)",
                         choices=("auto", "on", "off"))
