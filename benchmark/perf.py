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

__all__ = ["worker_memory", "machine", "matmul_flops", "bench_backbone", "BackboneBench", "MethodTiming", "to_markdown",
           "default_task", "bench_egnn_pytorch", "bench_workers", "parallel_ceiling", "bench_data", "bench_peer",
           "bench_compile_cache", "from_json", "OVERHEAD_TARGETS"]


def machine() -> dict[str, Any]:
    """CPU model, cores, torch threads, torch version, GPU (if any) and the 1-minute load average."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = round(os.getloadavg()[0], 2)          # other work on the machine while measuring
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average_1min": load,
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
    eval_share_of_run: float | None = None  # evaluations' share of a run at the task's eval_every


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
    max_rss_mb: float                    # the whole bench process (every method built at once)
    eval_every: int = 1
    worker_rss_mb: float | None = None   # one run's worker, its heaviest method (worker_method)
    worker_method: str | None = None
    methods: list[MethodTiming] = field(default_factory=list)
    subnormals_flushed: bool | None = None   # None: a bench written before the mode was recorded


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
    ``backbone`` at its task's standard batch; see the module docstring. Subnormal floats are
    flushed to zero throughout, as a run's training does (:func:`benchmark.train.flushed_subnormals`):
    a model whose weights decay towards zero can be several times slower per step without it, so a
    bench in the other mode would time a step no run takes."""
    from benchmark.train import flushed_subnormals
    with flushed_subnormals() as flushed:
        out = _bench_backbone(backbone, methods, task=task, rounds=rounds, steps_per_round=steps_per_round,
                              eval_repeats=eval_repeats, overrides=overrides, compiled=compiled,
                              train_size=train_size, progress=progress)
    out.subnormals_flushed = flushed
    return out


def _bench_backbone(backbone: str, methods: Sequence[str], *, task: str | None, rounds: int,
                    steps_per_round: int, eval_repeats: int, overrides: Sequence[str], compiled: bool,
                    train_size: int | None, progress: Callable[[str], None] | None) -> BackboneBench:
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
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, strict.cfg.train.eval_every)
    for method in methods:
        med, q1, q3 = _median_iqr(times[method])
        if progress:
            progress(f"{backbone}/{task}: evaluating {method}")
        ev = _evaluation_seconds(built[method], eval_repeats) if eval_repeats else None
        epoch = med * steps_per_epoch
        out.methods.append(MethodTiming(method, med, q1, q3, statistics.median(ratios[method]), ev,
                                        None if ev is None else ev / epoch, compiled,
                                        None if ev is None else ev / (ev + out.eval_every * epoch)))
    out.max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# -- data: the vectorised generator against the literal per-trajectory loop -----------------------
def bench_data(trajectories: int = 1024, literal: int = 8, length: int = 5000) -> dict[str, Any]:
    """The N-body generator (:func:`~benchmark.tasks.nbody_sim.simulate`, one call over
    ``trajectories``) against the literal per-trajectory loop of
    :mod:`~benchmark.tasks._nbody_literal` on the first ``literal`` of them: seconds per
    trajectory of each, their ratio, and whether every compared array is equal bit for bit."""
    import numpy as np

    from benchmark.tasks import nbody_sim as ns
    from benchmark.tasks._nbody_literal import literal_trajectory
    ic = ns.draw_initial_conditions(trajectories, np.random.RandomState(43))
    t = time.perf_counter()
    loc, vel = ns.simulate(ic["loc0"], ic["vel0"], ic["edges"], length=length)
    vectorised = (time.perf_counter() - t) / trajectories
    per, identical = [], True
    for b in range(min(literal, trajectories)):
        t = time.perf_counter()
        ref_loc, ref_vel = literal_trajectory(ic["loc0"][b], ic["vel0"][b], ic["edges"][b], T=length)
        per.append(time.perf_counter() - t)
        identical = identical and np.array_equal(loc[b], ref_loc) and np.array_equal(vel[b], ref_vel)
    lit = statistics.median(per)
    return {"trajectories": trajectories, "steps": length, "compared": len(per),
            "vectorised_s_per_trajectory": vectorised, "literal_s_per_trajectory": lit,
            "speedup": lit / vectorised, "bit_identical": bool(identical)}


