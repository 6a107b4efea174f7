"""``rpp``: residual pathway prior.

Finzi, Benton and Wilson, "Residual Pathway Priors for Soft Equivariance Constraints", NeurIPS 2021.
Every layer is the sum of an equivariant path and an unconstrained path (here ``f_eq + gamma f_neq``
with gamma fixed at 1), and the prior on the unconstrained path is much tighter than on the
equivariant one, so the network uses the unconstrained path only where the data demand it. The
paper's MAP objective puts Gaussian priors on both paths' weights, the negative log prior being
``||W_eq||^2 / (2 s_eq^2) + ||W_neq||^2 / (2 s_neq^2)`` with ``s_neq << s_eq``. Here the two priors are
L2 weight decays through the primal optimiser's parameter groups: the equivariant path keeps the
run's ``train.weight_decay`` (identical for every method), and the branch parameters alone get the
tighter ``branch_decay``. The evaluated model is the relaxed one.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.config import param
from benchmark.method import Method
from benchmark.registry import METHODS

__all__ = ["RppConfig", "ResidualPathwayPrior"]


@dataclass(frozen=True)
class RppConfig:
    branch_decay: float = param(1e-2, help="L2 weight decay of the branch (unconstrained path) parameters", ge=0)
    gamma_init: float = param(1.0, help="fixed value of every gamma")


@METHODS.register("rpp", config=RppConfig)
class ResidualPathwayPrior(Method):
    """Fixed gamma, and a much tighter L2 prior on the branch than on the equivariant path."""

    variants = ("relaxed",)

    def attach(self, model, task, train_cfg) -> None:
        model.set_gammas(self.cfg.gamma_init, learnable=False)

    def param_groups(self, model, train_cfg) -> list[dict]:
        groups = super().param_groups(model, train_cfg)
        for group in groups:
            if group["name"] == "branch":
                group["weight_decay"] = self.cfg.branch_decay
        return groups
