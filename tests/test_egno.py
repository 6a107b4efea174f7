"""EGNO: exact E(3) and permutation equivariance at gamma = 0 (N-body, and MoCap without its height
feature), broken at gamma = 1 by the coordinate branches alone; the temporal Fourier convolutions
against a direct discrete Fourier transform, commuting with rotations and never mixing axes; the
output shapes with and without ``target_seq``; the BatchNorm statistics rules; the ACE relaxation's
gammas and shared parameters; training of every method on MoCap with its height feature."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.backbones.egno import EquivariantTemporalConv, TemporalConv, time_embedding
from benchmark.backbones.egnn import EGNNLayer
from benchmark.config import ConfigError
from benchmark.evaluate import assert_equivariant, equivariance_cases
from benchmark.experiment import resolve
from benchmark.groups import EuclideanGroup
from benchmark.registry import METHODS
from benchmark.train import build, train
from conftest import interrupted_and_resumed, tiny_overrides


def _built(task: str = "nbody", method: str = "unconstrained", extra=(), train_size: int = 16):
    cfg = resolve(task, "egno", method, train_size=train_size,
                  overrides=tiny_overrides(task, "egno", ["train.dtype=float64", *extra]))
    return build(cfg, progress=False)


@pytest.fixture(scope="module")
def nbody64():
    return _built()


def _batch(built, n: int = 8):
    return built.task.split("valid").index(slice(0, n))


def _layers(model, suffix: str):
    return [layer for layer in model.relaxed_layers() if layer.layer_name.endswith(suffix)]


# ---------------------------------------------------------------------------------------------
# symmetry of the network
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["gamma0", "projected"])
@pytest.mark.parametrize("task", ["nbody", "mocap-run"])
def test_equivariant_at_gamma_zero(task, how):
    built = _built(task, extra=["task.height=false"] if task == "mocap-run" else [])
    model, batch = built.model, _batch(built)
    model.eval()
    with torch.no_grad():
        if how == "gamma0":
            model.set_gammas(0.0)
            errors = assert_equivariant(model, built.task, batch, n_samples=2)
        else:
            with model.projected():
                errors = assert_equivariant(model, built.task, batch, n_samples=2)
    assert {"rotation", "reflection", "translation", "permutation"} <= set(errors)


def test_measurably_not_equivariant_at_gamma_one_through_the_coordinate_branches(nbody64):
    model, task, batch = nbody64.model, nbody64.task, _batch(nbody64)
    model.eval()
    with torch.no_grad():
        model.set_gammas(1.0)
        broken = equivariance_cases(model, task, batch, permutation=False)
        # the feature stream sees invariant inputs only: with the coordinate gammas at 0 the
        # relaxed network stays exactly equivariant
        for layer in _layers(model, ".x"):
            layer.gamma.fill_(0.0)
        features_only = assert_equivariant(model, task, batch, n_samples=2)
        model.set_gammas(1.0)
    assert min(broken.values()) > 1e-3, broken
    assert max(features_only.values()) < 1e-10


# ---------------------------------------------------------------------------------------------
# the temporal Fourier convolutions
# ---------------------------------------------------------------------------------------------
def _direct_fourier(z: torch.Tensor, weight: torch.Tensor, modes: int) -> torch.Tensor:
    """The spectral product along axis 1 of z (B, P, ..., C) written out: DFT of the kept modes,
    channel mixing by the complex weights, real inverse DFT (modes < P / 2)."""
    P = z.shape[1]
    t = torch.arange(P, dtype=torch.float64)
    W = torch.complex(weight[..., 0], weight[..., 1])                    # (C_in, C_out, M)
    out = torch.zeros(z.shape[:-1] + (W.shape[1],), dtype=torch.float64)
    for k in range(modes):
        basis = torch.exp(-2j * math.pi * k * t / P)                     # (P,)
        coeff = torch.einsum("p,bp...c->b...c", basis, z.to(torch.complex128))
        mixed = torch.einsum("b...i,io->b...o", coeff, W[:, :, k])
        wave = torch.exp(2j * math.pi * k * t / P)
        term = torch.einsum("p,b...o->bp...o", wave, mixed).real / P
        out = out + (term if k == 0 else 2 * term)
    return out


def test_temporal_convolutions_equal_a_direct_fourier_transform():
    torch.manual_seed(0)
    B, P, N, C, M = 3, 5, 4, 6, 2
    conv = TemporalConv(C, M).double()
    h = torch.randn(B, P, N, C, dtype=torch.float64)
    want = h + torch.nn.functional.leaky_relu(_direct_fourier(h, conv.weight.detach(), M))
    torch.testing.assert_close(conv(h), want, rtol=1e-12, atol=1e-12)

    xconv = EquivariantTemporalConv(M).double()
    x, v = torch.randn(B, P, N, 3, dtype=torch.float64), torch.randn(B, P, N, 3, dtype=torch.float64)
    c = torch.randn(B, 1, 1, 3, dtype=torch.float64)
    z = torch.stack([x - c, v], dim=-1)
    want = z + _direct_fourier(z, xconv.weight.detach(), M)
    x_out, v_out = xconv(x, v, c)
    torch.testing.assert_close(x_out, want[..., 0] + c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v_out, want[..., 1], rtol=1e-12, atol=1e-12)
    # a state constant in time has only the zero mode: the product is the real part of its weight
    const = z[:, :1].expand_as(z)
    x_c, v_c = xconv(const[..., 0] + c, const[..., 1], c)
    W0 = xconv.weight.detach()[:, :, 0, 0]
    torch.testing.assert_close(torch.stack([x_c - c, v_c], -1), const + const @ W0, rtol=1e-12, atol=1e-12)


def test_equivariant_temporal_convolution_commutes_with_e3_and_never_mixes_axes():
    torch.manual_seed(1)
    B, P, N = 4, 5, 6
    conv = EquivariantTemporalConv(2).double()
    with torch.no_grad():
        conv.weight.normal_()
    x, v = torch.randn(B, P, N, 3, dtype=torch.float64), torch.randn(B, P, N, 3, dtype=torch.float64)
    c = x[:, :1].mean(2, keepdim=True)
    g = EuclideanGroup().sample(B, torch.Generator().manual_seed(2), torch.float64)
    R, t = g.rotation[:, None, None], g.translation[:, None, None, :]

    def rot(a):
        return (R @ a[..., None])[..., 0]

    x_out, v_out = conv(x, v, c)
    gx_out, gv_out = conv(rot(x) + t, rot(v), rot(c) + t)
    torch.testing.assert_close(gx_out, rot(x_out) + t, rtol=0, atol=1e-12)
    torch.testing.assert_close(gv_out, rot(v_out), rtol=0, atol=1e-12)
    # the Jacobian is block-diagonal over the axes: a change of the y components moves only y
    bump = torch.zeros_like(x)
    bump[..., 1] = torch.randn(B, P, N, dtype=torch.float64)
    x_b, v_b = conv(x + bump, v - bump, c)
    for axis in (0, 2):
        assert torch.equal(x_b[..., axis], x_out[..., axis]) and torch.equal(v_b[..., axis], v_out[..., axis])
    assert (x_b[..., 1] - x_out[..., 1]).abs().max() > 1e-3


def test_time_embedding_known_values():
    e = time_embedding(5, 8, dtype=torch.float64)
    w = torch.tensor([10000.0 ** (-k / 3) for k in range(4)], dtype=torch.float64)
    t = torch.arange(5, dtype=torch.float64)[:, None]
    torch.testing.assert_close(e, torch.cat([torch.sin(t * w), torch.cos(t * w)], -1), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="even size"):
        time_embedding(5, 7)


def test_egno_layer_clamp_shortens_long_updates_equivariantly():
    torch.manual_seed(3)

    class Cfg:
        coord_clamp = 0.5

    layer = EGNNLayer(8, 2, Cfg(), "l", variant="egno", relaxed=False).double()
    B, N = 3, 5
    nbr = torch.stack([torch.cat([torch.arange(i), torch.arange(i + 1, N)]) for i in range(N)])
    h = torch.randn(B, N, 8, dtype=torch.float64)
    x = 50 * torch.randn(B, N, 3, dtype=torch.float64)             # long messages: the clamp acts
    vel = torch.zeros(B, N, 3, dtype=torch.float64)
    edge = torch.randn(B, N, N - 1, 2, dtype=torch.float64)
    with torch.no_grad():
        layer.vel_mlp[2].weight.zero_()
        layer.vel_mlp[2].bias.zero_()
        _, x_new = layer.update(h, x, vel, edge, nbr, None, 1 / (N - 1))
        step = (x_new - x).norm(dim=-1)
        g = EuclideanGroup().sample(B, torch.Generator().manual_seed(4), torch.float64)
        R, t = g.rotation[:, None], g.translation[:, None]
        _, gx_new = layer.update(h, (R @ x[..., None])[..., 0] + t, vel, edge, nbr, None, 1 / (N - 1))
    assert step.max() <= 0.5 + 1e-12 and step.max() > 0.49
    torch.testing.assert_close(gx_new, (R @ x_new[..., None])[..., 0] + t, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# outputs, configuration, relaxation
# ---------------------------------------------------------------------------------------------
def test_output_shapes_with_and_without_target_seq():
    built = _built("mocap-run", extra=["task.height=true"], train_size=10)
    model = built.model.eval()
    batch = _batch(built, 4)
    assert batch.target_seq is not None and batch.target_seq.shape == (4, 5, 31, 3)
    with torch.no_grad():
        traj = model(batch)
        last = model(batch.replace(target_seq=None))
    assert traj.shape == (4, 5, 31, 3) and last.shape == (4, 31, 3)
    assert torch.equal(traj[:, -1], last)
    loss = built.task.loss(traj, batch)
    torch.testing.assert_close(loss, ((traj - batch.target_seq) ** 2).mean())
    metric = built.task.metric_per_sample(traj, batch)
    torch.testing.assert_close(metric, ((last - batch.target) ** 2).flatten(1).mean(1))


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^model\.modes=4: timesteps=5 has at most 3 Fourier modes$"):
        resolve("nbody", "egno", "strict", overrides=["model.modes=4"])
    with pytest.raises(ConfigError, match=r"^model\.time_emb_dim=33: must be even$"):
        resolve("nbody", "egno", "strict", overrides=["model.time_emb_dim=33"])
    with pytest.raises(ConfigError, match=r"model.branch='ace-mlp': allowed values are egno-ace, mlp, linear, none"):
        resolve("nbody", "egno", "unconstrained", overrides=["model.branch=ace-mlp"])
    with pytest.raises(ConfigError, match=r"^model\.timesteps=4: task mocap-run gives 5 target frames"):
        _built("mocap-run", extra=["model.timesteps=4"], train_size=10)


def test_ace_relaxation_has_two_gammas_per_layer_and_shares_one_coordinate_map():
    built = build(resolve("nbody", "egno", "ace-eq", train_size=16, overrides=tiny_overrides("nbody", "egno")[:3]))
    model = built.model
    assert model.cfg.layers == 6 and model.cfg.hidden == 128
    names = [layer.layer_name for layer in model.relaxed_layers()]
    assert names == [f"block{i}.{s}" for i in range(6) for s in ("h", "x")]
    assert model.gammas().tolist() == [1.0] * 12 and all(p.requires_grad for p in model.gamma_parameters())
    branch = model.branch_parameters()
    assert len({id(p) for p in branch}) == len(branch)                        # each parameter once
    shared = _layers(model, ".x")[0].branch[0]
    assert all(layer.branch[0] is shared for layer in _layers(model, ".x"))
    assert sum(1 for p in branch if p is shared.weight) == 1
    equivariant = {id(p) for p in model.equivariant_parameters()}
    assert not equivariant & {id(p) for p in branch}
    assert sum(p.numel() for p in branch) + sum(p.numel() for p in model.equivariant_parameters()) \
        == model.num_parameters()
    other = {f"model.branch={kind}": build(resolve("nbody", "egno", "unconstrained", train_size=16, overrides=[
        *tiny_overrides("nbody", "egno"), f"model.branch={kind}"])).model.num_gammas for kind in ("mlp", "linear")}
    assert other == {"model.branch=mlp": 2, "model.branch=linear": 2}      # one per block (2 blocks)


def test_batchnorm_statistics_come_from_training_steps_only(nbody64):
    model, batch = nbody64.model, _batch(nbody64)
    model.train()
    model.set_gammas(1.0)
    coord = _layers(model, ".x")[0]
    bn = coord.branch[1]
    with torch.no_grad():                                 # converge the spectral norms' power iterations
        for _ in range(300):
            coord.branch_output(torch.randn(40, 3, dtype=torch.float64))
    seen = []
    handle = coord.branch.register_forward_hook(lambda module, args, y: seen.append(y.detach()))
    try:
        before = bn.running_mean.clone()
        with model.recording_branch_inputs():
            model(batch)                                  # a training step's forward (autograd on)
        stepped = (bn.running_mean.clone(), bn.running_var.clone())
        with torch.no_grad():
            model(batch)                                  # a no-grad pass in training mode
        alone = coord.branch_output(coord.last_input)     # a method evaluating the branch itself
    finally:
        handle.remove()
    assert not torch.equal(before, stepped[0])
    assert torch.equal(bn.running_mean, stepped[0]) and torch.equal(bn.running_var, stepped[1])
    # on its own the branch is the map the training step applied (that batch's statistics held fixed)
    torch.testing.assert_close(alone, seen[0], rtol=1e-10, atol=1e-10)
    # evaluation mode: running statistics, so a sample's prediction ignores the rest of the batch
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch)[:2], model(batch.index(slice(0, 2))), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS.list())
def test_every_method_trains_on_mocap_with_the_height_feature(method, tiny_config, tmp_path):
    cfg = tiny_config(method, task="mocap-run", backbone="egno", epochs=1, train_size=10,
                      extra=["task.height=true", "train.batch_size=5"])
    record, _ = train(cfg, results=tmp_path, progress=False)
    assert record["status"] == "completed", record["reason"]
    assert set(record["variants"]) == set(METHODS.get(method).obj.variants)


@pytest.mark.parametrize("method", ["lie-anneal", "ace-eq"])
def test_checkpoint_and_resume_give_identical_results(method, tiny_config, tmp_path):
    cfg = tiny_config(method, backbone="egno", epochs=4, extra=["train.eval_every=2"])
    straight, resumed = interrupted_and_resumed(cfg, tmp_path)
    keys = ("status", "variants", "curves", "diagnostics", "params")
    assert straight["status"] == "completed"
    assert {k: resumed[k] for k in keys} == {k: straight[k] for k in keys}
