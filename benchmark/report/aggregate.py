"""From records to tables of numbers: one row per run and variant, then one row per group.

A *group* is (suite, task, backbone, method, train size, evaluation variant). Its statistics are
taken over the completed runs; diverged and failed runs are counted and shown, never dropped
silently. Records come either from a suite (exactly the runs its grid names, by configuration
hash) or from a whole results folder, where suite manifests (``<results>/suites/*.json``) label
each run with its suite and protocol; runs outside every suite are grouped by their settings.

Outside a suite, one row holds the seeds of one configuration: runs of a method whose settings
differ (say two ``dual_lr``) get a row each, labelled with the settings that differ
(``ace-eq [method.dual_lr=0.001]``), never pooled as if they were seeds. A manifest that cannot be
read is rebuilt from its shipped suite, or set aside in ``quarantine/``, with one warning; one
whose name is not a safe file name is ignored with a warning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.config import config_hash
from benchmark.fileio import quarantine, warn
from benchmark.nn import branch_field_names
from benchmark.record import RunId, equivariance_items, is_safe_component, iter_records, read_or_quarantine, record_path
from benchmark.report.stats import describe
from benchmark.suite.published import load_published

__all__ = ["Collection", "SuiteInfo", "collect_suite", "collect_results", "runs_frame", "summarize", "shown_path",
           "curves_frame", "diagnostics_frame", "GROUP_KEYS",
           "TABLE_KEYS"]

GROUP_KEYS = ["suite", "task", "backbone", "method", "train_size", "variant"]
TABLE_KEYS = ["suite", "task", "backbone", "train_size"]


@dataclass
class SuiteInfo:
    """What a table footer says about where its numbers come from."""

    name: str
    protocol: str
    reproduce: str | None = None          # the command that regenerates the suite
    reference: str = "strict"
    headline: dict[str, str] = field(default_factory=dict)
    expected: dict[tuple, int] = field(default_factory=dict)   # (task, backbone, method, n) -> planned seeds
    published: Any = None                 # the suite's published numbers (benchmark.suite.published), if any


@dataclass
class Collection:
    """Records and the suites they belong to: ``items`` pairs each record with a suite name."""

    items: list[tuple[str, dict, Path | None]]
    suites: dict[str, SuiteInfo]
    labels: dict[str, str] = field(default_factory=dict)     # record path -> row label of its settings
    #: record path -> its task with the settings its suite varies (``nbody-field[eps=0.1]``), for
    #: suites whose grid varies task settings: each value gets tables of its own
    task_labels: dict[str, str] = field(default_factory=dict)

    def task_of(self, rec: dict, path) -> str:
        return self.task_labels.get(str(path), rec["task"]) if path is not None else rec["task"]

    @property
    def records(self) -> list[dict]:
        return [rec for _, rec, _ in self.items]


def shown_path(path: Path | str) -> str:
    """``path`` as a report shows it: relative to the working directory when it lies under it, so
    a report written with an absolute results root names no folder of the machine it ran on."""
    path = Path(path)
    if path.is_absolute():
        try:
            return path.relative_to(Path.cwd()).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def _reproduce(source: str, results: Path | str) -> str:
    return f"relaxbench suite run {shown_path(source)} --results {shown_path(results)}"


def collect_suite(spec, results: Path) -> Collection:
    """The records of ``spec``'s grid that exist in ``results`` (matching configuration hash)."""
    items = []
    expected: dict[tuple, int] = {}
    task_labels: dict[str, str] = {}
    for run in spec.runs():
        key = (run.cell.task_label, run.cell.backbone, run.cell.method, run.cell.train_size)
        expected[key] = expected.get(key, 0) + 1
        path = record_path(results, run.cfg)
        if run.cell.task_settings:
            task_labels[str(path)] = run.cell.task_label
        if not path.is_file():
            continue
        rec = read_or_quarantine(path)
        if rec is None:
            continue
        if rec["config"]["hash"] == run.cfg.hash:
            items.append((spec.name, rec, path))
    info = SuiteInfo(spec.name, spec.protocol, _reproduce(spec.source, results), spec.reference,
                     {m: spec.headline_of(m) for m in spec.methods}, expected, load_published(spec.name))
    return Collection(items, {spec.name: info}, task_labels=task_labels)