# -- peers: the same network written the usual way ---------------------------------------------
def _train_pass(forward, batch) -> Callable[[], float]:
    def run() -> float:
        t = time.perf_counter()
        loss = torch.mean((forward(batch) - batch.target) ** 2)
        loss.backward()
        return time.perf_counter() - t
    return run


def _interleaved_medians(runs: dict[str, Callable[[], float]], rounds: int, steps: int) -> dict[str, float]:
    """Each closure of ``runs`` once as a warm-up, then ``rounds`` rounds in which every closure runs
    ``steps`` times in turn (machine load hits all alike): the median over rounds of each round's
    median seconds."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            times[key].append(statistics.median(run() for _ in range(steps)))
    return {key: statistics.median(values) for key, values in times.items()}


def bench_peer(name: str, rounds: int = 5, steps: int = 3, compiled: bool = False,
               overrides: Sequence[str] = (), train_size: int | None = None) -> dict[str, Any] | None:
    """Forward and backward (batch 100 of the N-body task, the strict network, same weights) of
    the backbone against the same network written the usual way: ``egnn`` against its per-edge form
    (:mod:`~benchmark.backbones._egnn_reference`), ``segnn`` against the per-edge e3nn reference
    of the tests (only in a source checkout, which has them). Interleaved rounds; the outputs are
    compared on the batch. ``None`` when the reference is not available."""
    from benchmark.experiment import resolve
    from benchmark.train import build
    mine = [o for o in overrides if o.split("=", 1)[0].strip() != "train.compile"] + ["train.compile=off"]
    cfg = resolve("nbody", name, "strict", overrides=mine, train_size=train_size)
    built = build(cfg)
    model = built.model
    batch = built.task.split("train").index(slice(0, cfg.train.batch_size))
    if name == "egnn":
        from benchmark.backbones._egnn_reference import per_edge_forward
        reference, label = (lambda b: per_edge_forward(model, b)), "per-edge EGNN (gathers and index_add)"
    elif name == "segnn":
        import importlib.util
        from pathlib import Path
        path = Path(__file__).resolve().parents[1] / "tests" / "test_segnn.py"
        if not path.exists():
            return None
        import sys
        sys.path.insert(0, str(path.parent))             # the test module imports its conftest
        try:
            spec = importlib.util.spec_from_file_location("_segnn_reference", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent))
        ref = module.ReferenceSEGNN(model)
        reference, label = ref, "per-edge e3nn SEGNN (the tests' reference)"
    else:
        return None
    with torch.no_grad():
        ours, theirs = model(batch), reference(batch)
    scale = max(theirs.abs().max().item(), 1e-30)
    diff = (ours - theirs).abs().max().item() / scale
    runs = {"ours": _train_pass(model, batch), "reference": _train_pass(reference, batch)}
    if compiled:
        from benchmark.devices import compile_model
        runs["ours_compiled"] = _train_pass(compile_model(model), batch)
    times = _interleaved_medians(runs, rounds, steps)
    ours_s, ref_s = times["ours"], times["reference"]
    out = {"backbone": name, "reference": label, "batch": cfg.train.batch_size, "ours_s": ours_s,
           "reference_s": ref_s, "speedup": ref_s / ours_s, "max_rel_output_difference": diff}
    if compiled:
        out["ours_compiled_s"] = times["ours_compiled"]
        out["speedup_compiled"] = ref_s / out["ours_compiled_s"]
    return out


def bench_egnn_pytorch(rounds: int = 5, steps: int = 3, overrides: Sequence[str] = (),
                       train_size: int | None = None) -> dict[str, Any] | None:
    """Forward and backward of the strict ``egnn`` against the ``egnn-pytorch`` package (the
    ``bench`` extra) at matched width, depth, graph and batch: 4 of its ``EGNN`` layers of width
    64 (message width 64) on the same fully connected 5-node graphs with the same edge attributes,
    features embedded from ``|v|`` as ours. The two are not the same function (its layers have no
    velocity term and their own MLP widths), so only the times are compared. ``None`` when the
    package is not installed."""
    try:
        from egnn_pytorch import EGNN as PeerLayer
    except ImportError:
        return None
    from benchmark.experiment import resolve
    from benchmark.train import build
    mine = [o for o in overrides if o.split("=", 1)[0].strip() != "train.compile"] + ["train.compile=off"]
    cfg = resolve("nbody", "egnn", "strict", overrides=mine, train_size=train_size)
    built = build(cfg)
    batch = built.task.split("train").index(slice(0, cfg.train.batch_size))
    width, depth = cfg.model_cfg.hidden, cfg.model_cfg.layers
    edge_dim = batch.edge_attr.shape[-1]
    embed = torch.nn.Linear(1, width)
    layers = torch.nn.ModuleList(PeerLayer(dim=width, edge_dim=edge_dim, m_dim=width) for _ in range(depth))

    def peer(b):
        h, x = embed(b.vel.norm(dim=-1, keepdim=True)), b.pos
        for layer in layers:
            h, x = layer(h, x, edges=b.edge_attr)
        return x
    runs = {"ours": _train_pass(built.model, batch), "peer": _train_pass(peer, batch)}
    times = _interleaved_medians(runs, rounds, steps)
    ours_s, peer_s = times["ours"], times["peer"]
    return {"backbone": "egnn", "peer": f"egnn-pytorch, {depth} EGNN layers of width {width}",
            "batch": cfg.train.batch_size, "ours_s": ours_s, "peer_s": peer_s, "speedup": peer_s / ours_s,
            "ours_params": built.model.num_parameters(),
            "peer_params": sum(p.numel() for p in [*embed.parameters(), *layers.parameters()])}


# -- compile: cold against warm cache ---------------------------------------------------------
_COMPILE_PROBE = r"""
import json, statistics, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from benchmark.devices import compile_model
from benchmark.perf import _built, _stepper
built, _ = _built("nbody", sys.argv[1], "strict", [], False)
forward = compile_model(built.model)
t = time.perf_counter()
step = _stepper(built, forward)
step()
first = time.perf_counter() - t
steps = [step() for _ in range(60)]
print(json.dumps({"first_step_s": first, "step_s": statistics.median(steps[10:])}))
"""


_MEMORY_PROBE = r"""
import json, resource, sys, torch
torch.set_num_threads(int(sys.argv[3]))
from benchmark.perf import _built, _stepper, default_task
from benchmark.train import evaluate_once
built, forward = _built(default_task(sys.argv[1]), sys.argv[1], sys.argv[2], [], False)
step = _stepper(built, forward)
for _ in range(3):
    step()
