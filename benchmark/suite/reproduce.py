"""Reproduction check: a suite trained afresh, compared run by run with the records it should match.

For every planned run of a suite, the record in ``results`` (just trained) and the record of the
same run id in ``reference`` (the shipped ones) are read, and each evaluation variant's test and
validation metric, best epoch and status are compared. Runs are deterministic given their
configuration, seed, thread count and CPU; across CPUs or thread counts floating-point sums may
round differently, so metrics are compared to a relative tolerance (``rtol``) and best epochs must
match exactly unless ``epoch_slack`` allows otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from benchmark.record import read_or_quarantine, record_path

__all__ = ["Difference", "compare_runs", "format_differences"]


@dataclass(frozen=True)
class Difference:
    run_id: str
    what: str          # "missing", "status", "<variant>.test_metric", ...
    ours: object
    reference: object
    rel: float | None = None


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(b), 1e-300)


def compare_runs(spec, results: Path | str, reference: Path | str, *, rtol: float = 1e-3,
                 epoch_slack: int = 0) -> tuple[list[Difference], int]:
    """Differences of every planned run of ``spec`` between ``results`` and ``reference``, and the
    number of runs compared. A run missing on either side is a difference."""
    diffs: list[Difference] = []
    compared = 0
    for run in spec.runs():
        ours = read_or_quarantine(record_path(Path(results), run.cfg)) if record_path(Path(results), run.cfg).is_file() else None
        ref_path = record_path(Path(reference), run.cfg)
        ref = read_or_quarantine(ref_path) if ref_path.is_file() else None
        if ours is None or ref is None:
            diffs.append(Difference(run.run_id, "missing", ours is not None, ref is not None))
            continue
        compared += 1
        if ours["status"] != ref["status"]:
            diffs.append(Difference(run.run_id, "status", ours["status"], ref["status"]))
            continue
        for name, rv in (ref.get("variants") or {}).items():
            ov = (ours.get("variants") or {}).get(name)
            if ov is None:
                diffs.append(Difference(run.run_id, f"{name}", None, "present"))
                continue
            for key in ("test_metric", "val_metric"):
                a, b = float(ov[key]), float(rv[key])
                rel = _rel(a, b)
                if not (math.isfinite(rel) and rel <= rtol):
                    diffs.append(Difference(run.run_id, f"{name}.{key}", a, b, rel))
            if abs(int(ov["best_epoch"]) - int(rv["best_epoch"])) > epoch_slack:
                diffs.append(Difference(run.run_id, f"{name}.best_epoch", ov["best_epoch"], rv["best_epoch"]))
    return diffs, compared


def format_differences(diffs: list[Difference]) -> str:
    lines = []
    for d in diffs:
        if d.what == "missing":
            where = "here" if not d.ours else "in the reference"
            lines.append(f"{d.run_id}: no record {where}")
        elif d.rel is not None:
            lines.append(f"{d.run_id}: {d.what} {d.ours:.6g} against {d.reference:.6g} (relative {d.rel:.2e})")
        else:
            lines.append(f"{d.run_id}: {d.what} {d.ours} against {d.reference}")
    return "\n".join(lines)
