"""Sample efficiency: each method's test metric against the training-set size, and how many
training samples a method needs to match the reference method at the largest size.

Reading the curve: between two measured sizes the mean metric is interpolated linearly in
``(log n, log metric)``, i.e. as a power law between neighbours (the shape of learning curves).
:func:`samples_to_match` returns the first size at which the interpolated curve reaches the target;
it is exact for a power-law curve, and it never extrapolates: a curve that reaches the target
already at its smallest size gives that size (marked "<="), one that never reaches it gives
``inf`` (marked ">"). For a metric where higher is better (an accuracy) the power law holds for
the error rather than the metric, and the reading is a close approximation.

Uncertainty: :func:`bootstrap_samples_to_match` resamples the seeds of every cell (each method's
sizes and the reference's target cell) with replacement, re-reads the curve on each replicate and
returns the percentile interval. With the three seeds of a typical suite a percentile bootstrap is
narrower than the truth (it ignores the (k - 1)/k factor and the few distinct resamples), so read
it as a rough interval. A cell with a single seed enters every replicate unchanged (it has no
spread to resample), which narrows the interval further; the table marks such cells.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from benchmark.report.tables import fmt

__all__ = ["samples_to_match", "bootstrap_samples_to_match", "sample_efficiency_tables", "to_markdown"]


def samples_to_match(sizes: Sequence[float], values: Sequence[float], target: float, *,
                     higher_is_better: bool = False) -> float:
    """The training-set size at which the curve ``values(sizes)`` first reaches ``target``.

    >>> samples_to_match([1000, 4000], [0.02, 0.01], 0.01 * 2 ** 0.5)   # power law: n^-1/2
    2000.0
    """
    pts = sorted((float(n), float(v)) for n, v in zip(sizes, values) if v == v and n > 0)
    if not pts:
        raise ValueError("samples_to_match needs at least one measured size")

    def reached(v: float) -> bool:
        return v >= target if higher_is_better else v <= target
    if reached(pts[0][1]):
        return pts[0][0]
    for (n0, v0), (n1, v1) in zip(pts, pts[1:]):
        if reached(v1):
            if v0 <= 0 or v1 <= 0 or target <= 0:       # no logarithm: interpolate linearly
                frac = (target - v0) / (v1 - v0)
                return n0 + frac * (n1 - n0)
            frac = (math.log(target) - math.log(v0)) / (math.log(v1) - math.log(v0))
            return float(round(math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0))), 6))
    return math.inf


def bootstrap_samples_to_match(curve: dict[float, Sequence[float]], target_runs: Sequence[float], *,
                               higher_is_better: bool = False, n_boot: int = 2000, level: float = 0.95,
                               seed: int = 0, same_cell: float | None = None) -> tuple[float, float] | None:
    """Seed-bootstrap percentile interval of :func:`samples_to_match`.

    ``curve`` maps each training size to the per-seed metrics of a method, ``target_runs`` holds the
    reference's per-seed metrics at its target size. Each replicate resamples every cell with
    replacement, takes the means and reads the curve at the resampled target. ``same_cell``: the size
    at which ``curve`` *is* the target cell (the reference read against itself), so both use one draw.
    A single-seed cell is held at its value. Returns ``None`` when the target cell or every cell of
    the curve has fewer than two runs; a bound may be ``inf`` (never reached).
    """
    cells = {float(n): np.asarray(v, dtype=float) for n, v in curve.items() if len(v)}
    target = np.asarray(target_runs, dtype=float)
    if not cells or len(target) < 2 or all(len(v) < 2 for v in cells.values()):
        return None
    rng = np.random.default_rng(seed)

    def draw(values: np.ndarray) -> np.ndarray:
        return values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    sizes = sorted(cells)
    means = {n: draw(cells[n]) for n in sizes}
    targets = means[float(same_cell)] if same_cell is not None and float(same_cell) in means else draw(target)
    reads = np.array([samples_to_match(sizes, [means[n][b] for n in sizes], targets[b],
                                       higher_is_better=higher_is_better) for b in range(n_boot)])
    tail = (1.0 - level) / 2
    return (float(np.quantile(reads, tail, method="lower")), float(np.quantile(reads, 1 - tail, method="higher")))


def sample_efficiency_tables(summary: pd.DataFrame, reference: str = "strict",
                             planned: dict | None = None, runs: pd.DataFrame | None = None) -> list[dict]:
    """Per (suite, task, backbone) with at least two training sizes: the headline variant's mean
    metric per method and size, and the samples each method needs to match ``reference`` at the
    largest size the reference has completed runs for. ``planned`` (``{(task, backbone, method,
    size): runs}``, a suite's grid) adds the sizes that have no record yet as columns. ``runs`` (one
    row per run and variant) adds the seed-bootstrap 95% interval of that reading, ``to_match_ci``."""
    out = []
    rows = summary[summary.headline] if "headline" in summary else summary
    for (suite, task, backbone), grp in rows.groupby(["suite", "task", "backbone"], sort=False):
        sizes = {int(n) for n in grp.train_size.unique()}
        sizes |= {int(k[3]) for k in (planned or {}) if k[0] == task and k[1] == backbone}
        sizes = sorted(sizes)
        if len(sizes) < 2:
            continue
        higher = bool(grp.higher_is_better.iloc[0])
        ref = grp[(grp.method == reference) & (grp.n_completed > 0)]
        target_size = int(ref.train_size.max()) if len(ref) else None
        target = float(ref[ref.train_size == target_size]["mean"].iloc[0]) if len(ref) else math.nan
        table = []
        per_seed = _per_seed(runs, suite, task, backbone) if runs is not None else None
        for method, mgrp in grp.groupby("method", sort=False):
            mgrp = mgrp.sort_values("train_size")
            done = mgrp[mgrp.n_completed > 0]
            row = {"method": method, "variant": mgrp.variant.iloc[0],
                   "cells": {int(r.train_size): (float(r["mean"]), int(r.n_completed), int(r.n_planned))
                             for _, r in mgrp.iterrows()}}
            if target_size is not None and len(done):
                row["to_match"] = samples_to_match(done.train_size, done["mean"], target, higher_is_better=higher)
                row["smallest"] = int(done.train_size.min())
                if per_seed is not None:
                    curve = {int(n): per_seed.get((method, row["variant"], int(n)), []) for n in done.train_size}
                    ref_variant = ref.variant.iloc[0]
                    row["to_match_ci"] = bootstrap_samples_to_match(
                        curve, per_seed.get((reference, ref_variant, target_size), []), higher_is_better=higher,
                        same_cell=target_size if (method, row["variant"]) == (reference, ref_variant) else None)
            table.append(row)
        order = sorted(table, key=lambda r: (r["method"] != reference, r["method"]))
        out.append({"suite": suite, "task": task, "backbone": backbone, "sizes": sizes, "reference": reference,
                    "target_size": target_size, "target": target, "metric": grp.metric.iloc[0],
                    "higher_is_better": higher, "rows": order,
                    "steps": _steps(runs, suite, task, backbone) if runs is not None else {}})
    return out


def _per_seed(runs: pd.DataFrame, suite: str, task: str, backbone: str) -> dict:
    """``{(method, variant, size): [test metric of each completed seed]}`` of one curve."""
    sel = runs[(runs.suite == suite) & (runs.task == task) & (runs.backbone == backbone)
               & (runs.status == "completed")]
    return {(m, v, int(n)): g.test_metric.astype(float).tolist()
            for (m, v, n), g in sel.groupby(["method", "variant", "train_size"], sort=False)}


def _steps(runs: pd.DataFrame, suite: str, task: str, backbone: str) -> dict[int, int]:
    """``{size: optimizer steps}`` of one curve: the median over its completed runs at each size.
    Under a fixed epoch budget a smaller training set also means fewer steps, which the table shows."""
    if "steps" not in runs:
        return {}
    sel = runs[(runs.suite == suite) & (runs.task == task) & (runs.backbone == backbone)
               & (runs.status == "completed") & runs.headline].dropna(subset=["steps"])
    return {int(n): int(round(float(g.steps.median()))) for n, g in sel.groupby("train_size")}


def _fmt_n(row: dict, n: float | None = None) -> str:
    n = row.get("to_match") if n is None else n
    if n is None:
        return "–"
    if math.isinf(n):
        return f"> {max(size for size, cell in row['cells'].items() if cell[1] > 0):,}"
    text = f"{n:,.0f}"
    return f"<= {text}" if n == row["smallest"] else text


def _fmt_ci(row: dict) -> str:
    ci = row.get("to_match_ci")
    return "–" if ci is None else f"{_fmt_n(row, ci[0])} – {_fmt_n(row, ci[1])}"


def to_markdown(table: dict) -> str:
    """One sample-efficiency table as Markdown (means over the completed seeds of each cell)."""
    sizes, ref = table["sizes"], table["reference"]
    arrow = "↑" if table["higher_is_better"] else "↓"
    match = (f"n to match {ref} at {table['target_size']:,}" if table["target_size"] else f"n to match {ref}")
    head = ["method", "variant"] + [f"n={n:,}" for n in sizes] + [match, "95% interval (seed bootstrap)"]
    lines = [f"### {table['task']} / {table['backbone']}: sample efficiency, test {table['metric']} {arrow} "
             f"({table['suite']})", "", "| " + " | ".join(head) + " |",
             "|:---|:---|" + "---:|" * (len(sizes) + 2)]
    partial = False
    for row in table["rows"]:
        cells = []
        for n in sizes:
            mean, done, planned = row["cells"].get(n, (math.nan, 0, 0))
            if done == 0:
                cells.append("–")
                continue
            cells.append(fmt(mean) + ("" if done >= planned else f" ({done}/{planned})"))
            partial = partial or done < planned
        lines.append(f"| {row['method']} | {row['variant']} | " + " | ".join(cells)
                     + f" | {_fmt_n(row)} | {_fmt_ci(row)} |")
    steps = table.get("steps") or {}
    if steps:
        lines.append("| *training steps* | | " + " | ".join(f"{steps[n]:,}" if n in steps else "–" for n in sizes)
                     + " | | |")
    lines += ["", "Mean test metric over the completed seeds of each cell ((k/m): k of m planned seeds done; "
              "–: none yet). The column \"n to match\" reads each method's mean curve, interpolated as a power law "
              f"between measured sizes, at {ref}'s mean at its largest size; it never extrapolates. Its interval "
              "resamples the seeds of every cell (a rough interval with few seeds; single-seed cells enter "
              "unresampled; –: no cell with two seeds)."
              + (" Cells with missing seeds make this reading provisional." if partial else "")
              + (" Training steps: the optimizer steps of a run at each size (median over its runs); with "
                 "the same epochs at every size, a smaller training set also trains for fewer steps." if steps else ""),
              ""]
    return "\n".join(lines)
