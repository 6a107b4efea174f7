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
           "evaluate_variant", "assert_equivariant", "equivariance_cases", "EQUIVARIANCE_RTOL"]


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
                       batch_size: int = 500, pred: torch.Tensor | None = None, group=None) -> dict[str, float]:
    """Mean ``abs`` and ``rel`` equivariance error of ``model`` on ``batch`` (see module doc), under
    ``group`` (default: the task's group; any group whose elements the task's action takes, such
    as one of ``task.extra_groups``)."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    fx = pred if pred is not None else predict(model, batch, batch_size)
    abs_sum = 0.0
    rel_sum = 0.0
    count = 0
    for _ in range(n_samples):
        g = task.group_sample(len(batch), generator) if group is None \
            else group.sample(len(batch), generator, dtype=task.dtype)
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
                     equivariance_samples: int = 3, seed: int = 0, with_equivariance: bool = True,
                     equivariance_subset: int | None = None) -> dict[str, Any]:
    """Metric (and equivariance error) of one evaluation variant on a whole split.

    The metric is always taken on the whole split. The equivariance error is measured on the
    split's first ``equivariance_subset`` samples (``None``: all of them), with group elements from
    the same seeded stream: on a split no larger than the subset the two are the same numbers, on a
    larger one the subset's is an estimate of the same mean. ``out["equivariance_on"]`` says how
    many samples it used.
    """
    data = task.split(split)
    was_training = model.training
    model.eval()
    try:
        with variant_context(model, variant):
            pred = predict(model, data, batch_size)
            out: dict[str, Any] = {"metric": task.metric_per_sample(pred, data).mean().item(), "pred": pred}
            if with_equivariance:
                n = len(data) if equivariance_subset is None else min(int(equivariance_subset), len(data))
                part, part_pred = (data, pred) if n == len(data) else (data.index(slice(0, n)), pred[:n])
                gen = torch.Generator().manual_seed(10_000 + seed)
                out["equivariance"] = equivariance_error(model, task, part, equivariance_samples, gen,
                                                         batch_size, pred=part_pred)
                extra = task.extra_groups
                if extra:   # the subgroups the task declares, each measured on its own
                    out["equivariance"]["groups"] = {
                        name: equivariance_error(model, task, part, equivariance_samples,
                                                 torch.Generator().manual_seed(20_000 + seed), batch_size,
                                                 pred=part_pred, group=group)
                        for name, group in sorted(extra.items())}
                out["equivariance_on"] = n
    finally:
        model.train(was_training)
    return out


#: Relative tolerance of an exact-equivariance check per floating-point type: the rounding of
#: a few hundred operations, not a fit.
EQUIVARIANCE_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def _floating_dtype(batch) -> torch.dtype:
    for value in (vars(batch).values() if hasattr(batch, "__dict__") else [batch]):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    return torch.get_default_dtype()


@torch.no_grad()
def equivariance_cases(model, task, batch, *, n_samples: int = 3, generator: torch.Generator | None = None,
                       permutation: bool = True) -> dict[str, float]:
    """Worst relative error ``max|f(g x) - g f(x)| / max|g f(x)|`` for each case of the task's
    group (:meth:`Group.cases`: rotation, reflection, translation for E(3)) and, for a task with
    nodes, for a random relabelling of the nodes (``permutation``)."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    dtype = _floating_dtype(batch)
    fx = model(batch)
    out: dict[str, float] = {}
    for _ in range(n_samples):
        for case, g in task.group.cases(len(batch), generator, dtype).items():
            g = g.to(fx.device) if hasattr(g, "to") else g
            want = task.act_output(g, fx)
            err = (model(task.act_input(g, batch)) - want).abs().max().item() / max(want.abs().max().item(), 1e-30)
            out[case] = max(out.get(case, 0.0), err)
        if permutation:
            # the input's nodes (a trajectory output (B, P, N, 3) holds them on its third axis)
            pos = getattr(batch, "pos", None)
            n_nodes = pos.shape[1] if isinstance(pos, torch.Tensor) and pos.dim() == 3 \
                else (fx.shape[1] if fx.dim() > 1 else 0)
            perm = torch.randperm(n_nodes, generator=generator).to(fx.device) if n_nodes else None
            permuted = task.permute_nodes(perm, batch) if perm is not None else None
            if permuted is not None:
                want = task.permute_output(perm, fx)
                err = (model(permuted) - want).abs().max().item() / max(want.abs().max().item(), 1e-30)
                out["permutation"] = max(out.get("permutation", 0.0), err)
    return out


def assert_equivariant(model, task, batch, *, n_samples: int = 3, rtol: float | None = None,
                       atol: float | None = None, generator: torch.Generator | None = None,
                       permutation: bool = True) -> dict[str, float]:
    """Raise ``AssertionError`` unless every case of :func:`equivariance_cases` is below ``rtol``
    (default: :data:`EQUIVARIANCE_RTOL` of the batch's dtype); the message lists every case.
    ``atol`` (an absolute bound on ``max|f(g x) - g f(x)|`` over the group's samples) is kept for
    callers that pin one. Returns the errors per case.

    >>> import torch
    >>> from benchmark.groups import EuclideanGroup
    >>> class Centroid(torch.nn.Module):          # the mean of the points: E(3)-equivariant
    ...     def forward(self, b): return b.pos.mean(1, keepdim=True).expand_as(b.pos)
    >>> from benchmark.tasks._base import GeometricBatch, Task
    >>> class Points(Task):
    ...     group = EuclideanGroup()
    ...     def act_input(self, g, b): return b.replace(pos=b.pos @ g.rotation.transpose(1, 2) + g.translation[:, None])
    ...     def act_output(self, g, y): return y @ g.rotation.transpose(1, 2) + g.translation[:, None]
    >>> x = torch.randn(4, 5, 3, dtype=torch.float64)
    >>> batch = GeometricBatch(pos=x, vel=torch.zeros_like(x), edge_attr=None, target=x)
    >>> errors = assert_equivariant(Centroid(), Points(None, train_size=1), batch)
    >>> sorted(errors), max(errors.values()) < 1e-12
    (['permutation', 'reflection', 'rotation', 'translation'], True)
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    state = generator.get_state()
    errors = equivariance_cases(model, task, batch, n_samples=n_samples, generator=generator,
                                permutation=permutation)
    tol = rtol if rtol is not None else EQUIVARIANCE_RTOL.get(_floating_dtype(batch), 1e-5)
    bad = {case: err for case, err in errors.items() if not err <= tol}
    if atol is not None:
        gen = torch.Generator().set_state(state)
        with torch.no_grad():
            fx = model(batch)
            worst = 0.0
            for _ in range(n_samples):
                g = task.group_sample(len(batch), gen)
                worst = max(worst, (model(task.act_input(g, batch)) - task.act_output(g, fx)).abs().max().item())
        errors["max_abs"] = worst
        if not worst <= atol:
            bad["max_abs"] = worst
    if bad:
        listing = ", ".join(f"{case} {err:.2e}" for case, err in errors.items())
        raise AssertionError(f"not equivariant: {', '.join(sorted(bad))} above tolerance "
                             f"(rtol {tol:.0e}{f', atol {atol:.0e}' if atol is not None else ''}); "
                             f"errors: {listing}")
    return errors
