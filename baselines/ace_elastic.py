"""``ace-elastic``: Adaptive Constrained Equivariance for partially symmetric data.

Manolache, Chamon and Niepert, "Learning (Approximately) Equivariant Networks via Constrained
Optimization", NeurIPS 2025, Algorithm 2. Each relaxed layer may keep a gamma as large as a slack
``u_i`` that is itself paid for (an elastic, or resilient, constraint)::

    minimise_{theta, gamma, u}  J0 + rho/2 ||u||^2   subject to   |gamma_i| <= u_i
    Lagrangian                  L = J0 + sum_i lambda_i (|gamma_i| - u_i) + rho/2 sum_i u_i^2

Algorithm 2, line by line, and where each line lives here:

* line 1 (inputs): ``gamma(0) = 1`` (``gamma_init``), ``lambda(0) = 0``; the slack starts at 0.
* line 2: ``J0`` is the task loss of the minibatch (computed by the harness).
* lines 3-4: theta and gamma descend ``L`` (:meth:`AceElastic.loss`) with the run's primal
  optimiser: ``gamma_i <- gamma_i - eta_p (dJ0/dgamma_i + lambda_i sign(gamma_i))``.
* line 5: ``u_i <- u_i - eta_p (rho u_i - lambda_i)``, the descent step of ``L`` in ``u``. The slack
  is a primal variable: it joins the run's primal optimiser as its own parameter group (no weight
  decay), so with SGD this line holds exactly and by default it is the run's Adam, as every other
  primal variable. ``slack=closed_form`` instead sets ``u = lambda / rho`` (the minimiser of ``L``
  in ``u``).
* line 6: ``lambda_i <- max(0, lambda_i + eta_d (|gamma_i(t)| - u_i(t)))``, with ``gamma(t)`` and
  ``u(t)`` the values *before* the primal step (:meth:`AceElastic.after_step`).

At a solution ``u_i = lambda_i / rho``: the layers with large ``lambda_i`` are those whose symmetry
the data break, so the per-layer ``lambda`` and ``u`` are recorded at every evaluation. The
headline evaluation is ``relaxed`` (the learned gammas kept); ``projected`` is reported too. The
dual learning rate 2e-4 is that of the authors' MoCap runs (primal Adam at 5e-4).

This is Algorithm 2 of the paper. The authors' released elastic ("resilient") MoCap
configuration is not: it runs with its constraint tolerance at 0, so what it enforces is
``gamma_i <= 0`` with ``lambda_i >= 0``, and its ``rho/2 ||u||^2`` term receives no gradient
(the slack never moves). Numbers from that configuration are those of an inequality-constrained
run toward ``gamma = 0``, not of an elastic constraint; no setting here reproduces it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from baselines._common import DUAL_OPTIMIZERS, DualVariables
from benchmark.config import param
from benchmark.method import Method, StepContext
from benchmark.registry import METHODS

__all__ = ["AceElasticConfig", "AceElastic"]


@dataclass(frozen=True)
class AceElasticConfig:
    dual_lr: float = param(2e-4, help="dual learning rate eta_d", gt=0)
    rho: float = param(1.0, help="price rho of the slack, rho/2 ||u||^2", gt=0)
    slack: str = param("gradient", help="slack update: primal gradient step (Algorithm 2) or "
                       "closed_form u = lambda/rho (the authors' code)", choices=("gradient", "closed_form"))
    dual_optimizer: str = param("sgd", help="dual step: plain projected gradient ascent or adam",
                                choices=DUAL_OPTIMIZERS)
    dual_eps: float = param(1e-8, help="eps of the dual Adam (dual_optimizer=adam only)", gt=0)
    gamma_init: float = param(1.0, help="initial value of every gamma")


@METHODS.register("ace-elastic", config=AceElasticConfig)
class AceElastic(Method):
    """ACE, Algorithm 2: learnable gammas under ``|gamma_i| <= u_i`` with a priced slack ``u``."""

    variants = ("relaxed", "projected")

    def attach(self, model, task, train_cfg) -> None:
        model.make_gammas_learnable(init=self.cfg.gamma_init)              # line 1
        n, gammas = model.num_gammas, model.gammas()
        dtype, device = gammas.dtype, gammas.device
        self.dual = DualVariables(n, self.cfg.dual_lr, optimizer=self.cfg.dual_optimizer,
                                  nonnegative=True, dtype=dtype, device=device, eps=self.cfg.dual_eps)
        # the slack (line 5): a primal parameter, unless it is taken in closed form
        self.u = nn.Parameter(torch.zeros(n, dtype=dtype, device=device), requires_grad=self.cfg.slack == "gradient")
        self._u_before = self.slack()

    def param_groups(self, model, train_cfg) -> list[dict]:
        groups = super().param_groups(model, train_cfg)
        if self.cfg.slack == "gradient":
            groups.append({"params": [self.u], "weight_decay": 0.0, "name": "slack"})
        return groups

    def slack(self) -> torch.Tensor:
        """The current slack ``u`` (detached)."""
        if self.cfg.slack == "closed_form":
            return self.dual.value / self.cfg.rho
        return self.u.detach().clone()

    def loss(self, step: StepContext) -> torch.Tensor:                    # lines 3-5 descend L
        lam = self.dual.value.to(step.gammas)
        u = self.u if self.cfg.slack == "gradient" else self.slack()
        self._u_before = self.slack()
        return (step.task_loss + (lam * (step.gammas.abs() - u)).sum()
                + 0.5 * self.cfg.rho * (u * u).sum())

    def after_step(self, step: StepContext) -> None:                      # line 6, at (gamma(t), u(t))
        self.dual.ascend(step.gammas_before.abs() - self._u_before)

    def state_dict(self) -> dict:
        return {"dual": self.dual.state_dict(), "u": self.u.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.dual.load_state_dict(state["dual"])
        with torch.no_grad():
            self.u.copy_(state["u"])      # in place: the primal optimiser holds this tensor

    def diagnostics(self) -> dict:
        return {"lambda": self.dual.value.tolist(), "u": self.slack().tolist()}