def _canonical(rec: dict) -> dict:
    """The record's resolved configuration with renamed settings under one name (so a record
    written before a rename groups with one written after it)."""
    from benchmark.experiment import canonical_resolved
    resolved = dict((rec.get("config") or {}).get("resolved") or {})
    try:
        return canonical_resolved(resolved)
    except ValueError:
        return resolved


def _setting_hash(rec: dict) -> str:
    """A hash of what a table's rows must share: everything but seed, method and the branch."""
    resolved = _canonical(rec)
    for key in ("seed", "method", "method_cfg", "train_size"):
        resolved.pop(key, None)
    branch = branch_field_names()
    model = {k: v for k, v in (resolved.get("model_cfg") or {}).items() if k not in branch}
    resolved["model_cfg"] = model
    return config_hash(resolved)[:8]


_NAMESPACE = {"task_cfg": "task", "model_cfg": "model", "method_cfg": "method", "train": "train"}


def _flat_settings(rec: dict) -> dict[str, Any]:
    """The record's resolved configuration without its seed, as ``namespace.key -> value``."""
    resolved = _canonical(rec)
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
    for key, value in resolved.items():
        if key == "seed":
            continue
        walk(_NAMESPACE.get(key, key), value)
    return out


def _setting_labels(items: list[tuple[str, dict, Path | None]]) -> dict[str, str]:
    """Per record path, the settings that set its configuration apart from the other
    configurations of the same method in the same (ad-hoc) table; empty where there is one."""
    labels: dict[str, str] = {}
    groups: dict[tuple, dict[str, list]] = {}
    for suite, rec, path in items:
        flat = _flat_settings(rec)
        key = config_hash({k: str(v) for k, v in flat.items()})
        groups.setdefault((suite, rec["method"]), {}).setdefault(key, []).append((flat, path))
    for configs in groups.values():
        if len(configs) < 2:
            continue
        flats = [members[0][0] for members in configs.values()]
        keys = sorted({k for f in flats for k in f})
        differing = [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]
        for members in configs.values():
            flat = members[0][0]
            label = ", ".join(f"{k}={flat.get(k)}" for k in differing)
            for _, path in members:
                labels[str(path)] = label
    return labels


def _manifest_name_ok(path: Path) -> bool:
    if is_safe_component(path.stem):
        return True
    warn(f"ignored suite manifest {path}: {path.stem!r} is not a suite name (a single name of letters, "
         "digits, '.', '_', '+' or '-')")
    return False


def _read_manifest(path: Path) -> dict | None:
    """A suite manifest, rebuilt from its shipped suite when it cannot be read (else quarantined)."""
    why = None
    try:
        man = json.loads(path.read_text())
        if not isinstance(man, dict) or not isinstance(man.get("runs"), list):
            why = "not a suite manifest (expected an object with a list of runs)"
        else:
            for run_id in man["runs"]:
                RunId.parse(run_id)
    except (OSError, UnicodeDecodeError) as exc:
        why = f"unreadable ({exc})"
    except ValueError as exc:
        why = f"not a valid manifest ({str(exc).splitlines()[0][:200]})"
    if why is None:
        return man
    try:
        from benchmark.suite.spec import load_spec, shipped_suites
        if path.stem in shipped_suites():
            spec = load_spec(path.stem)
            man = {**spec.summary(), "runs": [run.run_id for run in spec.runs()],
                   "command": ["relaxbench", "suite", "run", path.stem], "rebuilt": True}
            from benchmark.fileio import write_json_atomic
            try:
                write_json_atomic(path, man)
                warn(f"suite manifest {path}: {why}; rebuilt from the shipped suite {path.stem!r}")
            except OSError:
                warn(f"suite manifest {path}: {why}; read from the shipped suite {path.stem!r} (not rewritten)")
            return man
    except ImportError:
        pass
    quarantine(path, f"{why}; its runs are reported outside any suite until `relaxbench suite run` "
                     "rewrites it")
    return None


