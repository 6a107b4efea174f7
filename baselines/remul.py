"""``remul``: equivariance learned through a multitask loss (REMUL).

Elhag, Rusch, Di Giovanni and Bronstein, "Relaxed Equivariance via Multitask Learning" (2024,
arXiv:2410.17878), its training objective ``alpha L_obj + beta L_equi``. The network is left
unconstrained (every gamma at 1, or learnable) and its equivariance is encouraged by a second
loss::

    L = alpha * L_task + beta * L_equi
    L_equi = mean || f(g x) - g y ||       (anchor=label: the paper's training loss)
           or mean || f(g x) - g f(x) ||   (anchor=prediction: the equivariance defect itself)

with one group element ``g`` drawn uniformly from the task's group for every sample of the
minibatch, and ``||.||`` the mean squared (``equi_loss=l2``) or mean absolute (``l1``) difference
per coordinate. ``g y`` is the label of the transformed sample (the task's output action applied to
the sample's label). The group elements come from the method's own generator, seeded by the run's
seed and saved in checkpoints.

Weighting of the two losses:

* ``weighting=constant``: ``alpha`` and ``beta`` fixed (defaults 1 and 1; the paper sweeps beta from
  0.01 to 100).
* ``weighting=gradnorm``: GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018, Sec. 3.2)
  with weights ``w = (alpha, beta)``, initialised at (1, 1). After each minibatch, on the weights
  ``W`` of the last shared layer: ``G_i = ||grad_W (w_i L_i)||``, ``Lt_i = L_i(t) / L_i(0)``,
  ``r_i = Lt_i / mean_j Lt_j``, ``L_grad = sum_i |G_i - mean(G) * r_i^a|`` with the target
  ``mean(G) r_i^a`` held constant and ``a = 1.5``; one gradient step on ``w`` (learning rate 0.025),
  then ``w`` is clamped at ``1e-3`` and renormalised to sum 2 (the number of losses). The step's
  total loss uses the weights before their update.

The last shared layer is the backbone's ``shared_output_layer()`` when it defines one (a module with
a ``weight``, or a parameter); otherwise the last layer weight of the equivariant path (a parameter
of ``model.equivariant_parameters()`` registered as ``weight``, in registration order) on which both
losses have a nonzero gradient, chosen at the first step and kept (its index is checkpointed).

The evaluated model is the relaxed one (no projection). Diagnostics: the loss weights
``(alpha, beta)`` and the last minibatch's ``L_equi``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from benchmark.config import param
from benchmark.method import Method, StepContext
from benchmark.registry import METHODS

__all__ = ["RemulConfig", "Remul", "GradNorm", "label_of"]


@dataclass(frozen=True)
class RemulConfig:
    alpha: float = param(1.0, help="weight of the task loss (weighting=constant)", ge=0)
    beta: float = param(1.0, help="weight of the equivariance loss (weighting=constant)", ge=0)
    anchor: str = param("label", help="compare f(g x) with g y (label) or with g f(x) (prediction)",
                        choices=("label", "prediction"))
    equi_loss: str = param("l2", help="distance of the equivariance loss", choices=("l1", "l2"))
    weighting: str = param("constant", help="loss weights: constant alpha/beta or GradNorm",
                           choices=("constant", "gradnorm"))
    gradnorm_alpha: float = param(1.5, help="GradNorm asymmetry a", ge=0)
    gradnorm_lr: float = param(0.025, help="GradNorm learning rate of the loss weights", gt=0)
    gradnorm_min_weight: float = param(1e-3, help="GradNorm floor of each weight before renormalising", gt=0)
    gamma_init: float = param(1.0, help="value of every gamma (the initial value when learnable)")
    gamma_learnable: bool = param(False, help="train the gammas too (without any constraint)")


def label_of(task, batch, pred: torch.Tensor | None = None) -> torch.Tensor:
    """The label tensor of ``batch``: ``task.target(batch)`` when the task defines it, otherwise the
    batch's ``target`` field, or its ``target_seq`` when ``pred`` is a trajectory of that shape."""
    getter = getattr(task, "target", None)
    if callable(getter):
        return getter(batch)
    seq = getattr(batch, "target_seq", None)
    if pred is not None and seq is not None and pred.shape == seq.shape:
        return seq
    if hasattr(batch, "target"):
        return batch.target
    raise TypeError(f"remul anchor=label needs the label of a {type(batch).__name__} batch: give the task "
                    "a target(batch) method, or use method.anchor=prediction")


