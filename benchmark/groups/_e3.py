"""The Euclidean group E(3) (and its subgroups), sampled, acting on data and on layer features.

Elements are stored as ``(R, t)`` with ``R`` orthogonal (``det R = +1`` or ``-1``) and ``t`` a
translation; ``g . x = R x + t`` for positions, ``R v`` for vectors, ``det(R) R v`` for
pseudovectors. The Lie algebra of E(3) has six generators: rotations about x, y, z (``k = 0, 1, 2``,
``L_k v = e_k x v``) and translations along x, y, z (``k = 3, 4, 5``). Reflections form no part of the
algebra (they are a separate component) and are covered by sampling.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from e3nn import o3

__all__ = ["E3Elements", "EuclideanGroup", "CartesianRep", "IrrepsRep", "so3_generators_cartesian", "e3nn_precision"]


def so3_generators_cartesian(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The basis ``L_k`` (shape (3, 3, 3)) of so(3) in Cartesian x, y, z: ``L_k v = e_k x v``."""
    L = torch.zeros(3, 3, 3, dtype=dtype)
    for k, i, j in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        L[k, i, j] = -1.0
        L[k, j, i] = 1.0
    return L


@dataclass(frozen=True)
class E3Elements:
    """A batch of E(3) elements: ``rotation`` (n, 3, 3) orthogonal, ``translation`` (n, 3)."""

    rotation: torch.Tensor
    translation: torch.Tensor

    def __len__(self) -> int:
        return self.rotation.shape[0]

    def to(self, *args, **kwargs) -> "E3Elements":
        """Convert like :meth:`torch.Tensor.to` (a dtype, a device, or a tensor to match)."""
        return E3Elements(self.rotation.to(*args, **kwargs), self.translation.to(*args, **kwargs))

    @property
    def det(self) -> torch.Tensor:
        """``det R`` per element, shape (n,)."""
        return torch.linalg.det(self.rotation)

    def __getitem__(self, idx) -> "E3Elements":
        return E3Elements(self.rotation[idx], self.translation[idx])

    def inverse(self) -> "E3Elements":
        """``g^-1 = (R^T, -R^T t)``."""
        Rt = self.rotation.transpose(-1, -2)
        return E3Elements(Rt, -(Rt @ self.translation[..., None])[..., 0])


def _identity(n: int, dtype: torch.dtype) -> E3Elements:
    return E3Elements(torch.eye(3, dtype=dtype).expand(n, 3, 3).clone(), torch.zeros(n, 3, dtype=dtype))


def _cases(R: torch.Tensor, improper: torch.Tensor | None, translations: bool, scale: float,
           generator: torch.Generator, dtype: torch.dtype) -> dict[str, E3Elements]:
    """The named cases of a Euclidean group from float64 proper rotations ``R`` (n, 3, 3), their
    improper counterparts (or ``None``), and, with ``translations``, Gaussian translations."""
    n = R.shape[0]
    zero = torch.zeros(n, 3, dtype=dtype)
    out = {"rotation": E3Elements(R.to(dtype), zero)}
    if improper is not None:
        out["reflection"] = E3Elements(improper.to(dtype), zero.clone())
    if translations:
        t = scale * torch.randn(n, 3, generator=generator, dtype=torch.float64)
        out["translation"] = E3Elements(_identity(n, dtype).rotation, t.to(dtype))
    return out