evaluate_once(built)
print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def worker_memory(backbone: str, method: str, threads: int = 1) -> float:
    """Peak memory (MB, max RSS) of a fresh process that does what one suite worker does for a run
    of ``method`` on ``backbone`` at its task's defaults: build it, train three steps, evaluate once."""
    import json
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, backbone, method, str(threads)],
                          capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["max_rss_mb"])


def bench_compile_cache(backbone: str = "egnn", threads: int = 1) -> dict[str, Any]:
    """The first compiled training step (compilation included) of two fresh processes sharing one
    new, empty compile cache, and their median compiled step afterwards: the first process pays
    the cold compilation, the second finds the graphs in the cache."""
    import json
    import subprocess
    import sys
    import tempfile
    from benchmark.devices import COMPILE_CACHE_ENV
    out = {"backbone": backbone}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, COMPILE_CACHE_ENV: cache, "TORCHINDUCTOR_CACHE_DIR": cache}
        for key in ("cold", "warm"):
            done = subprocess.run([sys.executable, "-c", _COMPILE_PROBE, backbone, str(threads)], env=env,
                                  capture_output=True, text=True, check=True)
            out[key] = json.loads(done.stdout.strip().splitlines()[-1])
    out["compile_saved_s"] = out["cold"]["first_step_s"] - out["warm"]["first_step_s"]
    out["step_ratio_warm_to_cold"] = out["warm"]["step_s"] / out["cold"]["step_s"]
    return out


