"""Run records: one schema-versioned JSON file per run, written atomically.

The schema is documented in ``results/README.md``; :func:`validate_record` checks a record
against it. Tables and figures are always generated from records.

Guarantees
----------
* :func:`write_record` writes to a temporary file in the target folder and renames it into
  place, so a reader never sees a half-written record, and a crash never leaves one.
* :func:`record_path` depends only on the run's identity and configuration hash.
"""

from __future__ import annotations

import json
import math
import os
import platform
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

__all__ = ["SCHEMA_VERSION", "STATUSES", "record_path", "checkpoint_path", "write_record", "read_record",
           "iter_records", "validate_record", "provenance", "code_version", "device_name", "RecordError"]

SCHEMA_VERSION = 1
STATUSES = ("completed", "diverged", "failed")


class RecordError(ValueError):
    """A record that does not follow the schema."""


def record_path(results: Path, run_cfg) -> Path:
    """``<results>/runs/<task>/<backbone>/<method>/n<size>-seed<seed>-<hash>.json``."""
    return Path(results) / "runs" / f"{run_cfg.run_id}.json"


def checkpoint_path(results: Path, run_cfg) -> Path:
    return Path(results) / "checkpoints" / f"{run_cfg.run_id}.pt"


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: it creates the file private (0600). Mode 0666 through the umask
    # gives the record the permissions a plain open() would, so a shared results folder
    # stays readable by the group it is shared with.
    tmp = str(path.parent / f".tmp-{secrets.token_hex(8)}.json")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(_json_safe(data), fh, indent=1, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_record(path: Path, record: dict) -> Path:
    """Validate ``record`` and write it atomically to ``path``."""
    validate_record(record)
    return write_json_atomic(path, record)


def read_record(path: Path) -> dict:
    with open(path) as fh:
        return json.load(fh)


def iter_records(results: Path) -> Iterator[tuple[Path, dict]]:
    """Every record under ``<results>/runs`` (sorted by path); unreadable files are skipped."""
    root = Path(results) / "runs"
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith(".tmp-"):
            continue
        try:
            yield path, read_record(path)
        except (OSError, json.JSONDecodeError):
            continue


_TOP = {"schema_version": int, "task": str, "backbone": str, "method": str, "seed": int, "train_size": int,
        "status": str, "reason": (str, type(None)), "config": dict, "variants": dict, "curves": list,
        "diagnostics": dict, "params": int, "timing": dict, "provenance": dict}


def validate_record(record: dict) -> None:
    """Raise :class:`RecordError` if ``record`` does not follow the schema."""
    for key, tp in _TOP.items():
        if key not in record:
            raise RecordError(f"record lacks {key!r}")
        if not isinstance(record[key], tp):
            raise RecordError(f"record[{key!r}] has type {type(record[key]).__name__}")
    if record["schema_version"] != SCHEMA_VERSION:
        raise RecordError(f"schema_version {record['schema_version']} (this code reads {SCHEMA_VERSION})")
    if record["status"] not in STATUSES:
        raise RecordError(f"status {record['status']!r} not in {STATUSES}")
    if record["status"] != "completed" and not record["reason"]:
        raise RecordError(f"a {record['status']} record needs a reason")
    cfg = record["config"]
    if not {"hash", "resolved"} <= set(cfg):
        raise RecordError("config needs 'hash' and 'resolved'")
    for name, var in record["variants"].items():
        for key in ("best_epoch", "val_metric", "test_metric", "equivariance"):
            if key not in var:
                raise RecordError(f"variant {name!r} lacks {key!r}")
        if not {"abs", "rel"} <= set(var["equivariance"] or {}):
            raise RecordError(f"variant {name!r}: equivariance needs 'abs' and 'rel'")
    if record["status"] == "completed" and not record["variants"]:
        raise RecordError("a completed record needs at least one variant")
    for row in record["curves"]:
        if "epoch" not in row:
            raise RecordError("every curve row needs 'epoch'")
    for key in ("wall_seconds", "median_step_seconds"):
        if key not in record["timing"]:
            raise RecordError(f"timing lacks {key!r}")


def code_version(where: Path | str | None = None) -> str | None:
    """The commit of the checkout holding this code (or ``where``), or ``None`` outside git.

    ``-dirty`` marks uncommitted changes to tracked files outside the top-level ``results/``
    folder: records, reports and manifests are what runs write, not the code they ran."""
    here = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            sha = out.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                    ":(top)", ":(top,exclude)results"],
                                   cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


_NOW = object()


def device_name(device: Any = None) -> str:
    """``"cpu"`` or the GPU's model name (``None`` means the CPU)."""
    import torch
    device = torch.device(device) if device is not None else torch.device("cpu")
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def provenance(argv: list[str] | None = None, device: Any = None, git_sha: Any = _NOW) -> dict[str, Any]:
    """Git SHA, package versions, device and command line of this process. ``git_sha``: the commit
    read when the run started (the code that ran), else it is read now."""
    import numpy
    import torch
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    for name in ("e3nn", "scipy", "escnn"):
        mod = sys.modules.get(name)
        if mod is not None:
            versions[name] = getattr(mod, "__version__", "?")
    try:
        from importlib.metadata import version
        versions["relaxbench"] = version("relaxbench")
    except Exception:
        versions["relaxbench"] = "unknown"
    return {"git_sha": code_version() if git_sha is _NOW else git_sha, "packages": versions,
            "device": device_name(device), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(terse=True),
            "command": list(sys.argv if argv is None else argv)}