class EuclideanGroup:
    """E(3), or SE(3)/O(3)/SO(3) when reflections or translations are switched off.

    Parameters
    ----------
    reflections : bool
        Sample improper elements (``det R = -1``) with probability 1/2.
    translations : bool
        Sample translations ``t ~ N(0, translation_scale^2 I)``; otherwise ``t = 0``.
    """

    continuous = True

    def __init__(self, reflections: bool = True, translations: bool = True, translation_scale: float = 1.0):
        self.reflections = reflections
        self.translations = translations
        self.translation_scale = translation_scale
        self.name = {(True, True): "E(3)", (False, True): "SE(3)", (True, False): "O(3)",
                     (False, False): "SO(3)"}[(reflections, translations)]
        self.lie_dim = 6 if translations else 3
        self.lie_basis = tuple(range(self.lie_dim))     # E(3)'s own numbering (see AxialEuclideanGroup)

    def __repr__(self) -> str:
        return f"EuclideanGroup({self.name})"

    def sample(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> E3Elements:
        """``n`` elements drawn from ``generator``: Haar-uniform rotations, random reflections
        and Gaussian translations. Deterministic given the generator's state."""
        q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
        q = q / q.norm(dim=-1, keepdim=True)
        R = o3.quaternion_to_matrix(q)
        if self.reflections:
            flip = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
            R = torch.where(flip[:, None, None], -R, R)
        if self.translations:
            t = self.translation_scale * torch.randn(n, 3, generator=generator, dtype=torch.float64)
        else:
            t = torch.zeros(n, 3, dtype=torch.float64)
        return E3Elements(R.to(dtype), t.to(dtype))

    def cases(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
              ) -> dict[str, E3Elements]:
        """``rotation`` (proper, no translation), and where the group has them ``reflection``
        (improper, no translation) and ``translation`` (identity rotation), ``n`` of each."""
        g = self.sample(n, generator, torch.float64)
        R = g.rotation * torch.linalg.det(g.rotation)[:, None, None]        # proper: det R = 1
        return _cases(R, -R if self.reflections else None, self.translations, self.translation_scale, generator,
                      dtype)

    def identity(self, n: int, dtype: torch.dtype = torch.float32) -> E3Elements:
        return _identity(n, dtype)

    def exp(self, k: int, t: torch.Tensor, n: int) -> E3Elements:
        """``exp(t A_k)`` for generator ``k`` (0-2 rotations, 3-5 translations), repeated ``n``
        times; differentiable in the scalar ``t`` (for Lie derivatives by ``torch.func.jvp``)."""
        if not 0 <= k < self.lie_dim:
            raise ValueError(f"{self.name} has Lie-algebra generators 0..{self.lie_dim - 1}, got {k}")
        dtype, device = t.dtype, t.device
        if k < 3:
            R = torch.linalg.matrix_exp(t * so3_generators_cartesian(dtype).to(device)[k])
            tr = torch.zeros(3, dtype=dtype, device=device) * t
        else:
            R = torch.eye(3, dtype=dtype, device=device) + 0 * t
            tr = torch.eye(3, dtype=dtype, device=device)[k - 3] * t
        return E3Elements(R.expand(n, 3, 3), tr.expand(n, 3))


class AxialEuclideanGroup:
    """The subgroup of E(3) that keeps one coordinate axis: rotations about it, reflections through
    planes containing it, and translations (each switchable, as for :class:`EuclideanGroup`).

    A uniform field along the axis (gravity, an electric field along z) or a vertical direction in
    the data leaves exactly this group: what partly symmetric data is still symmetric under. Its
    elements are :class:`E3Elements`, so every task's E(3) action takes them.

    ``lie_basis``: the generators of its Lie algebra as indices into E(3)'s (0-2 rotations about
    x, y, z; 3-5 translations), the numbering :meth:`Rep.lie` speaks; :meth:`exp` takes ``k`` in
    ``0 .. lie_dim - 1`` and follows ``lie_basis[k]``.

    >>> g = AxialEuclideanGroup(axis=2).sample(4, torch.Generator().manual_seed(0), torch.float64)
    >>> bool(torch.allclose(g.rotation[:, 2], torch.tensor([0., 0., 1.], dtype=torch.float64).expand(4, 3)))
    True
    """

    continuous = True

    def __init__(self, axis: int = 2, reflections: bool = True, translations: bool = True,
                 translation_scale: float = 1.0):
        if axis not in (0, 1, 2):
            raise ValueError(f"axis={axis!r}: expected 0, 1 or 2 (x, y, z)")
        self.axis = axis
        self.reflections = reflections
        self.translations = translations
        self.translation_scale = translation_scale
        self.lie_basis = (axis, 3, 4, 5) if translations else (axis,)
        self.lie_dim = len(self.lie_basis)
        self.name = ("E" if translations else "") + {True: "O(2)", False: "SO(2)"}[reflections] \
            + f" about {'xyz'[axis]}"

    def __repr__(self) -> str:
        return f"AxialEuclideanGroup({self.name})"

    def _rotation(self, angle: torch.Tensor) -> torch.Tensor:
        """Rotations by ``angle`` (n,) about the axis, (n, 3, 3)."""
        n = angle.shape[0]
        i, j = [a for a in range(3) if a != self.axis]
        R = torch.zeros(n, 3, 3, dtype=angle.dtype, device=angle.device)
        c, s = torch.cos(angle), torch.sin(angle)
        R[:, i, i], R[:, i, j], R[:, j, i], R[:, j, j] = c, -s, s, c
        R[:, self.axis, self.axis] = 1.0
        return R

    def _mirror(self, n: int, dtype) -> torch.Tensor:
        """The reflection through the plane spanned by the axis and the next coordinate axis."""
        M = torch.eye(3, dtype=dtype).expand(n, 3, 3).clone()
        other = [a for a in range(3) if a != self.axis][1]
        M[:, other, other] = -1.0
        return M

    def sample(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> E3Elements:
        """``n`` elements: uniform angles, random reflections, Gaussian translations."""
        angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        R = self._rotation(angle)
        if self.reflections:
            flip = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
            R = torch.where(flip[:, None, None], R @ self._mirror(n, torch.float64), R)
        if self.translations:
            t = self.translation_scale * torch.randn(n, 3, generator=generator, dtype=torch.float64)
        else:
            t = torch.zeros(n, 3, dtype=torch.float64)
        return E3Elements(R.to(dtype), t.to(dtype))

    def cases(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
              ) -> dict[str, E3Elements]:
        """``rotation`` (about the axis), and where the group has them ``reflection`` (through a
        plane containing the axis) and ``translation``, ``n`` of each."""
        angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        R = self._rotation(angle)
        return _cases(R, R @ self._mirror(n, torch.float64) if self.reflections else None, self.translations,
                      self.translation_scale, generator, dtype)

    def identity(self, n: int, dtype: torch.dtype = torch.float32) -> E3Elements:
        return _identity(n, dtype)

    def exp(self, k: int, t: torch.Tensor, n: int) -> E3Elements:
        """``exp(t A)`` for the group's generator ``k`` (E(3)'s generator ``lie_basis[k]``)."""
        if not 0 <= k < self.lie_dim:
            raise ValueError(f"{self.name} has Lie-algebra generators 0..{self.lie_dim - 1}, got {k}")
        return EuclideanGroup(translations=True).exp(self.lie_basis[k], t, n)


_KINDS = {"scalar": 1, "pseudoscalar": 1, "vector": 3, "pseudovector": 3, "position": 3}


class CartesianRep:
    """A flat layout of named fields in Cartesian coordinates.

    ``fields`` is a sequence of ``(kind, multiplicity)`` with kind one of ``scalar``,
    ``pseudoscalar``, ``vector``, ``pseudovector`` and ``position`` (a vector that also
    translates). The flat vector holds the fields in order, each vector as x, y, z.

    Examples
    --------
    >>> rep = CartesianRep([("scalar", 4), ("position", 1), ("vector", 1)])
    >>> rep.dim
    10
    """

    def __init__(self, fields: Sequence[tuple[str, int]]):
        self.fields = tuple((str(k), int(m)) for k, m in fields)
        for kind, mult in self.fields:
            if kind not in _KINDS:
                raise ValueError(f"unknown field kind {kind!r}; allowed: {', '.join(_KINDS)}")
            if mult < 0:
                raise ValueError(f"multiplicity of {kind!r} must be >= 0, got {mult}")
        self.dim = sum(_KINDS[k] * m for k, m in self.fields)

    def __repr__(self) -> str:
        return "CartesianRep(" + " + ".join(f"{m}x{k}" for k, m in self.fields) + ")"

    def _split(self, z: torch.Tensor):
        offset = 0
        for kind, mult in self.fields:
            size = _KINDS[kind] * mult
            yield kind, mult, z[..., offset:offset + size]
            offset += size

    def act(self, g: E3Elements, z: torch.Tensor) -> torch.Tensor:
        n, mid = z.shape[0], (1,) * (z.dim() - 2)
        R = g.rotation.to(z).reshape((n,) + mid + (1, 3, 3))
        det = torch.linalg.det(g.rotation.to(z)).reshape((n,) + mid + (1,))
        t = g.translation.to(z).reshape((n,) + mid + (1, 3))
        parts = []
        for kind, mult, part in self._split(z):
            if kind == "scalar":
                parts.append(part)
                continue
            if kind == "pseudoscalar":
                parts.append(part * det)
                continue
            vec = part.reshape(part.shape[:-1] + (mult, 3))
            out = (R @ vec[..., None])[..., 0]
            if kind == "pseudovector":
                out = out * det[..., None]
            if kind == "position":
                out = out + t
            parts.append(out.reshape(part.shape))
        return torch.cat(parts, dim=-1)

    def lie(self, k: int, z: torch.Tensor) -> torch.Tensor:
        if not 0 <= k < 6:
            raise ValueError(f"E(3) has Lie-algebra generators 0..5, got {k}")
        parts = []
        for kind, mult, part in self._split(z):
            if kind in ("scalar", "pseudoscalar"):
                parts.append(torch.zeros_like(part))
                continue
            vec = part.reshape(part.shape[:-1] + (mult, 3))
            if k < 3:
                L = so3_generators_cartesian(z.dtype).to(z.device)[k]
                out = vec @ L.T
            elif kind == "position":
                out = torch.zeros_like(vec)
                out[..., k - 3] = 1.0
            else:
                out = torch.zeros_like(vec)
            parts.append(out.reshape(part.shape))
        return torch.cat(parts, dim=-1)


@contextlib.contextmanager
def e3nn_precision(dtype: torch.dtype) -> Iterator[None]:
    """e3nn builds Wigner matrices and generators in the default dtype: run it in ``dtype``."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype in (torch.float32, torch.float64) else old)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class IrrepsRep:
    """An e3nn :class:`~e3nn.o3.Irreps` layout (e3nn's basis order), optionally with positions.

    ``positions`` lists indices of ``1o`` entries (in ``irreps`` order, multiplicity one) that
    are absolute positions and therefore also translate. Rotations act through
    ``Irreps.D_from_matrix`` (parity included); generator ``k < 3`` acts through e3nn's
    ``so3_generators``, which match :func:`so3_generators_cartesian` rotation for rotation.
    """

    def __init__(self, irreps, positions: Sequence[int] = ()):
        self.irreps = o3.Irreps(irreps)
        self.dim = self.irreps.dim
        self.positions = tuple(positions)
        slices = self.irreps.slices()
        self._position_slices = []
        for idx in self.positions:
            mul, ir = self.irreps[idx]
            if (ir.l, ir.p) != (1, -1) or mul != 1:
                raise ValueError(f"position entry {idx} of {self.irreps} must be 1x1o, got {mul}x{ir}")
            self._position_slices.append(slices[idx])
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"IrrepsRep({self.irreps}, positions={self.positions})"

    def _translation_matrix(self, dtype, device) -> torch.Tensor:
        # maps a Cartesian translation t to the flat vector (e3nn >= 0.5 orders l = 1 as x, y, z)
        T = torch.zeros(3, self.dim, dtype=dtype, device=device)
        for sl in self._position_slices:
            for cart in range(3):
                T[cart, sl.start + cart] = 1.0
        return T

    def act(self, g: E3Elements, z: torch.Tensor) -> torch.Tensor:
        n, mid = z.shape[0], (1,) * (z.dim() - 2)
        with e3nn_precision(z.dtype):
            D = self.irreps.D_from_matrix(g.rotation.to(z))  # (n, dim, dim)
        out = (D.reshape((n,) + mid + D.shape[1:]) @ z[..., None])[..., 0]
        if self._position_slices:
            shift = g.translation.to(z) @ self._translation_matrix(z.dtype, z.device)
            out = out + shift.reshape((n,) + mid + (self.dim,))
        return out

    def _generator(self, k: int, dtype, device) -> torch.Tensor:
        key = (k, dtype, device)
        if key not in self._cache:
            blocks = []
            for mul, ir in self.irreps:
                with e3nn_precision(dtype):
                    X = o3.so3_generators(ir.l).to(dtype=dtype, device=device)[k]
                blocks.extend([X] * mul)
            self._cache[key] = torch.block_diag(*blocks) if blocks else torch.zeros(0, 0, dtype=dtype)
        return self._cache[key]

    def lie(self, k: int, z: torch.Tensor) -> torch.Tensor:
        if not 0 <= k < 6:
            raise ValueError(f"E(3) has Lie-algebra generators 0..5, got {k}")
        if k < 3:
            return z @ self._generator(k, z.dtype, z.device).T
        out = torch.zeros_like(z)
        if self._position_slices:
            t = torch.zeros(3, dtype=z.dtype, device=z.device)
            t[k - 3] = 1.0
            out = out + t @ self._translation_matrix(z.dtype, z.device)
        return out
