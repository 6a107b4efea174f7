"""The ``relaxbench`` command.

Subcommands: ``ls`` (registered tasks, backbones, methods), ``run`` (one benchmark run), ``data``
(generate a task's data set), and ``suite`` / ``report`` (grids of runs and their tables).
Every user error prints one line naming the bad value and what is allowed, exits with status 2
and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from benchmark.config import ConfigError, help_rows
from benchmark.registry import BACKBONES, METHODS, TASKS

__all__ = ["main", "UsageError"]

EXIT_USAGE = 2
EXIT_RUN_FAILED = 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a program killed by a closed pipe


class UsageError(Exception):
    """A bad command line; printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage dump
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _registry(kind: str):
    regs = {"tasks": TASKS, "backbones": BACKBONES, "methods": METHODS}
    if kind not in regs:
        raise UsageError(f"relaxbench ls: unknown kind {kind!r}; allowed: tasks, backbones, methods")
    return regs[kind]


def _plain(text: str) -> str:
    """A docstring line as plain text: reStructuredText roles and literals without their markup."""
    import re
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "").replace("`", "")


def cmd_ls(args) -> int:
    kinds = [args.kind] if args.kind else ["tasks", "backbones", "methods"]
    for kind in kinds:
        reg = _registry(kind)
        names = reg.list(args.pattern)
        if len(kinds) > 1:
            print(f"{kind}:")
        for name in names:
            entry = reg.get(name)
            doc = (entry.obj.__doc__ or sys.modules[entry.obj.__module__].__doc__ or "").strip().splitlines()
            first = _plain(doc[0]) if doc else ""
            print(f"{'  ' if len(kinds) > 1 else ''}{name:<16} {first}")
            if args.verbose and entry.config is not None:
                for key, default, text in help_rows(entry.default_config()):
                    print(f"{'  ' if len(kinds) > 1 else ''}    {key}={default!r}  {text}")
    return 0


def _check_run_args(args) -> None:
    for name in ("seed", "train_size", "epochs", "threads"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "seed" else 1):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag}={value}: must be >= {0 if name == 'seed' else 1}")
    from benchmark.experiment import MAX_SEED
    seed = getattr(args, "seed", None)
    if seed is not None and seed >= MAX_SEED:       # seeds fit a signed 64-bit integer
        raise ConfigError(f"--seed={seed}: must be < 2**63")


def cmd_run(args) -> int:
    import torch
    before = torch.get_num_threads()
    try:
        return _run(args)
    finally:                 # a caller in the same process (a notebook, a test) keeps its threads
        torch.set_num_threads(before)


