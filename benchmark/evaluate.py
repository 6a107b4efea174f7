"""Evaluation: task metric per variant, equivariance error, Lie-derivative error, truncation error.

``equivariance_error`` measures; ``assert_equivariant`` fails. Both use the task's own group
action, so they serve every task and backbone.

Definitions (means over samples and over ``n_samples`` group elements drawn per sample):

* ``abs``: ``|f(g x) - g f(x)|``  (the norm over the whole output of a sample)
* ``rel``: ``|f(g x) - g f(x)| / |g f(x)|``
* Lie-derivative error (continuous groups): ``|d/dt g(t)^-1 f(g(t) x)|`` at ``t = 0`` for each
  Lie-algebra generator, by ``torch.func.jvp``, averaged over generators and samples.
* truncation error: ``|f_gamma(x) - f_0(x)| / |f_gamma(x)|``, the relaxed model against its projection.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

__all__ = ["variant_context", "predict", "equivariance_error", "lie_derivative_error", "truncation_error",
           "evaluate_variant", "assert_equivariant"]


def variant_context(model, variant: str) -> contextlib.AbstractContextManager:
    """The context that evaluates ``variant`` (``"projected"``: gamma := 0; ``"relaxed"``: as is)."""
    if variant == "projected":
        return model.projected()
    if variant == "relaxed":
        return contextlib.nullcontext()
    raise ValueError(f"unknown evaluation variant {variant!r}; allowed: relaxed, projected")


def _chunks(batch, size: int) -> Iterator[Any]:
    for start in range(0, len(batch), size):
        yield batch.index(slice(start, start + size))


@torch.no_grad()
def predict(model, batch, batch_size: int = 500) -> torch.Tensor:
    """The model's predictions on ``batch``, computed in chunks."""
    return torch.cat([model(chunk) for chunk in _chunks(batch, batch_size)], dim=0)


@torch.no_grad()
def equivariance_error(model, task, batch, n_samples: int = 3, generator: torch.Generator | None = None,
                       batch_size: int = 500, pred: torch.Tensor | None = None) -> dict[str, float]:
    """Mean ``abs`` and ``rel`` equivariance error of ``model`` on ``batch`` (see module doc)."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    fx = pred if pred is not None else predict(model, batch, batch_size)
    abs_sum = 0.0
    rel_sum = 0.0
    count = 0
    for _ in range(n_samples):
        g = task.group_sample(len(batch), generator)
        f_gx = predict(model, task.act_input(g, batch), batch_size)
        g_fx = task.act_output(g, fx)
        err = task.output_error(f_gx, g_fx)
        abs_sum += err.sum().item()
        rel_sum += (err / task.output_norm(g_fx).clamp_min(1e-30)).sum().item()
        count += len(batch)
    return {"abs": abs_sum / count, "rel": rel_sum / count}


def lie_derivative_error(model, task, batch, batch_size: int = 500) -> float | None:
    """Mean norm of the Lie derivative of the whole model over the group's generators, or ``None``
    for a finite group."""
    group = task.group
    if not getattr(group, "continuous", False) or not hasattr(group, "exp"):
        return None
    total = 0.0
    count = 0
    for chunk in _chunks(batch, batch_size):
        n = len(chunk)
        for k in range(group.lie_dim):
            def along(t, k=k, chunk=chunk, n=n):
                g = group.exp(k, t, n)
                return task.act_output(g.inverse(), model(task.act_input(g, chunk)))
            ref = chunk.pos if hasattr(chunk, "pos") else None
            t0 = torch.zeros((), dtype=torch.float32) if ref is None else ref.new_zeros(())
            with torch.no_grad():
                _, tangent = torch.func.jvp(along, (t0,), (torch.ones_like(t0),))
            total += task.output_norm(tangent).sum().item()
            count += n
    return total / max(count, 1)


@torch.no_grad()
def truncation_error(model, batch, batch_size: int = 500, relaxed: torch.Tensor | None = None,
                     projected: torch.Tensor | None = None) -> float | None:
    """Mean ``|f_gamma(x) - f_0(x)| / |f_gamma(x)|``; ``None`` for a model without branches."""
    if not model.relaxed_layers():
        return None
    f = relaxed if relaxed is not None else predict(model, batch, batch_size)
    if projected is None:
        with model.projected():
            projected = predict(model, batch, batch_size)
    num = (f - projected).flatten(1).norm(dim=1)
    den = f.flatten(1).norm(dim=1).clamp_min(1e-30)
    return (num / den).mean().item()


@torch.no_grad()
def evaluate_variant(model, task, split: str, variant: str, *, batch_size: int = 500,
                     equivariance_samples: int = 3, seed: int = 0, with_equivariance: bool = True
                     ) -> dict[str, Any]:
    """Metric (and equivariance error) of one evaluation variant on a whole split."""
    data = task.split(split)
    was_training = model.training
    model.eval()
    try:
        with variant_context(model, variant):
            pred = predict(model, data, batch_size)
            out: dict[str, Any] = {"metric": task.metric_per_sample(pred, data).mean().item(), "pred": pred}
            if with_equivariance:
                gen = torch.Generator().manual_seed(10_000 + seed)
                out["equivariance"] = equivariance_error(model, task, data, equivariance_samples, gen,
                                                         batch_size, pred=pred)
    finally:
        model.train(was_training)
    return out


def assert_equivariant(model, task, batch, *, n_samples: int = 3, atol: float = 1e-10,
                       generator: torch.Generator | None = None) -> dict[str, float]:
    """Raise ``AssertionError`` unless the maximum absolute equivariance error is below ``atol``."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.no_grad():
        fx = model(batch)
        for _ in range(n_samples):
            g = task.group_sample(len(batch), generator)
            diff = (model(task.act_input(g, batch)) - task.act_output(g, fx)).abs().max().item()
            worst = max(worst, diff)
    if not worst <= atol:
        raise AssertionError(f"equivariance error {worst:.3e} exceeds atol={atol:.1e}")
    return {"max_abs": worst}
