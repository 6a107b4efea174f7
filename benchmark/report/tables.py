"""Comparison tables and leaderboards, rendered as Markdown, LaTeX (booktabs) and CSV.

One table per (suite, task, backbone, training size): rows are methods (at their headline variant
unless all variants are asked for), columns the task metric with the arrow of its direction, the
relative equivariance error and the parameter count. The best value of each column is bold; the
footer says what +/- means, how many seeds, which variant, which test and which protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from benchmark.report.stats import compare, welch_from_stats

__all__ = ["Table", "build_tables", "to_markdown", "to_latex", "to_csv_frame", "fmt", "fmt_pm", "MARKS"]

MARKS = {"win": "▲", "loss": "▼"}
TEST_NAMES = {"welch": "Welch's t-test", "paired": "paired t-test over shared seeds"}


@dataclass
class Table:
    title: str
    key: dict
    headers: list[str]
    numeric: list[bool]                       # right-aligned columns
    rows: list[list[str]]
    bold: list[list[bool]]
    marks: list[list[str]]                    # ▲/▼ after a cell's value, never bold
    footer: list[str]
    frame: pd.DataFrame = field(default_factory=pd.DataFrame)


def fmt(x: float | None, digits: int = 3) -> str:
    """``0.00712``, ``0.0100``, ``1.09e-07``: ``digits`` significant digits, trailing zeros kept;
    an em dash for a missing value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if x == 0:
        return "0"
    return f"{x:#.{digits}g}".rstrip(".")


