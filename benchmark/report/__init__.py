"""Reports: records -> statistics -> tables (Markdown, LaTeX, CSV), figures, W&B.

:func:`write_report` turns a :class:`~benchmark.report.aggregate.Collection` into, per suite, a
folder ``<out>/<suite>/`` holding ``tables.md``, ``tables.tex``, ``tables.csv``, ``leaderboard.md``,
``leaderboard.csv``, ``summary.csv`` (every group and variant), ``runs.csv`` (every run),
``sample_efficiency.md`` (suites with several training sizes) and ``figures/``. :func:`update_readme` rewrites the leaderboard section of a README between
``<!-- leaderboard:start -->`` and ``<!-- leaderboard:end -->``; nothing else in the file changes.

Every file is written through a uniquely named temporary file and a rename: a reader during a
report sees the previous version of a file or the new one, never an empty or partial one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the heavy imports (pandas, scipy) wait until a report is made
    from benchmark.report.aggregate import Collection

__all__ = ["SuiteReport", "write_report", "suite_report", "update_readme", "readme_section", "collect_results",
           "collect_suite", "README_START", "README_END", "ReadmeError"]

README_START = "<!-- leaderboard:start -->"
README_END = "<!-- leaderboard:end -->"


class ReadmeError(ValueError):
    """A README without (well-ordered) leaderboard markers."""


@dataclass
class SuiteReport:
    suite: str
    markdown: str                          # the comparison tables, as printed
    leaderboard_markdown: str
    collection: Any                        # the suite's Collection
    tables: list = field(default_factory=list)        # Table objects
    boards: list = field(default_factory=list)
    runs: object = None                    # pandas frames: one row per run and variant,
    summary: object = None                 # one per group,
    leaderboard: object = None             # the ranked headline rows
    records: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    sample_efficiency: list = field(default_factory=list)   # per (task, backbone) with >= 2 sizes


def collect_results(results: Path) -> "Collection":
    """Every record under ``results``, labelled by suite (see :mod:`benchmark.report.aggregate`)."""
    from benchmark.report.aggregate import collect_results as collect
    return collect(results)


def collect_suite(spec, results: Path) -> "Collection":
    """The records of ``spec``'s grid that exist under ``results``."""
    from benchmark.report.aggregate import collect_suite as collect
    return collect(spec, results)


def _subset(col: "Collection", suite: str) -> "Collection":
    from benchmark.report.aggregate import Collection
    return Collection([it for it in col.items if it[0] == suite], {suite: col.suites[suite]}, col.labels,
                      col.task_labels)


def suite_report(col: "Collection", suite: str, *, test: str = "welch", alpha: float = 0.05,
                 reference: str | None = None, all_variants: bool = False) -> SuiteReport:
    """Tables and leaderboard of one suite, in memory."""
    from benchmark.report.aggregate import runs_frame, summarize
    from benchmark.report import sample_efficiency as se
    from benchmark.report.tables import build_tables, to_csv_frame, to_markdown
    sub = _subset(col, suite)
    info = sub.suites[suite]
    runs = runs_frame(sub)
    summary = summarize(runs, sub)
    tables = build_tables(summary, runs, sub.suites, test=test, alpha=alpha, reference=reference,
                          all_variants=all_variants)
    boards = build_tables(summary, runs, sub.suites, test=test, alpha=alpha, reference=reference, leaderboard=True)
    if tables:
        md = "\n".join(to_markdown(t) for t in tables)
        lb = "\n".join(to_markdown(t) for t in boards)
    else:
        md = lb = f"_No records of suite {suite} yet (protocol: {info.protocol})._\n"
    curves = se.sample_efficiency_tables(summary, reference or info.reference,
                                         planned=getattr(info, "expected", None), runs=runs) if len(summary) else []
    if curves:
        extra = "\n".join(se.to_markdown(t) for t in curves)
        md, lb = md + "\n" + extra, lb + "\n" + extra
    return SuiteReport(suite, md, lb, sub, tables, boards, runs, summary, to_csv_frame(boards),
                       [p for _, _, p in sub.items if p is not None], sample_efficiency=curves)


