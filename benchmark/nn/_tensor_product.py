"""Dense batched tensor products of ``l <= 1`` features with ``1x0e + 1x1o`` attributes.

e3nn's ``FullyConnectedTensorProduct(irreps_in, "1x0e + 1x1o", irreps_out)``, with every irrep of
``irreps_in`` and ``irreps_out`` a ``0e`` or a ``1o``, has only four kinds of paths, and the
Clebsch-Gordan coefficient of each is a multiple of a Kronecker delta (no ``1o x 1o -> 1e`` path
exists, since no output is ``1e``). With attributes ``a = (a0, a1)`` (a scalar and a vector)::

    0e x 0e -> 0e    s'_w += c W_uw s_u a0
    1o x 1o -> 0e    s'_w += c W_uw <v_u, a1>
    0e x 1o -> 1o    v'_w += c W_uw s_u a1
    1o x 0e -> 1o    v'_w += c W_uw v_u a0

where ``c`` is e3nn's path normalisation times the Clebsch-Gordan constant (``o3.wigner_3j``,
read from e3nn). Merging the blocks of each kind turns the whole product into four dense matrix
products over channels and a few broadcasts with ``a1``: no per-sample generic kernel, and the
contraction with ``a1`` comes before the channel product of the ``1o x 1o -> 0e`` paths (three
times fewer multiplications). :class:`TensorProductL1` stores e3nn's weights merged into one
matrix, a fixed permutation of e3nn's flat weight vector (:meth:`TensorProductL1.e3nn_weight`), so
an e3nn implementation can use the very same parameters.

Feature layout: a pair ``(s, v)``, scalars ``s`` of shape ``(..., C0)`` and vectors ``v`` of
shape ``(..., 3, C1)`` (component first, so a product over channels is a plain matmul), vector
components in e3nn's basis of ``1o`` (Cartesian x, y, z in e3nn 0.5 and later).
:func:`to_flat` / :func:`from_flat` convert to and from e3nn's flat layout of an ``Irreps``.

Examples
--------
>>> tp = TensorProductL1("4x0e + 2x1o", "3x0e + 1x1o")
>>> s, v, a1 = torch.randn(10, 4), torch.randn(10, 3, 2), torch.randn(10, 3)
>>> s2, v2 = tp(s, v, a1)
>>> tuple(s2.shape), tuple(v2.shape)
((10, 3), (10, 3, 1))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from e3nn import o3
from e3nn.math import normalize2mom
from torch import nn

__all__ = ["ATTR_IRREPS", "TensorProductL1", "tensor_product", "GateL1", "gate", "gate_activations",
           "weight_balanced_irreps", "gate_irreps", "split_channels", "to_flat", "from_flat", "irreps_blocks", "dot",
           "sh_l1", "cartesian_to_e3nn", "e3nn_to_cartesian", "C_SILU", "C_SIGMOID"]

SCALAR = o3.Irrep("0e")
VECTOR = o3.Irrep("1o")
ATTR_IRREPS = o3.Irreps("1x0e + 1x1o")

# e3nn's basis of 1o: the rows are e_x, e_y, e_z written in it (the identity from e3nn 0.5 on)
_CART_TO_E3NN = o3.spherical_harmonics(1, torch.eye(3, dtype=torch.float64), normalize=True,
                                       normalization="norm")
_IDENTITY_BASIS = bool(torch.equal(_CART_TO_E3NN, torch.eye(3, dtype=torch.float64)))

# integral-normalised real spherical harmonics of a unit vector: Y_0 = 1/sqrt(4 pi), Y_1 = sqrt(3/(4 pi)) n
SH0 = 1.0 / math.sqrt(4.0 * math.pi)
SH1 = math.sqrt(3.0 / (4.0 * math.pi))


def cartesian_to_e3nn(x: torch.Tensor) -> torch.Tensor:
    """Cartesian vectors ``(..., 3)`` in e3nn's basis of ``1o`` (a no-op for e3nn >= 0.5)."""
    return x if _IDENTITY_BASIS else x @ _CART_TO_E3NN.to(x)


