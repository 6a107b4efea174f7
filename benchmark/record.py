"""Run records: one schema-versioned JSON file per run, written atomically, read validated.

The schema is documented in ``results/README.md`` and defined once, here, by :class:`RunRecord`:
the train loop builds one, :func:`write_record` writes it, and every reader (the suite runner, the
aggregator, the W&B logger, the CLI summary) gets records through :func:`load_record` /
:func:`iter_records`, which validate with the same class. :class:`RunId` formats and parses the
run's id (``<task>/<backbone>/<method>/n<size>-seed<seed>-<hash>``).

Guarantees
----------
* :func:`write_record` writes to a temporary file in the target folder and renames it into
  place, so a reader never sees a half-written record, and a crash never leaves one.
* :func:`record_path` depends only on the run's identity and configuration hash, and every part of
  it is a single safe path component (a name cannot climb out of ``<results>/runs``).
* A file under ``runs/`` that is not a valid record (truncated, not JSON, JSON but not a record)
  never crashes a reader: it is reported once (``skipped <path>: <why>``) and moved to a
  ``quarantine/`` folder beside it, so a suite reruns that cell.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from benchmark.fileio import QUARANTINE, json_safe, quarantine, write_json_atomic

__all__ = ["equivariance_items", "SCHEMA_VERSION", "STATUSES", "RunRecord", "RunId", "record_path", "checkpoint_path", "lock_path",
           "write_record", "read_record", "load_record", "iter_records", "validate_record", "RecordError", "write_json_atomic", "safe_component",
           "is_safe_component"]

SCHEMA_VERSION = 1
#: Every status a record can have: ``diverged`` is a result (the same configuration diverges
#: again), ``failed`` an error (an exception; rerun with ``--retry-failed``).
STATUSES = ("completed", "diverged", "failed")

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def is_safe_component(name: Any) -> bool:
    """A single path component that stays where it is put: no separators, not ``.``/``..``, no
    leading dot or dash, at most 200 characters."""
    return isinstance(name, str) and len(name) <= 200 and bool(_SAFE.match(name)) and name not in (".", "..")


def safe_component(name: Any, what: str) -> str:
    """``name`` if :func:`is_safe_component`, else a :class:`ValueError` naming ``what``."""
    if not is_safe_component(name):
        raise ValueError(f"{what}={name!r}: expected a single name of letters, digits, '.', '_', '+' "
                         "or '-' (not '.', '..' or a path)")
    return name


def equivariance_items(eq: Any) -> dict[str, float]:
    """A variant's ``equivariance`` entry as flat names: ``abs`` and ``rel`` under the task's group,
    ``abs.<name>`` and ``rel.<name>`` under each of its further groups (``groups.<name>``).

    >>> equivariance_items({"abs": 1.0, "rel": 0.5, "groups": {"vertical": {"abs": 0.0, "rel": 0.0}}})
    {'abs': 1.0, 'rel': 0.5, 'abs.vertical': 0.0, 'rel.vertical': 0.0}
    """
    if not isinstance(eq, dict):
        return {}
    out = {k: v for k, v in eq.items() if k != "groups"}
    for name, sub in (eq.get("groups") or {}).items():
        for k, v in (sub or {}).items():
            out[f"{k}.{name}"] = v
    return out


class RecordError(ValueError):
    """A record that does not follow the schema."""


@dataclass(frozen=True)
class RunId:
    """The identity of one run, as it appears in file names and suite manifests."""

    task: str
    backbone: str
    method: str
    train_size: int
    seed: int
    hash: str

    _PATTERN = re.compile(r"^n(?P<n>\d+)-seed(?P<seed>\d+)-(?P<hash>[0-9a-f]{16})$")

    def __post_init__(self):
        for what in ("task", "backbone", "method"):
            safe_component(getattr(self, what), what)

    def __str__(self) -> str:
        return f"{self.task}/{self.backbone}/{self.method}/n{self.train_size}-seed{self.seed}-{self.hash}"

    @classmethod
    def parse(cls, text: str) -> "RunId":
        parts = str(text).split("/")
        match = cls._PATTERN.match(parts[-1]) if len(parts) == 4 else None
        if match is None:
            raise ValueError(f"run id {text!r}: expected TASK/BACKBONE/METHOD/n<size>-seed<seed>-<16 hex digits>")
        try:
            return cls(parts[0], parts[1], parts[2], int(match["n"]), int(match["seed"]), match["hash"])
        except ValueError as exc:
            raise ValueError(f"run id {text!r}: {exc}") from None


def record_path(results: Path, run_cfg) -> Path:
    """``<results>/runs/<task>/<backbone>/<method>/n<size>-seed<seed>-<hash>.json``."""
    return Path(results) / "runs" / f"{RunId.parse(run_cfg.run_id)}.json"


def checkpoint_path(results: Path, run_cfg) -> Path:
    return Path(results) / "checkpoints" / f"{RunId.parse(run_cfg.run_id)}.pt"


def lock_path(results: Path, run_cfg) -> Path:
    """The lock file that claims a run for one process (beside its checkpoint)."""
    return Path(results) / "checkpoints" / f"{RunId.parse(run_cfg.run_id)}.lock"


def _json_safe(obj: Any) -> Any:
    return json_safe(obj)


_NUMBER = (int, float, str, type(None))     # a metric: a number, null (NaN) or "inf"/"-inf"


@dataclass
class RunRecord:
    """One run's record (schema version 1; documented in ``results/README.md``).

    :meth:`from_dict` validates a loaded JSON object and raises :class:`RecordError` saying what is
    wrong; :meth:`to_dict` gives the JSON object. Keys a newer writer adds are kept as they are.
    """

    task: str
    backbone: str
    method: str
    seed: int
    train_size: int
    status: str
    reason: str | None
    config: dict
    variants: dict
    curves: list
    diagnostics: dict
    params: int
    timing: dict
    provenance: dict
    headline: str | None = None
    metric: dict | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    _TYPES = {"schema_version": int, "task": str, "backbone": str, "method": str, "seed": int,
              "train_size": int, "status": str, "reason": (str, type(None)), "config": dict, "variants": dict,
              "curves": list, "diagnostics": dict, "params": int, "timing": dict, "provenance": dict,
              "headline": (str, type(None)), "metric": (dict, type(None))}
    _OPTIONAL = ("headline", "metric")

    @property
    def run_id(self) -> RunId:
        return RunId(self.task, self.backbone, self.method, self.train_size, self.seed, self.config["hash"])

    @property
    def hash(self) -> str:
        return self.config["hash"]

    def to_dict(self) -> dict:
        out = {"schema_version": self.schema_version, "task": self.task, "backbone": self.backbone,
               "method": self.method, "seed": self.seed, "train_size": self.train_size, "status": self.status,
               "reason": self.reason, "config": self.config, "variants": self.variants,
               "headline": self.headline, "metric": self.metric, "curves": self.curves,
               "diagnostics": self.diagnostics, "params": self.params, "timing": self.timing,
               "provenance": self.provenance}
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "RunRecord":
        if not isinstance(data, dict):
            raise RecordError(f"expected a JSON object, got {type(data).__name__}")
        for key, tp in cls._TYPES.items():
            if key not in data:
                if key in cls._OPTIONAL:
                    continue
                raise RecordError(f"record lacks {key!r}")
            value = data[key]
            if isinstance(value, bool) and tp is int or not isinstance(value, tp):
                raise RecordError(f"record[{key!r}] has type {type(value).__name__}")
        if data["schema_version"] != SCHEMA_VERSION:
            raise RecordError(f"schema_version {data['schema_version']} (this code reads {SCHEMA_VERSION})")
        if data["status"] not in STATUSES:
            raise RecordError(f"status {data['status']!r} not in {STATUSES}")
        if data["status"] != "completed" and not data["reason"]:
            raise RecordError(f"a {data['status']} record needs a reason")
        if data["seed"] < 0 or data["train_size"] < 1:
            raise RecordError("seed must be >= 0 and train_size >= 1")
        for key in ("task", "backbone", "method"):
            if not is_safe_component(data[key]):
                raise RecordError(f"{key} {data[key]!r} is not a name")
        cfg = data["config"]
        if not {"hash", "resolved"} <= set(cfg) or not isinstance(cfg["hash"], str) \
                or not isinstance(cfg["resolved"], dict):
            raise RecordError("config needs 'hash' (a string) and 'resolved' (an object)")
        for name, var in data["variants"].items():
            if not isinstance(var, dict):
                raise RecordError(f"variant {name!r} is not an object")
            for key in ("best_epoch", "val_metric", "test_metric", "equivariance"):
                if key not in var:
                    raise RecordError(f"variant {name!r} lacks {key!r}")
            for key in ("val_metric", "test_metric"):
                if not isinstance(var[key], _NUMBER) or isinstance(var[key], bool):
                    raise RecordError(f"variant {name!r}: {key} is not a number")
            if not isinstance(var["equivariance"], dict) or not {"abs", "rel"} <= set(var["equivariance"]):
                raise RecordError(f"variant {name!r}: equivariance needs 'abs' and 'rel'")
            if "params" in var and (not isinstance(var["params"], int) or isinstance(var["params"], bool)):
                raise RecordError(f"variant {name!r}: params is not an integer")
        if data["status"] == "completed" and not data["variants"]:
            raise RecordError("a completed record needs at least one variant")
        for row in data["curves"]:
            if not isinstance(row, dict) or "epoch" not in row:
                raise RecordError("every curve row needs 'epoch'")
        for key in ("wall_seconds", "median_step_seconds"):
            if key not in data["timing"]:
                raise RecordError(f"timing lacks {key!r}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: data[k] for k in known if k in data}
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})


def validate_record(record: Any) -> None:
    """Raise :class:`RecordError` if ``record`` does not follow the schema."""
    RunRecord.from_dict(record)


def write_record(path: Path, record: dict | RunRecord) -> Path:
    """Validate ``record`` and write it atomically to ``path``."""
    data = record.to_dict() if isinstance(record, RunRecord) else record
    validate_record(json.loads(json.dumps(json_safe(data))))     # what a reader will see
    return write_json_atomic(path, data)


def load_record(path: Path | str) -> dict:
    """The validated record at ``path`` (a dict); :class:`RecordError` says why a file is not one,
    :class:`OSError` passes through."""
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise RecordError("not UTF-8 text") from None
    if not text.strip():
        raise RecordError("empty file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    return RunRecord.from_dict(data).to_dict()


read_record = load_record


def _quarantined(path: Path) -> bool:
    return QUARANTINE in path.parts or path.name.startswith((".tmp-", ".probe-"))


def read_or_quarantine(path: Path) -> dict | None:
    """The record at ``path``, or ``None`` after moving a bad file aside (one warning)."""
    try:
        return load_record(path)
    except RecordError as exc:
        quarantine(path, f"not a valid run record: {exc}")
        return None
    except OSError as exc:
        quarantine(path, f"unreadable: {exc.strerror or exc}")
        return None


def iter_records(results: Path) -> Iterator[tuple[Path, dict]]:
    """Every valid record under ``<results>/runs`` (sorted by path); a bad file is moved to
    ``quarantine/`` beside it with one warning, a file whose name does not match its contents too."""
    root = Path(results) / "runs"
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*.json")):
        if _quarantined(path.relative_to(root)):
            continue
        rec = read_or_quarantine(path)
        if rec is None:
            continue
        expected = root / f"{RunId(rec['task'], rec['backbone'], rec['method'], rec['train_size'], rec['seed'], rec['config']['hash'])}.json"
        if expected != path:
            quarantine(path, f"its contents are the record of {expected.relative_to(root)}")
            continue
        yield path, rec
