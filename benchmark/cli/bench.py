"""``relaxbench bench``: training-step, evaluation and method costs on this machine, the data
generator against the literal loop, the backbones against the same networks written the usual
way, the compile cache and the shipped suites' estimated cost (see :mod:`benchmark.perf`),
written as JSON and Markdown under ``results/perf/``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from benchmark.config import ConfigError

__all__ = ["add_parser", "suite_estimates"]

#: The suites whose estimated cost the report shows (the paper protocol's among them).
REPORTED_SUITES = ("quick", "nbody-methods", "nbody-segnn-paper", "nbody-ace-paper", "mocap-run", "partial-symmetry",
                   "images")


def suite_estimates(names: Sequence[str], results: str = "results", workers: int = 2) -> list[dict[str, Any]]:
    """The estimate ``suite run --dry-run`` prints, for each shipped suite of ``names``: training
    steps and evaluations from the costs the records under ``results`` measured, and the wall time
    on ``workers`` workers."""
    from pathlib import Path

    from benchmark.suite import load_spec, plan_suite
    from benchmark.suite.runner import estimate, measured_step_times
    measured = measured_step_times(Path(results))
    rows = []
    for name in names:
        plan = plan_suite(load_spec(name), Path(results))
        cost = estimate(plan.runs, Path(results), measured=measured)
        rows.append({"suite": name, "runs": len(plan.runs), "measured_runs": cost.measured,
                     "unmeasured_runs": cost.unmeasured, "train_hours": cost.seconds / 3600,
                     "eval_hours": cost.eval_seconds / 3600,
                     "wall_hours": (cost.seconds + cost.eval_seconds) / 3600 / max(workers, 1),
                     "workers": workers})
    return rows


def _backbone_in_own_process(name: str, methods: list[str], args, rounds: int, steps: int, evals: int) -> dict:
    """One backbone's bench in a fresh process: its peak memory is its own, and no backbone's
    caches or threads disturb another's timing."""
    cmd = [sys.executable, "-m", "benchmark.perf", name, "--methods", *methods, "--rounds", str(rounds),
           "--steps", str(steps), "--evals", str(evals), "--threads", str(args.threads)]
    if args.compile:
        cmd.append("--compile")
    if args.quiet:
        cmd.append("--quiet")
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the bench of {name} failed (exit {done.returncode}); its messages are above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cmd_bench(args) -> int:
    import torch

    from benchmark.fileio import write_text_atomic
    from benchmark.perf import (as_json, bench_compile_cache, bench_data, bench_peer, from_json, machine,
                                to_markdown, worker_memory, bench_workers, bench_egnn_pytorch)
    from benchmark.record import write_json_atomic
    from benchmark.registry import BACKBONES, METHODS, UnknownNameError
    if args.threads < 1:
        raise ConfigError(f"--threads={args.threads}: must be >= 1")
    torch.set_num_threads(args.threads)
    backbones = args.backbones or BACKBONES.list()
    methods = args.methods or METHODS.list()
    try:
        for name in backbones:
            BACKBONES.get(name)
        for name in methods:
            METHODS.get(name)
    except UnknownNameError as exc:
        raise ConfigError(str(exc)) from None
    rounds, steps, evals = (3, 2, 1) if args.quick else (args.rounds, 5, 3)
    out = Path(args.out)
    write_text_atomic(out.with_suffix(".md"), "")      # refuse an unwritable --out before measuring
    say = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    benches = []
    for name in backbones:
        equivariant = BACKBONES.get(name).obj.equivariant
        chosen = methods if equivariant else [m for m in methods if not METHODS.get(m).obj.uses_branch]
        try:
            from benchmark.perf import default_task
            default_task(name)
        except ValueError as exc:
            print(f"relaxbench bench: {name} skipped: {exc}", file=sys.stderr)
            continue
        try:
            bench = from_json(_backbone_in_own_process(name, chosen, args, rounds, steps, evals))
            slowest = max(bench.methods, key=lambda m: m.step_median_s).method
            say(f"{name}: peak memory of a worker ({slowest})")
            bench.worker_rss_mb, bench.worker_method = worker_memory(name, slowest, args.threads), slowest
            benches.append(bench)
        except RuntimeError as exc:                     # an optional dependency (escnn) not installed, ...
            print(f"relaxbench bench: {name} skipped: {exc}", file=sys.stderr)
    extra: dict = {}
    if not args.no_extras:
        say("data: the generator against the literal loop")
        extra["data"] = bench_data(256 if args.quick else 1024, 4 if args.quick else 10)
        say("peers: egnn and segnn against the same networks written per edge")
        extra["peers"] = [bench_peer(name, rounds=rounds + 2, compiled=True)
                          for name in ("egnn", "segnn") if name in backbones]
        if "egnn" in backbones:
            extra["egnn_pytorch"] = bench_egnn_pytorch(rounds=rounds + 2)
            if extra["egnn_pytorch"] is None:
                say("egnn-pytorch is not installed (pip install -e '.[bench]'): no comparison with it")
        say("compile cache: two fresh processes, one new cache")
        extra["compile"] = bench_compile_cache("egnn", threads=args.threads)
        if args.workers_check:
            say("workers: a part of the quick suite with one worker and with two")
            extra["workers"] = bench_workers()
        extra["suites"] = suite_estimates(REPORTED_SUITES, results=args.results, workers=2)
    info = machine()
    write_json_atomic(out.with_suffix(".json"), {**as_json(benches, info), **extra})
    text = to_markdown(benches, info, extra)
    write_text_atomic(out.with_suffix(".md"), text)
    print(text)
    print(f"written: {out.with_suffix('.json')} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="time training steps, evaluations and method overheads on this machine")
    p.add_argument("--quick", action="store_true", help="few rounds: a reading in minutes (default: False)")
    p.add_argument("--backbones", nargs="+", default=None, help="backbones to time (default: every registered one)")
    p.add_argument("--methods", nargs="+", default=None, help="methods to time (default: every registered one; "
                   "strict is always timed, as the reference)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds without --quick (default: 7)")
    p.add_argument("--compile", action="store_true", help="time the torch.compile'd forward (default: False)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--no-extras", action="store_true", help="backbones and methods only: no data, peers, compile "
                   "cache or suite estimates (default: False)")
    p.add_argument("--workers-check", action="store_true", help="also time a part of the quick suite with one "
                   "worker and with two (about 4 minutes; needs an otherwise idle machine) (default: False)")
    p.add_argument("--results", default="results", help="records the suite estimates read (default: results)")
    p.add_argument("--out", default="results/perf/bench", help="JSON and Markdown files, suffixes added "
                   "(default: results/perf/bench)")
    p.add_argument("--quiet", action="store_true", help="no progress lines (default: False)")
    p.set_defaults(func=cmd_bench)
