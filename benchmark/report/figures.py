"""Figures of a suite (seaborn; each saved as PNG and PDF, named after what it shows).

* ``sample_efficiency_<task>_<backbone>``: test metric against training size, one line per method
  (headline variant), mean with a 95% Student-t band; log axes where the values span a decade.
* ``training_dynamics_<task>_<backbone>_n<size>``: validation metric and equivariance error
  against epoch (mean and standard deviation over seeds).
* ``relaxation_parameters_<task>_<backbone>_n<size>``: gamma_i, lambda_i (and u_i) per layer
  against epoch, one column per relaxed method.
* ``layer_relaxation_<method>``: final lambda_i, gamma_i and u_i per layer, one panel per task,
  for each method with per-layer duals (ACE's "which layers need relaxation").
* ``gamma_bar_errors_<task>_<backbone>``: truncation error and equivariance error of the relaxed
  model against gamma_bar = max_i abs(gamma_i), with the smallest C such that error <= C gamma_bar
  holds on every measurement (the measured side of ACE's bounds, Theorems 4.1 and 4.2).
* ``<setting>_sweep_<task>``: test metric against a task setting a suite's grid varies (the field
  strength ``eps`` of ``nbody-field``), one line per method (headline variant, mean with a 95%
  Student-t interval), one panel per backbone, with the data's own floors where given
  (:func:`task_setting_sweep`; drawn from records, not from the runs frame).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.report.stats import describe

__all__ = ["all_figures", "sample_efficiency", "training_dynamics", "relaxation_parameters",
           "layer_relaxation", "gamma_bar_errors", "task_setting_sweep"]

PER_LAYER = ("gamma", "lambda", "u")


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def _save(fig, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out / f"{stem}.{ext}"
        from benchmark.fileio import atomic_path
        with atomic_path(path) as tmp:   # a reader never sees a half-drawn figure
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight",
                        metadata={"CreationDate": None} if ext == "pdf" else None)
        paths.append(path)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return paths


def _spans_decade(values) -> bool:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    return v.size > 1 and (v > 0).all() and v.max() / v.min() >= 10


def _palette(methods: list[str]) -> dict[str, tuple]:
    _, sns = _plt()
    return dict(zip(methods, sns.color_palette("tab10", n_colors=max(len(methods), 1))))


_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 1)), "P"),
           ((0, (3, 1, 1, 1, 1, 1)), "X"), ("-", "*")]


def _style(order: list, key) -> dict:
    """A line style and marker per series, so series that coincide (the exactly equivariant
    methods' equivariance errors at the rounding floor) stay visible as distinct lines."""
    dash, marker = _STYLES[order.index(key) % len(_STYLES)]
    return {"linestyle": dash, "marker": marker, "markersize": 3.5, "linewidth": 1.3}


def _lines(ax, data: pd.DataFrame, hue: str, order: list, colors: dict | None = None, band: bool = True,
           log: bool = False) -> None:
    """One line per ``hue`` value: the mean of ``value`` over seeds at each epoch, +/- one sd. On a
    log axis both are taken of log10(value) (geometric mean, times/divided by the geometric sd), so
    a band never reaches below zero."""
    for key in order:
        part = data[data[hue] == key]
        if part.empty:
            continue
        values = part.assign(value=np.log10(part.value.where(part.value > 0))) if log else part
        agg = values.groupby("epoch").value.agg(["mean", "std"]).reset_index()
        mean, sd = agg["mean"], agg["std"].fillna(0)
        low, high = mean - sd, mean + sd
        if log:
            mean, low, high = 10 ** mean, 10 ** low, 10 ** high
        color = None if colors is None else colors[key]
        every = max(1, len(agg) // 8)
        line, = ax.plot(agg.epoch, mean, label=str(key), color=color, markevery=every, **_style(order, key))
        if band and agg["std"].notna().any():
            ax.fill_between(agg.epoch, low, high, color=line.get_color(), alpha=0.15, linewidth=0)


def _positive_spread(values) -> float:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    return float(v.max() / v.min()) if v.size > 1 and (v > 0).all() else 0.0


def sample_efficiency(runs: pd.DataFrame, out: Path) -> list[Path]:
    """Mean test metric per training size with its 95% interval; sizes with a single seed have no
    interval and are drawn as open markers. Log-log axes when the sizes span a decade (the curve of
    a power law is a line) and the metric is positive. On a linear axis whose measured values are all
    nonnegative (an error, an accuracy) the axis starts at 0, so a wide interval (two seeds) ends
    there rather than at a negative error; the sign is read from the values, no metric declares it."""
    plt, _ = _plt()
    paths = []
    done = runs[(runs.status == "completed") & runs.headline]
    for (suite, task, backbone), grp in done.groupby(["suite", "task", "backbone"], sort=True):
        if grp.train_size.nunique() < 2:
            continue
        metric = grp.metric.iloc[0] or "metric"
        fig, ax = plt.subplots(figsize=(6.6, 3.9), constrained_layout=True)
        methods = sorted(grp.method.unique())
        colors = _palette(methods)
        means, single = [], False
        log_x = _spans_decade(grp.train_size)
        log_y = log_x and _positive_spread(grp.test_metric) > 1 or _spans_decade(grp.test_metric)
        for method in methods:
            stats = [(n, describe(g.test_metric)) for n, g in grp[grp.method == method].groupby("train_size")]
            x = np.array([n for n, _ in stats], dtype=float)
            mean = np.array([d["mean"] for _, d in stats])
            low = np.array([d["ci_low"] for _, d in stats])
            high = np.array([d["ci_high"] for _, d in stats])
            ones = np.array([d["n"] == 1 for _, d in stats])
            style = _style(methods, method)
            ax.plot(x, mean, label=method, color=colors[method], linestyle=style["linestyle"], linewidth=1.3)
            ax.plot(x[~ones], mean[~ones], linestyle="none", marker=style["marker"], color=colors[method], markersize=5)
            if ones.any():
                single = True
                ax.plot(x[ones], mean[ones], linestyle="none", marker=style["marker"], markersize=6,
                        markerfacecolor="white", markeredgecolor=colors[method])
            band = np.isfinite(low) & np.isfinite(high)     # a single-seed size has no interval: a gap
            if log_y:                                       # an interval reaching below zero ends at the axis
                low = np.where(low > 0, low, np.nan)
            ax.fill_between(x, np.where(band, low, np.nan), np.where(band, high, np.nan), alpha=0.15,
                            color=colors[method], linewidth=0)
            means.extend(mean)
        if log_x:
            ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        elif (grp.test_metric.dropna() >= 0).all() and ax.get_ylim()[0] < 0:
            ax.set_ylim(bottom=0)                           # every measured value is >= 0: the axis ends at 0
        ax.set_xlabel("training samples")
        ax.set_ylabel(f"test {metric} ({'higher' if grp.higher_is_better.iloc[0] else 'lower'} is better)")
        ax.set_title(f"{task} / {backbone}: sample efficiency (mean, 95% CI)")
        handles, labels = ax.get_legend_handles_labels()
        if single:
            import matplotlib.lines as mlines
            handles.append(mlines.Line2D([], [], linestyle="none", marker="o", markerfacecolor="white",
                                         markeredgecolor="0.3"))
            labels.append("one seed (no interval)")
        fig.legend(handles, labels, loc="outside right center", fontsize=7)
        paths += _save(fig, out, f"sample_efficiency_{task}_{backbone}")
    return paths


def training_dynamics(curves: pd.DataFrame, out: Path) -> list[Path]:
    plt, _ = _plt()
    paths = []
    data = curves[(curves.status == "completed") & curves.headline
                  & curves.quantity.isin(["val_metric", "equivariance_rel"])]
    for (suite, task, backbone, n), grp in data.groupby(["suite", "task", "backbone", "train_size"], sort=True):
        methods = sorted(grp.method.unique())
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
        for ax, (quantity, label) in zip(axes, (("val_metric", "validation metric"),
                                               ("equivariance_rel", "equivariance error (relative)"))):
            part = grp[grp.quantity == quantity]
            log = _spans_decade(part.value)
            _lines(ax, part, "method", methods, _palette(methods), log=log)
            ax.set_xlabel("epoch")
            if log:
                ax.set_yscale("log")
            ax.set_ylabel(label + (" (geometric mean)" if log else ""))
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right center", fontsize=7, title="method")
        fig.suptitle(f"{task} / {backbone}, n = {n}: training dynamics (headline variant, mean ± sd over seeds)")
        paths += _save(fig, out, f"training_dynamics_{task}_{backbone}_n{n}")
    return paths


def relaxation_parameters(curves: pd.DataFrame, out: Path) -> list[Path]:
    plt, _ = _plt()
    paths = []
    data = curves[(curves.status == "completed") & curves.quantity.isin(PER_LAYER)]
    for (suite, task, backbone, n), grp in data.groupby(["suite", "task", "backbone", "train_size"], sort=True):
        # relaxed methods: a per-layer dual/slack, or a gamma that moves during training
        methods = sorted(m for m, g in grp.groupby("method")
                         if (g.quantity != "gamma").any() or g[g.quantity == "gamma"].value.nunique() > 1)
        if not methods:
            continue
        quantities = [q for q in PER_LAYER if (grp[grp.method.isin(methods)].quantity == q).any()]
        fig, axes = plt.subplots(len(quantities), len(methods), figsize=(3.2 * len(methods) + 1.8, 2.6 * len(quantities)),
                                 squeeze=False, constrained_layout=True)
        legend = None
        for i, q in enumerate(quantities):
            for j, method in enumerate(methods):
                ax = axes[i][j]
                part = grp[(grp.method == method) & (grp.quantity == q)]
                if part.empty:
                    ax.set_visible(False)
                    continue
                _lines(ax, part, "layer", list(dict.fromkeys(part.layer)), band=False)
                lowest = all(grp[(grp.method == method) & (grp.quantity == q2)].empty for q2 in quantities[i + 1:])
                ax.set_xlabel("epoch" if lowest else "")
                if legend is None or len(ax.get_legend_handles_labels()[1]) > len(legend[1]):
                    legend = ax.get_legend_handles_labels()
                ax.set_title(f"{method}: {q}_i" if i == 0 else f"{q}_i", fontsize=8)
                ax.set_ylabel(q)
        if legend is not None:                  # outside the panels: it never covers a curve
            fig.legend(*legend, loc="outside right center", fontsize=7, title="layer")
        fig.suptitle(f"{task} / {backbone}, n = {n}: per-layer relaxation parameters (mean over seeds)")
        paths += _save(fig, out, f"relaxation_parameters_{task}_{backbone}_n{n}")
    return paths


def layer_relaxation(diagnostics: pd.DataFrame, out: Path) -> list[Path]:
    """Per method with multipliers: the final lambda_i, gamma_i (and u_i) of each relaxed layer, one
    column per task and backbone (their layers differ), bars per training size, mean ± sd over
    seeds. Layer names are written at an angle, and the legend sits outside the panels."""
    plt, sns = _plt()
    paths = []
    if diagnostics.empty:
        return paths
    for method, grp in diagnostics.groupby("method", sort=True):
        if not (grp.quantity == "lambda").any():
            continue
        quantities = [q for q in ("lambda", "gamma", "u") if (grp.quantity == q).any()]
        columns = sorted({(t, b) for t, b in zip(grp.task, grp.backbone)})
        widths = [max(3.0, 0.42 * grp[(grp.task == t) & (grp.backbone == b)].layer.nunique() + 1.2)
                  for t, b in columns]
        sizes = sorted(grp.train_size.unique())
        hue_order = [f"n={n}" for n in sizes]
        palette = dict(zip(hue_order, sns.color_palette("viridis", len(hue_order))))
        fig, axes = plt.subplots(len(quantities), len(columns), figsize=(max(sum(widths), 5.5) + 1.6,
                                                                           2.5 * len(quantities) + 0.8),
                                 squeeze=False, gridspec_kw={"width_ratios": widths}, constrained_layout=True)
        for j, (task, backbone) in enumerate(columns):
            for i, q in enumerate(quantities):
                ax = axes[i][j]
                part = grp[(grp.task == task) & (grp.backbone == backbone) & (grp.quantity == q)].copy()
                part["size"] = "n=" + part.train_size.astype(str)
                order = list(dict.fromkeys(part.layer))
                sns.barplot(data=part, x="layer", y="value", hue="size", order=order,
                            hue_order=[h for h in hue_order if h in set(part["size"])], palette=palette,
                            errorbar="sd", ax=ax, legend=False, err_kws={"linewidth": 0.8})
                ax.axhline(0.0, color="0.3", linewidth=0.6)
                ax.set_ylabel(f"final {q}_i" if j == 0 else "")
                ax.set_xlabel("relaxed layer" if i == len(quantities) - 1 else "")
                ax.tick_params(axis="x", labelrotation=60, labelsize=7)
                for label in ax.get_xticklabels():
                    label.set_horizontalalignment("right")
                if i < len(quantities) - 1:
                    ax.set_xticklabels([])
                ax.set_title(f"{task} / {backbone}" if i == 0 else "", fontsize=9)
        handles = [plt.Rectangle((0, 0), 1, 1, color=palette[h]) for h in hue_order]
        fig.legend(handles, hue_order, title="training size", loc="outside right center", fontsize=7)
        fig.suptitle(f"{method}: which layers need relaxation (final values, mean ± sd over seeds)")
        paths += _save(fig, out, f"layer_relaxation_{method}")
    return paths


def gamma_bar_errors(curves: pd.DataFrame, out: Path) -> list[Path]:
    plt, sns = _plt()
    paths = []
    data = curves[curves.status == "completed"]
    for (suite, task, backbone), grp in data.groupby(["suite", "task", "backbone"], sort=True):
        keys = ["method", "train_size", "seed", "epoch"]
        gbar = grp[grp.quantity == "gamma_bar"][keys + ["value"]].rename(columns={"value": "gamma_bar"})
        trunc = grp[grp.quantity == "truncation_error"][keys + ["value"]].rename(columns={"value": "truncation"})
        eq = grp[(grp.quantity == "equivariance_rel") & (grp.variant == "relaxed")][keys + ["value"]]
        eq = eq.rename(columns={"value": "equivariance"})
        merged = gbar.merge(trunc, on=keys, how="left").merge(eq, on=keys, how="left")
        merged = merged[merged.gamma_bar > 0]
        if merged.empty:
            continue
        methods = sorted(merged.method.unique())
        panels = [(col, label) for col, label in (("truncation", "truncation error (validation)"),
                                                  ("equivariance", "equivariance error, relaxed (rel)"))
                  if (np.isfinite(merged[col]) & (merged[col] > 0)).any()]
        if not panels:
            continue
        # one panel per error that was measured (a method whose relaxed variant is never evaluated
        # has no equivariance panel), so the figure has no empty half
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1, 4), constrained_layout=True,
                                 squeeze=False)
        for ax, (col, label) in zip(axes[0], panels):
            part = merged[np.isfinite(merged[col]) & (merged[col] > 0)]
            sns.scatterplot(data=part, x="gamma_bar", y=col, hue="method", hue_order=methods, ax=ax, s=18,
                            palette=_palette(methods), legend=False)
            c = float((part[col] / part.gamma_bar).max())
            log = _spans_decade(part.gamma_bar)
            xs = np.geomspace(part.gamma_bar.min(), part.gamma_bar.max(), 50) if log \
                else np.linspace(0.0, part.gamma_bar.max(), 50)
            ax.plot(xs, c * xs, "--", color="grey", label=f"C·γ̄ with C = {c:.3g}")
            if log:
                ax.set_xscale("log")
                ax.set_yscale("log")
            ax.set_xlabel("γ̄ = max_i |γ_i|")
            ax.set_ylabel(label)
            ax.legend(fontsize=7, loc="lower right")
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=color, label=m)
                   for m, color in _palette(methods).items()]
        fig.legend(handles=handles, loc="outside right center", fontsize=7, title="method")
        fig.suptitle(f"{task} / {backbone}: errors against γ̄ (every evaluation of every run)")
        paths += _save(fig, out, f"gamma_bar_errors_{task}_{backbone}")
    return paths


