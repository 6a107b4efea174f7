"""Time of a compiled training step from a run's checkpoint, with subnormal floats kept and with
them flushed to zero (what ``relaxbench`` runs do since they flush, :func:`benchmark.train.flushed_subnormals`).

As a network trains, subnormal values (below ``finfo.tiny``, 1.2e-38 in float32) appear in its
step's arithmetic, in intermediate values even when the saved state holds none; on a CPU,
arithmetic on them is many times slower, and a compiled model's kernels meet them at every step.
Each mode runs in a fresh process that loads the checkpoint (so neither mode sees the other's
flushed state), compiles the model as a run does, warms up on 3 batches and times the next
ones; the modes alternate for ``--rounds`` rounds and the script prints the medians, their ratio
and how many subnormal values the checkpoint's model and optimiser hold.

    python benchmarks/subnormal_step_time.py CHECKPOINT --task nbody --backbone segnn \\
        --method ace-eq --preset ace --seed 2 --train-size 3000

The configuration must be the checkpoint's (its hash is checked).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _config(args):
    from benchmark.experiment import resolve
    return resolve(args.task, args.backbone, args.method, seed=args.seed, train_size=args.train_size,
                   preset=args.preset)


def _count_subnormals(obj) -> tuple[int, int]:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel():
            tiny = torch.finfo(obj.dtype).tiny
            return int(((obj != 0) & (obj.abs() < tiny)).sum()), obj.numel()
        return 0, 0
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    sub = tot = 0
    for item in items:
        s, t = _count_subnormals(item)
        sub, tot = sub + s, tot + t
    return sub, tot


def _time_one_mode(args) -> None:
    """The child: one mode, printed as one JSON line."""
    from benchmark.devices import compile_model
    from benchmark.train import _load_checkpoint, apply_step, build, step_objective
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(args.flush == 1)
    built = build(_config(args))
    state = _load_checkpoint(Path(args.checkpoint), built)
    forward = compile_model(built.model)
    batches = list(built.task.batches("train", built.cfg.train.batch_size, shuffle=False, drop_last=True))
    batches = batches[: 3 + args.steps]
    times = []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        ctx, total = step_objective(built, batch, forward, epoch=state.epoch, step=state.step)
        apply_step(built, ctx, total)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"epoch": state.epoch, "median_s": statistics.median(times)}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--task", default="nbody")
    ap.add_argument("--backbone", default="segnn")
    ap.add_argument("--method", default="ace-eq")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--flush", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.flush is not None:
        _time_one_mode(args)
        return

    from benchmark.checkpoint import load_checkpoint
    payload = load_checkpoint(Path(args.checkpoint), config_hash=_config(args).hash)
    sub, tot = _count_subnormals([payload["model"], payload["optimizer"]])
    child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
    medians: dict[int, list[float]] = {0: [], 1: []}
    epoch = None
    for _ in range(args.rounds):
        for flush in (0, 1):
            out = subprocess.run([*child, "--flush", str(flush)], capture_output=True, text=True, check=True)
            line = json.loads(out.stdout.strip().splitlines()[-1])
            medians[flush].append(line["median_s"])
            epoch = line["epoch"]
    kept, flushed = statistics.median(medians[0]), statistics.median(medians[1])
    print(f"checkpoint at epoch {epoch}: {sub} subnormal values among {tot} in model and optimiser")
    print(f"compiled step, subnormals kept:    {1000 * kept:.1f} ms (rounds: "
          + ", ".join(f"{1000 * t:.1f}" for t in medians[0]) + ")")
    print(f"compiled step, subnormals flushed: {1000 * flushed:.1f} ms (rounds: "
          + ", ".join(f"{1000 * t:.1f}" for t in medians[1]) + ")")
    print(f"ratio: {kept / flushed:.2f}x")


if __name__ == "__main__":
    main()