def e3nn_to_cartesian(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`cartesian_to_e3nn`."""
    return x if _IDENTITY_BASIS else x @ _CART_TO_E3NN.to(x).T


def sh_l1(unit: torch.Tensor) -> torch.Tensor:
    """The ``l = 1`` integral-normalised spherical harmonics of unit vectors (Cartesian, ``(..., 3)``)."""
    return SH1 * cartesian_to_e3nn(unit)


def _check_irreps(irreps: o3.Irreps, what: str) -> None:
    for _, ir in irreps:
        if ir not in (SCALAR, VECTOR):
            raise ValueError(f"{what}={irreps}: the dense l<=1 tensor product takes only 0e and 1o irreps, "
                             f"got {ir}")


def split_channels(irreps) -> tuple[int, int]:
    """Number of ``0e`` and of ``1o`` channels of ``irreps`` (only those two irreps allowed)."""
    irreps = o3.Irreps(irreps)
    _check_irreps(irreps, "irreps")
    return (sum(mul for mul, ir in irreps if ir == SCALAR), sum(mul for mul, ir in irreps if ir == VECTOR))


def irreps_blocks(irreps) -> tuple[tuple[int, int], ...]:
    """``(l, mul)`` of each block of ``irreps`` (``0e`` / ``1o`` only), as plain integers."""
    if type(irreps) is tuple:                 # already blocks (an Irreps is a tuple subclass)
        return irreps
    irreps = o3.Irreps(irreps)
    _check_irreps(irreps, "irreps")
    return tuple((ir.l, mul) for mul, ir in irreps)


def to_flat(s: torch.Tensor, v: torch.Tensor, irreps) -> torch.Tensor:
    """``(s, v)`` in e3nn's flat layout of ``irreps`` (``0e`` and ``1o`` blocks in any order, or
    their :func:`irreps_blocks`). Scalar blocks take the scalar channels in order, vector blocks
    the vector channels in order."""
    blocks = irreps_blocks(irreps)
    if len(blocks) == 2 and blocks[0][0] == 0 and blocks[1][0] == 1:          # n0x0e + n1x1o: one copy
        return torch.cat([s, v.transpose(-1, -2).flatten(-2)], dim=-1)
    parts = []
    i0 = i1 = 0
    for l, mul in blocks:
        if l == 0:
            parts.append(s[..., i0:i0 + mul])
            i0 += mul
        else:
            parts.append(v[..., :, i1:i1 + mul].transpose(-1, -2).reshape(v.shape[:-2] + (3 * mul,)))
            i1 += mul
    return torch.cat(parts, dim=-1)


def from_flat(x: torch.Tensor, irreps) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`to_flat`: ``(s, v)`` from e3nn's flat layout of ``irreps``."""
    blocks = irreps_blocks(irreps)
    if len(blocks) == 2 and blocks[0][0] == 0 and blocks[1][0] == 1:          # n0x0e + n1x1o: views
        s, v = x.split([blocks[0][1], 3 * blocks[1][1]], dim=-1)
        return s, v.unflatten(-1, (blocks[1][1], 3)).transpose(-1, -2)
    s_parts, v_parts = [], []
    start = 0
    for l, mul in blocks:
        if l == 0:
            s_parts.append(x[..., start:start + mul])
            start += mul
        else:
            v_parts.append(x[..., start:start + 3 * mul].reshape(x.shape[:-1] + (mul, 3)).transpose(-1, -2))
            start += 3 * mul
    batch = x.shape[:-1]
    s = torch.cat(s_parts, dim=-1) if s_parts else x.new_zeros(batch + (0,))
    v = torch.cat(v_parts, dim=-1) if v_parts else x.new_zeros(batch + (3, 0))
    return s, v