def fmt_pm(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "—"
    if math.isfinite(std) and std <= 1e-12 * abs(mean):     # round-off of identical values
        std = 0.0
    return fmt(mean) if not math.isfinite(std) else f"{fmt(mean)} ± {fmt(std, 2)}"


def _scale_label(scale: float) -> str:
    if scale == 1:
        return ""
    exp = math.log10(scale)
    return f" (×1e{int(exp)})" if exp == int(exp) else f" (×{scale:g})"


def _runs_text(row) -> str:
    text = f"{row.n_completed}/{row.n_planned}"
    extra = [f"{int(getattr(row, 'n_' + s))} {s}" for s in ("diverged", "failed") if getattr(row, "n_" + s)]
    missing = row.n_planned - row.n_completed - row.n_diverged - row.n_failed
    if missing > 0:
        extra.append(f"{missing} missing")
    return text + (f" ({', '.join(extra)})" if extra else "")


def _best(values: list[float], higher: bool) -> float | None:
    """The best finite value, or ``None`` when there is none or all are equal (nothing stands out)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(set(finite)) < 2:
        return None
    return max(finite) if higher else min(finite)


def _method_order(methods: list[str], reference: str) -> list[str]:
    return ([reference] if reference in methods else []) + sorted(m for m in methods if m != reference)


def build_tables(summary: pd.DataFrame, runs: pd.DataFrame, suites: dict, *, test: str = "welch",
                 alpha: float = 0.05, reference: str | None = None, all_variants: bool = False,
                 leaderboard: bool = False) -> list[Table]:
    """Comparison tables (or, with ``leaderboard``, methods ranked by their headline metric)."""
    tables = []
    if summary.empty:
        return tables
    keys = ["suite", "task", "backbone", "train_size"]
    for key, grp in summary.groupby(keys, sort=True):
        info = suites[key[0]]
        ref = reference or info.reference
        head = grp[grp.headline]
        higher = bool(head.higher_is_better.iloc[0]) if len(head) else False
        done = runs[(runs.status == "completed") & runs.headline
                    & (runs[keys].apply(tuple, axis=1) == key)]
        samples = {m: dict(zip(g.seed, g.test_metric)) for m, g in done.groupby("method")}
        verdicts = compare(samples, ref, higher_is_better=higher, test=test, alpha=alpha)
        shown = grp if all_variants and not leaderboard else head
        order = _method_order(list(dict.fromkeys(shown.method)), ref)
        shown = shown.assign(_o=shown.method.map(order.index)).sort_values(["_o", "variant"])
        if leaderboard:
            shown = shown.sort_values(["mean"], ascending=not higher, na_position="last")
        mine = runs[runs[keys].apply(tuple, axis=1) == key] if len(runs) else runs
        presets = sorted({str(p) for p in mine.get("preset", pd.Series(dtype=object)).dropna()})
        tables.append(_render(key, shown, verdicts, info, ref, higher, test, alpha, leaderboard, presets))
    return tables


def _published_cells(row, published, scale: float) -> tuple[list[str], dict]:
    """The ``paper``, ``in 95% CI`` and ``p vs paper`` cells of a table row, and what its CSV keeps of them.

    ``p vs paper`` is Welch's t-test of the measured seeds against the published mean, its sd (as a
    sample sd) and its seed count; it is left out (—) where the paper gives no sd, no seed count or
    not which sd it reports.
    """
    pub = published.lookup(row.task, row.backbone, row.method.split(" [")[0], row.train_size, row.variant) \
        if published is not None else None
    if pub is None:
        return ["—", "—", "—"], {}
    text = fmt_pm(pub.mean / scale, (pub.sd if pub.sd is not None else math.nan) / scale) + f" [{pub.source}]"
    lo, hi = getattr(row, "ci95_low", math.nan), getattr(row, "ci95_high", math.nan)
    inside = None if not (math.isfinite(lo) and math.isfinite(hi)) else bool(lo <= pub.mean <= hi)
    sd_pub = pub.sd_sample
    _, p = (math.nan, math.nan) if sd_pub is None else \
        welch_from_stats(float(row.mean), float(row.std), int(row.n), pub.mean, sd_pub, int(pub.n))
    return [text, "—" if inside is None else ("yes" if inside else "no"), fmt(p, 2) if math.isfinite(p) else "—"], \
        {"paper_mean": pub.mean, "paper_sd": pub.sd, "paper_sd_ddof": pub.sd_ddof, "paper_n": pub.n,
         "paper_source": pub.source, "paper_in_ci95": inside, "paper_p_welch": p if math.isfinite(p) else None}


def _render(key, shown: pd.DataFrame, verdicts: dict, info, ref: str, higher: bool, test: str, alpha: float,
            leaderboard: bool, presets: list[str] = ()) -> Table:
    first = shown.iloc[0]
    scale = float(first.metric_scale or 1.0)
    metric = f"{first.metric or 'metric'}{_scale_label(scale)} {'↑' if higher else '↓'}"
    published = getattr(info, "published", None)
    paper = ["paper", "paper in 95% CI", "p vs paper"] if published is not None else []
    # a task's further test numbers, where its records carry them (mean ± sd over the same seeds)
    further = [c[:-len("_mean")] for c in shown.columns if c.startswith("breakdown_") and c.endswith("_mean")
               and np.isfinite(shown[c].to_numpy(dtype=float)).any()]
    headers = (["rank"] if leaderboard else []) + ["method", "variant", metric] + paper + \
        [f"{c[len('breakdown_'):].replace('_', ' ')} (test)" for c in further] + \
        ["equivariance error (rel) ↓", "params", "runs"]
    if leaderboard:
        headers.append(f"vs {ref} (p, Holm)")
    numeric = [h not in ("method", "variant") for h in headers]
    best_metric = _best(list(shown["mean"]), higher)
    best_eq = _best(list(shown.equivariance_rel_mean), False)
    best_params = _best([float(p) if p is not None and p == p else math.nan for p in shown.params], False)
    rows, bold, marks, records = [], [], [], []
    rank = 0
    for row in shown.itertuples():
        verdict = verdicts.get(row.method, {}) if row.headline else {}
        mark = MARKS.get(verdict.get("verdict"), "")
        paper_cells, paper_record = _published_cells(row, published, scale) if paper else ([], {})
        further_cells = [fmt_pm(getattr(row, f"{c}_mean"), getattr(row, f"{c}_std")) for c in further]
        cells = [row.method, row.variant, fmt_pm(row.mean / scale, row.std / scale)] + paper_cells + \
            further_cells + [
                 fmt_pm(row.equivariance_rel_mean, row.equivariance_rel_std),
                 f"{int(row.params):,}" if row.params is not None and row.params == row.params else "—",
                 _runs_text(row)]
        flags = [False, False, best_metric is not None and row.mean == best_metric] + \
            [False] * (len(paper_cells) + len(further_cells)) + [
                 best_eq is not None and row.equivariance_rel_mean == best_eq,
                 best_params is not None and row.params is not None and float(row.params) == best_params, False]
        row_marks = ["", "", mark] + [""] * (len(paper_cells) + len(further_cells)) + ["", "", ""]
        if leaderboard:
            rank = rank + 1 if math.isfinite(row.mean) else rank
            cells = [str(rank) if math.isfinite(row.mean) else "—"] + cells
            p = verdict.get("p_holm", math.nan)
            cells.append("reference" if verdict.get("verdict") == "ref" else fmt(p, 2))
            flags = [False] + flags + [False]
            row_marks = [""] + row_marks + [mark]
        rows.append(cells)
        bold.append(flags)
        marks.append(row_marks)
        records.append({**{k: getattr(row, k) for k in ("suite", "task", "backbone", "train_size", "method",
                                                         "variant", "headline", "metric", "higher_is_better",
                                                         "mean", "std", "n", "ci95_low", "ci95_high",
                                                         "equivariance_rel_mean", "equivariance_rel_std",
                                                         "params", "median_step_seconds", "n_completed",
                                                         "n_diverged", "n_failed", "n_planned", "seeds")},
                        "rank": rank if leaderboard and math.isfinite(row.mean) else None,
                        "test": test, "statistic": verdict.get("statistic"), "p": verdict.get("p"),
                        "p_holm": verdict.get("p_holm"), "verdict": verdict.get("verdict"), **paper_record,
                        **{f"{c}_{k}": getattr(row, f"{c}_{k}") for c in further for k in ("mean", "std")}})
    title = f"{key[1]} / {key[2]}, {key[3]} training samples ({info.name})"
    frame = pd.DataFrame(records)
    return Table(title, dict(zip(("suite", "task", "backbone", "train_size"), key)), headers, numeric, rows, bold,
                 marks, _footer(shown, verdicts, info, ref, test, alpha, presets), frame)


def _footer(shown: pd.DataFrame, verdicts: dict, info, ref: str, test: str, alpha: float,
            presets: list[str] = ()) -> list[str]:
    seeds = sorted({int(s) for text in shown.seeds for s in str(text).split()})
    ns = sorted({int(n) for n in shown.n})
    n_text = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    comparisons = sum(1 for m, v in verdicts.items() if v.get("verdict") not in ("ref",) and m != ref)
    heads = ", ".join(f"{m}: {v}" for m, v in dict(zip(shown[shown.headline].method,
                                                       shown[shown.headline].variant)).items())
    lines = [f"Mean ± unbiased standard deviation over n = {n_text} completed seeds "
             f"({', '.join(map(str, seeds)) or 'none'}); diverged and failed runs are counted under runs and "
             "excluded from the statistics. Metric: test, at the best validation epoch of each variant; "
             "equivariance error: relative, at the same epoch.",
             f"▲/▼: significantly better/worse than {ref} ({TEST_NAMES[test]}, Holm-corrected over "
             f"{comparisons} comparisons, α = {alpha:g})." if ref in verdicts else
             f"No significance marks: the reference method {ref} has no runs here.",
             f"Variant: each method's headline ({heads}).",
             f"Protocol: {info.protocol}."]
    if presets:
        lines.append(f"Preset{'s' if len(presets) > 1 else ''}: {', '.join(presets)} (every setting in each "
                     "record's resolved configuration).")
    published = getattr(info, "published", None)
    if published is not None:
        cited = ", ".join(f"[{k}] {v}" for k, v in published.sources.items())
        lines.append(f"Paper: the published mean ± sd ({cited}); 'paper in 95% CI': whether the published mean "
                     "lies in the Student-t 95% interval of the measured mean; 'p vs paper': Welch's t-test of the "
                     "measured seeds against the published mean, sd (as a sample sd) and seed count, not corrected "
                     "for multiple comparisons (— where the paper gives no sd or seed count, or does not say "
                     "which sd).")
    if info.reproduce:
        lines.append(f"Reproduce: `{info.reproduce}`")
    return lines


# -- rendering ----------------------------------------------------------------------------------
def to_markdown(table: Table, heading: str | None = "###") -> str:
    out = []
    if heading:
        out += [f"{heading} {table.title}", ""]
    out.append("| " + " | ".join(table.headers) + " |")
    out.append("|" + "|".join("---:" if num else ":---" for num in table.numeric) + "|")
    for cells, flags, row_marks in zip(table.rows, table.bold, table.marks):
        shown = []
        for text, strong, mark in zip(cells, flags, row_marks):
            text = f"**{text}**" if strong and text != "—" else text
            shown.append((text + (f" {mark}" if mark else "")).replace("|", "\\|"))
        out.append("| " + " | ".join(shown) + " |")
    out.append("")
    out += [line + "  " if i < len(table.footer) - 1 else line for i, line in enumerate(table.footer)]
    return "\n".join(out) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "▲": r"$^{\blacktriangle}$",
                  "▼": r"$^{\blacktriangledown}$", "—": "---", "α": r"$\alpha$", "×": r"$\times$",
                  "–": "--"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    for sym, rep in _LATEX_SYMBOLS.items():
        out = out.replace(sym, rep)
    return out


def _latex_code(text: str) -> str:
    parts = text.split("`")
    return "".join(latex_escape(p) if i % 2 == 0 else r"\texttt{" + latex_escape(p) + "}"
                   for i, p in enumerate(parts))


def to_latex(table: Table) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs,amssymb}``)."""
    spec = "".join("r" if num else "l" for num in table.numeric)
    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + latex_escape(table.title) + "}",
             r"\begin{tabular}{" + spec + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in table.headers) + r" \\", r"\midrule"]
    for cells, flags, row_marks in zip(table.rows, table.bold, table.marks):
        shown = []
        for text, strong, mark in zip(cells, flags, row_marks):
            body = latex_escape(text)
            if strong and text != "—":
                body = r"\textbf{" + body + "}"
            shown.append(body + latex_escape(mark))
        lines.append(" & ".join(shown) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize"]
    lines += [_latex_code(line) + r"\par" for line in table.footer]
    lines += [r"\end{minipage}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv_frame(tables: list[Table]) -> pd.DataFrame:
    """Every table's rows in one frame, with the union of their columns in first-seen order.

    A column that is all missing in one table (the paper columns of a suite without published
    numbers) is left out of that table's part before the concatenation and comes back as missing
    values after it, so a column's dtype comes from the tables that have values in it; a column of
    integers or booleans with missing values is nullable (``Int64``, ``boolean``), so a seed count is
    still written ``3``, not ``3.0``."""
    frames = [t.frame for t in tables if not t.frame.empty]
    if not frames:
        return pd.DataFrame()
    columns = list(dict.fromkeys(c for f in frames for c in f.columns))
    parts = [f.dropna(axis=1, how="all") for f in frames]
    out = pd.concat(parts, ignore_index=True).reindex(columns=columns)
    for column in columns:
        kinds = {part[column].dtype.kind for part in parts if column in part.columns}
        if out[column].isna().any() and kinds in ({"i"}, {"u"}, {"i", "u"}):
            out[column] = out[column].astype("Int64")
        elif out[column].isna().any() and kinds == {"b"}:
            out[column] = out[column].astype("boolean")
    return out