def collect_results(results: Path) -> Collection:
    """Every record under ``results``, labelled by the suite manifests that list it."""
    results = Path(results)
    manifests = {}
    for path in sorted((results / "suites").glob("*.json")):
        if path.name.startswith(".tmp-") or not _manifest_name_ok(path):
            continue
        man = _read_manifest(path)
        if man is not None:
            manifests[path.stem] = man
    owners: dict[str, list[str]] = {}
    run_labels: dict[str, str] = {}
    suites: dict[str, SuiteInfo] = {}
    for name, man in manifests.items():
        expected: dict[tuple, int] = {}
        for run_id in man.get("runs", []):
            owners.setdefault(run_id, []).append(name)
            rid = RunId.parse(run_id)
            label = (man.get("task_labels") or {}).get(run_id)
            if label:
                run_labels.setdefault(run_id, label)
            key = (label or rid.task, rid.backbone, rid.method, rid.train_size)
            expected[key] = expected.get(key, 0) + 1
        suites[name] = SuiteInfo(name, man.get("protocol", name), _reproduce(man.get("source", name), results),
                                 man.get("reference", "strict"), dict(man.get("headline") or {}), expected,
                                 load_published(name))
    items = []
    adhoc = []
    root = results / "runs"
    paths: dict[Path, str] = {}
    for path, rec in iter_records(results):
        run_id = str(path.relative_to(root).with_suffix(""))
        paths[path] = run_id
        names = owners.get(run_id)
        if not names:
            name = f"ad-hoc-{_setting_hash(rec)}"
            names = [name]
            if name not in suites:
                suites[name] = SuiteInfo(name, "runs outside any suite with identical settings "
                                               f"(setting {name[7:]})", None)
        for name in names:
            items.append((name, rec, path))
            if not owners.get(run_id):
                adhoc.append((name, rec, path))
    task_labels = {str(path): run_labels[run_id] for path, run_id in paths.items() if run_id in run_labels}
    return Collection(items, suites, _setting_labels(adhoc), task_labels)


# -- frames -------------------------------------------------------------------------------------
def _method_variants(method: str, seen: dict[str, list[str]]) -> list[str]:
    try:
        from benchmark.registry import METHODS
        return list(METHODS.get(method).obj.variants)
    except Exception:  # noqa: BLE001 - a method no longer registered still has its records
        return seen.get(method) or ["-"]


def _num(x: Any) -> float:
    if x is None:
        return math.nan
    if isinstance(x, str):
        return {"inf": math.inf, "-inf": -math.inf}.get(x, math.nan)
    return float(x)


