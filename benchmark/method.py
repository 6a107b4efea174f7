"""The method hook protocol: a relaxation method is a policy for gamma plus optional loss terms.

The train loop calls, in order, for every run::

    method.seed = seed                           # the run's seed (for the method's own generators)
    method.attach(model, task, train_cfg)        # once, before the optimiser is built
    method.param_groups(model, train_cfg)        # the primal optimiser's parameter groups
    for epoch in range(epochs):
        method.before_epoch(epoch_ctx)
        for each minibatch:
            total = method.loss(step)            # step.task_loss, step.gammas, ... (StepContext)
            total.backward(); optimiser.step()
            method.after_step(step)              # dual ascent and the like
        method.after_epoch(epoch_ctx)
    evaluation of each of method.variants        # "relaxed" and/or "projected"

and saves :meth:`Method.state_dict` in every checkpoint. A method reaches the network only through
the homotopy-model API (gammas, relaxed layers, branch parameters, ``projected()``) and the data only
through the task's group API, so it runs on every backbone and task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from benchmark.config import TrainConfig

__all__ = ["Method", "StepContext", "EpochContext", "VARIANTS"]

VARIANTS = ("relaxed", "projected")


@dataclass
class StepContext:
    """What a method sees of one training step.

    ``gammas`` is the differentiable vector of the model's gammas (in layer order) used in this
    step's forward pass; ``gammas_before`` is its detached value before the primal update.
    ``forward(batch)`` runs the model (for methods that evaluate transformed inputs).
    """

    model: Any
    task: Any
    batch: Any
    pred: torch.Tensor
    task_loss: torch.Tensor
    gammas: torch.Tensor
    gammas_before: torch.Tensor
    epoch: int
    step: int
    num_epochs: int
    train_cfg: TrainConfig
    forward: Callable[[Any], torch.Tensor]
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class EpochContext:
    """What a method sees at an epoch boundary."""

    model: Any
    task: Any
    epoch: int
    num_epochs: int
    train_cfg: TrainConfig


class Method:
    """Base class of every method. Subclasses register with ``@METHODS.register(name, config=...)``.

    Class attributes
    ----------------
    variants : tuple of str
        The evaluation variants this method reports; the first is its headline.
    uses_branch : bool
        ``False`` builds the backbone without unconstrained branches (the strict model).
    compile_safe : bool
        ``False`` when the method's loss cannot run under ``torch.compile`` (it then trains eagerly).
    """

    registry_name: ClassVar[str] = "?"
    variants: ClassVar[tuple[str, ...]] = ("relaxed",)
    uses_branch: ClassVar[bool] = True
    compile_safe: ClassVar[bool] = True

    @classmethod
    def check_registration(cls, name: str) -> None:
        """Called by the registry: the declared variants are known ones, without repeats."""
        variants = cls.variants
        if not isinstance(variants, tuple) or not variants or len(set(variants)) != len(variants) \
                or not set(variants) <= set(VARIANTS):
            raise TypeError(f"method {name!r}: variants={variants!r}; expected a non-empty tuple of distinct "
                            f"names among {', '.join(VARIANTS)} (the first is the headline)")

    def __init__(self, cfg: Any = None):
        self.cfg = cfg
        #: The run's seed, set by the harness before :meth:`attach`; a method that draws random
        #: numbers seeds its own ``torch.Generator`` from it (and saves the generator's state).
        self.seed: int = 0

    @property
    def name(self) -> str:
        return type(self).registry_name

    # -- hooks ----------------------------------------------------------------------------------
    def attach(self, model, task, train_cfg: TrainConfig) -> None:
        """Set up gammas and the method's state on a freshly built model."""

    def param_groups(self, model, train_cfg: TrainConfig) -> list[dict]:
        """The primal optimiser's parameter groups. Default: the network at the schedule's weight
        decay, and learnable gammas without weight decay."""
        groups = [{"params": [p for p in model.equivariant_parameters() if p.requires_grad],
                   "weight_decay": train_cfg.weight_decay, "name": "equivariant"}]
        branch = [p for p in model.branch_parameters() if p.requires_grad]
        if branch:
            groups.append({"params": branch, "weight_decay": train_cfg.weight_decay, "name": "branch"})
        gammas = [p for p in model.gamma_parameters() if p.requires_grad]
        if gammas:
            groups.append({"params": gammas, "weight_decay": 0.0, "name": "gamma"})
        return groups

    def before_epoch(self, ctx: EpochContext) -> None:
        """Called before each epoch's first step (schedules set gamma here)."""

    def loss(self, step: StepContext) -> torch.Tensor:
        """The objective the primal optimiser descends. Default: the task loss."""
        return step.task_loss

    def after_step(self, step: StepContext) -> None:
        """Called after the primal optimiser's step (dual updates go here)."""

    def after_epoch(self, ctx: EpochContext) -> None:
        """Called after each epoch's last step."""

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (duals, slacks, weights, schedule position)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name} has no state but a checkpoint holds {sorted(state)}")

    def diagnostics(self) -> dict[str, list[float] | float]:
        """Per-layer values recorded at every evaluation (e.g. ``lambda``, ``u``)."""
        return {}
