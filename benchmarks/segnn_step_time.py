"""Training-step time of the dense ``segnn`` backbone against the per-edge e3nn reference.

Both networks hold the same parameters (the reference of ``tests/test_segnn.py`` reads them from a
copy of the fast model) and train on the same random N-body batch: forward, MSE loss, backward and
a fused Adam step (lr 5e-4, weight decay 1e-12), as in the train loop. Steps of the two alternate
in rounds in one process, so machine load hits both alike; the medians and their ratio are printed,
for wall time and for the CPU time of the (single) compute thread, which other jobs on a shared
machine disturb less.

    python benchmarks/segnn_step_time.py                      # batch 100, hidden 64, 4 layers
    python benchmarks/segnn_step_time.py --branch none        # the strict network
    python benchmarks/segnn_step_time.py --compile            # add torch.compile of the fast model
    python benchmarks/segnn_step_time.py --compile-reference  # add torch.compile of the reference
    python benchmarks/segnn_step_time.py --profile            # where the fast step spends its time
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmark.backbones.segnn import SEGNN, SEGNNConfig  # noqa: E402
from benchmark.tasks._base import GeometricBatch  # noqa: E402


def _reference_class():
    spec = importlib.util.spec_from_file_location("segnn_reference_tests", ROOT / "tests" / "test_segnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ReferenceSEGNN


class _Shapes:
    """The little of a task the backbone's constructor reads: a sample batch."""

    name = "nbody"

    def __init__(self, batch: GeometricBatch):
        self._batch = batch

    def split(self, split: str) -> GeometricBatch:
        return self._batch


def random_batch(batch_size: int, particles: int, seed: int = 0) -> GeometricBatch:
    gen = torch.Generator().manual_seed(seed)
    charges = torch.randint(0, 2, (batch_size, particles, 1), generator=gen).float() * 2 - 1
    pos = torch.randn(batch_size, particles, 3, generator=gen)
    return GeometricBatch(pos=pos, vel=torch.randn(batch_size, particles, 3, generator=gen) * 0.5,
                          edge_attr=charges[:, :, None, :] * charges[:, None, :, :],
                          target=pos + 0.1 * torch.randn(batch_size, particles, 3, generator=gen))


def make_step(forward, params, batch):
    opt = torch.optim.Adam(params, lr=5e-4, weight_decay=1e-12, fused=True)      # as the train loop

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((forward(batch) - batch.target) ** 2)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def timed(step) -> tuple[float, float]:
    """Wall time and CPU time of this thread (the latter is what other jobs on a shared machine
    disturb least; with one intra-op thread it is the step's compute)."""
    c0, t0 = time.thread_time(), time.perf_counter()
    step()
    return time.perf_counter() - t0, time.thread_time() - c0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--particles", type=int, default=5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--branch", default="mlp", choices=("mlp", "linear", "none"))
    p.add_argument("--rounds", type=int, default=10, help="rounds of alternating measurements")
    p.add_argument("--steps", type=int, default=10, help="steps of each network per round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the fast model")
    p.add_argument("--compile-reference", action="store_true", help="also time torch.compile of the reference")
    p.add_argument("--no-reference", action="store_true", help="time the fast model only")
    p.add_argument("--profile", action="store_true", help="print the fast step's profile")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    batch = random_batch(args.batch, args.particles)
    cfg = SEGNNConfig(hidden=args.hidden, layers=args.layers, branch=args.branch)
    fast = SEGNN(cfg, _Shapes(batch))
    print(f"segnn: hidden {fast.hidden_irreps}, {args.layers} layers, branch={args.branch}, "
          f"{fast.num_parameters()} parameters, batch {args.batch} x {args.particles} particles, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")

    steps = {"fast": make_step(fast, fast.parameters(), batch)}
    if not args.no_reference:
        twin = copy.deepcopy(fast)
        steps["reference"] = make_step(_reference_class()(twin), twin.parameters(), batch)
    if args.compile:        # as the train loop does with train.compile=on: the training forward compiled
        twin_c = copy.deepcopy(fast)
        t0 = time.perf_counter()
        steps["fast+compile"] = make_step(torch.compile(twin_c), twin_c.parameters(), batch)
        steps["fast+compile"]()
        print(f"torch.compile: first step (compilation) {time.perf_counter() - t0:.1f} s")
    if args.compile_reference:
        twin_r = copy.deepcopy(fast)
        t0 = time.perf_counter()
        step = make_step(torch.compile(_reference_class()(twin_r)), twin_r.parameters(), batch)
        try:
            step()
            steps["reference+compile"] = step
            print(f"torch.compile of the reference: first step (compilation) {time.perf_counter() - t0:.1f} s")
        except Exception as exc:  # noqa: BLE001 - report and go on without it
            print(f"torch.compile of the reference fails: {type(exc).__name__}: {str(exc).strip()[:200]}")

    for step in steps.values():
        for _ in range(args.warmup):
            step()
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            for _ in range(args.steps):
                w, c = timed(step)
                wall[name].append(w * 1e3)
                cpu[name].append(c * 1e3)
    med = {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in steps}
    for name in steps:
        q = statistics.quantiles(wall[name], n=4)
        print(f"{name:>13}: median {med[name][0]:8.2f} ms/step wall (quartiles {q[0]:.2f} .. {q[2]:.2f}), "
              f"{med[name][1]:8.2f} ms/step CPU, {len(wall[name])} steps")
    if "reference" in med:
        for name in med:
            if name != "reference":
                print(f"speed-up of {name} over the per-edge e3nn reference: "
                      f"{med['reference'][0] / med[name][0]:.1f}x wall, {med['reference'][1] / med[name][1]:.1f}x CPU")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(20):
                steps["fast"]()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