def task_setting_sweep(records, out: Path, *, setting: str = "eps",
                       floors: dict[str, dict[float, float]] | None = None) -> list[Path]:
    """Test metric against the task setting ``setting`` (read from each record's resolved
    ``task_cfg``), one figure per task whose completed records take at least two values of it.

    One panel per backbone (shared y axis), one line per method: the headline variant's mean test
    metric over seeds with its 95% Student-t interval; a value with one seed has no interval and is
    drawn as an open marker. ``floors`` (label -> {setting value: floor}) adds grey dashed lines,
    such as the data's own symmetry defect: the error no exactly equivariant model can go below.
    The values of the setting are placed evenly and labelled (the grid, not a scale); the metric
    axis is logarithmic when it spans a decade, and a floor below the axis is marked by a triangle
    on the axis with its value."""
    plt, _ = _plt()
    rows = []
    for rec in records:
        if rec.get("status") != "completed":
            continue
        task_cfg = ((rec.get("config") or {}).get("resolved") or {}).get("task_cfg") or {}
        variant = (rec.get("variants") or {}).get(rec.get("headline"))
        if setting not in task_cfg or not variant:
            continue
        metric = rec.get("metric") or {}
        rows.append({"task": rec["task"], "backbone": rec["backbone"], "method": rec["method"],
                     "value": task_cfg[setting], "test_metric": _num_or_nan(variant.get("test_metric")),
                     "metric": metric.get("name") or "metric", "higher": bool(metric.get("higher_is_better"))})
    data = pd.DataFrame(rows, columns=["task", "backbone", "method", "value", "test_metric", "metric", "higher"])
    paths = []
    for task, grp in data.groupby("task", sort=True):
        values = sorted(grp.value.unique())
        if len(values) < 2:
            continue
        pos = {v: i for i, v in enumerate(values)}
        backbones = sorted(grp.backbone.unique())
        methods = sorted(grp.method.unique())
        colors = _palette(methods)
        fig, axes = plt.subplots(1, len(backbones), figsize=(4.2 * len(backbones) + 1.8, 3.9), squeeze=False,
                                 sharey=True, constrained_layout=True)
        shown = [x for x in grp.test_metric if np.isfinite(x)]
        floor_items = [(label, {v: f for v, f in (floor or {}).items() if v in pos})
                       for label, floor in (floors or {}).items()]
        log = _spans_decade(shown + [f for _, fl in floor_items for f in fl.values() if f > 0 and
                                     shown and f >= min(shown) / 100])
        bottom = min(shown) / 3 if log and shown else None
        single = False
        for ax, backbone in zip(axes[0], backbones):
            part = grp[grp.backbone == backbone]
            for method in methods:
                stats = [(v, describe(g.test_metric)) for v, g in part[part.method == method].groupby("value")]
                if not stats:
                    continue
                x = np.array([pos[v] for v, _ in stats], dtype=float)
                mean = np.array([d["mean"] for _, d in stats])
                low = np.array([d["ci_low"] for _, d in stats])
                high = np.array([d["ci_high"] for _, d in stats])
                ones = np.array([d["n"] == 1 for _, d in stats])
                style = _style(methods, method)
                ax.plot(x, mean, label=method, color=colors[method], linestyle=style["linestyle"], linewidth=1.3)
                ax.plot(x[~ones], mean[~ones], linestyle="none", marker=style["marker"], color=colors[method],
                        markersize=5)
                if ones.any():
                    single = True
                    ax.plot(x[ones], mean[ones], linestyle="none", marker=style["marker"], markersize=6,
                            markerfacecolor="white", markeredgecolor=colors[method])
                band = np.isfinite(low) & np.isfinite(high)
                if log:
                    low = np.where(low > 0, low, np.nan)
                ax.fill_between(x, np.where(band, low, np.nan), np.where(band, high, np.nan), alpha=0.15,
                                color=colors[method], linewidth=0)
            for k, (label, floor) in enumerate(floor_items):
                xs = np.array([pos[v] for v in sorted(floor)], dtype=float)
                ys = np.array([floor[v] for v in sorted(floor)], dtype=float)
                dash, grey = ((0, (6, 2)), (0, (2, 1.5)), (0, (6, 2, 1, 2)))[k % 3], ("0.2", "0.45", "0.6")[k % 3]
                ax.plot(xs, np.where(ys > 0, ys, np.nan) if log else ys, color=grey, linestyle=dash,
                        linewidth=1.8, label=label, zorder=1)
                below = ys <= bottom if bottom is not None else np.zeros(len(ys), bool)
                for xv, yv in zip(xs[below], ys[below]):           # below the axis: marked on it
                    ax.plot([xv], [bottom], marker="v", color=grey, markersize=6, clip_on=False, zorder=3)
                    ax.annotate(f"{yv:.0e}", (xv, bottom), textcoords="offset points", xytext=(5, 3 + 8 * k),
                                fontsize=6, color=grey)
            ax.set_xticks(range(len(values)))
            ax.set_xticklabels([f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in values])
            ax.set_xlabel(setting)
            ax.set_title(f"{task} / {backbone}", fontsize=9)
            if log:
                ax.set_yscale("log")
                ax.set_ylim(bottom=bottom)
        metric = grp.metric.iloc[0]
        axes[0][0].set_ylabel(f"test {metric} ({'higher' if grp.higher.iloc[0] else 'lower'} is better)")
        handles, labels = [], []
        for ax in axes[0]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        if single:
            import matplotlib.lines as mlines
            handles.append(mlines.Line2D([], [], linestyle="none", marker="o", markerfacecolor="white",
                                         markeredgecolor="0.3"))
            labels.append("one seed (no interval)")
        fig.legend(handles, labels, loc="outside right center", fontsize=7)
        fig.suptitle(f"{task}: test {metric} against {setting} (headline variant, mean and 95% CI over seeds)")
        paths += _save(fig, out, f"{setting}_sweep_{task}")
    return paths


def _num_or_nan(x) -> float:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    return {"inf": np.inf, "-inf": -np.inf}.get(x, np.nan) if isinstance(x, str) else np.nan


def all_figures(runs: pd.DataFrame, curves: pd.DataFrame, diagnostics: pd.DataFrame, out: Path) -> list[Path]:
    """Every figure the records support (a figure without data is skipped, not drawn empty)."""
    out = Path(out)
    paths = []
    paths += sample_efficiency(runs, out)
    paths += training_dynamics(curves, out)
    paths += relaxation_parameters(curves, out)
    paths += layer_relaxation(diagnostics, out)
    paths += gamma_bar_errors(curves, out)
    return paths