# -- workers: throughput of one against two ---------------------------------------------------
_CEILING_PROBE = r"""
import json, sys, time, torch
torch.set_num_threads(1)
a, b = torch.randn(500, 128), torch.randn(128, 256)
for _ in range(200):
    a @ b
start = float(sys.argv[1])
while time.time() < start:
    time.sleep(0.001)
t = time.perf_counter()
for _ in range(int(sys.argv[2])):
    a @ b
print(json.dumps({"loop_s": time.perf_counter() - t}))
"""


def parallel_ceiling(processes: int = 2, products: int = 6000, rounds: int = 3) -> dict[str, Any]:
    """What the machine itself gives ``processes`` independent single-thread processes: a fixed
    loop of float32 products of the shapes a training step multiplies (500 node rows by 128 and
    256 features), timed in one process alone and in ``processes`` processes started together
    (each waits for a common start time after its warm-up), alternating, ``rounds`` times. The
    throughput ratio is ``processes`` times the lone loop's time over the slowest concurrent
    loop's, median over rounds: the most ``processes`` workers of any harness can reach here
    (shared caches, memory bandwidth and frequency scaling make it less than ``processes``)."""
    import json
    import subprocess
    import sys

    def together(n: int) -> list[float]:
        start = f"{time.time() + 1.5 + 0.3 * n:.3f}"
        procs = [subprocess.Popen([sys.executable, "-c", _CEILING_PROBE, start, str(products)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(n)]
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError("the parallel-ceiling probe failed")
        return [json.loads(o.strip().splitlines()[-1])["loop_s"] for o in outs]

    alone, concurrent, ratios = [], [], []
    for _ in range(rounds):
        one = together(1)[0]
        many = max(together(processes))
        alone.append(one)
        concurrent.append(many)
        ratios.append(processes * one / many)
    return {"processes": processes, "products": products, "rounds": rounds, "alone_s": alone,
            "concurrent_s": concurrent, "throughput_ratio": statistics.median(ratios)}


def bench_workers(suite: str = "quick", only: Sequence[str] = ("method=strict,unconstrained", "seed=0,1"),
                  workers: int = 2) -> dict[str, Any]:
    """Wall time of a part of a shipped suite (``only``) run by ``suite run`` with one worker and
    with ``workers`` workers (one torch thread each), each into a fresh results folder, after a
    first pass that prepares the data; the throughput ratio is one worker's time over theirs.
    Beside it, the machine's own ceiling for as many independent processes
    (:func:`parallel_ceiling`), measured right after, and the harness's share of that ceiling."""
    import subprocess
    import sys
    import tempfile
    base = [sys.executable, "-m", "benchmark", "suite", "run", suite, "--threads", "1", "--quiet", "--no-figures"]
    for item in only:
        base += ["--only", item]
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, n in (("prepare", 1), ("many", workers), ("one", 1)):
            t = time.perf_counter()
            subprocess.run(base + ["--results", os.path.join(tmp, key), "--workers", str(n)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[key] = time.perf_counter() - t
    ratio = times["one"] / times["many"]
    ceiling = parallel_ceiling(workers)
    return {"suite": suite, "only": list(only), "workers": workers, "one_worker_s": times["one"],
            "many_workers_s": times["many"], "throughput_ratio": ratio, "ceiling": ceiling,
            "share_of_ceiling": ratio / ceiling["throughput_ratio"]}


def from_json(data: dict) -> BackboneBench:
    """A :class:`BackboneBench` from its :func:`dataclasses.asdict` form."""
    return BackboneBench(**{**data, "methods": [MethodTiming(**m) for m in data["methods"]]})


def as_json(benches: Sequence[BackboneBench], info: dict) -> dict:
    return {"machine": info, "backbones": [asdict(b) for b in benches]}


#: Overhead targets against strict, per method (the design's budget for each kind of method).
OVERHEAD_TARGETS = {"lie-anneal": 2.5, "remul": 2.2, "ace-eq": 1.3, "ace-elastic": 1.3, "rpp": 1.2,
                    "unconstrained": 1.2}
EVAL_TARGET = 0.15            # one evaluation, as a fraction of one epoch's training
DATA_TARGET = 30.0            # vectorised generator against the literal loop
SEGNN_PEER_TARGET = 5.0       # segnn (compiled) against the per-edge e3nn reference
SUITE_TARGET_HOURS = 5.0      # the paper protocol's wall time on two workers
MEMORY_TARGET_MB = 2048.0     # peak memory of one worker
WORKERS_TARGET = 1.7          # two workers against one, on the quick suite


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**missed**")


def to_markdown(benches: Sequence[BackboneBench], info: dict, extra: dict | None = None) -> str:
    extra = extra or {}
    lines = ["# relaxbench bench", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch thread(s), "
             f"torch {info['torch']}" + (f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU")
             + (f"; load average {info['load_average_1min']} when the report was written"
                if info.get("load_average_1min") is not None else "") + ".", "",
             "Training step: forward, loss, the method's objective, backward, clipping, optimiser and the "
             "method's after_step, at the task's standard batch; median over interleaved rounds (IQR in "
             "brackets). Overhead: the median per-round ratio to strict's step on the same backbone. "
             "Evaluation: one evaluation of the train loop (every variant's metric on the whole validation "
             "split, its equivariance errors, truncation error) as a fraction of one epoch's training "
             "steps, and the evaluations' share of a run at the task's evaluation period. Each backbone "
             "is measured in a process of its own (its peak memory is that process's).", ""]
    targets = []
    for b in benches:
        lines += [f"## {b.backbone} on {b.task} (batch {b.batch_size}, {b.steps_per_epoch} steps per epoch, "
                  f"evaluation every {b.eval_every} epochs)", ""]
        achieved = "—" if b.strict_flops_per_second is None else \
            f"{b.strict_flops_per_second / 1e9:.2f} GFLOP/s ({b.strict_flops_per_second / b.matmul_flops_per_second:.0%} " \
            f"of this process's {b.matmul_flops_per_second / 1e9:.1f} GFLOP/s matmul)"
        worker = "" if b.worker_rss_mb is None else \
            f"; peak memory of one run's worker ({b.worker_method}: build, train, evaluate) {b.worker_rss_mb:.0f} MB"
        flush = {True: "; subnormal floats flushed to zero, as in training",
                 False: "; subnormal floats not flushed (this CPU cannot), as in training here",
                 None: ""}[b.subnormals_flushed]
        lines += [f"Strict: {b.params_strict:,} parameters; {achieved}{worker}{flush}.", "",
                  "| method | step (ms) | overhead vs strict | one evaluation (s) | evaluation / epoch | "
                  "evaluations' share of a run |",
                  "|:---|---:|---:|---:|---:|---:|"]
        for m in b.methods:
            ev = "—" if m.eval_s is None else f"{m.eval_s:.2f}"
            frac = "—" if m.eval_fraction_of_epoch is None else f"{m.eval_fraction_of_epoch:.0%}"
            share = "—" if m.eval_share_of_run is None else f"{m.eval_share_of_run:.0%}"
            lines.append(f"| {m.method} | {m.step_median_s * 1e3:.1f} [{m.step_q1_s * 1e3:.1f}, "
                         f"{m.step_q3_s * 1e3:.1f}] | {m.overhead_vs_strict:.2f}x | {ev} | {frac} | {share} |")
            if m.method in OVERHEAD_TARGETS:
                targets.append((f"{b.backbone}: {m.method} overhead <= {OVERHEAD_TARGETS[m.method]}x",
                                f"{m.overhead_vs_strict:.2f}x", m.overhead_vs_strict <= OVERHEAD_TARGETS[m.method]))
        fracs = [(m.eval_fraction_of_epoch, m.method) for m in b.methods if m.eval_fraction_of_epoch is not None]
        if fracs:
            worst, who = max(fracs)
            targets.append((f"{b.backbone}: one evaluation <= {EVAL_TARGET:.0%} of an epoch (worst method)",
                            f"{worst:.0%} ({who})", worst <= EVAL_TARGET))
        if b.worker_rss_mb is not None:
            targets.append((f"{b.backbone}: peak memory of a worker < {MEMORY_TARGET_MB / 1024:.0f} GB",
                            f"{b.worker_rss_mb:.0f} MB ({b.worker_method})", b.worker_rss_mb < MEMORY_TARGET_MB))
        lines.append("")
    data = extra.get("data")
    if data:
        lines += ["## Data: the N-body generator against the literal per-trajectory loop", "",
                  f"{data['trajectories']} trajectories of {data['steps']} steps in one call against the "
                  f"original's loop written literally (`benchmark/tasks/_nbody_literal.py`) on the first "
                  f"{data['compared']}: {data['vectorised_s_per_trajectory'] * 1e3:.1f} ms against "
                  f"{data['literal_s_per_trajectory'] * 1e3:.0f} ms per trajectory, **{data['speedup']:.0f}x**; "
                  f"arrays {'equal bit for bit' if data['bit_identical'] else '**not equal**'}.", ""]
        targets.append(("data generation >= 30x the per-trajectory loop, bit for bit",
                        f"{data['speedup']:.0f}x, {'identical' if data['bit_identical'] else 'different'}",
                        data["speedup"] >= DATA_TARGET and data["bit_identical"]))
    peers = [p for p in extra.get("peers") or [] if p]
    if peers:
        lines += ["## Peers: the same network written the usual way", "",
                  "Forward and backward of the strict network at batch 100, same weights, interleaved rounds.", "",
                  "| backbone | reference (eager) | reference (ms) | ours eager (ms) | speed-up | ours compiled (ms) | "
                  "speed-up | max output difference (rel) |",
                  "|:---|:---|---:|---:|---:|---:|---:|---:|"]
        for p in peers:
            comp = (f"{p['ours_compiled_s'] * 1e3:.1f} | {p['speedup_compiled']:.2f}x") if "speedup_compiled" in p \
                else "— | —"
            lines.append(f"| {p['backbone']} | {p['reference']} | {p['reference_s'] * 1e3:.1f} | "
                         f"{p['ours_s'] * 1e3:.1f} | {p['speedup']:.2f}x | {comp} | "
                         f"{p['max_rel_output_difference']:.1e} |")
            if p["backbone"] == "segnn":
                best = p.get("speedup_compiled", p["speedup"])
                targets.append(("segnn >= 5x the per-edge e3nn reference (ours compiled)",
                                f"{best:.2f}x" + ("" if "speedup_compiled" in p else " (eager only)"),
                                best >= SEGNN_PEER_TARGET if "speedup_compiled" in p else None))
        lines.append("")
    outside = extra.get("egnn_pytorch")
    if outside:
        lines += ["## egnn against egnn-pytorch", "",
                  f"Forward and backward at batch {outside['batch']}, matched width, depth and graph "
                  f"({outside['peer']}; {outside['peer_params']:,} parameters against our "
                  f"{outside['ours_params']:,}; not the same function): {outside['peer_s'] * 1e3:.1f} ms against "
                  f"our {outside['ours_s'] * 1e3:.1f} ms eager, **{outside['speedup']:.2f}x**.", ""]
    comp = extra.get("compile")
    if comp:
        lines += ["## Compile cache", "",
                  f"Two fresh processes share one new compile cache ({comp['backbone']}, strict): the first "
                  f"compiled step takes {comp['cold']['first_step_s']:.1f} s in the first (cold) and "
                  f"{comp['warm']['first_step_s']:.1f} s in the second (warm); the compiled step afterwards "
                  f"{comp['cold']['step_s'] * 1e3:.1f} ms and {comp['warm']['step_s'] * 1e3:.1f} ms. Runs use "
                  "the persistent cache of `benchmark.devices.compile_cache_dir()`.", ""]
        targets.append(("compile paid once per machine, step time unchanged",
                        f"{comp['cold']['first_step_s']:.0f} s cold, {comp['warm']['first_step_s']:.0f} s warm; "
                        f"step x{comp['step_ratio_warm_to_cold']:.2f}",
                        comp["warm"]["first_step_s"] < 0.5 * comp["cold"]["first_step_s"]
                        and comp["step_ratio_warm_to_cold"] < 1.2))
    work = extra.get("workers")
    if work:
        lines += ["## Workers", "",
                  f"`suite run {work['suite']}` on the part {' '.join('--only ' + o for o in work['only'])}, one "
                  f"torch thread per worker, into fresh results folders (data prepared beforehand): "
                  f"{work['one_worker_s']:.0f} s with one worker, {work['many_workers_s']:.0f} s with "
                  f"{work['workers']}: **{work['throughput_ratio']:.2f}x** the throughput.", ""]
        ceiling = work.get("ceiling")
        if ceiling:
            lines += [f"The machine's own ceiling, measured right after: {ceiling['processes']} independent "
                      f"single-thread processes running the same loop of matrix products (500 x 128 by 128 x 256, "
                      f"{ceiling['products']} products) get **{ceiling['throughput_ratio']:.2f}x** the throughput "
                      f"of one alone (median of {ceiling['rounds']} alternating rounds), so the workers reach "
                      f"{work['share_of_ceiling']:.0%} of what this machine allows; no scheduling can pass the "
                      "ceiling.", ""]
        measured = f"{work['throughput_ratio']:.2f}x"
        if ceiling:
            measured += f" (machine ceiling {ceiling['throughput_ratio']:.2f}x)"
        targets.append((f"{work['workers']} workers >= {WORKERS_TARGET}x the throughput of one ({work['suite']})",
                        measured, work["throughput_ratio"] >= WORKERS_TARGET))

    suites = extra.get("suites")
    if suites:
        lines += ["## Suites: estimated cost here", "",
                  "From the step times and per-evaluation costs the records under `results/` measured "
                  "(what `suite run --dry-run` prints); runs without a measurement of their kind are not counted.", "",
                  "| suite | runs (measured) | training (CPU-h) | evaluation and the rest (CPU-h) | wall (h) |",
                  "|:---|---:|---:|---:|---:|"]
        for r in suites:
            lines.append(f"| {r['suite']} | {r['runs']} ({r['measured_runs']}) | {r['train_hours']:.1f} | "
                         f"{r['eval_hours']:.1f} | {r['wall_hours']:.1f} on {r['workers']} workers |")
            if r["suite"] == "nbody-segnn-paper":
                targets.append((f"paper protocol (nbody-segnn-paper) <= {SUITE_TARGET_HOURS:.0f} h on 2 workers",
                                f"{r['wall_hours']:.1f} h", r["wall_hours"] <= SUITE_TARGET_HOURS))
        lines.append("")
    if targets:
        lines += ["## Targets", "", "| target | measured | |", "|:---|:---|:---|"]
        lines += [f"| {name} | {value} | {_met(ok)} |" for name, value, ok in targets]
        lines.append("")
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmark.perf BACKBONE --methods ...``: one backbone's bench in this process,
    printed as JSON on the last line (``relaxbench bench`` runs each backbone so)."""
    import argparse
    import json
    p = argparse.ArgumentParser(prog="python -m benchmark.perf")
    p.add_argument("backbone")
    p.add_argument("--methods", nargs="+", default=[])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--evals", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    import sys
    torch.set_num_threads(args.threads)
    bench = bench_backbone(args.backbone, args.methods, rounds=args.rounds, steps_per_round=args.steps,
                           eval_repeats=args.evals, compiled=args.compile,
                           progress=None if args.quiet else lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps(asdict(bench)))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
