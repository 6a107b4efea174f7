"""``relaxbench bench``: what a training step, an evaluation and a method cost, measured as ratios.

Every figure is measured the way the train loop spends it: a training step is
:func:`~benchmark.train.step_objective` plus :func:`~benchmark.train.apply_step` (forward, task
loss, the method's objective, backward, clipping, the optimiser, the method's ``after_step``) at
the task's standard batch on the default backbone; an evaluation is the train loop's own
(every variant of the method on the validation split, with its equivariance errors). Timing on a
shared machine is noisy, so

* the methods of one backbone are timed **interleaved**, round by round in one process, and each
  method's overhead is the ratio of its median step to ``strict``'s median step of the same rounds;
* every time is a median over rounds with its interquartile range, never one measurement;
* the achieved FLOP/s of the strict step (counted by :class:`torch.utils.flop_counter.FlopCounterMode`)
  is set against this process's own measured matmul rate at the same thread count.

Nothing here asserts a speed: the numbers go to ``results/perf/`` (JSON and Markdown) with the
machine they were measured on.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

__all__ = ["machine", "matmul_flops", "bench_backbone", "BackboneBench", "MethodTiming", "to_markdown",
           "default_task"]


def machine() -> dict[str, Any]:
    """CPU model, cores, torch threads, torch version and GPU (if any) of this process."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _median_iqr(values: Sequence[float]) -> tuple[float, float, float]:
    xs = sorted(values)
    if not xs:
        return math.nan, math.nan, math.nan
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return statistics.median(xs), q[0], q[2]