def _run(args) -> int:
    from benchmark.experiment import resolve
    _check_run_args(args)
    cfg = resolve(args.task, args.backbone, args.method, seed=args.seed, train_size=args.train_size,
                  overrides=args.overrides, preset=args.preset, epochs=args.epochs)
    results = Path(args.results)
    if results.exists() and not results.is_dir():
        raise ConfigError(f"--results={args.results}: exists and is not a folder")
    import torch
    from benchmark.devices import default_threads, resolve_device
    device = resolve_device(args.device)
    if args.threads:
        threads, why = args.threads, "--threads"
    elif device.type == "cpu":
        threads, why = default_threads()
    else:
        threads, why = None, ""
    if threads:
        torch.set_num_threads(threads)
    from benchmark.fileio import NotWritableError, RunLocked
    from benchmark.train import RunWriteError, check_run_writable, train
    try:
        check_run_writable(results, cfg)
    except NotWritableError as exc:
        raise ConfigError(str(exc)) from None
    # the run's first line: what it is, where, and with how many threads
    where = f"{device}" + (f" with {threads} torch thread{'s' if threads != 1 else ''} ({why})" if threads else "")
    print(f"relaxbench: {cfg.run_id} on {where}", file=sys.stderr, flush=True)
    wandb_logger = None
    if getattr(args, "wandb", False):
        from benchmark.tracking.wandb_runs import WandbRunLogger  # optional extra
        wandb_logger = WandbRunLogger(project=args.wandb_project)
    if not args.force:
        from benchmark.record import record_path
        from benchmark.train import existing_record
        existing = existing_record(results, cfg)
        if existing is not None and existing["status"] == "completed":
            print(f"relaxbench: {cfg.run_id}: a completed record of this configuration exists; not retrained "
                  "(--force retrains it)", file=sys.stderr)
            print(summary_line(existing))
            print(f"record: {record_path(results, cfg)}")
            return 0
    try:
        record, path = train(cfg, results=results, resume=not args.no_resume, progress=not args.quiet,
                             argv=["relaxbench"] + list(args.argv), device=device,
                             unless_recorded=() if args.force else ("completed",))
    except RunLocked as exc:
        print(f"relaxbench: {cfg.run_id}: {exc}; nothing written", file=sys.stderr)
        return 0
    except NotWritableError as exc:
        raise ConfigError(str(exc)) from None
    except RunWriteError as exc:
        print(f"relaxbench: error: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
    if wandb_logger is not None:
        folder = wandb_logger.log_record(record)
        if folder:
            from benchmark.tracking.wandb_runs import wandb_mode
            mode = wandb_logger.mode or wandb_mode()
            print(f"W&B run ({mode}): {folder}" + ("; upload it with `wandb sync " + folder + "`"
                                                   if mode == "offline" else ""), file=sys.stderr)
    print(summary_line(record))
    print(f"record: {path}")
    # one rule for `run` and `suite run`: diverged is a result (exit 0), failed is an error (exit 1)
    return EXIT_RUN_FAILED if record["status"] == "failed" else 0


def summary_line(record: dict) -> str:
    """``task/backbone/method n=.. seed=..: completed; projected test mse 0.0071 (best epoch ..)``."""
    head = f"{record['task']}/{record['backbone']}/{record['method']} n={record['train_size']} seed={record['seed']}"
    if record["status"] != "completed":
        reason = (record.get("reason") or "").splitlines()[0]
        return f"{head}: {record['status']} ({reason})"
    metric = (record.get("metric") or {}).get("name", "metric")
    parts = []
    for name, var in record["variants"].items():
        parts.append(f"{name} test {metric} {var['test_metric']:.6g} (val {var['val_metric']:.6g} at epoch "
                     f"{var['best_epoch']}, equivariance rel {var['equivariance']['rel']:.2e})")
    timing = record["timing"]
    step = timing.get("median_step_seconds")
    tail = f"; {timing['wall_seconds']:.0f}s wall" + (f", {1000 * step:.1f} ms/step" if step else "")
    return f"{head}: completed; " + "; ".join(parts) + tail


def cmd_data_mocap(args) -> int:
    """``data mocap``: CMU ASF/AMC files to a motion data file (``benchmark.tasks._asf_amc``)."""
    from benchmark.tasks._asf_amc import AsfAmcError, convert, write_npz
    if not args.asf or not args.amc or not args.out:
        raise UsageError("relaxbench data mocap needs --asf FILE, --amc FILE [FILE ...] and --out FILE")
    if Path(args.out).is_dir():
        raise ConfigError(f"--out={args.out}: is a folder; give the file to write")
    try:
        arrays = convert(args.asf, args.amc)
    except AsfAmcError as exc:
        raise UsageError(f"relaxbench data mocap: {exc}") from None
    try:
        digest = write_npz(args.out, arrays)
    except OSError as exc:
        print(f"relaxbench: error: {args.out} not written: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
    frames = [arrays[k].shape[0] for k in sorted(arrays) if k.startswith("trial_")]
    print(f"{args.out}: {len(frames)} trials ({min(frames)} to {max(frames)} frames), "
          f"{arrays['joints'].shape[0]} joints, sha256 {digest}")
    return 0


def cmd_data(args) -> int:
    if args.task == "mocap":
        return cmd_data_mocap(args)
    if args.task != "nbody":
        raise UsageError(f"relaxbench data: unknown data set {args.task!r}; allowed: mocap, nbody")
    if args.asf or args.amc:
        raise UsageError("relaxbench data nbody: --asf and --amc belong to `relaxbench data mocap`")
    args.out = args.out or "nbody_data"
    from benchmark.tasks import nbody_sim
    for flag in ("num_train", "num_valid", "num_test"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}={getattr(args, flag)}: must be >= 1")
    if not 0 <= args.seed < 2**32:
        raise ConfigError(f"--seed={args.seed}: the data generator's seed must be in 0 .. 2**32-1")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out={args.out}: exists and is not a folder")
    data = nbody_sim.generate(num_train=args.num_train, num_valid=args.num_valid, num_test=args.num_test,
                              seed=args.seed, clip=args.clip, progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    for split, arrays in data.items():
        nbody_sim.save_split(out, split, arrays)
        print(f"{out / (split + '.npz')}: " + ", ".join(f"{k} {v.dtype} {'x'.join(map(str, v.shape))}"
                                                       for k, v in arrays.items()))
    standard = (args.num_train, args.num_valid, args.num_test, args.seed, args.clip) == (10000, 2000, 2000, 43, "component")
    if standard:
        bad = nbody_sim.verify(data)
        print("fingerprints: " + ("all match the original generator" if not bad else "MISMATCH " + ", ".join(map(str, bad))))
        return 0 if not bad else EXIT_RUN_FAILED
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="relaxbench", description="Benchmark suite for relaxation methods of equivariant networks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("ls", help="list registered tasks, backbones and methods")
    p.add_argument("kind", nargs="?", choices=("tasks", "backbones", "methods"), help="what to list")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. 'ace-*'")
    p.add_argument("-v", "--verbose", action="store_true", help="show every config key with its default")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("run", help="train and evaluate one run, write its record",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, help="a registered task (`relaxbench ls tasks`)")
    p.add_argument("--backbone", required=True, help="a registered backbone (`relaxbench ls backbones`)")
    p.add_argument("--method", required=True, help="a registered method (`relaxbench ls methods`)")
    p.add_argument("--seed", type=int, default=0, help="the run's seed (initialisation, data order, evaluation)")
    p.add_argument("--train-size", type=int, default=None, help="training samples (None: the task's default)")
    p.add_argument("--epochs", type=int, default=None, help="shorthand for train.epochs=E")
    p.add_argument("--preset", default=None, help="a named set of paper settings, e.g. 'ace'")
    p.add_argument("--results", default="results", help="results root (records under RESULTS/runs)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (None: the free cores, i.e. the cores less the current load, at least 1)")
    p.add_argument("--force", action="store_true",
                   help="train even when a completed record of this configuration exists (it is replaced)")
    p.add_argument("--device", default=None,
                   help="auto (a GPU when there is one), cpu, cuda or cuda:N; default $RELAXBENCH_DEVICE or auto")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (offline without a key)")
    p.add_argument("--wandb-project", default="relaxbench")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-3")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("data", help="generate a task's data set to files")
    p.add_argument("task", help="data set (nbody, or mocap: CMU ASF/AMC files to one motion data file)")
    p.add_argument("--out", default=None, help="nbody: the folder (default nbody_data); mocap: the file")
    p.add_argument("--asf", default=None, help="mocap: the skeleton (ASF) file")
    p.add_argument("--amc", nargs="+", default=None, help="mocap: the motion (AMC) files, trial 0 first")
    p.add_argument("--num-train", type=int, default=10000)
    p.add_argument("--num-valid", type=int, default=2000)
    p.add_argument("--num-test", type=int, default=2000)
    p.add_argument("--seed", type=int, default=43)
    p.add_argument("--clip", choices=("component", "norm"), default="component")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_data)

    for module in ("benchmark.cli.suite", "benchmark.cli.report", "benchmark.cli.bench"):
        try:
            mod = __import__(module, fromlist=["add_parser"])
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue
            raise
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = argv
        if not getattr(args, "command", None):
            parser.print_help()
            sys.stdout.flush()
            return EXIT_USAGE
        status = args.func(args)
        sys.stdout.flush()  # so that a reader gone away (`| head -1`) is noticed here, not at exit
        return status
    except BrokenPipeError:
        # stdout's reader closed the pipe: stop quietly, as a killed-by-SIGPIPE program would; stdout
        # goes to devnull so that the interpreter's final flush does not complain (Python docs recipe)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (UsageError, ConfigError) as exc:
        print(f"relaxbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("relaxbench: interrupted; the last checkpoint is kept, run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