def runs_frame(col: Collection) -> pd.DataFrame:
    """One row per (suite, record, variant); non-completed records contribute rows without metrics."""
    seen: dict[str, list[str]] = {}
    for _, rec, _ in col.items:
        for v in rec.get("variants") or {}:
            seen.setdefault(rec["method"], [])
            if v not in seen[rec["method"]]:
                seen[rec["method"]].append(v)
    rows = []
    for suite, rec, path in col.items:
        info = col.suites[suite]
        metric = rec.get("metric") or {}
        headline = info.headline.get(rec["method"]) or rec.get("headline")
        variants = list(rec.get("variants") or {}) if rec["status"] == "completed" else \
            _method_variants(rec["method"], seen)
        if headline is None:
            headline = variants[0]
        timing = rec.get("timing") or {}
        for variant in variants:
            var = (rec.get("variants") or {}).get(variant) if rec["status"] == "completed" else None
            eq = (var or {}).get("equivariance") or {}
            label = col.labels.get(str(path)) if path is not None else None
            params = var.get("params", rec["params"]) if var else rec["params"]
            rows.append({
                "suite": suite, "task": col.task_of(rec, path), "backbone": rec["backbone"],
                "method": f"{rec['method']} [{label}]" if label else rec["method"],
                "train_size": int(rec["train_size"]), "variant": variant, "seed": int(rec["seed"]),
                "status": rec["status"], "headline": variant == headline,
                "metric": metric.get("name"), "higher_is_better": metric.get("higher_is_better"),
                "metric_scale": metric.get("scale", 1.0),
                "test_metric": _num((var or {}).get("test_metric")), "val_metric": _num((var or {}).get("val_metric")),
                "best_epoch": (var or {}).get("best_epoch"),
                "equivariance_rel": _num(eq.get("rel")), "equivariance_abs": _num(eq.get("abs")),
                "params": params, "median_step_seconds": _num(timing.get("median_step_seconds")),
                "wall_seconds": _num(timing.get("wall_seconds")), "steps": _num(timing.get("steps")),
                "config_hash": (rec.get("config") or {}).get("hash"),
                "preset": ((rec.get("config") or {}).get("resolved") or {}).get("preset"),
                "record": shown_path(path) if path is not None else None,
                # under each further group of the task (e.g. rotations about the vertical axis)
                **{f"equivariance_{k}": _num(v) for k, v in equivariance_items(eq).items() if "." in k},
                # a task's further test numbers (rotmnist: 6 read as 9, ...), one column each
                **{f"breakdown_{k}": _num(v) for k, v in ((var or {}).get("test_breakdown") or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)},
            })
    columns = ["suite", "task", "backbone", "method", "train_size", "variant", "seed", "status", "headline",
               "metric", "higher_is_better", "metric_scale", "test_metric", "val_metric", "best_epoch",
               "equivariance_rel", "equivariance_abs", "params", "median_step_seconds", "wall_seconds",
               "steps", "config_hash", "preset", "record"]
    columns += sorted({k for row in rows for k in row} - set(columns))
    return pd.DataFrame(rows, columns=columns)


def _params(frame: pd.DataFrame) -> int | None:
    values = frame.params.dropna()
    values = values[values > 0]
    return int(np.median(values)) if len(values) else None


def summarize(runs: pd.DataFrame, col: Collection | None = None) -> pd.DataFrame:
    """One row per group: run counts by status, mean/std/n/95% CI of the test metric over completed
    runs, the same for the relative equivariance error, parameters and median step time."""
    out = []
    for key, grp in runs.groupby(GROUP_KEYS, sort=False):
        row = dict(zip(GROUP_KEYS, key))
        done = grp[grp.status == "completed"]
        metric = describe(done.test_metric.to_numpy(dtype=float))
        eq = describe(done.equivariance_rel.to_numpy(dtype=float))
        first = grp.iloc[0]
        planned = None
        if col is not None:
            planned = col.suites[row["suite"]].expected.get((row["task"], row["backbone"], row["method"],
                                                             row["train_size"]))
        counts = grp.status.value_counts()
        row.update({
            "headline": bool(grp.headline.any()),
            "metric": next((m for m in grp.metric if isinstance(m, str)), None),
            "higher_is_better": next((bool(h) for h in grp.higher_is_better if h is not None and h == h), False),
            "metric_scale": float(first.metric_scale or 1.0),
            "n_completed": int(counts.get("completed", 0)), "n_diverged": int(counts.get("diverged", 0)),
            "n_failed": int(counts.get("failed", 0)),
            "n_planned": int(planned) if planned is not None else int(len(grp)),
            "seeds": " ".join(str(s) for s in sorted(done.seed)),
            "mean": metric["mean"], "std": metric["std"], "n": metric["n"],
            "ci95_low": metric["ci_low"], "ci95_high": metric["ci_high"],
            "val_mean": float(np.mean(done.val_metric)) if len(done) else math.nan,
            "equivariance_rel_mean": eq["mean"], "equivariance_rel_std": eq["std"],
            "equivariance_abs_mean": float(np.mean(done.equivariance_abs)) if len(done) else math.nan,
            "params": _params(done if len(done) else grp),
            "median_step_seconds": float(np.nanmedian(done.median_step_seconds)) if
            done.median_step_seconds.notna().any() else math.nan,
        })
        for column in (c for c in grp.columns if c.startswith("breakdown_")):
            values = describe(done[column].to_numpy(dtype=float))
            row[f"{column}_mean"], row[f"{column}_std"] = values["mean"], values["std"]
        out.append(row)
    return pd.DataFrame(out)


