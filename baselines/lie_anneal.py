"""``lie-anneal``: equivariance constraint relaxation with a schedule and a Lie-derivative penalty.

Pertigkiozoglou, Chatzipantazis, Trivedi and Daniilidis, "Improving Equivariant Model Training via
Constraint Relaxation", NeurIPS 2024 (arXiv:2408.13242). Each relaxed layer is
``f_eq(x) + theta * f_neq(x)`` (``theta`` is this suite's gamma); ``theta`` is not learned but set
at the start of every epoch from a schedule, and the branches are kept close to equivariant and
small by a penalty; at test time the model is projected (``theta := 0``).

What each part implements:

* the relaxed layer: the suite's relaxed layer; ``model.branch=linear`` on a backbone gives the
  paper's exact layer (one bias-free linear map, initialised N(0, 1e-4^2)); the default is the
  backbone's common branch, so that every method is compared on the same network.
* the schedule of ``theta`` (:func:`schedule_value`, applied in :meth:`LieAnneal.before_epoch`),
  with ``s = epoch / (epochs - 1)`` the training progress: ``triangular`` (the authors' released
  default) ``theta = gamma_max (1 - |2 s - 1|)``, rising from 0 to ``gamma_max`` at mid-training
  and back to 0 at the last epoch; ``linear`` ``theta = gamma_max (1 - s)``; ``constant``
  ``theta = gamma_max``.
* the regulariser added to the task loss (:meth:`LieAnneal.loss`)::

      lambda_reg * ( sqrt( sum_i sum_A ||L_A f_neq_i(x_i)||^2 ) + sqrt( sum_i ||f_neq_i(x_i)||^2 ) )

  the first term the Lie-derivative penalty (the branch's distance from equivariance), the second
  the norm of the branch's activation (which bounds the error of the final projection). ``x_i``
  is layer i's branch input in this step's forward pass, detached, so only the branch is
  penalised; ``||z||^2`` is the squared norm summed over a sample's entries and averaged over the
  samples of the minibatch (``penalty_reduction=mean``), or summed over the whole minibatch, every
  node of every sample (``penalty_reduction=sum``, the authors' released code: at batch 100 a
  penalty ``sqrt(100) = 10`` times stronger).
* the Lie derivative along the generator ``A`` of the task's continuous group, acting on the
  branch's input and output representations::

      L_A f(x) = d/dt [ rho_out(exp(-t A)) f(rho_in(exp(t A)) x) ]_{t=0}
               = J_f(x) [A_in x] - A_out f(x)

  computed by :func:`torch.func.jvp` (:func:`lie_derivatives`); for a linear branch ``W`` it equals
  ``W A_in x - A_out W x``. For a finite group (no Lie algebra, e.g. p4m) the penalty uses the
  finite-difference form on the group's generators ``g`` instead,
  ``rho_out(g) f(x) - f(rho_in(g) x)`` (:func:`finite_differences`), which needs the group to
  offer ``generators(n, dtype)``: one batch of ``n`` copies per generator.

The paper and the authors' released code differ in one place that matters here: the code builds
its Lie derivative from the Jacobian with its rows regrouped in the wrong order, so what it
penalises acts as a penalty on the branch's weights rather than on ``J_f(x) [A_in x] - A_out
f(x)``. This implementation is the paper's definition (the JVP above) and is kept under every
preset; everything else of the authors' protocol is the ``cr`` preset of the ``nbody`` task
(triangular schedule, 1000 epochs, batch 100, Adam lr 5e-4, weight decay 1e-12,
``lambda_reg=0.01`` with ``penalty_reduction=sum``, a bias-free linear branch initialised
N(0, 1e-4^2) added after the gate on SEGNN, a random rotation of every training sample).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Sequence
from dataclasses import dataclass

import torch

from benchmark.config import param
from benchmark.method import EpochContext, Method, StepContext
from benchmark.registry import METHODS

__all__ = ["LieAnnealConfig", "LieAnneal", "schedule_value", "lie_derivatives", "acts_as_zero",
           "finite_differences", "SCHEDULES"]

SCHEDULES = ("triangular", "linear", "constant")


@dataclass(frozen=True)
class LieAnnealConfig:
    schedule: str = param("triangular", help="schedule of theta (gamma) over the epochs", choices=SCHEDULES)
    gamma_max: float = param(1.0, help="peak (triangular), initial (linear) or constant value of gamma", ge=0)
    lambda_reg: float = param(0.01, help="weight of the Lie-derivative and branch-norm penalty", ge=0)
    penalty_reduction: str = param("mean", help="squared norms averaged over the minibatch's samples (mean) or "
                                   "summed over all of its nodes (sum, the authors' code)", choices=("mean", "sum"))


def schedule_value(schedule: str, epoch: int, num_epochs: int, gamma_max: float = 1.0) -> float:
    """``theta`` at ``epoch`` (0-based) of ``num_epochs``.

    Examples
    --------
    >>> [schedule_value("triangular", e, 5) for e in range(5)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    >>> [schedule_value("linear", e, 5) for e in range(5)]
    [1.0, 0.75, 0.5, 0.25, 0.0]
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return float(gamma_max)
    s = epoch / (num_epochs - 1) if num_epochs > 1 else 1.0
    s = min(max(s, 0.0), 1.0)
    if schedule == "linear":
        return float(gamma_max * (1.0 - s))
    return float(gamma_max * (1.0 - abs(2.0 * s - 1.0)))


def _as_rep_vectors(y: torch.Tensor, dim: int) -> torch.Tensor:
    """``y`` viewed with a last axis of the representation's size (a branch may emit it flat)."""
    return y if y.shape[-1] == dim else y.reshape(y.shape[0], -1, dim)


_ZERO_ACTION: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def acts_as_zero(rep, k: int, like: torch.Tensor) -> bool:
    """Whether Lie-algebra generator ``k`` acts as zero on ``rep`` (e.g. a translation on features
    without positions, a rotation on scalars). The action is affine in ``z``, so it is zero iff it
    maps the zero vector and every basis vector to zero; checked exactly, with no random probe,
    once per representation, generator, dtype and device."""
    key = (k, like.dtype, like.device)
    try:
        known = _ZERO_ACTION.setdefault(rep, {})
    except TypeError:                     # a representation that takes no weak reference
        known = {}
    if key not in known:
        with torch.no_grad():
            probe = torch.cat([torch.zeros(1, rep.dim, dtype=like.dtype, device=like.device),
                               torch.eye(rep.dim, dtype=like.dtype, device=like.device)])
            known[key] = not bool(rep.lie(k, probe).any())
    return known[key]


def _couples_samples(layer) -> bool:
    """Whether the layer's branch normalises with batch statistics (a sample's output then depends
    on the others, and the tangents cannot be batched over one primal pass)."""
    branch = getattr(layer, "branch", None)
    return branch is not None and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
                                      for m in branch.modules())


