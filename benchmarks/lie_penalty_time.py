"""Time of lie-anneal's Lie-derivative penalty (forward-mode pass and its backward), with and
without skipping the generators that act as zero on a branch's input and output.

The model is the suite's (``nbody`` with ``segnn`` by default, every relaxed layer at gamma 0.5),
its branch inputs recorded on one training batch of 100, as in a training step. The two variants
alternate in rounds in one process, so machine load hits both alike; the script checks that both
give the same penalty and the same gradients, then prints the medians and their ratio.

    python benchmarks/lie_penalty_time.py                    # segnn, 1 thread
    python benchmarks/lie_penalty_time.py --backbone egnn
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="segnn")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import baselines.lie_anneal as lie_anneal
    from benchmark.experiment import resolve
    from benchmark.method import EpochContext
    from benchmark.train import build

    cfg = resolve("nbody", args.backbone, "lie-anneal", overrides=["train.compile=off"], epochs=300,
                  train_size=1000, seed=0)
    built = build(cfg, progress=False, device="cpu")
    model, task, method = built.model, built.task, built.method
    model.set_gammas(0.5, learnable=False)
    method.before_epoch(EpochContext(model, task, 150, 300, cfg.train))
    model(next(iter(task.batches("train", 100, shuffle=False))))
    original = lie_anneal.lie_derivatives
    variants = {"every generator": functools.partial(original, skip_zero_generators=False),
                "zero generators skipped": original}

    def run(name: str) -> tuple[float, torch.Tensor, torch.Tensor]:
        lie_anneal.lie_derivatives = variants[name]
        try:
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            lie_sq, out_sq = method.penalty(model, task)
            (lie_sq.sqrt() + out_sq.sqrt()).backward()
            seconds = time.perf_counter() - t0
        finally:
            lie_anneal.lie_derivatives = original
        grads = torch.cat([p.grad.flatten() for p in model.branch_parameters() if p.grad is not None])
        return seconds, lie_sq.detach(), grads

    times: dict[str, list[float]] = {name: [] for name in variants}
    results = {}
    for _ in range(args.rounds):
        for name in variants:
            seconds, value, grads = run(name)
            times[name].append(seconds)
            results[name] = (value, grads)
    (a_val, a_grad), (b_val, b_grad) = results.values()
    same = torch.equal(a_val, b_val) and torch.equal(a_grad, b_grad)
    close = torch.allclose(a_val, b_val, rtol=1e-6) and torch.allclose(a_grad, b_grad, rtol=1e-5, atol=1e-12)
    print(f"nbody/{args.backbone}, batch 100, {len(model.relaxed_layers())} relaxed layers, {args.threads} thread(s)")
    print(f"penalty and gradients: {'bitwise equal' if same else 'equal to rounding' if close else 'DIFFERENT'}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, m in medians.items():
        print(f"  {name:24s} {1e3 * m:8.1f} ms (median of {args.rounds})")
    slow, fast = medians.values()
    print(f"  ratio {slow / fast:.2f}x")
    if not close:
        raise SystemExit("the two penalties differ")


if __name__ == "__main__":
    main()