def weight_balanced_irreps(width: int, lmax: int = 1, attr=ATTR_IRREPS) -> o3.Irreps:
    """Hidden irreps ``N x 0e + N x 1o (+ ...)`` up to ``lmax`` with as many tensor-product weights
    as a scalar layer of ``width`` channels.

    ``N`` is the multiplicity whose ``FullyConnectedTensorProduct(hidden, attr, hidden)`` has the
    number of weights closest to that of ``FullyConnectedTensorProduct(width x 0e, attr, width x 0e)``
    (ties to the larger ``N``); irreps of degree ``l`` have parity ``(-1)^l``, those of the
    spherical harmonics. With ``attr = 1x0e + 1x1o`` the scalar layer has ``width^2`` weights and
    the hidden one ``4 N^2``, so ``width = 64`` gives ``32x0e + 32x1o``.

    >>> weight_balanced_irreps(64)
    32x0e+32x1o
    """
    attr = o3.Irreps(attr)
    if width < 1:
        raise ValueError(f"width={width}: expected >= 1")

    def count(irreps) -> int:
        return o3.FullyConnectedTensorProduct(irreps, attr, irreps, internal_weights=False,
                                              compile_left_right=False).weight_numel

    target = count(o3.Irreps(f"{width}x0e"))
    kinds = [o3.Irrep(l, (-1) ** l) for l in range(lmax + 1)]
    best = None
    for n in range(1, width + 1):
        irreps = o3.Irreps([(n, ir) for ir in kinds])
        gap = abs(count(irreps) - target)
        if best is None or gap <= best[0]:
            best = (gap, irreps)
        if count(irreps) > target:
            break
    return best[1]