def lie_derivatives(layer, x: torch.Tensor, generators: int | Sequence[int], *,
                    skip_zero_generators: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, f)``: the Lie derivatives ``L_A f_neq(x)`` of ``layer``'s branch for the generators
    ``A_0 .. A_{K-1}``, stacked on a new first axis ``(K, *f.shape)``, and ``f = f_neq(x)``.

    One forward-mode pass (:func:`torch.func.jvp`) with tangent ``A_in x`` per generator, batched
    over a single primal pass by :func:`torch.func.vmap` (a branch with batch statistics instead
    runs one concatenated copy of the batch per generator); differentiable in the branch's
    parameters. A generator that acts as zero
    on both the input and the output representation has ``L_A f = J_f(x)[0] - 0 = 0`` exactly for
    every branch, so its rows are zeros and it gets no copy of the batch (on hidden e3nn features,
    which do not translate, this halves the pass for E(3)). ``skip_zero_generators=False`` runs
    every generator (the same result; ``benchmarks/lie_penalty_time.py`` times the two).
    """
    basis = tuple(range(generators)) if isinstance(generators, int) else tuple(generators)
    K = len(basis)
    n = x.shape[0]
    active = [k for k in basis if not skip_zero_generators
              or not (acts_as_zero(layer.rep_in, k, x) and acts_as_zero(layer.rep_out, k, x))]
    if not active:
        f = _as_rep_vectors(layer.branch_output(x), layer.rep_out.dim)
        return f.new_zeros((K,) + f.shape), f
    A = len(active)
    if _couples_samples(layer):
        # batch statistics tie the samples together: one concatenated batch of A copies
        tangents = torch.cat([layer.rep_in.lie(k, x) for k in active], dim=0)
        y, jv = torch.func.jvp(layer.branch_output, (torch.cat([x] * A, dim=0),), (tangents,))
        f = _as_rep_vectors(y, layer.rep_out.dim)[:n]
    else:
        # the primal once, the A tangents batched over it (vmap): A + 1 branch passes, not 2 A
        tangents = torch.stack([layer.rep_in.lie(k, x) for k in active], dim=0)
        y, jv = torch.func.vmap(lambda t: torch.func.jvp(layer.branch_output, (x,), (t,)),
                                out_dims=(None, 0))(tangents)
        f = _as_rep_vectors(y, layer.rep_out.dim)
        jv = jv.reshape((A * n,) + jv.shape[2:])
    jv = _as_rep_vectors(jv, layer.rep_out.dim)
    out_lie = torch.cat([layer.rep_out.lie(k, f) for k in active], dim=0)
    defect = (jv - out_lie).reshape((A,) + f.shape)
    if A == K:
        return defect, f
    rows = iter(defect.unbind(0))
    zero = f.new_zeros(f.shape)
    return torch.stack([next(rows) if k in active else zero for k in basis]), f


def finite_differences(layer, x: torch.Tensor, generators) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D, f)``: ``rho_out(g) f_neq(x) - f_neq(rho_in(g) x)`` for each generator batch ``g`` of a
    finite group, stacked on a new first axis, and ``f = f_neq(x)``."""
    f = _as_rep_vectors(layer.branch_output(x), layer.rep_out.dim)
    diffs = [layer.rep_out.act(g, f) - _as_rep_vectors(layer.branch_output(layer.rep_in.act(g, x)),
                                                        layer.rep_out.dim)
             for g in generators]
    return torch.stack(diffs, dim=0), f


