"""``unconstrained``: the relaxed network with every gamma fixed at 1 (or learnable, unconstrained).

Every layer is ``f_eq + f_neq``: the non-equivariant reference of the same size as the relaxed
methods. Reported as ``relaxed``; the ``projected`` variant (branches dropped) is reported too, to show
what removing the branches of an unconstrained model costs.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.config import param
from benchmark.method import Method
from benchmark.registry import METHODS


@dataclass(frozen=True)
class UnconstrainedConfig:
    gamma_init: float = param(1.0, help="value of every gamma (the initial value when learnable)")
    gamma_learnable: bool = param(False, help="train the gammas too (without any constraint)")


@METHODS.register("unconstrained", config=UnconstrainedConfig)
class Unconstrained(Method):
    variants = ("relaxed", "projected")

    def attach(self, model, task, train_cfg) -> None:
        model.set_gammas(self.cfg.gamma_init, learnable=self.cfg.gamma_learnable)