class GradNorm:
    """GradNorm weights of ``n`` losses (Chen et al., 2018): see the module docstring.

    Examples
    --------
    >>> gn = GradNorm(2)
    >>> gn.weights.tolist()
    [1.0, 1.0]
    """

    def __init__(self, n: int, *, alpha: float = 1.5, lr: float = 0.025, min_weight: float = 1e-3):
        self.n = n
        self.alpha = alpha
        self.lr = lr
        self.min_weight = min_weight
        self.weights = torch.ones(n, dtype=torch.float64)
        self.initial: torch.Tensor | None = None     # L_i(0)

    def step(self, losses: Sequence[torch.Tensor], shared: torch.Tensor) -> torch.Tensor:
        """One GradNorm update of the weights from this minibatch's ``losses`` (graphs kept) and the
        shared weight ``shared``; returns the weights used *before* the update."""
        used = self.weights.clone()
        values = torch.stack([loss.detach().to("cpu", torch.float64) for loss in losses])
        if self.initial is None:
            self.initial = values.clone()
        norms = []
        for loss in losses:
            (grad,) = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            norms.append(0.0 if grad is None else grad.detach().to(torch.float64).norm().item())
        norms_t = torch.tensor(norms, dtype=torch.float64)
        G = self.weights * norms_t                                     # G_i = ||grad_W w_i L_i||
        ratio = values / self.initial.clamp_min(1e-30)                 # L_i(t) / L_i(0)
        r = ratio / ratio.mean().clamp_min(1e-30)                      # relative inverse rate
        target = G.mean() * r ** self.alpha                            # held constant
        grad_w = torch.sign(G - target) * norms_t                      # d L_grad / d w_i
        w = (self.weights - self.lr * grad_w).clamp_min(self.min_weight)
        self.weights = w * (self.n / w.sum())
        return used

    def state_dict(self) -> dict:
        return {"weights": self.weights.clone(), "initial": None if self.initial is None else self.initial.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.weights = state["weights"].to("cpu", torch.float64).clone()
        self.initial = None if state["initial"] is None else state["initial"].to("cpu", torch.float64).clone()


@METHODS.register("remul", config=RemulConfig)
class Remul(Method):
    """REMUL: task loss plus a weighted equivariance loss on sampled group elements."""

    variants = ("relaxed",)

    def attach(self, model, task, train_cfg) -> None:
        model.set_gammas(self.cfg.gamma_init, learnable=self.cfg.gamma_learnable)
        self.generator = torch.Generator().manual_seed((7919 * self.seed + 17) % 2**64)  # any seed < 2**63
        self.gradnorm = (GradNorm(2, alpha=self.cfg.gradnorm_alpha, lr=self.cfg.gradnorm_lr,
                                  min_weight=self.cfg.gradnorm_min_weight)
                         if self.cfg.weighting == "gradnorm" else None)
        self.shared_index: int | None = None
        self.last_equi_loss: float | None = None

    # -- the two losses -----------------------------------------------------------------------
    def equivariance_loss(self, step: StepContext) -> torch.Tensor:
        """``L_equi`` on the step's minibatch, one group element per sample."""
        task, batch = step.task, step.batch
        g = task.group_sample(len(batch), self.generator)
        f_gx = step.forward(task.act_input(g, batch))
        anchor = step.pred if self.cfg.anchor == "prediction" else label_of(task, batch, step.pred)
        diff = f_gx - task.act_output(g, anchor)
        return diff.pow(2).mean() if self.cfg.equi_loss == "l2" else diff.abs().mean()

    def _shared_weight(self, model, losses) -> torch.Tensor:
        finder = getattr(model, "shared_output_layer", None)
        if callable(finder):
            layer = finder()
            return layer if isinstance(layer, torch.Tensor) else layer.weight
        equivariant = {id(p) for p in model.equivariant_parameters()}
        params = [(name, p) for name, p in model.named_parameters() if id(p) in equivariant and p.requires_grad]
        candidates = [p for name, p in params if name.rsplit(".", 1)[-1] == "weight"] or [p for _, p in params]
        if not candidates:
            raise RuntimeError("remul weighting=gradnorm found no trainable weight on the equivariant path; "
                               "give the backbone a shared_output_layer() method")
        if self.shared_index is None:
            for index in range(len(candidates) - 1, -1, -1):
                grads = [torch.autograd.grad(loss, candidates[index], retain_graph=True, allow_unused=True)[0]
                         for loss in losses]
                if all(gr is not None and gr.abs().sum().item() > 0 for gr in grads):
                    self.shared_index = index
                    break
            else:
                self.shared_index = len(candidates) - 1
        return candidates[self.shared_index]

    def loss(self, step: StepContext) -> torch.Tensor:
        task_loss = step.task_loss
        equi_loss = self.equivariance_loss(step)
        self.last_equi_loss = equi_loss.item()
        if self.gradnorm is None:
            return self.cfg.alpha * task_loss + self.cfg.beta * equi_loss
        losses = [task_loss, equi_loss]
        w = self.gradnorm.step(losses, self._shared_weight(step.model, losses))
        return float(w[0]) * task_loss + float(w[1]) * equi_loss

    # -- state ----------------------------------------------------------------------------------
    def weights(self) -> list[float]:
        if self.gradnorm is None:
            return [self.cfg.alpha, self.cfg.beta]
        return self.gradnorm.weights.tolist()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "shared_index": self.shared_index,
                "gradnorm": None if self.gradnorm is None else self.gradnorm.state_dict(),
                "last_equi_loss": self.last_equi_loss}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.shared_index = state["shared_index"]
        self.last_equi_loss = state.get("last_equi_loss")
        if self.gradnorm is not None:
            self.gradnorm.load_state_dict(state["gradnorm"])

    def diagnostics(self) -> dict:
        out: dict = {"loss_weights": self.weights()}
        if self.last_equi_loss is not None:
            out["equi_loss"] = self.last_equi_loss
        return out