def _sq_norm(z: torch.Tensor, samples: int) -> torch.Tensor:
    """Squared norm summed over a sample's entries, averaged over ``samples`` samples."""
    return z.pow(2).sum() / max(samples, 1)


@METHODS.register("lie-anneal", config=LieAnnealConfig)
class LieAnneal(Method):
    """Scheduled theta (not learned), a Lie-derivative and branch-norm penalty, projected at test."""

    variants = ("projected",)

    def attach(self, model, task, train_cfg) -> None:
        self.theta = schedule_value(self.cfg.schedule, 0, train_cfg.epochs, self.cfg.gamma_max)
        model.set_gammas(self.theta, learnable=False)
        self._recording: contextlib.ExitStack | None = None
        self.last_penalty: dict[str, float] = {}

    # -- schedule -------------------------------------------------------------------------------
    def before_epoch(self, ctx: EpochContext) -> None:
        self.theta = schedule_value(self.cfg.schedule, ctx.epoch, ctx.num_epochs, self.cfg.gamma_max)
        ctx.model.set_gammas(self.theta, learnable=False)
        # keep each branch's input of the training forward passes of this epoch
        self._stop_recording()
        self._recording = contextlib.ExitStack()
        self._recording.enter_context(ctx.model.recording_branch_inputs())

    def after_epoch(self, ctx: EpochContext) -> None:
        self._stop_recording()

    def _stop_recording(self) -> None:
        if self._recording is not None:
            self._recording.close()
            self._recording = None

    # -- penalty --------------------------------------------------------------------------------
    def penalty(self, model, task) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_i sum_A ||L_A f_neq_i(x_i)||^2, sum_i ||f_neq_i(x_i)||^2)`` on the branch inputs of
        the last forward pass."""
        group = task.group
        continuous = bool(getattr(group, "continuous", False)) and getattr(group, "lie_dim", 0) > 0
        lie_sq: torch.Tensor | float = 0.0
        out_sq: torch.Tensor | float = 0.0
        for layer in model.relaxed_layers():
            x = layer.last_input
            if x is None:
                raise RuntimeError(f"lie-anneal: relaxed layer {layer.layer_name} recorded no branch input; "
                                   "the backbone must pass its branch input through its RelaxedLayer")
            x = x.detach()
            n = x.shape[0]
            per = n if self.cfg.penalty_reduction == "mean" else 1      # what the squared norms are divided by
            if continuous:
                defect, f = lie_derivatives(layer, x, group.lie_basis)
            else:
                make = getattr(group, "generators", None)
                if not callable(make):
                    raise TypeError(f"lie-anneal needs a Lie algebra or the generators of group {group!r}")
                defect, f = finite_differences(layer, x, make(n, dtype=x.dtype))
            lie_sq = lie_sq + _sq_norm(defect, per)
            out_sq = out_sq + _sq_norm(f, per)
        return torch.as_tensor(lie_sq), torch.as_tensor(out_sq)

    def loss(self, step: StepContext) -> torch.Tensor:
        if self.cfg.lambda_reg == 0 or not step.model.relaxed_layers():
            return step.task_loss
        lie_sq, out_sq = self.penalty(step.model, step.task)
        lie_term = lie_sq.clamp_min(1e-30).sqrt()
        out_term = out_sq.clamp_min(1e-30).sqrt()
        self.last_penalty = {"lie_term": lie_term.item(), "branch_norm_term": out_term.item()}
        return step.task_loss + self.cfg.lambda_reg * (lie_term + out_term).to(step.task_loss.dtype)

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"theta": self.theta, "last_penalty": dict(self.last_penalty)}

    def load_state_dict(self, state: dict) -> None:
        self.theta = float(state["theta"])
        self.last_penalty = dict(state.get("last_penalty", {}))

    def diagnostics(self) -> dict:
        return {"theta": self.theta, **self.last_penalty}