class TensorProductL1(nn.Module):
    """``FullyConnectedTensorProduct(irreps_in, 1x0e + 1x1o, irreps_out)`` (e3nn's paths and
    normalisation) as dense matrix products, plus a bias on the scalar outputs.

    The ``l = 0`` attribute is a constant ``attr0`` (SEGNN's are: ``1/sqrt(4 pi)`` for the
    spherical harmonics of an edge, ``1`` for node attributes), folded into the kernel; the
    ``l = 1`` attribute ``a1`` is an input.

    Parameters
    ----------
    irreps_in, irreps_out
        ``0e`` and ``1o`` blocks only (in any order; scalars and vectors are merged in order).
    attr0 : float
        The constant ``l = 0`` component of the attributes.
    bias : bool
        Add a learnable bias (initialised to 0) to every ``0e`` output.

    Attributes
    ----------
    weight : (C0_in + C1_in, C0_out + C1_out)
        e3nn's weights of every path, merged: row ``u`` (scalar inputs, then vector inputs),
        column ``w`` (scalar outputs, then vector outputs) holds the weight ``W_uw`` of the one
        path between them. A permutation of e3nn's flat weight vector (:meth:`e3nn_weight`),
        initialised N(0, 1) as e3nn does.
    coef : same shape (buffer)
        The constant of each weight: e3nn's path normalisation times the Clebsch-Gordan constant
        (times ``attr0`` on the paths through the ``l = 0`` attribute); kept in the weight's dtype
        and always recomputed from float64 when the module is cast.
    """

    def __init__(self, irreps_in, irreps_out, *, attr0: float = 1.0, bias: bool = True):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.attr0 = float(attr0)
        _check_irreps(self.irreps_in, "irreps_in")
        _check_irreps(self.irreps_out, "irreps_out")
        # only e3nn's instructions (paths, normalisation, weight layout) are needed: skip its codegen
        tp = o3.FullyConnectedTensorProduct(self.irreps_in, ATTR_IRREPS, self.irreps_out, shared_weights=True,
                                            internal_weights=False, compile_left_right=False)
        self.cs_in, self.cv_in = split_channels(self.irreps_in)
        self.cs_out, self.cv_out = split_channels(self.irreps_out)

        def offsets(irreps, n_scalars):
            out, n0, n1 = [], 0, 0
            for mul, ir in irreps:
                out.append(n0 if ir == SCALAR else n_scalars + n1)
                n0, n1 = (n0 + mul, n1) if ir == SCALAR else (n0, n1 + mul)
            return out

        off_in, off_out = offsets(self.irreps_in, self.cs_in), offsets(self.irreps_out, self.cs_out)
        rows, cols = self.cs_in + self.cv_in, self.cs_out + self.cv_out
        to_e3nn = torch.full((tp.weight_numel,), -1, dtype=torch.long)
        coef = torch.zeros(rows, cols, dtype=torch.float64)
        start = 0
        for ins in tp.instructions:
            mul_in, ir_in = self.irreps_in[ins.i_in1]
            _, ir_attr = ATTR_IRREPS[ins.i_in2]
            mul_out, ir_out = self.irreps_out[ins.i_out]
            cg = o3.wigner_3j(ir_in.l, ir_attr.l, ir_out.l, dtype=torch.float64)
            const = cg.flatten()[0].item()       # every l <= 1 coefficient here is const * delta
            if not torch.allclose(cg, const * _delta_pattern(ir_in.l, ir_attr.l, ir_out.l), atol=1e-12):
                raise AssertionError(f"unexpected Clebsch-Gordan coefficients for {ir_in} x {ir_attr} -> {ir_out}")
            if ir_attr.l == 0:
                const *= self.attr0
            r = off_in[ins.i_in1] + torch.arange(mul_in)
            c = off_out[ins.i_out] + torch.arange(mul_out)
            n = mul_in * mul_out                 # e3nn's path weight has shape (mul_in, 1, mul_out)
            to_e3nn[start:start + n] = (r[:, None] * cols + c[None, :]).flatten()
            coef[r[:, None], c[None, :]] = ins.path_weight * const
            start += n
        if start != rows * cols or bool((to_e3nn < 0).any()):
            raise AssertionError("every (input, output) channel pair must be exactly one path")
        self.weight = nn.Parameter(torch.randn(rows, cols))
        self.bias = nn.Parameter(torch.zeros(self.cs_out)) if bias and self.cs_out else None
        self._to_e3nn = to_e3nn
        # the constants in float64, and a buffer in the weight's dtype always derived from them (a
        # plain float32 -> float64 round trip of the buffer would lose precision)
        self._coef64 = coef
        self.register_buffer("coef", coef.to(self.weight.dtype), persistent=False)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.coef = self._coef64.to(device=self.weight.device, dtype=self.weight.dtype)
        return out

    def extra_repr(self) -> str:
        return f"{self.irreps_in} x {ATTR_IRREPS} -> {self.irreps_out}, attr0={self.attr0:.6g}"

    @property
    def weight_numel(self) -> int:
        return self.weight.numel()

    def e3nn_weight(self) -> torch.Tensor:
        """The weights in e3nn's flat layout (differentiable): the ``weight`` argument of
        ``FullyConnectedTensorProduct(irreps_in, 1x0e + 1x1o, irreps_out, shared_weights=True,
        internal_weights=False)``."""
        return self.weight.flatten()[self._to_e3nn.to(self.weight.device)]

    @torch.no_grad()
    def load_e3nn_weight(self, flat: torch.Tensor) -> None:
        """Set the weights from e3nn's flat layout."""
        self.weight.view(-1)[self._to_e3nn.to(self.weight.device)] = flat.to(self.weight)

    def kernel(self) -> torch.Tensor:
        """The merged kernel ``(C0_in + C1_in, C0_out + C1_out)``, ``weight * coef``. Its blocks:
        scalar rows to scalar columns (``0e x 0e -> 0e``) and to vector columns (``0e x 1o ->
        1o``), vector rows to scalar columns (``1o x 1o -> 0e``, applied to ``<a1, v>``) and to
        vector columns (``1o x 0e -> 1o``)."""
        return self.weight * self.coef

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """``(C0_in, C1_in, C0_out, C1_out)``."""
        return self.cs_in, self.cv_in, self.cs_out, self.cv_out

    def forward(self, s: torch.Tensor, v: torch.Tensor, a1: torch.Tensor):
        """``(s, v)`` with ``l = 1`` attributes ``a1`` (``(..., 3)``, broadcast against ``s``)."""
        return tensor_product(s, v, a1, self.kernel(), self.bias, self.sizes)


