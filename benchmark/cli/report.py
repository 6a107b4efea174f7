"""``relaxbench report [SPEC|RESULTS_DIR]``: tables, figures, leaderboard README section, W&B."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmark.config import ConfigError

__all__ = ["add_parser"]


def _collect(args):
    from benchmark.report import collect_results, collect_suite
    target = args.target
    if target is None or Path(target).is_dir():
        results = Path(target or args.results)
        if not results.is_dir():
            raise ConfigError(f"--results={results}: no such folder (run a suite first, or name a SPEC)")
        return results, collect_results(results)
    from benchmark.suite.spec import SpecError, load_spec
    try:
        spec = load_spec(target)
    except SpecError as exc:
        raise ConfigError(f"{exc}; or name a results folder") from None
    results = Path(args.results)
    return results, collect_suite(spec, results)


def cmd_report(args) -> int:
    from benchmark.report import readme_section, update_readme, write_report
    from benchmark.report.stats import TESTS
    if args.test not in TESTS:
        raise ConfigError(f"--test={args.test}: allowed: {', '.join(TESTS)}")
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha={args.alpha}: must be in (0, 1)")
    if args.reference is not None:
        from benchmark.registry import METHODS
        if args.reference not in METHODS:
            raise ConfigError(f"--reference={args.reference}: unknown method; allowed: {', '.join(METHODS.list())}")
    results, col = _collect(args)
    out = Path(args.out) if args.out else results / "reports"
    _check_out(out, results)
    suites = sorted(col.suites)
    if args.readme:
        suites = [s for s in suites if not s.startswith("ad-hoc-")]
    if not col.items and not any(not s.startswith("ad-hoc-") for s in col.suites):
        removed = _remove_stale_adhoc(out, set())
        print(f"relaxbench: error: no valid run records under {results / 'runs'}"
              + (f"; removed {removed} stale ad-hoc report(s)" if removed else ""), file=sys.stderr)
        return 1
    _remove_stale_adhoc(out, set(col.suites))
    reports = write_report(col, out, test=args.test, alpha=args.alpha, reference=args.reference,
                           all_variants=args.all_variants, figures=not args.no_figures, suites=suites)
    for rep in reports:
        info = col.suites[rep.suite]
        sys.stdout.write(f"## Suite {rep.suite}\n\nProtocol: {info.protocol}.\n\n{rep.markdown}\n")
        print(f"tables and figures: {out / rep.suite}", file=sys.stderr)
    if args.readme:
        from benchmark.report import ReadmeError
        from benchmark.report.aggregate import shown_path
        spec = f"{shown_path(args.target)} " if args.target and not Path(args.target).is_dir() else ""
        command = f"relaxbench report {spec}--results {shown_path(results)} --readme {shown_path(args.readme)}"
        try:
            update_readme(Path(args.readme), readme_section(reports, command))
        except ReadmeError as exc:
            raise ConfigError(str(exc)) from None
        print(f"leaderboard section of {args.readme} regenerated", file=sys.stderr)
    if args.wandb or args.wandb_report:
        _wandb(args, col, reports, out)
    return 0


def _check_out(out: Path, results: Path) -> None:
    """``--out`` must be a writable folder outside the folders runs own (records, checkpoints,
    manifests): a report there would be read back as a broken record."""
    from benchmark.fileio import NotWritableError, check_writable
    resolved = out.resolve()
    for own in ("runs", "checkpoints", "suites"):
        owned = (results / own).resolve()
        if resolved == owned or owned in resolved.parents:
            raise ConfigError(f"--out={out}: inside {results / own}, which holds the runs' own files; "
                              "choose another folder (default: RESULTS/reports)")
    try:
        check_writable(out)
    except NotWritableError as exc:
        raise ConfigError(f"--out={out}: {exc}") from None


def _remove_stale_adhoc(out: Path, current: set) -> int:
    """Remove generated ad-hoc report folders whose records are all gone (or set aside); returns
    how many. Only the files a report lists as its own are removed."""
    import json
    removed = 0
    for folder in sorted(Path(out).glob("ad-hoc-*")):
        meta = folder / "report.json"
        if folder.name in current or not meta.is_file():
            continue
        try:
            files = json.loads(meta.read_text()).get("files") or []
        except (OSError, ValueError, AttributeError):
            continue
        for name in files:
            target = (folder / str(name)).resolve()
            if folder.resolve() in target.parents and target.is_file():
                target.unlink()
        meta.unlink()
        for sub in sorted(folder.rglob("*"), reverse=True):
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
        if not any(folder.iterdir()):
            folder.rmdir()
        print(f"relaxbench: removed the stale report {folder} (its records are gone)", file=sys.stderr)
        removed += 1
    return removed


def _wandb(args, col, reports, out: Path) -> None:
    from benchmark.report.wandb_report import log_aggregate, publish, report_spec
    wandb_on = bool(args.wandb)         # the first failure turns W&B off for the other suites
    for rep in reports:
        info = col.suites[rep.suite]
        metric = next((m for m in rep.summary.metric if isinstance(m, str)), "metric") if len(rep.summary) else "metric"
        if wandb_on:
            folder = log_aggregate(rep.suite, leaderboard=rep.leaderboard, summary=rep.summary, files=rep.files,
                                   records=rep.records, project=args.wandb_project, entity=args.wandb_entity,
                                   info={"protocol": info.protocol, "reference": args.reference or info.reference,
                                         "test": args.test, "alpha": args.alpha})
            if folder:
                print(f"W&B aggregate run of {rep.suite}: {folder}", file=sys.stderr)
            else:
                wandb_on = False
                print("relaxbench: warning: W&B is off for the rest of this report", file=sys.stderr)
        if args.wandb_report:
            spec = report_spec(rep.suite, project=args.wandb_project, entity=args.wandb_entity,
                               protocol=info.protocol, metric=metric, reference=args.reference or info.reference,
                               in_suite=not rep.suite.startswith("ad-hoc-"))
            try:
                print(publish(spec, out / rep.suite / "wandb_report.json"), file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - W&B never fails a report
                print(f"relaxbench: warning: W&B report not saved ({type(exc).__name__}: {exc})", file=sys.stderr)


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="tables, figures and leaderboard from records")
    p.add_argument("target", nargs="?", metavar="SPEC|RESULTS_DIR", default=None,
                   help="a suite (shipped name or YAML file: only its runs) or a results folder (default: --results)")
    p.add_argument("--results", default="results", help="results root (records under RESULTS/runs)")
    p.add_argument("--out", default=None, help="where to write (default: RESULTS/reports)")
    p.add_argument("--reference", default=None, help="method the tests compare against (default: the suite's, strict)")
    p.add_argument("--test", default="welch", help="welch (independent seeds) or paired (shared seeds)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level after Holm's correction")
    p.add_argument("--all-variants", action="store_true", help="a row per evaluation variant, not only the headline")
    p.add_argument("--no-figures", action="store_true", help="write tables only")
    p.add_argument("--readme", default=None, metavar="PATH",
                   help="regenerate the leaderboard section of PATH (between leaderboard:start/end markers)")
    p.add_argument("--wandb", action="store_true", help="log an 'aggregate' W&B run (offline without an API key)")
    p.add_argument("--wandb-report", action="store_true", help="build a W&B Report (saved online; a spec file offline)")
    p.add_argument("--wandb-project", default="relaxbench")
    p.add_argument("--wandb-entity", default=None)
    p.set_defaults(func=cmd_report)
