"""The group and representation protocols every task and relaxed layer speaks."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


class GroupElements(Protocol):
    """A batch of ``n`` group elements (one per sample of a batch)."""

    def __len__(self) -> int: ...

    def to(self, dtype: torch.dtype) -> "GroupElements": ...


class Group(Protocol):
    """A symmetry group: sampling, and (for a continuous group) a Lie-algebra basis.

    ``lie_dim`` is the number of Lie-algebra basis elements (0 for a finite group); generator ``k``
    of the algebra is understood by every :class:`Rep` of the group through ``Rep.lie(k, z)``.
    """

    name: str
    continuous: bool
    lie_dim: int
    #: The generators as indices into the algebra :meth:`Rep.lie` speaks (E(3)'s, for the groups
    #: of Euclidean space): ``range(lie_dim)`` for E(3) itself, a few of them for a subgroup.
    lie_basis: tuple[int, ...]

    def sample(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> GroupElements: ...

    def identity(self, n: int, dtype: torch.dtype = torch.float32) -> GroupElements: ...

    def cases(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
              ) -> dict[str, GroupElements]:
        """Named kinds of element to test one by one (e.g. ``rotation``, ``reflection``,
        ``translation``), ``n`` of each: an equivariance test reports its error per case."""
        ...


@runtime_checkable
class Rep(Protocol):
    """How a group acts on a flat feature vector of size ``dim`` (the last axis of a tensor).

    ``act(g, z)``: z has shape ``(n, ..., dim)`` with one group element per leading index.
    ``lie(k, z)``: the infinitesimal action of Lie-algebra generator ``k`` on ``z``, i.e.
    ``d/dt rho(exp(t A_k)) z`` at ``t = 0`` (affine parts, such as translations of positions,
    included), for Lie derivatives of branches.
    """

    dim: int

    def act(self, g: GroupElements, z: torch.Tensor) -> torch.Tensor: ...

    def lie(self, k: int, z: torch.Tensor) -> torch.Tensor: ...