def tensor_product(s: torch.Tensor, v: torch.Tensor, a1: torch.Tensor, K: torch.Tensor,
                   bias: torch.Tensor | None, sizes: tuple[int, int, int, int]):
    """The product of :class:`TensorProductL1` as a pure function of its kernel ``K`` (see
    :meth:`TensorProductL1.kernel`), ``bias`` and ``sizes = (C0_in, C1_in, C0_out, C1_out)``."""
    cs_in, cv_in, cs_out, cv_out = sizes
    KA, KB = K.split([cs_in, cv_in], dim=0)
    B0, B1 = KB.split([cs_out, cv_out], dim=1)
    s0, s1 = (s @ KA).split([cs_out, cv_out], dim=-1)
    out_s = s0 + dot(a1, v) @ B0
    if bias is not None:
        out_s = out_s + bias
    return out_s, torch.addcmul(v @ B1, a1.unsqueeze(-1), s1.unsqueeze(-2))


def dot(a1: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``<a1, v_c>`` for every channel ``c``: ``(..., 3)`` and ``(..., 3, C)`` to ``(..., C)``."""
    return (a1.unsqueeze(-1) * v).sum(-2)


def _delta_pattern(l1: int, l2: int, l3: int) -> torch.Tensor:
    """The Kronecker-delta pattern of the l <= 1 coupling ``(l1, l2) -> l3`` (one nonzero per
    matching component)."""
    if (l1, l2, l3) == (0, 0, 0):
        return torch.ones(1, 1, 1, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    return {(0, 1, 1): eye[None], (1, 0, 1): eye[:, None], (1, 1, 0): eye[:, :, None]}[(l1, l2, l3)]


# e3nn's second-moment normalisation of the gate's activations (``e3nn.math.normalize2mom``)
C_SILU = float(normalize2mom(F.silu).cst)
C_SIGMOID = float(normalize2mom(torch.sigmoid).cst)


def gate_activations(s: torch.Tensor, num_scalars: int, mask: torch.Tensor | None = None):
    """``(silu(scalars), sigmoid(gates))`` of ``s = [scalars, gates]``, normalised as e3nn's
    ``Gate`` does, each times ``mask`` if given."""
    scalars, gates = s.split([num_scalars, s.shape[-1] - num_scalars], dim=-1)
    if mask is None:
        return F.silu(scalars) * C_SILU, torch.sigmoid(gates) * C_SIGMOID
    return F.silu(scalars) * (mask * C_SILU), torch.sigmoid(gates) * (mask * C_SIGMOID)


def gate(s: torch.Tensor, v: torch.Tensor, num_scalars: int, mask: torch.Tensor | None = None):
    """e3nn's ``Gate(Nx0e, [silu], Mx0e, [sigmoid], Mx1o)`` on ``(s, v)``: ``s`` holds the ``N``
    scalars then the ``M`` gates; an optional ``mask`` multiplies the whole output."""
    scalars, gates = gate_activations(s, num_scalars, mask)
    return scalars, v * gates.unsqueeze(-2)


class GateL1(nn.Module):
    """:func:`gate` as a module (``num_scalars`` fixed)."""

    def __init__(self, num_scalars: int):
        super().__init__()
        self.num_scalars = num_scalars

    def extra_repr(self) -> str:
        return f"num_scalars={self.num_scalars}"

    def forward(self, s: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None):
        return gate(s, v, self.num_scalars, mask)


def gate_irreps(hidden) -> o3.Irreps:
    """The irreps a gated layer's tensor product outputs for ``hidden``: scalars, one gate per
    vector channel, vectors (e3nn's ``Gate(...).irreps_in``)."""
    n0, n1 = split_channels(hidden)
    return o3.Irreps(f"{n0 + n1}x0e + {n1}x1o") if n1 else o3.Irreps(f"{n0}x0e")