def curves_frame(col: Collection) -> pd.DataFrame:
    """Long form of every record's curves: one row per (run, epoch, quantity, variant or layer).

    ``quantity`` is ``val_metric`` or ``equivariance_rel`` (with ``variant`` set), a per-layer list
    such as ``gamma``/``lambda``/``u`` (with ``layer`` set), or a scalar such as ``gamma_bar``,
    ``truncation_error`` and ``train_loss``.
    """
    rows = []
    for suite, rec, path in col.items:
        info = col.suites[suite]
        headline = info.headline.get(rec["method"]) or rec.get("headline")
        layers = (rec.get("diagnostics") or {}).get("layers") or []
        base = {"suite": suite, "task": col.task_of(rec, path), "backbone": rec["backbone"], "method": rec["method"],
                "train_size": int(rec["train_size"]), "seed": int(rec["seed"]), "status": rec["status"]}
        for row in rec.get("curves") or []:
            epoch = row.get("epoch")
            # a method's diagnostics sit under their own key (older records: flat beside the rest)
            items = [(k, v) for k, v in row.items() if k != "diagnostics"] + list((row.get("diagnostics") or {}).items())
            for key, value in items:
                if key == "epoch":
                    continue
                if isinstance(value, dict) and "val_metric" in value:
                    eq = equivariance_items(value.get("equivariance"))
                    for q, v in [("val_metric", value.get("val_metric"))] + [(f"equivariance_{k}", v) for k, v in eq.items()]:
                        rows.append({**base, "epoch": epoch, "quantity": q, "variant": key,
                                     "headline": key == headline, "layer": None, "value": _num(v)})
                elif isinstance(value, list):
                    for i, v in enumerate(value):
                        if isinstance(v, (int, float)) or v is None:
                            rows.append({**base, "epoch": epoch, "quantity": key, "variant": None, "headline": False,
                                         "layer": layers[i] if i < len(layers) else f"layer{i}", "value": _num(v)})
                elif isinstance(value, (int, float)) or value is None:
                    rows.append({**base, "epoch": epoch, "quantity": key, "variant": None, "headline": False,
                                 "layer": None, "value": _num(value)})
    columns = ["suite", "task", "backbone", "method", "train_size", "seed", "status", "epoch", "quantity",
               "variant", "headline", "layer", "value"]
    return pd.DataFrame(rows, columns=columns)


def diagnostics_frame(col: Collection) -> pd.DataFrame:
    """Final per-layer diagnostics of completed runs: one row per (run, quantity, layer)."""
    rows = []
    for suite, rec, path in col.items:
        if rec["status"] != "completed":
            continue
        diag = rec.get("diagnostics") or {}
        layers = diag.get("layers") or []
        for key, value in diag.items():
            if key == "layers" or not isinstance(value, list):
                continue
            for i, v in enumerate(value):
                if isinstance(v, (int, float)):
                    rows.append({"suite": suite, "task": col.task_of(rec, path), "backbone": rec["backbone"],
                                 "method": rec["method"], "train_size": int(rec["train_size"]),
                                 "seed": int(rec["seed"]), "quantity": key,
                                 "layer": layers[i] if i < len(layers) else f"layer{i}", "value": float(v)})
    return pd.DataFrame(rows, columns=["suite", "task", "backbone", "method", "train_size", "seed", "quantity",
                                       "layer", "value"])
