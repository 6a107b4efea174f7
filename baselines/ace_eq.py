"""``ace-eq``: Adaptive Constrained Equivariance for fully symmetric data.

Manolache, Chamon and Niepert, "Learning (Approximately) Equivariant Networks via Constrained
Optimization", NeurIPS 2025, Algorithm 1. The relaxation parameters are driven to zero by an
equality constraint per relaxed layer::

    minimise_{theta, gamma}  J0(theta, gamma)   subject to   gamma_i = 0   for every layer i
    Lagrangian               L = J0 + sum_i lambda_i * gamma_i

Algorithm 1, line by line, and where each line lives here:

* line 1 (inputs): ``gamma(0) = 1`` (:meth:`AceEquality.attach`, ``gamma_init``), ``lambda(0) = 0``.
* line 2: ``J0`` is the task loss of the minibatch (computed by the harness).
* lines 3-4: ``theta <- theta - eta_p grad_theta J0`` and
  ``gamma_i <- gamma_i - eta_p (dJ0/dgamma_i + lambda_i)``: one step of the run's primal
  optimiser on ``L`` (:meth:`AceEquality.loss`). With SGD this is the paper's update exactly; by
  default it is the run's Adam, as in the authors' experiments.
* line 5: ``lambda_i <- lambda_i + eta_d gamma_i(t)``, with ``gamma(t)`` the value *before* the
  primal step (:meth:`AceEquality.after_step`). The multiplier of an equality constraint is not
  projected. ``dual_optimizer=adam`` instead steps lambda with Adam fed the negated constraint value
  as its gradient, as the authors' released code does.

There is no equivariance penalty: the constraint acts on gamma alone. The headline evaluation is
``projected`` (gamma := 0, the exactly equivariant network); ``relaxed`` (gamma as trained) is
reported too. The dual learning rate 8e-4 is that of the authors' N-body runs (primal Adam at
9e-4, available as the ``ace`` preset of the ``nbody`` task).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from baselines._common import DUAL_OPTIMIZERS, DualVariables
from benchmark.config import param
from benchmark.method import Method, StepContext
from benchmark.registry import METHODS

__all__ = ["AceEqConfig", "AceEquality"]


@dataclass(frozen=True)
class AceEqConfig:
    dual_lr: float = param(8e-4, help="dual learning rate eta_d", gt=0)
    dual_optimizer: str = param("sgd", help="dual step: plain gradient ascent (the paper) or adam "
                                "(the authors' code)", choices=DUAL_OPTIMIZERS)
    dual_eps: float = param(1e-8, help="eps of the dual Adam (dual_optimizer=adam only)", gt=0)
    gamma_init: float = param(1.0, help="initial value of every gamma")


@METHODS.register("ace-eq", config=AceEqConfig)
class AceEquality(Method):
    """ACE, Algorithm 1: learnable gammas driven to ``gamma_i = 0`` by dual ascent."""

    variants = ("projected", "relaxed")

    def attach(self, model, task, train_cfg) -> None:
        model.make_gammas_learnable(init=self.cfg.gamma_init)              # line 1: gamma(0)
        gammas = model.gammas()
        self.dual = DualVariables(model.num_gammas, self.cfg.dual_lr,      # line 1: lambda(0) = 0
                                  optimizer=self.cfg.dual_optimizer, dtype=gammas.dtype, device=gammas.device,
                                  eps=self.cfg.dual_eps)

    def loss(self, step: StepContext) -> torch.Tensor:                    # lines 3-4 descend L
        return step.task_loss + (self.dual.value.to(step.gammas) * step.gammas).sum()

    def after_step(self, step: StepContext) -> None:                      # line 5, gamma(t)
        self.dual.ascend(step.gammas_before)

    def state_dict(self) -> dict:
        return {"dual": self.dual.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dual.load_state_dict(state["dual"])

    def diagnostics(self) -> dict:
        return {"lambda": self.dual.value.tolist()}
