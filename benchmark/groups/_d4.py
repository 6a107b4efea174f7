"""The dihedral group D4 (p4m's point group) acting exactly on images and on feature maps.

An element is ``(k, f)`` with ``k`` in 0..3 and ``f`` in {0, 1}; it acts on an image ``x`` (last two
axes height, width) as

    g . x = rot90(flip(x) if f else x, k)

with ``flip`` mirroring the width axis (``torch.flip(x, dims=[-1])``) and ``rot90`` rotating by
``k`` quarter turns (``torch.rot90(x, k, dims=(-2, -1))``). Both are permutations of the pixel grid,
so the action is exact in every floating-point type. This is the convention of escnn's
``flipRot2dOnR2(N=4)``: its element ``(f, k)`` moves a scalar field exactly as ``(k, f)`` does here
(checked in the tests), so the fiber representations of escnn field types can be used directly.

Group law (``R`` a quarter turn, ``F`` the flip, ``F R = R^-1 F``)::

    (k1, f1) (k2, f2) = (k1 + (-1)^f1 k2 mod 4, f1 xor f2),   (k, 0)^-1 = (-k, 0),   (k, 1)^-1 = (k, 1)

D4 is finite: ``continuous = False`` and ``lie_dim = 0``; in place of a Lie algebra it offers its
two generators (a quarter turn and the flip) through :meth:`D4Group.generators`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["D4Elements", "D4Group", "FieldRep", "apply_d4", "act_element"]

ORDER = 8


def _device_of(args: tuple, kwargs: dict) -> torch.device | None:
    """The device a ``Tensor.to``-style call names (a device, a device string or a tensor)."""
    if "device" in kwargs and kwargs["device"] is not None:
        return torch.device(kwargs["device"])
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg.device
        if isinstance(arg, (torch.device, str)):
            return torch.device(arg)
    return None


@dataclass(frozen=True)
class D4Elements:
    """A batch of ``n`` D4 elements: ``rot`` (n,) quarter turns in 0..3, ``flip`` (n,) in {0, 1}
    (both int64). Element ``i`` has the index ``4 * flip[i] + rot[i]`` in 0..7."""

    rot: torch.Tensor
    flip: torch.Tensor

    def __post_init__(self):
        if self.rot.shape != self.flip.shape or self.rot.dim() != 1:
            raise ValueError(f"D4 elements need rot and flip of one shape (n,), got {tuple(self.rot.shape)} "
                             f"and {tuple(self.flip.shape)}")

    @classmethod
    def from_index(cls, index: torch.Tensor) -> "D4Elements":
        index = torch.as_tensor(index, dtype=torch.int64)
        return cls(index % 4, index // 4)

    def __len__(self) -> int:
        return self.rot.shape[0]

    @property
    def index(self) -> torch.Tensor:
        """``4 * flip + rot`` per element, shape (n,)."""
        return 4 * self.flip + self.rot

    def to(self, *args: Any, **kwargs: Any) -> "D4Elements":
        """Move like :meth:`torch.Tensor.to`; a dtype is ignored (elements are integers)."""
        device = _device_of(args, kwargs)
        if device is None:
            return self
        return D4Elements(self.rot.to(device), self.flip.to(device))

    def __getitem__(self, idx) -> "D4Elements":
        rot, flip = self.rot[idx], self.flip[idx]
        return D4Elements(rot.reshape(-1), flip.reshape(-1))

    def compose(self, other: "D4Elements") -> "D4Elements":
        """``self * other`` elementwise: acting with the result is acting with ``other``, then ``self``."""
        sign = 1 - 2 * self.flip
        return D4Elements((self.rot + sign * other.rot) % 4, self.flip ^ other.flip)

    def inverse(self) -> "D4Elements":
        return D4Elements(torch.where(self.flip.bool(), self.rot, (-self.rot) % 4), self.flip.clone())


def apply_d4(g: D4Elements, x: torch.Tensor) -> torch.Tensor:
    """``g_i . x_i`` for each sample ``i`` of ``x`` (shape ``(n, ..., H, W)`` with ``H == W``): the
    pixel permutation of the module docstring, exact and differentiable."""
    if x.shape[0] != len(g):
        raise ValueError(f"{len(g)} D4 elements for a batch of {x.shape[0]}")
    if x.dim() < 3 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"D4 acts on square images (n, ..., H, W); got shape {tuple(x.shape)}")
    index = g.index.to(x.device)
    present = torch.unique(index).tolist()
    if len(present) == 1:                                   # one element for the whole batch
        return act_element(present[0], x)
    rows = [(index == e).nonzero().flatten() for e in present]
    moved = torch.cat([act_element(e, x.index_select(0, r)) for e, r in zip(present, rows)])
    order = torch.cat(rows)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return moved.index_select(0, inverse)


def act_element(e: int, x: torch.Tensor) -> torch.Tensor:
    """The element of index ``e`` (``4 * flip + rot``) acting alike on every sample of ``x`` (..., H, W)."""
    if e >= 4:
        x = torch.flip(x, dims=[-1])
    return torch.rot90(x, e % 4, dims=(-2, -1)) if e % 4 else x


class D4Group:
    """D4 = p4m's point group: rotations by multiples of 90 degrees and reflections (8 elements).

    Sampling is uniform over the 8 elements and deterministic given the generator's state.
    """

    name = "D4"
    continuous = False
    lie_dim = 0
    order = ORDER

    def __repr__(self) -> str:
        return "D4Group()"

    def sample(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> D4Elements:
        """``n`` elements drawn uniformly (``dtype`` is accepted for the protocol; elements are integers)."""
        return D4Elements.from_index(torch.randint(0, ORDER, (n,), generator=generator))

    def identity(self, n: int, dtype: torch.dtype = torch.float32) -> D4Elements:
        zero = torch.zeros(n, dtype=torch.int64)
        return D4Elements(zero, zero.clone())

    def elements(self) -> D4Elements:
        """All 8 elements, in index order (rotations 0..3, then the flipped ones)."""
        return D4Elements.from_index(torch.arange(ORDER))

    def cases(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
              ) -> dict[str, D4Elements]:
        """``rotation``: a quarter, half or three-quarter turn drawn uniformly; ``reflection``: one
        of the four reflections drawn uniformly; ``n`` of each."""
        rot = torch.randint(1, 4, (n,), generator=generator)
        refl = torch.randint(0, 4, (n,), generator=generator)
        return {"rotation": D4Elements(rot, torch.zeros(n, dtype=torch.int64)),
                "reflection": D4Elements(refl, torch.ones(n, dtype=torch.int64))}

    def generators(self, n: int, dtype: torch.dtype = torch.float32) -> list[D4Elements]:
        """The two generators, ``n`` copies each: the quarter turn ``(1, 0)`` and the flip ``(0, 1)``."""
        one, zero = torch.ones(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64)
        return [D4Elements(one, zero), D4Elements(zero.clone(), one.clone())]


class FieldRep:
    """D4 acting on a feature map of an escnn field type on an ``H x W`` grid, flattened.

    The flat vector (size ``dim = C * H * W``, ``C`` the field type's size) is the feature map
    ``(C, H, W)`` in row-major order. ``g`` moves the grid by :func:`apply_d4` and transforms the
    channels by the field type's representation of the matching escnn element (a permutation of
    each regular field's 8 channels; the identity on trivial fields).

    ``act(g, z)`` accepts ``z`` flat, ``(n, ..., dim)``, or as feature maps, ``(n, C, H, W)``, and
    returns the same layout. ``lie`` raises: D4 has no Lie algebra.
    """

    def __init__(self, field_type, height: int, width: int):
        self.channels = int(field_type.size)
        self.shape = (self.channels, int(height), int(width))
        self.dim = self.channels * int(height) * int(width)
        group = field_type.fibergroup
        mats = []
        for e in range(ORDER):
            element = group.element((e // 4, e % 4))
            mats.append(np.asarray(field_type.representation(element), dtype=np.float64))
        self.matrices = torch.from_numpy(np.stack(mats))                       # (8, C, C)
        # every representation the backbones use permutes channels: act by indexing (exact)
        self.permutations: torch.Tensor | None = None
        rounded = self.matrices.round()
        if torch.equal(rounded, self.matrices.abs().round()) and (self.matrices - rounded).abs().max() < 1e-9 \
                and bool((rounded.sum(-1) == 1).all()) and bool((rounded.sum(-2) == 1).all()):
            self.permutations = rounded.argmax(-1)                               # out channel i <- in channel p[i]
        self._label = f"FieldRep({field_type.size} channels, {height}x{width})"

    def __repr__(self) -> str:
        return self._label

    def act(self, g: D4Elements, z: torch.Tensor) -> torch.Tensor:
        if z.dim() >= 4 and tuple(z.shape[-3:]) == self.shape:
            maps, flat = z.reshape((z.shape[0], -1) + self.shape), False
        elif z.dim() >= 2 and z.shape[-1] == self.dim:
            maps, flat = z.reshape((z.shape[0], -1) + self.shape), True
        else:
            raise ValueError(f"{self._label} acts on (n, ..., {self.dim}) or (n, {', '.join(map(str, self.shape))}), "
                             f"got shape {tuple(z.shape)}")
        moved = apply_d4(g, maps)
        index = g.index.to(z.device)
        if self.permutations is not None:
            perm = self.permutations.to(z.device)[index]                         # (n, C)
            shape = (maps.shape[0], 1, self.channels, 1, 1)
            moved = torch.gather(moved, 2, perm.reshape(shape).expand_as(moved))
        else:
            mats = self.matrices.to(device=z.device, dtype=z.dtype)[index]      # (n, C, C)
            moved = torch.einsum("nij,nmjhw->nmihw", mats, moved)
        return moved.reshape(z.shape) if flat else moved.reshape(z.shape)

    def lie(self, k: int, z: torch.Tensor) -> torch.Tensor:
        raise ValueError("D4 is a finite group: it has no Lie-algebra generators (lie_dim 0); use D4Group.generators")
