"""EGNN: exact E(3) and permutation equivariance at gamma = 0, broken at gamma = 1, and the dense
batched layer equal to a straightforward per-edge implementation."""

from __future__ import annotations

import pytest
import torch

from benchmark.evaluate import assert_equivariant, equivariance_error
from benchmark.experiment import resolve
from benchmark.train import build
from benchmark.backbones._egnn_reference import per_edge_forward
from conftest import tiny_overrides


@pytest.fixture(scope="module")
def built64():
    cfg = resolve("nbody", "egnn", "unconstrained", train_size=32,
                  overrides=tiny_overrides("nbody", "egnn", ["train.dtype=float64", "model.hidden=32",
                                                             "model.layers=4"]))
    return build(cfg)


def _batch(b):
    return b.task.split("valid").index(slice(0, 16))


def test_default_parameter_count_matches_paper_model():
    strict = build(resolve("nbody", "egnn", "strict", train_size=32, overrides=tiny_overrides("nbody", "egnn")[:3]))
    # hidden 64, 4 layers: the EGNN N-body model has about 134k parameters
    assert strict.model.num_parameters() == 134_020
    assert strict.model.num_gammas == 0


@pytest.mark.parametrize("how", ["gamma0", "projected"])
def test_equivariant_at_gamma_zero(built64, how):
    model, task = built64.model, built64.task
    batch = _batch(built64)
    gen = torch.Generator().manual_seed(3)
    if how == "gamma0":
        model.set_gammas(0.0)
        assert_equivariant(model, task, batch, n_samples=5, atol=1e-10, generator=gen)
        model.set_gammas(1.0)
    else:
        with model.projected():
            assert_equivariant(model, task, batch, n_samples=5, atol=1e-10, generator=gen)


def test_samples_cover_reflections_and_translations(built64):
    g = built64.task.group_sample(64, torch.Generator().manual_seed(0))
    dets = torch.linalg.det(g.rotation)
    assert (dets < 0).any() and (dets > 0).any()
    assert g.translation.abs().max() > 0.1


def test_permutation_equivariant_at_gamma_zero(built64):
    model = built64.model
    batch = _batch(built64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad(), model.projected():
        out = model(batch)
        out_perm = model(batch.permute_nodes(perm))
    assert (out_perm - out[:, perm]).abs().max() < 1e-10


def test_relaxed_model_is_measurably_not_equivariant(built64):
    model, task = built64.model, built64.task
    model.set_gammas(1.0)
    err = equivariance_error(model, task, _batch(built64), n_samples=3)
    assert err["rel"] > 1e-3
    # while the projected model's error is at float64 round-off
    with model.projected():
        assert equivariance_error(model, task, _batch(built64), n_samples=3)["rel"] < 1e-12


@pytest.mark.parametrize("gamma", [0.0, 0.7])
def test_dense_layer_equals_per_edge_reference(built64, gamma):
    model = built64.model
    model.set_gammas(gamma)
    batch = _batch(built64)
    with torch.no_grad():
        dense = model(batch)
        ref = per_edge_forward(model, batch)
    model.set_gammas(1.0)
    assert (dense - ref).abs().max() < 1e-10


def test_lie_derivative_error_vanishes_only_when_projected(built64):
    from benchmark.evaluate import lie_derivative_error
    model, task = built64.model, built64.task
    batch = _batch(built64)
    model.set_gammas(1.0)
    assert lie_derivative_error(model, task, batch) > 1e-3
    with model.projected():
        assert lie_derivative_error(model, task, batch) < 1e-10


def test_explicit_edge_mask_matches_fully_connected(built64):
    model = built64.model
    batch = _batch(built64)
    N = batch.pos.shape[1]
    full = (1 - torch.eye(N, dtype=batch.pos.dtype)).expand(len(batch), N, N)
    with torch.no_grad():
        assert (model(batch.replace(edge_mask=full)) - model(batch)).abs().max() < 1e-12
        # dropping one edge everywhere changes the output, and stays equivariant when projected
        cut = full.clone()
        cut[:, 0, 1] = cut[:, 1, 0] = 0
        masked = batch.replace(edge_mask=cut)
        assert (model(masked) - model(batch)).abs().max() > 1e-6
    with model.projected():
        assert_equivariant(model, built64.task, masked, atol=1e-10)
