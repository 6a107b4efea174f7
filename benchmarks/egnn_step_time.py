"""Training-step time of the dense EGNN against the per-edge form of the same network.

Both run in this process on the same weights and data (batch 100 of the 5-body task, hidden 64,
4 layers, Adam step included); the script prints the median of many steps of each and their ratio.

    python benchmarks/egnn_step_time.py [--steps 200] [--threads 2] [--method strict]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmark.backbones._egnn_reference import per_edge_forward
from benchmark.experiment import resolve
from benchmark.train import build


def _time_steps(model, forward, batches, steps: int) -> list[float]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=1e-12)
    times = []
    for i in range(steps):
        batch = batches[i % len(batches)]
        t0 = time.perf_counter()
        loss = torch.mean((forward(batch) - batch.target) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", default="strict", help="strict (no branches) or unconstrained")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = resolve("nbody", "egnn", args.method, train_size=1000,
                  overrides=["task.num_train=1000", "task.num_valid=100", "task.num_test=100"])
    built = build(cfg)
    model = built.model
    batches = list(built.task.batches("train", 100, shuffle=True, generator=torch.Generator().manual_seed(0)))
    rounds = {"dense": [], "per-edge": []}
    # interleave the two in rounds so that machine noise hits both alike
    for _ in range(4):
        rounds["dense"] += _time_steps(model, model, batches, args.steps // 4)
        rounds["per-edge"] += _time_steps(model, lambda b: per_edge_forward(model, b), batches, args.steps // 4)
    med = {k: statistics.median(v[5:]) for k, v in rounds.items()}
    print(f"egnn ({args.method}, {model.num_parameters()} parameters), batch 100, {args.threads} threads, "
          f"median of {args.steps} steps")
    for name, value in med.items():
        print(f"  {name:>9}: {1000 * value:.2f} ms/step")
    print(f"  speed-up of dense over per-edge: {med['per-edge'] / med['dense']:.2f}x")


if __name__ == "__main__":
    main()
