"""The contract every registered backbone keeps on every task it declares, checked over the
registry itself: a new backbone (or task) gets all of it without editing this file.

In float64, per case of the task's group (rotation, reflection, translation for E(3)) and for a
relabelling of the nodes: exactly equivariant at gamma = 0 and under ``projected()``, measurably
not at gamma = 1; the strict build has no branches and no gammas; ``num_gammas`` counts the
relaxed layers; each relaxed layer's branch input transforms by the representation it declares.
"""

from __future__ import annotations

import pytest
import torch

from benchmark.evaluate import EQUIVARIANCE_RTOL, assert_equivariant, equivariance_cases
from benchmark.experiment import resolve
from benchmark.registry import BACKBONES, METHODS, TASKS
from benchmark.train import build
from conftest import tiny_overrides

PAIRS = [(b, t) for b in BACKBONES.list() for t in TASKS.list()
         if "*" in BACKBONES.get(b).obj.tasks or t in BACKBONES.get(b).obj.tasks]


def _equivariant(backbone: str) -> bool:
    """``False`` for a backbone declared not equivariant at all (``equivariant = False``, a plain
    reference network): it is checked to be measurably not equivariant instead."""
    return BACKBONES.get(backbone).obj.equivariant


def _built(backbone: str, task: str, method: str = "unconstrained"):
    cfg = resolve(task, backbone, method, train_size=16,
                  overrides=tiny_overrides(task, backbone, ["train.dtype=float64"]))
    built = build(cfg, progress=False)
    with torch.no_grad():                       # away from the initialisation: no accidental zeros
        gen = torch.Generator().manual_seed(3)
        for p in built.model.parameters():
            if p is not None and p.dim() > 0:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return built


def _batch(built):
    data = built.task.split("valid")
    return data.index(slice(0, 8)) if hasattr(data, "index") else data


def test_every_backbone_declares_registered_tasks():
    assert PAIRS, "no backbone supports any registered task"
    for name in BACKBONES.list():
        tasks = BACKBONES.get(name).obj.tasks
        assert "*" in tasks or set(tasks) <= set(TASKS.list()), (name, tasks)


@pytest.fixture(scope="module", params=PAIRS, ids=[f"{b}-{t}" for b, t in PAIRS])
def relaxed(request):
    backbone, task = request.param
    return _built(backbone, task)


def test_equivariant_at_gamma_zero_and_projected_per_case(relaxed):
    model, task, batch = relaxed.model, relaxed.task, _batch(relaxed)
    model.eval()
    if not _equivariant(relaxed.cfg.backbone):
        with torch.no_grad(), pytest.raises(AssertionError, match="not equivariant"):
            assert_equivariant(model, task, batch, n_samples=2, permutation=False)
        return
    with torch.no_grad():
        model.set_gammas(0.0)
        zero = assert_equivariant(model, task, batch, n_samples=2)
        model.set_gammas(1.0)
        with model.projected():
            projected = assert_equivariant(model, task, batch, n_samples=2)
    expected = set(task.group.cases(1, torch.Generator().manual_seed(0)))
    assert expected <= set(zero) and expected <= set(projected)
    has_nodes = task.permute_nodes(torch.arange(1), batch) is not None
    assert ("permutation" in zero) == has_nodes      # node tasks are permutation-equivariant too


def test_measurably_not_equivariant_at_gamma_one(relaxed):
    model, task, batch = relaxed.model, relaxed.task, _batch(relaxed)
    with torch.no_grad():
        model.set_gammas(1.0)
        errors = equivariance_cases(model, task, batch, n_samples=2, permutation=False)
    assert max(errors.values()) > 1e3 * EQUIVARIANCE_RTOL[torch.float64], errors
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(model, task, batch, n_samples=2, permutation=False)


def test_num_gammas_counts_the_relaxed_layers(relaxed):
    model = relaxed.model
    layers = model.relaxed_layers()
    if not _equivariant(relaxed.cfg.backbone):       # a plain network: nothing to relax
        assert layers == [] and model.num_gammas == 0 == model.gammas().numel()
        return
    assert layers and model.num_gammas == len(layers) == model.gammas().numel()
    assert len({layer.layer_name for layer in layers}) == len(layers)
    assert all(layer.rep_in.dim > 0 and layer.rep_out.dim > 0 for layer in layers)


def test_branch_inputs_transform_by_their_declared_representation(relaxed):
    """Layer by layer: the input each branch sees at gamma = 0 transforms by its ``rep_in``
    (one group element per sample, repeated over the rows of that sample)."""
    model, task, batch = relaxed.model, relaxed.task, _batch(relaxed)
    for case, g in task.group.cases(len(batch), torch.Generator().manual_seed(5), torch.float64).items():
        with torch.no_grad(), model.projected(False):
            model.set_gammas(0.0)
            with model.recording_branch_inputs() as layers:
                model(batch)
                before = [layer.last_input for layer in layers]
                model(task.act_input(g, batch))
                after = [layer.last_input for layer in layers]
            model.set_gammas(1.0)
        for layer, x, gx in zip(layers, before, after):
            rows = x.numel() // (len(batch) * layer.rep_in.dim)
            g_rows = g[torch.arange(len(batch)).repeat_interleave(rows)]
            x, gx = x.reshape(-1, layer.rep_in.dim), gx.reshape(-1, layer.rep_in.dim)
            scale = x.abs().max().item()
            # e3nn's Wigner matrices from rotation matrices are good to ~1e-7 even in float64
            torch.testing.assert_close(gx, layer.rep_in.act(g_rows, x), atol=1e-5 * max(scale, 1.0), rtol=0,
                                       msg=lambda m, name=layer.layer_name, case=case: f"{name}, {case}: {m}")


@pytest.mark.parametrize("backbone,task", PAIRS)
def test_the_strict_build_has_no_branches_and_is_equivariant(backbone, task):
    strict_methods = [m for m in METHODS.list() if not METHODS.get(m).obj.uses_branch]
    assert strict_methods
    for method in strict_methods:
        built = _built(backbone, task, method)
        model = built.model
        assert model.relaxed_layers() == [] and model.num_gammas == 0
        assert model.branch_parameters() == [] and model.gammas().numel() == 0
        if _equivariant(backbone):
            with torch.no_grad():
                assert_equivariant(model, built.task, _batch(built), n_samples=2)
