"""Weights & Biases logging of benchmark runs, from their records.

One W&B run per benchmark run: group ``task/backbone/method/n<size>``, job type ``train``, the full
resolved configuration, every evaluation's metrics with ``step = epoch``, per-layer gamma/lambda/u,
and a summary of the best-validation values of each evaluation variant.

Guarantees
----------
* Offline unless an API key is configured (``WANDB_API_KEY`` or a ``wandb login``), or unless
  ``WANDB_MODE`` says otherwise: offline runs are written under ``WANDB_DIR`` (default: the
  working folder's ``wandb/``) and can be uploaded later with ``wandb sync``.
* Logging happens after the record is written and never raises: a W&B failure (not installed, no
  network, a full disk) is reported once on standard error and the benchmark run is unaffected.
* A W&B that is configured but unreachable (a bad key, a dead server) costs at most one short
  init timeout (``RELAXBENCH_WANDB_TIMEOUT`` seconds, default 15): after its first failure a
  logger stops trying, so a suite logging every run through one logger says so once and moves on.
"""

from __future__ import annotations

import netrc
import os
import sys
from typing import Any
from urllib.parse import urlparse

from benchmark.record import equivariance_items

__all__ = ["WandbRunLogger", "wandb_mode", "flatten_row", "log_record_to_wandb", "init_timeout"]

DEFAULT_INIT_TIMEOUT = 15.0


def init_timeout() -> float:
    """Seconds W&B may take to start a run (``RELAXBENCH_WANDB_TIMEOUT``, default 15)."""
    try:
        value = float(os.environ.get("RELAXBENCH_WANDB_TIMEOUT", DEFAULT_INIT_TIMEOUT))
    except ValueError:
        value = DEFAULT_INIT_TIMEOUT
    return value if value > 0 else DEFAULT_INIT_TIMEOUT

def _have_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str:
    """``WANDB_MODE`` if set, else ``online`` with an API key and ``offline`` without one."""
    return os.environ.get("WANDB_MODE") or ("online" if _have_api_key() else "offline")


def _layer_names(record: dict, n: int) -> list[str]:
    layers = (record.get("diagnostics") or {}).get("layers") or []
    return [layers[i] if i < len(layers) else f"layer{i}" for i in range(n)]


def flatten_row(record: dict, row: dict) -> dict[str, float]:
    """One curve row as flat W&B keys: ``<variant>/val_metric``, ``<variant>/equivariance_rel``,
    ``gamma/<layer>``, ``lambda/<layer>``, ``gamma_bar``, ``truncation_error``, ``train_loss``..."""
    out: dict[str, float] = {}
    items = [(k, v) for k, v in row.items() if k != "diagnostics"] + list((row.get("diagnostics") or {}).items())
    for key, value in items:
        if key == "epoch":
            continue
        if isinstance(value, dict) and "val_metric" in value:
            out[f"{key}/val_metric"] = value["val_metric"]
            for kind, v in equivariance_items(value.get("equivariance")).items():
                out[f"{key}/equivariance_{kind}"] = v
        elif isinstance(value, list):
            for name, v in zip(_layer_names(record, len(value)), value):
                if isinstance(v, (int, float)):
                    out[f"{key}/{name}"] = v
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


def _summary(record: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"status": record["status"], "params": record.get("params")}
    timing = record.get("timing") or {}
    out["wall_seconds"] = timing.get("wall_seconds")
    out["median_step_seconds"] = timing.get("median_step_seconds")
    head = record.get("headline")
    for name, var in (record.get("variants") or {}).items():
        for prefix in [f"best/{name}"] + (["best/headline"] if name == head else []):
            out[f"{prefix}/val_metric"] = var.get("val_metric")
            out[f"{prefix}/test_metric"] = var.get("test_metric")
            out[f"{prefix}/best_epoch"] = var.get("best_epoch")
            for kind, v in (var.get("equivariance") or {}).items():
                out[f"{prefix}/equivariance_{kind}"] = v
            for kind, v in (var.get("test_breakdown") or {}).items():     # a task's further test numbers
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{prefix}/test_{kind}"] = v
    for key, value in (record.get("diagnostics") or {}).items():
        if key == "layers":
            continue
        if isinstance(value, list):
            for name, v in zip(_layer_names(record, len(value)), value):
                out[f"final/{key}/{name}"] = v
        elif isinstance(value, (int, float)):
            out[f"final/{key}"] = value
    return out


def run_group(record: dict) -> str:
    return f"{record['task']}/{record['backbone']}/{record['method']}/n{record['train_size']}"


class WandbRunLogger:
    """Log finished benchmark records to W&B (``log_record`` never raises)."""

    def __init__(self, project: str | None = "relaxbench", *, entity: str | None = None, mode: str | None = None,
                 dir: str | None = None, suite: str | None = None):
        self.project = project or "relaxbench"
        self.entity = entity
        self.mode = mode
        self.dir = dir
        self.suite = suite
        self.last_run_dir: str | None = None
        self.disabled: str | None = None          # why W&B is off for the rest of this logger's life

    def log_record(self, record: dict) -> str | None:
        """Log ``record`` as one W&B run; returns the run's local folder, or ``None`` on failure
        (and every later call returns ``None`` at once: W&B is tried until it fails once)."""
        if self.disabled is not None:
            return None
        try:
            return self._log(record)
        except Exception as exc:  # noqa: BLE001 - the record is the source of truth
            text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            self.disabled = text
            print(f"relaxbench: warning: W&B logging failed ({text[:300]}); W&B is off for the rest of "
                  f"this {'suite' if self.suite else 'command'}, the local records are unaffected", file=sys.stderr, flush=True)
            return None

    def _log(self, record: dict) -> str:
        try:
            import wandb
        except ImportError:
            raise RuntimeError("wandb is not installed: pip install 'relaxbench[wandb]'") from None
        resolved = (record.get("config") or {}).get("resolved") or {}
        config = {**resolved, "config_hash": (record.get("config") or {}).get("hash"), "status": record["status"],
                  "headline": record.get("headline"), "metric": (record.get("metric") or {}).get("name")}
        if self.suite:
            config["suite"] = self.suite
        group = run_group(record)
        run = wandb.init(project=self.project, entity=self.entity, group=group, job_type="train",
                         name=f"{group}/seed{record['seed']}", config=config,
                         dir=self.dir or os.environ.get("WANDB_DIR"),
                         mode=self.mode or wandb_mode(), reinit="create_new",
                         tags=[record["status"]] + ([self.suite] if self.suite else []),
                         settings=wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                                 init_timeout=init_timeout()))
        try:
            for row in record.get("curves") or []:
                run.log(flatten_row(record, row), step=int(row["epoch"]))
            for key, value in _summary(record).items():
                if value is not None:
                    run.summary[key] = value
            self.last_run_dir = os.path.dirname(run.dir)
        finally:
            run.finish(exit_code=0 if record["status"] == "completed" else 1)
        return self.last_run_dir


def log_record_to_wandb(record: dict, project: str | None = None, entity: str | None = None,
                        suite: str | None = None) -> str | None:
    """A picklable post-run hook for suites: log one record, never raise."""
    return WandbRunLogger(project, entity=entity, suite=suite).log_record(record)
