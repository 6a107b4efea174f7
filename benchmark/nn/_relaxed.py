"""The one relaxed-layer type, ``f(x) = f_eq(x) + gamma * f_neq(x)``, and the homotopy model API.

A backbone computes its exactly equivariant update ``f_eq`` itself and hands the result, with
the branch's input, to a :class:`RelaxedLayer`, which adds ``gamma * f_neq(branch_input)``.
Everything a relaxation method needs (the gammas, the branches, the representations of each
branch's input and output, the branch's last input) lives on the relaxed layer, so methods never
need to know which backbone they train.

Guarantees
----------
* With ``gamma == 0``, or inside :meth:`HomotopyModel.projected`, a relaxed layer returns
  ``f_eq(x)`` exactly (the branch is not evaluated), so an equivariant backbone is exactly
  equivariant.
* A layer built without a branch (``branch="none"``) is the strict equivariant layer: it has no
  gamma-dependent parameters and never evaluates anything but ``f_eq``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Mapping

import torch
from torch import nn

from benchmark.config import param
from benchmark.groups import Rep

__all__ = ["RelaxedLayer", "HomotopyModel", "make_branch", "BRANCH_KINDS", "BranchConfig", "ACTIVATIONS",
           "branch_field_names"]

BRANCH_KINDS = ("mlp", "ace-mlp", "linear", "none")

#: Activations a branch may use, by the name its configuration gives.
ACTIVATIONS: Mapping[str, Callable[[], nn.Module]] = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}


def make_branch(kind: str, dim_in: int, dim_out: int, hidden: int, *, layers: int = 2,
                act: Callable[[], nn.Module] = nn.SiLU) -> nn.Module | None:
    """The unconstrained branch ``f_neq``.

    ``mlp``: ``layers`` linear maps of width ``hidden`` with ``act`` between (the common branch
    every method is compared on); ``ace-mlp``: the branch of the ACE authors' SEGNN, whose widths
    follow the layer's output width ``D = dim_out``: ``Linear(dim_in, 2D) -> act -> Linear(2D, D)
    -> act -> Linear(D, D)`` (``hidden`` and ``layers`` are not used); ``linear``: one bias-free
    linear map initialised N(0, 1e-4^2), the layer of Pertigkiozoglou et al. (2024); ``none``: no
    branch (strict equivariance).

    >>> sum(p.numel() for p in make_branch("ace-mlp", 256, 128, 0, act=nn.GELU).parameters())
    115200
    """
    if kind == "none":
        return None
    if kind == "linear":
        lin = nn.Linear(dim_in, dim_out, bias=False)
        nn.init.normal_(lin.weight, std=1e-4)
        return lin
    if kind == "mlp":
        if layers < 1:
            raise ValueError(f"an mlp branch needs at least 1 layer, got {layers}")
        dims = [dim_in] + [hidden] * (layers - 1) + [dim_out]
    elif kind == "ace-mlp":
        dims = [dim_in, 2 * dim_out, dim_out, dim_out]
    else:
        raise ValueError(f"unknown branch kind {kind!r}; allowed: {', '.join(BRANCH_KINDS)}")
    mods: list[nn.Module] = []
    for i in range(len(dims) - 1):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            mods.append(act())
    return nn.Sequential(*mods)


@dataclass(frozen=True)
class BranchConfig:
    """The unconstrained branch of a backbone's relaxed layers: the one branch configuration every
    backbone's config inherits (``class EGNNConfig(BranchConfig)``).

    A backbone redeclares a field only to change its default, or, where its branch is not an MLP
    (a convolution, say), ``branch`` with its own kinds, ``"none"`` among them: the harness builds
    the strict method's network with ``branch="none"``. Reports and the harness recognise these
    settings as the branch's (:func:`branch_field_names`), whatever the backbone.
    """

    branch: str = param("mlp", help="unconstrained branch of each relaxed layer", choices=BRANCH_KINDS)
    branch_hidden: int = param(64, help="hidden width of the mlp branch", ge=1)
    branch_layers: int = param(2, help="linear layers of the mlp branch", ge=1)
    branch_act: str = param("silu", help="activation between the branch's linear maps", choices=tuple(ACTIVATIONS))

    def make_branch(self, dim_in: int, dim_out: int) -> nn.Module | None:
        """The branch ``f_neq`` of one relaxed layer (``None`` for ``branch="none"``)."""
        return make_branch(self.branch, dim_in, dim_out, self.branch_hidden, layers=self.branch_layers,
                           act=ACTIVATIONS[self.branch_act])


def branch_field_names() -> frozenset[str]:
    """The names of :class:`BranchConfig`'s settings.

    >>> sorted(branch_field_names())
    ['branch', 'branch_act', 'branch_hidden', 'branch_layers']
    """
    return frozenset(f.name for f in dataclasses.fields(BranchConfig))


class RelaxedLayer(nn.Module):
    """``eq_out + gamma * branch(branch_input)`` with its gamma slot and representations.

    Parameters
    ----------
    branch : nn.Module or None
        ``f_neq``: maps ``(..., rep_in.dim)`` to ``(..., rep_out.dim)``. ``None`` = strict layer.
    rep_in, rep_out : Rep
        How the group acts on the branch's input and output (for Lie derivatives and
        layer-wise equivariance defects).
    name : str
        A readable name (``"layer0"``, ``"layer2.update1"``) used in diagnostics.
    """

    def __init__(self, branch: nn.Module | None, rep_in: Rep, rep_out: Rep, name: str):
        super().__init__()
        self.branch = branch
        self.rep_in = rep_in
        self.rep_out = rep_out
        self.layer_name = name
        # gamma is a parameter so methods can make it learnable; it starts frozen at 1.
        # A strict layer (no branch) has no gamma at all.
        self.gamma = nn.Parameter(torch.ones(()), requires_grad=False) if branch is not None else None
        self.project = False
        self.record_input = False
        self.last_input: torch.Tensor | None = None

    @property
    def has_branch(self) -> bool:
        return self.branch is not None

    def branch_output(self, branch_input: torch.Tensor) -> torch.Tensor:
        """``f_neq(branch_input)`` (without gamma)."""
        if self.branch is None:
            raise RuntimeError(f"relaxed layer {self.layer_name} has no branch (strict model)")
        return self.branch(branch_input)

    def forward(self, eq_out: torch.Tensor, branch_input: torch.Tensor | Callable[[], torch.Tensor]) -> torch.Tensor:
        """``eq_out + gamma * f_neq(branch_input)``; ``branch_input`` may be a thunk, built only
        when the branch runs."""
        if self.branch is None or self.project:
            return eq_out
        x = branch_input() if callable(branch_input) else branch_input
        if self.record_input:
            self.last_input = x.detach()
        return eq_out + self.gamma.to(eq_out.dtype) * self.branch(x).reshape(eq_out.shape)


class HomotopyModel(nn.Module):
    """Base class of every backbone: the gamma and projection API on top of its relaxed layers.

    Class attributes (the backbone's declared contract, read by the harness)
    ------------------------------------------------------------------------
    tasks : tuple of str
        Registered task names the backbone can be built for (``("*",)``: any task).
    train_defaults : mapping
        Per task, ``TrainConfig`` keys this backbone's protocol sets on top of the task's.
    presets : mapping
        Named override sets of this backbone (merged with the task's presets of the same name).
    equivariant : bool
        ``False`` for a reference network with no equivariant structure at all (a plain CNN): it
        has no relaxed layers, and the contract tests check that it is measurably not equivariant.
    """

    registry_name: ClassVar[str] = "?"
    equivariant: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("*",)
    train_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    @classmethod
    def check_registration(cls, name: str) -> None:
        """Called by the registry: ``tasks`` is a tuple of names, ``train_defaults`` is keyed by them."""
        if not isinstance(cls.tasks, tuple) or not cls.tasks or not all(isinstance(t, str) for t in cls.tasks):
            raise TypeError(f"backbone {name!r}: tasks={cls.tasks!r}; expected a non-empty tuple of task names")
        if "*" not in cls.tasks:
            extra = set(cls.train_defaults) - set(cls.tasks)
            if extra:
                raise TypeError(f"backbone {name!r}: train_defaults for {sorted(extra)}, which are not in its tasks")

    def relaxed_layers(self) -> list[RelaxedLayer]:
        """The relaxed layers in forward order (only those with a branch)."""
        return [m for m in self.modules() if isinstance(m, RelaxedLayer) and m.has_branch]

    @property
    def num_gammas(self) -> int:
        return len(self.relaxed_layers())

    def gammas(self) -> torch.Tensor:
        """The gammas as one differentiable vector, in layer order (empty for a strict model)."""
        layers = self.relaxed_layers()
        if not layers:
            param = next(self.parameters(), None)
            return torch.zeros(0) if param is None else param.new_zeros(0)
        return torch.stack([layer.gamma for layer in layers])

    def gamma_parameters(self) -> list[nn.Parameter]:
        return [layer.gamma for layer in self.relaxed_layers()]

    def branch_parameters(self) -> list[nn.Parameter]:
        """Parameters of the unconstrained branches (not the gammas)."""
        return [p for layer in self.relaxed_layers() for p in layer.branch.parameters()]

    def equivariant_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is neither a gamma nor a branch parameter."""
        skip = {id(p) for p in self.branch_parameters()} | {id(p) for p in self.gamma_parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    @torch.no_grad()
    def set_gammas(self, value: float | torch.Tensor, learnable: bool | None = None) -> None:
        """Set every gamma to ``value`` (scalar or one per layer); optionally (un)freeze them."""
        layers = self.relaxed_layers()
        values = torch.as_tensor(value, dtype=torch.float64)
        if values.dim() == 0:
            values = values.expand(len(layers))
        if values.numel() != len(layers):
            raise ValueError(f"expected {len(layers)} gammas, got {values.numel()}")
        for layer, v in zip(layers, values):
            layer.gamma.fill_(float(v))
            if learnable is not None:
                layer.gamma.requires_grad_(learnable)

    def make_gammas_learnable(self, init: float = 1.0) -> None:
        self.set_gammas(init, learnable=True)

    @contextlib.contextmanager
    def projected(self, enabled: bool = True) -> Iterator["HomotopyModel"]:
        """Evaluate the projected model (every gamma taken as 0; branches never run)."""
        layers = [m for m in self.modules() if isinstance(m, RelaxedLayer)]
        previous = [layer.project for layer in layers]
        try:
            for layer in layers:
                layer.project = enabled or layer.project
            yield self
        finally:
            for layer, p in zip(layers, previous):
                layer.project = p

    @contextlib.contextmanager
    def recording_branch_inputs(self) -> Iterator[list[RelaxedLayer]]:
        """Within the context each relaxed layer keeps its last branch input (detached)."""
        layers = self.relaxed_layers()
        try:
            for layer in layers:
                layer.record_input = True
                layer.last_input = None
            yield layers
        finally:
            for layer in layers:
                layer.record_input = False

    def num_parameters(self) -> int:
        """Parameter count (gammas excluded: they are the relaxation's, not the network's)."""
        gam = {id(p) for p in self.gamma_parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in gam)