def matmul_flops(n: int = 512, repeats: int = 20) -> float:
    """This process's matmul rate (FLOP/s, float32, current threads): the median of ``repeats``
    products of two ``n x n`` matrices."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


@dataclass
class MethodTiming:
    method: str
    step_median_s: float
    step_q1_s: float
    step_q3_s: float
    overhead_vs_strict: float | None     # median of the per-round ratios to strict's step
    eval_s: float | None                 # one evaluation (every variant, equivariance included)
    eval_fraction_of_epoch: float | None  # one evaluation / one epoch of training steps
    compiled: bool = False


@dataclass
class BackboneBench:
    backbone: str
    task: str
    batch_size: int
    steps_per_epoch: int
    params_strict: int
    strict_flops_per_step: float | None
    strict_flops_per_second: float | None
    matmul_flops_per_second: float
    max_rss_mb: float
    methods: list[MethodTiming] = field(default_factory=list)


def default_task(backbone: str) -> str:
    """The task a backbone is benchmarked on: the first task it declares."""
    from benchmark.registry import BACKBONES, TASKS
    tasks = [t for t in BACKBONES.get(backbone).obj.tasks if t in TASKS]
    if not tasks:
        raise ValueError(f"backbone {backbone!r} declares no registered task")
    return tasks[0]


def _built(task: str, backbone: str, method: str, overrides: Sequence[str], compiled: bool,
           train_size: int | None = None):
    from benchmark.experiment import resolve
    from benchmark.train import build
    mine = [o for o in overrides if o.split("=", 1)[0].strip() != "train.compile"] + ["train.compile=off"]
    cfg = resolve(task, backbone, method, overrides=mine, train_size=train_size)
    built = build(cfg, progress=False)
    forward = torch.compile(built.model) if compiled else built.model
    return built, forward


def _stepper(built, forward) -> Callable[[], float]:
    """A closure running one training step of ``built`` on its next training batch; returns its seconds."""
    from benchmark.method import EpochContext
    from benchmark.train import apply_step, step_objective
    tc = built.cfg.train
    built.method.before_epoch(EpochContext(built.model, built.task, 0, tc.epochs, tc))
    built.model.train()
    batches = list(built.task.batches("train", tc.batch_size, shuffle=True,
                                      generator=torch.Generator().manual_seed(0), drop_last=True))
    state = {"i": 0}

    def step() -> float:
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        t = time.perf_counter()
        ctx, total = step_objective(built, batch, forward, epoch=0, step=state["i"])
        total.item()                                     # the loop reads the loss every step
        apply_step(built, ctx, total)
        return time.perf_counter() - t
    return step


def _evaluation_seconds(built, repeats: int) -> float:
    from benchmark.train import evaluate_once
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        evaluate_once(built)
        times.append(time.perf_counter() - t)
    built.model.train()
    return statistics.median(times)


def _strict_flops(built, forward) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode
    step = _stepper(built, forward)
    try:
        with FlopCounterMode(display=False) as counter:
            step()
        return float(counter.get_total_flops())
    except Exception:                 # an operator the counter cannot follow: no FLOP figure
        return None


def bench_backbone(backbone: str, methods: Sequence[str], *, task: str | None = None, rounds: int = 5,
                   steps_per_round: int = 3, eval_repeats: int = 2, overrides: Sequence[str] = (),
                   compiled: bool = False, train_size: int | None = None,
                   progress: Callable[[str], None] | None = None) -> BackboneBench:
    """Time every method of ``methods`` (``strict`` is always included, as the reference) on
    ``backbone`` at its task's standard batch; see the module docstring."""
    task = task or default_task(backbone)
    methods = ["strict"] + [m for m in methods if m != "strict"]
    built = {}
    steppers = {}
    for method in methods:
        if progress:
            progress(f"{backbone}/{task}: building {method}")
        b, fwd = _built(task, backbone, method, overrides, compiled, train_size)
        built[method] = b
        steppers[method] = _stepper(b, fwd)
        steppers[method]()                                 # warm-up (and compilation)
    times: dict[str, list[float]] = {m: [] for m in methods}
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(rounds):
        if progress:
            progress(f"{backbone}/{task}: round {r + 1}/{rounds}")
        this_round = {}
        for method in methods:                              # interleaved: load hits all alike
            this_round[method] = statistics.median(steppers[method]() for _ in range(steps_per_round))
            times[method].append(this_round[method])
        for method in methods:
            ratios[method].append(this_round[method] / this_round["strict"])
    strict = built["strict"]
    n_train = len(strict.task.split("train"))
    bs = strict.cfg.train.batch_size
    steps_per_epoch = max(n_train // bs if strict.cfg.train.drop_last else math.ceil(n_train / bs), 1)
    flops = _strict_flops(*_built(task, backbone, "strict", overrides, False, train_size))
    step_strict = statistics.median(times["strict"])
    out = BackboneBench(backbone, task, bs, steps_per_epoch, strict.model.num_parameters(), flops,
                        None if flops is None else flops / step_strict, matmul_flops(),
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    for method in methods:
        med, q1, q3 = _median_iqr(times[method])
        if progress:
            progress(f"{backbone}/{task}: evaluating {method}")
        ev = _evaluation_seconds(built[method], eval_repeats) if eval_repeats else None
        out.methods.append(MethodTiming(method, med, q1, q3, statistics.median(ratios[method]), ev,
                                        None if ev is None else ev / (med * steps_per_epoch), compiled))
    return out


def as_json(benches: Sequence[BackboneBench], info: dict) -> dict:
    return {"machine": info, "backbones": [asdict(b) for b in benches]}


def to_markdown(benches: Sequence[BackboneBench], info: dict) -> str:
    lines = ["# relaxbench bench", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch thread(s), "
             f"torch {info['torch']}" + (f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU") + ".", "",
             "Training step: forward, loss, the method's objective, backward, clipping, optimiser and the "
             "method's after_step, at the task's standard batch; median over interleaved rounds (IQR in "
             "brackets). Overhead: the median per-round ratio to strict's step on the same backbone. "
             "Evaluation: one evaluation of the train loop (every variant, equivariance errors included) "
             "as a fraction of one epoch's training steps.", ""]
    for b in benches:
        lines += [f"## {b.backbone} on {b.task} (batch {b.batch_size}, {b.steps_per_epoch} steps per epoch)", ""]
        achieved = "—" if b.strict_flops_per_second is None else \
            f"{b.strict_flops_per_second / 1e9:.2f} GFLOP/s ({b.strict_flops_per_second / b.matmul_flops_per_second:.0%} " \
            f"of this process's {b.matmul_flops_per_second / 1e9:.1f} GFLOP/s matmul)"
        lines += [f"Strict: {b.params_strict:,} parameters; {achieved}; process max RSS {b.max_rss_mb:.0f} MB.", "",
                  "| method | step (ms) | overhead vs strict | one evaluation (s) | evaluation / epoch |",
                  "|:---|---:|---:|---:|---:|"]
        for m in b.methods:
            ev = "—" if m.eval_s is None else f"{m.eval_s:.2f}"
            frac = "—" if m.eval_fraction_of_epoch is None else f"{m.eval_fraction_of_epoch:.0%}"
            lines.append(f"| {m.method} | {m.step_median_s * 1e3:.1f} [{m.step_q1_s * 1e3:.1f}, "
                         f"{m.step_q3_s * 1e3:.1f}] | {m.overhead_vs_strict:.2f}x | {ev} | {frac} |")
        lines.append("")
    return "\n".join(lines)