def _setting_sweeps(col: "Collection", out: Path) -> list[Path]:
    """The metric against each task setting a task declares floors for (``Task.setting_floors``:
    nbody-field's eps), for the suite's records of that task."""
    from benchmark.registry import TASKS
    from benchmark.report.figures import task_setting_sweep
    records = [rec for _, rec, _ in col.items]
    files: list[Path] = []
    for task in sorted({r["task"] for r in records}):
        if task not in TASKS:
            continue
        for setting, floors in TASKS.get(task).obj.setting_floors.items():
            files += task_setting_sweep([r for r in records if r["task"] == task], out, setting=setting, floors=floors)
    return files


def write_report(col: "Collection", out: Path, *, test: str = "welch", alpha: float = 0.05,
                 reference: str | None = None, all_variants: bool = False, figures: bool = True,
                 suites: list[str] | None = None) -> list[SuiteReport]:
    """Write every suite's tables and figures under ``out/<suite>/``; returns the reports."""
    from benchmark.fileio import atomic_path, write_text_atomic
    from benchmark.record import safe_component, write_json_atomic
    from benchmark.report.aggregate import curves_frame, diagnostics_frame
    from benchmark.report.tables import to_csv_frame, to_latex
    reports = []
    for suite in suites or sorted(col.suites):
        rep = suite_report(col, suite, test=test, alpha=alpha, reference=reference, all_variants=all_variants)
        folder = Path(out) / safe_component(suite, "suite")
        folder.mkdir(parents=True, exist_ok=True)
        tables, runs, sub = rep.tables, rep.runs, rep.collection
        files = []
        latex = "% \\usepackage{booktabs,amssymb}\n" + "\n".join(to_latex(t) for t in tables)
        for name, text in (("tables.md", rep.markdown), ("leaderboard.md", rep.leaderboard_markdown),
                           ("tables.tex", latex)):
            write_text_atomic(folder / name, text)
            files.append(folder / name)
        if rep.sample_efficiency:
            from benchmark.report.sample_efficiency import to_markdown as se_markdown
            write_text_atomic(folder / "sample_efficiency.md", "\n".join(se_markdown(t) for t in rep.sample_efficiency))
            files.append(folder / "sample_efficiency.md")
        for name, frame in (("tables.csv", to_csv_frame(tables)), ("leaderboard.csv", rep.leaderboard),
                            ("summary.csv", rep.summary), ("runs.csv", runs)):
            with atomic_path(folder / name) as tmp:
                frame.to_csv(tmp, index=False)
            files.append(folder / name)
        if figures and not runs.empty:
            from benchmark.report.figures import all_figures
            files += all_figures(runs, curves_frame(sub), diagnostics_frame(sub), folder / "figures")
            files += _setting_sweeps(sub, folder / "figures")
        info = sub.suites[suite]
        write_json_atomic(folder / "report.json", {"suite": suite, "protocol": info.protocol,
                                                   "reproduce": info.reproduce, "test": test, "alpha": alpha,
                                                   "reference": reference or info.reference,
                                                   "files": [str(f.relative_to(folder)) for f in files]})
        rep.files = files
        reports.append(rep)
    return reports


def readme_section(reports: list[SuiteReport], command: str) -> str:
    """The generated leaderboard section (without the markers)."""
    lines = [f"<!-- generated by `{command}`; do not edit by hand -->", "",
             f"Generated from the run records by `{command}`; each table's footer gives its protocol "
             "and the command that reruns its suite.", ""]
    for rep in reports:
        lines += [f"### Suite `{rep.suite}`", ""]
        lines.append(rep.leaderboard_markdown.replace("\n### ", "\n#### ").replace("### ", "#### ", 1))
    return "\n".join(lines).rstrip() + "\n"


def update_readme(path: Path, section: str) -> Path:
    """Replace the text between the leaderboard markers of ``path`` with ``section``."""
    path = Path(path)
    if not path.is_file():
        raise ReadmeError(f"--readme={path}: no such file; create it with the lines {README_START} and {README_END}")
    text = path.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < 0 or end < start:
        raise ReadmeError(f"--readme={path}: needs the marker lines {README_START} and {README_END} "
                          "(in that order) around the generated section")
    new = text[:start + len(README_START)] + "\n" + section + text[end:]
    from benchmark.fileio import write_text_atomic
    write_text_atomic(path, new)
    return path
