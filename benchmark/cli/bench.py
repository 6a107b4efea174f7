"""``relaxbench bench``: training-step, evaluation and method costs on this machine (see
:mod:`benchmark.perf`), written as JSON and Markdown under ``results/perf/``."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmark.config import ConfigError

__all__ = ["add_parser"]


def cmd_bench(args) -> int:
    import torch

    from benchmark.fileio import write_text_atomic
    from benchmark.perf import as_json, bench_backbone, machine, to_markdown
    from benchmark.record import write_json_atomic
    from benchmark.registry import BACKBONES, METHODS, UnknownNameError
    if args.threads is not None:
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
    benches = []
    for name in backbones:
        equivariant = BACKBONES.get(name).obj.equivariant
        chosen = methods if equivariant else [m for m in methods if not METHODS.get(m).obj.uses_branch]
        try:
            benches.append(bench_backbone(name, chosen, rounds=rounds, steps_per_round=steps, eval_repeats=evals,
                                          compiled=args.compile,
                                          progress=None if args.quiet else lambda s: print(s, file=sys.stderr)))
        except ImportError as exc:                      # an optional dependency (escnn) not installed
            print(f"relaxbench bench: {name} skipped: {exc}", file=sys.stderr)
    info = machine()
    write_json_atomic(out.with_suffix(".json"), as_json(benches, info))
    text = to_markdown(benches, info)
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
    p.add_argument("--out", default="results/perf/bench", help="JSON and Markdown files, suffixes added "
                   "(default: results/perf/bench)")
    p.add_argument("--quiet", action="store_true", help="no progress lines (default: False)")
    p.set_defaults(func=cmd_bench)
