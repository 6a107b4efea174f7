"""``relaxbench suite run SPEC``, ``suite list``, ``suite status SPEC`` and ``suite compare SPEC``.

This module is command-line glue: it plans and runs a suite with the rest of this package, then
hands the records to :mod:`benchmark.report` for the suite's tables and figures.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from benchmark.config import ConfigError
from benchmark.suite.executors import EXECUTORS, available_cores, make_executor
from benchmark.suite.runner import (cell_status, format_status, parse_only, plan_suite, prepare_data,
                                    run_suite, write_manifest)
from benchmark.suite.spec import load_spec, shipped_suites

__all__ = ["add_parser"]

EXIT_RUN_FAILED = 1
EXIT_INTERRUPTED = 130


def _results(path: str) -> Path:
    results = Path(path)
    if results.exists() and not results.is_dir():
        raise ConfigError(f"--results={path}: exists and is not a folder")
    return results


def _executor_options(spec, args) -> dict:
    opts = dict(spec.executor)
    for key in ("partition", "time", "cpus", "gpus", "mem", "account", "qos", "constraint"):
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    return opts


def cmd_suite_run(args) -> int:
    spec = load_spec(args.spec)
    results = _results(args.results)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers={args.workers}: must be >= 1")
    for key in ("time", "cpus", "gpus", "mem"):
        value = getattr(args, key, None)
        if value is not None and value < 0:
            raise ConfigError(f"--{key}={value}: must be >= 0")
    only = parse_only(args.only)
    if args.device is not None:  # checked here; the workers inherit it through the environment
        from benchmark.devices import DEVICE_ENV, resolve_device
        os.environ[DEVICE_ENV] = str(resolve_device(args.device))
    plan = plan_suite(spec, results, retry_failed=args.retry_failed, only=only)
    if not args.dry_run:
        _check_writable(results, plan)
    counts = plan.counts()
    workers = args.workers or (int(spec.executor.get("array_parallelism") or 32) if args.executor == "slurm"
                               else available_cores())
    state = ", ".join(f"{counts[s]} {s}" for s in ("completed", "diverged", "failed", "missing") if counts[s])
    part = f" (the part {' '.join(args.only)})" if only else ""
    print(f"suite {spec.name}{part}: {len(plan.runs)} runs ({state}); {len(plan.todo)} to run"
          + ("" if args.dry_run else f" on {args.executor} with {workers} workers"), file=sys.stderr)
    print(f"protocol: {spec.protocol}", file=sys.stderr)
    if counts["failed"] and not args.retry_failed:
        print(f"note: {counts['failed']} failed runs are kept as they are; rerun them with --retry-failed",
              file=sys.stderr)
    if args.dry_run:
        from benchmark.suite.runner import estimate
        print(f"estimate: {estimate(plan.todo, results).describe(workers)}", file=sys.stderr)
        if spec.overrides or spec.epochs:
            shared = list(spec.overrides) + ([f"train.epochs={spec.epochs}"] if spec.epochs else [])
            print("shared overrides: " + " ".join(shared))
        for run in plan.todo:
            extra = list(run.args.overrides[len(spec.overrides):])
            if run.args.preset:
                extra.insert(0, f"--preset {run.args.preset}")
            print(f"{plan.states[run.run_id]:>8}  {run.run_id}" + (f"  {' '.join(extra)}" if extra else ""))
        return 0

    if plan.todo:
        from benchmark.suite.runner import DataPreparationError
        try:
            prepare_data(plan.todo, progress=not args.quiet)
        except DataPreparationError as exc:
            print(f"relaxbench: error: {exc}; no run was started", file=sys.stderr)
            return EXIT_RUN_FAILED
    command = ["relaxbench"] + list(getattr(args, "argv", None) or ["suite", "run", spec.source])
    write_manifest(spec, plan, results, command)
    on_finished = None
    if args.wandb:
        # W&B is logged here, in the suite's process, as each record lands: one logger for the whole
        # suite, so an unreachable W&B costs one short timeout and one warning, never a run's record
        from benchmark.tracking.wandb_runs import WandbRunLogger
        logger = WandbRunLogger(args.wandb_project or spec.wandb.get("project"), entity=spec.wandb.get("entity"),
                                suite=spec.name)
        on_finished = functools.partial(_log_to_wandb, logger)
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads={args.threads}: must be >= 1")
    executor = make_executor(args.executor, results=results, workers=workers,
                             options=_executor_options(spec, args), command=command, threads=args.threads)
    if args.executor != "slurm":
        print(f"each worker: {executor.threads} torch thread(s)"
              + (" (--threads)" if args.threads else " (the free cores divided among the workers)"), file=sys.stderr)
    try:
        outcome = run_suite(plan, executor, progress=not args.quiet, on_finished=on_finished)
    except KeyboardInterrupt:
        done = sum(1 for run in plan.todo if (results / "runs" / f"{run.run_id}.json").is_file())
        print(f"relaxbench: suite {spec.name} interrupted after {done} of {len(plan.todo)} runs; completed records "
              "and checkpoints are kept: run the same command to finish the rest", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"suite {spec.name}: ran {len(outcome.outcomes)} runs in {outcome.seconds:.0f}s"
          + (f", {len(outcome.failed())} not completed" if outcome.failed() else ""), file=sys.stderr)

    from benchmark.report import collect_suite, write_report
    reports = write_report(collect_suite(spec, results), results / "reports", figures=not args.no_figures,
                           suites=[spec.name])
    for rep in reports:
        sys.stdout.write(rep.markdown)
        sys.stdout.flush()
        print(f"tables and figures: {results / 'reports' / rep.suite}", file=sys.stderr)
    # one rule for `run` and `suite run`: diverged is a result (exit 0), failed is an error (exit 1)
    failed = [o for o in outcome.outcomes.values() if o.status in ("failed", "error")]
    return EXIT_RUN_FAILED if failed else 0


def _check_writable(results: Path, plan) -> None:
    """Before any work: every folder the suite will write (records, checkpoints, manifest, reports,
    data caches still to generate) must be writable."""
    from benchmark.fileio import NotWritableError, check_writable
    from benchmark.train import data_folders_to_write, output_folders
    folders = {results / "suites", results / "reports"}
    for run in plan.todo:
        folders.update(output_folders(results, run.cfg))
        folders.update(data_folders_to_write(run.cfg))
    try:
        for folder in sorted(folders):
            check_writable(folder)
    except NotWritableError as exc:
        raise ConfigError(str(exc)) from None


def _log_to_wandb(logger, job, outcome) -> None:
    if logger.disabled is not None or not outcome.record_path:
        return
    from benchmark.record import load_record
    try:
        record = load_record(outcome.record_path)
    except (OSError, ValueError):
        return
    logger.log_record(record)


def cmd_suite_list(args) -> int:
    """The shipped suites: what each is, its runs, how many are done here, and its cost."""
    from benchmark.suite.runner import estimate, measured_step_times
    results = _results(args.results)
    measured = measured_step_times(results)         # read the records once for every suite
    rows = []
    for name in shipped_suites():
        spec = load_spec(name)
        plan = plan_suite(spec, results)
        cost = estimate(plan.runs, results, measured=measured)
        hours = f"{(cost.seconds + cost.eval_seconds) / 3600:.1f}" if cost.measured else "?"
        if cost.unmeasured and cost.measured:
            hours += "+"
        rows.append((name, str(len(plan.runs)), str(plan.counts()["completed"]), hours, spec.protocol))
    headers = ("suite", "runs", "done", "CPU-h", "protocol")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers[:-1])]
    for cells in [headers] + rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells[:-1], widths)))
              + "  " + cells[-1])
    print(f"CPU-h: training steps and evaluations on this machine's kind of CPU, from the step times and "
          f"per-evaluation costs recorded under {results} "
          "('+': some runs have no measurement yet, '?': none has); `relaxbench suite run NAME --dry-run` "
          "lists a suite's runs", file=sys.stderr)
    return 0


def cmd_suite_status(args) -> int:
    spec = load_spec(args.spec)
    results = _results(args.results)
    print(f"suite {spec.name} in {results}: protocol: {spec.protocol}")
    print(format_status(cell_status(spec, results)))
    return 0


def cmd_suite_compare(args) -> int:
    """Compare a suite's records in --results with the same runs' records in --reference."""
    from benchmark.suite.reproduce import compare_runs, format_differences
    spec = load_spec(args.spec)
    if not args.rtol >= 0:
        raise ConfigError(f"--rtol={args.rtol}: must be >= 0")
    diffs, compared = compare_runs(spec, _results(args.results), _results(args.reference), rtol=args.rtol,
                                   epoch_slack=args.epoch_slack)
    planned = len(spec.runs())
    if diffs:
        print(format_differences(diffs))
        print(f"suite {spec.name}: {len(diffs)} difference(s) between {args.results} and {args.reference} "
              f"({compared} of {planned} runs compared; rtol {args.rtol:g}, best epochs within {args.epoch_slack})")
        return EXIT_RUN_FAILED
    print(f"suite {spec.name}: all {compared} runs in {args.results} reproduce {args.reference} (test and "
          f"validation metric of every variant within rtol {args.rtol:g}, best epochs within {args.epoch_slack})")
    return 0


def add_parser(sub) -> None:
    shipped = ", ".join(shipped_suites())
    p = sub.add_parser("suite", help="run a grid of runs (a suite) or show its status")
    ssub = p.add_subparsers(dest="suite_command", metavar="SUBCOMMAND", parser_class=type(p))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    r = ssub.add_parser("run", help="run every missing run of a suite, then print its table")
    r.add_argument("spec", metavar="SPEC", help=f"a shipped suite ({shipped}) or a YAML file")
    r.add_argument("--results", default="results", help="results root (records under RESULTS/runs)")
    r.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local process pool, submitit's local processes, or Slurm through submitit")
    r.add_argument("--workers", type=int, default=None,
                   help="runs at once (default: the cores here; slurm: the array parallelism, 32)")
    r.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker (default: the free cores divided among the workers, at least 1)")
    r.add_argument("--only", action="append", metavar="KEY=PATTERN[,PATTERN]",
                   help="run only this part of the grid, e.g. --only backbone=segnn --only method='ace-*,strict' "
                        "(keys: task, backbone, method, seed, train_size; repeatable)")
    r.add_argument("--device", default=None,
                   help="where runs train: auto (a GPU when there is one), cpu, cuda or cuda:N; default "
                        "$RELAXBENCH_DEVICE or auto")
    r.add_argument("--dry-run", action="store_true", help="list what would run and stop")
    r.add_argument("--retry-failed", action="store_true", help="rerun runs whose record says failed")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--no-figures", action="store_true", help="write tables only")
    r.add_argument("--wandb", action="store_true", help="log every run to W&B (offline without an API key)")
    r.add_argument("--wandb-project", default=None, help="W&B project (default: the spec's, else relaxbench)")
    g = r.add_argument_group("cluster resources (slurm; override the spec's executor section)")
    g.add_argument("--partition", default=None)
    g.add_argument("--time", type=int, default=None, help="minutes per run")
    g.add_argument("--cpus", type=int, default=None, help="CPUs per run (also its torch threads)")
    g.add_argument("--gpus", type=int, default=None, help="GPUs per run")
    g.add_argument("--mem", type=float, default=None, help="memory per run, GB")
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--constraint", default=None)
    r.set_defaults(func=cmd_suite_run)

    li = ssub.add_parser("list", help="the shipped suites: what, runs, done, estimated cost")
    li.add_argument("--results", default="results", help="results root (records under RESULTS/runs)")
    li.set_defaults(func=cmd_suite_list)

    c = ssub.add_parser("compare", help="reproduction check: each run's metrics against a reference results folder")
    c.add_argument("spec", metavar="SPEC", help=f"a shipped suite ({shipped}) or a YAML file")
    c.add_argument("--results", required=True, help="the results root just trained (records under RESULTS/runs)")
    c.add_argument("--reference", default="results", help="the results root to reproduce")
    c.add_argument("--rtol", type=float, default=1e-3,
                   help="relative tolerance of each metric (rounding across CPUs and thread counts)")
    c.add_argument("--epoch-slack", type=int, default=0, help="allowed difference of best-validation epochs")
    c.set_defaults(func=cmd_suite_compare)

    s = ssub.add_parser("status", help="per cell: completed / diverged / failed / missing runs")
    s.add_argument("spec", metavar="SPEC", help=f"a shipped suite ({shipped}) or a YAML file")
    s.add_argument("--results", default="results", help="results root (records under RESULTS/runs)")
    s.set_defaults(func=cmd_suite_status)
