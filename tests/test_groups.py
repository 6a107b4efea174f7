"""Group actions and representations: sampled elements are valid, ``lie`` is the derivative of
``act``, and Cartesian and e3nn layouts agree."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from benchmark.groups import CartesianRep, EuclideanGroup, IrrepsRep
from benchmark.groups._e3 import e3nn_precision

GROUP = EuclideanGroup()
F64 = torch.float64


def test_samples_are_orthogonal_and_deterministic():
    g = GROUP.sample(50, torch.Generator().manual_seed(1), dtype=torch.float64)
    eye = torch.eye(3, dtype=F64).expand(50, 3, 3)
    assert (g.rotation @ g.rotation.transpose(1, 2) - eye).abs().max() < 1e-12
    h = GROUP.sample(50, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(g.rotation, h.rotation) and torch.equal(g.translation, h.translation)
    inv = g.inverse()
    x = torch.randn(50, 3, dtype=F64)
    back = (inv.rotation @ ((g.rotation @ x[..., None])[..., 0] + g.translation)[..., None])[..., 0] + inv.translation
    assert (back - x).abs().max() < 1e-12


@pytest.mark.parametrize("rep", [
    CartesianRep([("scalar", 2), ("position", 1), ("vector", 2), ("pseudovector", 1), ("pseudoscalar", 1)]),
    IrrepsRep("2x0e + 1x1o + 1x1e + 1x2e + 1x1o", positions=(1,)),
])
@pytest.mark.parametrize("k", range(6))
def test_lie_generates_act(rep, k):
    """act(exp(t A_k)) z == expm(t M_k) z + t c_k, with M_k, c_k read off lie(k, .)."""
    z = torch.randn(4, rep.dim, dtype=F64)
    c = rep.lie(k, torch.zeros(1, rep.dim, dtype=F64))[0]
    M = (rep.lie(k, torch.eye(rep.dim, dtype=F64)) - c).T            # column i = linear part on e_i
    t = torch.tensor(0.37, dtype=F64)
    moved = rep.act(GROUP.exp(k, t, 4), z)
    expected = z @ torch.linalg.matrix_exp(t * M).T + t * c
    assert (moved - expected).abs().max() < 1e-12
    if k < 3:
        assert c.abs().max() == 0          # rotations are linear
    else:
        assert M.abs().max() == 0          # translations only shift positions


@pytest.mark.parametrize("k", range(6))
def test_cartesian_lie_is_jvp_of_act(k):
    rep = CartesianRep([("scalar", 1), ("position", 1), ("vector", 1)])
    z = torch.randn(4, rep.dim, dtype=F64)
    _, tangent = torch.func.jvp(lambda s: rep.act(GROUP.exp(k, s, 4), z), (torch.tensor(0.0, dtype=F64),),
                                (torch.tensor(1.0, dtype=F64),))
    assert (tangent - rep.lie(k, z)).abs().max() < 1e-14


def test_act_is_a_group_action_with_parity():
    rep = CartesianRep([("vector", 1), ("pseudovector", 1), ("pseudoscalar", 1)])
    z = torch.randn(8, rep.dim, dtype=F64)
    g = GROUP.sample(8, torch.Generator().manual_seed(0), dtype=torch.float64)
    out = rep.act(g, z)
    det = torch.linalg.det(g.rotation)
    assert torch.allclose(out[:, :3], (g.rotation @ z[:, :3, None])[..., 0])
    assert torch.allclose(out[:, 3:6], det[:, None] * (g.rotation @ z[:, 3:6, None])[..., 0])
    assert torch.allclose(out[:, 6], det * z[:, 6])


def test_irreps_rep_matches_e3nn_wigner_d():
    rep = IrrepsRep("1x0e + 1x1o + 1x2e")
    g = GROUP.sample(3, torch.Generator().manual_seed(2), dtype=torch.float64)
    z = torch.randn(3, rep.dim, dtype=F64)
    with e3nn_precision(torch.float64):   # e3nn computes in the default dtype otherwise
        D = o3.Irreps("1x0e + 1x1o + 1x2e").D_from_matrix(g.rotation)
    assert torch.allclose(rep.act(g, z), (D @ z[..., None])[..., 0], rtol=0, atol=1e-12)


def test_irreps_positions_transform_like_cartesian_positions():
    """A 1x1o position in an e3nn layout moves exactly as R x + t, also for (B, N, dim) features."""
    irr = IrrepsRep("1x0e + 1x1o", positions=(1,))
    cart = CartesianRep([("scalar", 1), ("position", 1)])
    g = GROUP.sample(4, torch.Generator().manual_seed(5), dtype=F64)
    z = torch.randn(4, 7, 4, dtype=F64)                       # one element per sample, 7 nodes each
    assert (irr.act(g, z) - cart.act(g, z)).abs().max() < 1e-12
    for k in range(6):
        assert (irr.lie(k, z) - cart.lie(k, z)).abs().max() < 1e-12


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_axial_group_keeps_its_axis_and_is_a_subgroup_of_e3(axis):
    from benchmark.groups import AxialEuclideanGroup
    group = AxialEuclideanGroup(axis=axis)
    gen = torch.Generator().manual_seed(3)
    e = torch.zeros(3, dtype=F64)
    e[axis] = 1.0
    for g in [group.sample(40, gen, F64), *group.cases(10, gen, F64).values()]:
        R = g.rotation
        assert (R @ R.transpose(1, 2) - torch.eye(3, dtype=F64)).abs().max() < 1e-12
        assert (R @ e - e).abs().max() < 1e-12                       # the axis is fixed, not flipped
    cases = group.cases(10, gen, F64)
    assert torch.allclose(torch.linalg.det(cases["rotation"].rotation), torch.ones(10, dtype=F64))
    assert torch.allclose(torch.linalg.det(cases["reflection"].rotation), -torch.ones(10, dtype=F64))
    assert torch.equal(cases["translation"].rotation, torch.eye(3, dtype=F64).expand(10, 3, 3))
    assert group.lie_basis == (axis, 3, 4, 5)
    t = torch.tensor(0.3, dtype=F64)
    assert torch.allclose(group.exp(0, t, 1).rotation, GROUP.exp(axis, t, 1).rotation)
    assert AxialEuclideanGroup(axis=axis, translations=False).lie_basis == (axis,)
    with pytest.raises(ValueError, match="axis"):
        AxialEuclideanGroup(axis=3)
