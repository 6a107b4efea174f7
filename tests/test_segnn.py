"""Backbone ``segnn``: equal to a per-edge e3nn implementation, equivariant at gamma = 0, trainable.

:class:`ReferenceSEGNN` is the straightforward implementation of the same network: a graph of
edges ``(sender, receiver)``, e3nn's ``FullyConnectedTensorProduct``, ``spherical_harmonics`` and
``Gate`` applied to gathered per-edge features, aggregation by ``index_add_``. It reads every
parameter (tensor-product weights, biases, relaxed layers and their branches) from a fast
:class:`~benchmark.backbones.segnn.SEGNN`, so the two compute the same function of the same
parameters, and the tests prove them equal (values and gradients).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from e3nn import o3
from e3nn.nn import Gate
from torch import nn

from benchmark.evaluate import assert_equivariant, equivariance_error
from benchmark.experiment import resolve
from benchmark.groups import E3Elements, IrrepsRep
from benchmark.nn._tensor_product import (GateL1, TensorProductL1, from_flat, gate_irreps, to_flat,
                                          weight_balanced_irreps)
from benchmark.registry import METHODS
from benchmark.train import build, train

from conftest import tiny_overrides

ATTR = o3.Irreps("1x0e + 1x1o")


# ---------------------------------------------------------------------------------------------
# The reference: per-edge e3nn
# ---------------------------------------------------------------------------------------------
class ReferenceTP(nn.Module):
    """e3nn's tensor product with the weight and bias of a fast :class:`TensorProductL1`."""

    def __init__(self, fast: TensorProductL1):
        super().__init__()
        self.fast = [fast]                    # not a submodule: the parameters stay the fast model's
        self.tp = o3.FullyConnectedTensorProduct(fast.irreps_in, ATTR, fast.irreps_out,
                                                 shared_weights=True, internal_weights=False)
        self.scalar_index = torch.cat([torch.arange(sl.start, sl.stop)
                                       for (_, ir), sl in zip(fast.irreps_out, fast.irreps_out.slices())
                                       if ir.l == 0] or [torch.zeros(0, dtype=torch.long)])

    def forward(self, x: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
        fast = self.fast[0]
        out = self.tp(x, attr, fast.e3nn_weight())
        if fast.bias is not None:
            out = out.index_add(-1, self.scalar_index, fast.bias.expand(out.shape[:-1] + fast.bias.shape))
        return out


def e3nn_gate(hidden: o3.Irreps) -> Gate:
    n0 = sum(mul for mul, ir in hidden if ir.l == 0)
    n1 = sum(mul for mul, ir in hidden if ir.l == 1)
    return Gate(f"{n0}x0e", [F.silu], f"{n1}x0e", [torch.sigmoid], f"{n1}x1o")


def as_1o(x: torch.Tensor) -> torch.Tensor:
    """A Cartesian vector written in e3nn's basis of 1o (e3nn's own l = 1 polynomial)."""
    return o3.spherical_harmonics(1, x, normalize=False, normalization="norm")


class ReferenceSEGNN(nn.Module):
    """The same SEGNN written the straightforward way (see the module docstring)."""

    def __init__(self, fast):
        super().__init__()
        self.fast = [fast]
        hidden = fast.hidden_irreps
        self.hidden = hidden
        self.gate = e3nn_gate(hidden)
        self.embedding = ReferenceTP(fast.embedding)
        self.layers = [dict(m0=ReferenceTP(l.message0), m1=ReferenceTP(l.message1), u0=ReferenceTP(l.update0),
                            u1=ReferenceTP(l.update1), relax0=l.relax0, relax1=l.relax1) for l in fast.layers]
        self.readout0 = ReferenceTP(fast.readout0)
        self.readout1 = ReferenceTP(fast.readout1)

    def forward(self, batch) -> torch.Tensor:
        pos, vel = batch.pos, batch.vel
        B, N, _ = pos.shape
        nodes = torch.arange(B * N).view(B, N)
        if batch.edge_mask is None:
            mask = ~torch.eye(N, dtype=torch.bool).expand(B, N, N)
        else:
            mask = batch.edge_mask > 0
        b, i, j = mask.nonzero(as_tuple=True)           # edge from sender j to receiver i
        dst, src = nodes[b, i], nodes[b, j]
        x = pos.reshape(B * N, 3)
        v = vel.reshape(B * N, 3)

        rel = x[src] - x[dst]
        edge_attr = o3.spherical_harmonics(ATTR, rel, normalize=True, normalization="integral")
        count = torch.zeros(B * N, dtype=x.dtype).index_add_(0, dst, torch.ones_like(dst, dtype=x.dtype))
        node_attr = torch.zeros(B * N, ATTR.dim, dtype=x.dtype).index_add_(0, dst, edge_attr)
        node_attr = node_attr / count.clamp(min=1)[:, None]
        node_attr = node_attr + o3.spherical_harmonics(ATTR, v, normalize=True, normalization="integral")
        node_attr = torch.cat([torch.ones_like(node_attr[:, :1]), node_attr[:, 1:]], dim=-1)
        edge_scalars = torch.cat([rel.norm(dim=-1, keepdim=True), batch.edge_attr[b, i, j]], dim=-1)

        centroid = torch.stack([pos[k].mean(dim=0) for k in range(B)])          # per system, over particles
        centred = (pos - centroid[:, None, :]).reshape(B * N, 3)
        scalars = [v.norm(dim=-1, keepdim=True)]
        if batch.node_attr is not None:
            scalars.append(batch.node_attr.reshape(B * N, -1))
        f = torch.cat([as_1o(centred), as_1o(v)] + scalars, dim=-1)               # 2x1o + (1+F)x0e

        f = self.embedding(f, node_attr)
        for layer in self.layers:
            m = self.gate(layer["m0"](torch.cat([f[dst], f[src], edge_scalars], dim=-1), edge_attr))
            m = self.gate(layer["m1"](m, edge_attr))
            agg = torch.zeros(B * N, m.shape[-1], dtype=m.dtype).index_add_(0, dst, m)
            h0 = self.hidden[0].mul                                  # [f, agg] as (2 h0)x0e + (2 h1)x1o
            inp = torch.cat([f[:, :h0], agg[:, :h0], f[:, h0:], agg[:, h0:]], dim=-1)
            u = self.gate(layer["relax0"](layer["u0"](inp, node_attr), inp))
            f = f + layer["relax1"](layer["u1"](u, node_attr), u)
        f = self.gate(self.readout0(f, node_attr))
        out = self.readout1(f, node_attr)                                          # 1x1o
        cart = o3.spherical_harmonics(1, torch.eye(3, dtype=out.dtype), normalize=False, normalization="norm")
        return pos + (out @ torch.linalg.inv(cart)).reshape(B, N, 3)


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------
def _built(method="unconstrained", extra=(), train_size=16, dtype="float64"):
    cfg = resolve("nbody", "segnn", method, train_size=train_size,
                  overrides=tiny_overrides("nbody", "segnn", [f"train.dtype={dtype}", *extra]))
    return build(cfg)


def _randomise(model, seed=0):
    """Random weights everywhere, biases included (they start at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                continue
            if p.dim() == 2:                      # branch matrices: unit-variance outputs
                scale = 1.0 / math.sqrt(p.shape[1])
            else:                                 # e3nn weights are N(0, 1) by design; biases
                scale = 1.0 if name.endswith("weight") else 0.3
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return model


def _random_batch(batch, seed=1, edge_mask=False):
    gen = torch.Generator().manual_seed(seed)
    dt = batch.pos.dtype
    B, N, _ = batch.pos.shape
    changes = dict(pos=torch.randn(B, N, 3, generator=gen, dtype=dt) * 2,
                   vel=torch.randn(B, N, 3, generator=gen, dtype=dt),
                   edge_attr=torch.randn(batch.edge_attr.shape, generator=gen, dtype=dt))
    if edge_mask:
        m = (torch.rand(B, N, N, generator=gen) < 0.6).to(dt) * (1 - torch.eye(N, dtype=dt))
        changes["edge_mask"] = m
    return batch.replace(**changes)


@pytest.fixture(scope="module")
def tiny():
    return _built()


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("irreps_in, irreps_out", [
    ("8x0e + 8x1o + 8x0e + 8x1o + 2x0e", "16x0e + 8x1o"),
    ("2x1o + 3x0e", "8x0e + 8x1o"),
    ("8x0e + 8x1o", "1x1o"),
    ("3x1o + 2x0e + 1x1o", "4x0e"),
])
def test_dense_tensor_product_is_e3nn(irreps_in, irreps_out):
    torch.manual_seed(0)
    tp = TensorProductL1(irreps_in, irreps_out, attr0=0.37).double()
    if tp.bias is not None:
        nn.init.normal_(tp.bias)
    ref = ReferenceTP(tp)
    x = torch.randn(11, o3.Irreps(irreps_in).dim, dtype=torch.float64)
    a = torch.cat([torch.full((11, 1), 0.37, dtype=torch.float64), torch.randn(11, 3, dtype=torch.float64)], -1)
    s, v = from_flat(x, irreps_in)
    s2, v2 = tp(s, v, a[:, 1:])
    torch.testing.assert_close(to_flat(s2, v2, irreps_out), ref(x, a), atol=1e-12, rtol=0)
    # the stored matrix is a permutation of e3nn's flat weight vector
    flat = tp.e3nn_weight().detach().clone()
    assert flat.numel() == ref.tp.weight_numel == tp.weight.numel()
    assert torch.equal(torch.sort(flat).values, torch.sort(tp.weight.detach().flatten()).values)
    other = torch.randn_like(flat)
    tp.load_e3nn_weight(other)
    assert torch.equal(tp.e3nn_weight(), other)


def test_gate_is_e3nn():
    gate = e3nn_gate(o3.Irreps("5x0e + 3x1o"))
    x = torch.randn(7, gate.irreps_in.dim, dtype=torch.float64)
    s, v = GateL1(5)(*from_flat(x, gate.irreps_in))
    torch.testing.assert_close(to_flat(s, v, gate.irreps_out), gate(x), atol=1e-14, rtol=0)
    assert gate.irreps_in == gate_irreps("5x0e + 3x1o").simplify()


def test_flat_layout_round_trip():
    irreps = o3.Irreps("2x0e + 3x1o + 1x0e + 1x1o")
    x = torch.randn(4, irreps.dim)
    torch.testing.assert_close(to_flat(*from_flat(x, irreps), irreps), x, atol=0, rtol=0)


def test_weight_balanced_irreps():
    hidden = weight_balanced_irreps(64)
    assert hidden == o3.Irreps("32x0e + 32x1o")

    def count(irreps):
        return o3.FullyConnectedTensorProduct(irreps, ATTR, irreps).weight_numel
    assert count(hidden) == count(o3.Irreps("64x0e"))
    assert weight_balanced_irreps(16) == o3.Irreps("8x0e + 8x1o")


# ---------------------------------------------------------------------------------------------
# Fast == reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.7, None])
@pytest.mark.parametrize("edge_mask", [False, True])
def test_fast_equals_reference(tiny, gamma, edge_mask):
    """Values and parameter gradients, random inputs and weights, float64, relaxed and projected."""
    model = _randomise(tiny.model)
    ref = ReferenceSEGNN(model)
    batch = _random_batch(tiny.task.split("valid"), edge_mask=edge_mask)
    target = torch.randn_like(batch.pos)
    if gamma is not None:
        model.set_gammas(gamma)
    ctx = model.projected() if gamma is None else torch.enable_grad()
    with ctx:
        outs, grads = [], []
        for net in (model, ref):
            model.zero_grad()
            out = net(batch)
            ((out - target) ** 2).sum().backward()
            outs.append(out.detach())
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=0)
    assert (outs[0] - outs[1]).abs().max() < 1e-12 * outs[1].abs().max()       # in fact equal to rounding
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-6, msg=name)
    model.set_gammas(1.0)


def test_default_size_equals_reference():
    """The N-body configuration (hidden 64 = 32x0e + 32x1o, 4 layers) against the reference."""
    cfg = resolve("nbody", "segnn", "unconstrained", train_size=8,
                  overrides=["task.num_train=8", "task.num_valid=4", "task.num_test=4", "train.dtype=float64"])
    built = build(cfg)
    model = _randomise(built.model, seed=3)
    assert model.hidden_irreps == o3.Irreps("32x0e + 32x1o") and len(model.layers) == 4
    batch = _random_batch(built.task.split("valid"), seed=4)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), ReferenceSEGNN(model)(batch), atol=1e-6, rtol=0)


def test_float32_close_to_reference(tiny):
    built = _built(dtype="float32")
    batch = built.task.split("valid")
    with torch.no_grad():
        torch.testing.assert_close(built.model(batch), ReferenceSEGNN(built.model)(batch), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Symmetry
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["gamma0", "projected", "strict"])
def test_equivariant_at_gamma_zero(how):
    built = _built("strict") if how == "strict" else _built()
    model, task = built.model, built.task
    _randomise(model, seed=5)
    batch = task.split("valid")
    if how == "strict":
        assert model.num_gammas == 0
        assert_equivariant(model, task, batch, atol=1e-10)
    elif how == "gamma0":
        model.set_gammas(0.0)
        assert_equivariant(model, task, batch, atol=1e-10)
    else:
        with model.projected():
            assert_equivariant(model, task, batch, atol=1e-10)
    # reflections alone (det = -1, no rotation) and a pure translation, explicitly
    n = len(batch)
    eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    for g in (E3Elements(-eye, torch.zeros(n, 3, dtype=torch.float64)),
              E3Elements(eye, torch.full((n, 3), 3.5, dtype=torch.float64))):
        ctx = model.projected() if how == "projected" else torch.no_grad()
        with ctx, torch.no_grad():
            torch.testing.assert_close(model(task.act_input(g, batch)), task.act_output(g, model(batch)),
                                       atol=1e-10, rtol=0)


def test_permutation_equivariant(tiny):
    model, task = _randomise(tiny.model, seed=6), tiny.task
    batch = task.split("valid")
    perm = torch.tensor([3, 0, 4, 1, 2])
    for gamma in (0.0, 1.0):        # the branches act per node: permutations hold for any gamma
        model.set_gammas(gamma)
        with torch.no_grad():
            torch.testing.assert_close(model(batch.permute_nodes(perm)), model(batch)[:, perm], atol=1e-10, rtol=0)
    model.set_gammas(1.0)


def test_not_equivariant_at_gamma_one(tiny):
    model, task = tiny.model, tiny.task
    model.set_gammas(1.0)
    err = equivariance_error(model, task, task.split("valid"))
    assert err["rel"] > 1e-4, err
    with pytest.raises(AssertionError):
        assert_equivariant(model, task, task.split("valid"), atol=1e-10)


def test_centring_is_over_particles(tiny):
    """Input vectors are x_i minus the mean over the system's particles, translation invariant
    (the published code averaged the coordinates of each particle instead)."""
    model, task = tiny.model, tiny.task
    batch = task.split("valid")
    B, N, _ = batch.pos.shape
    centroid = model.centroid(batch.pos)
    for k in range(B):
        manual = sum(batch.pos[k, p] for p in range(N)) / N
        torch.testing.assert_close(centroid[k, 0], manual, atol=1e-12, rtol=0)
    s, v = model.input_features(batch)
    cart = o3.spherical_harmonics(1, torch.eye(3, dtype=torch.float64), normalize=False, normalization="norm")
    torch.testing.assert_close(v[..., 0] @ torch.linalg.inv(cart), batch.pos - centroid, atol=1e-12, rtol=0)
    assert v[..., 0].sum(dim=1).abs().max() < 1e-12                        # centred per system
    shift = torch.randn(B, 1, 3, dtype=torch.float64) * 10
    flat = model.input_flat(batch)
    torch.testing.assert_close(model.input_flat(batch.replace(pos=batch.pos + shift)), flat, atol=1e-12, rtol=0)
    assert model.input_irreps == o3.Irreps("2x1o + 1x0e")
    # a per-particle average of coordinates is not invariant: the test above would catch it
    wrong = batch.pos - batch.pos.mean(dim=-1, keepdim=True)
    assert not torch.allclose(wrong, (batch.pos + shift) - (batch.pos + shift).mean(dim=-1, keepdim=True))


# ---------------------------------------------------------------------------------------------
# Relaxation API
# ---------------------------------------------------------------------------------------------
def test_relaxed_layers_and_representations(tiny):
    model = tiny.model
    layers = model.relaxed_layers()
    names = [layer.layer_name for layer in layers]
    assert names == [f"layer{i}.update{k}" for i in range(len(model.layers)) for k in (0, 1)]
    assert model.num_gammas == 2 * len(model.layers) == model.gammas().numel()
    hidden = model.hidden_irreps
    for layer in layers:
        assert isinstance(layer.rep_in, IrrepsRep) and isinstance(layer.rep_out, IrrepsRep)
        assert not layer.rep_in.positions and not layer.rep_out.positions
        mlp = [m for m in layer.branch if isinstance(m, nn.Linear)]
        assert len(mlp) == 3 and any(isinstance(m, nn.GELU) for m in layer.branch)
        assert mlp[0].in_features == layer.rep_in.dim and mlp[-1].out_features == layer.rep_out.dim
    assert layers[0].rep_in.irreps == o3.Irreps("16x0e + 16x1o") and layers[0].rep_out.irreps == gate_irreps(hidden)
    assert hidden == o3.Irreps("8x0e + 8x1o")
    assert layers[1].rep_in.irreps == hidden and layers[1].rep_out.irreps == hidden


def test_update_product_maps_rep_in_to_rep_out(tiny):
    """The first update's equivariant product maps the branch input's rep_in to its rep_out (that
    each branch input transforms by its rep_in is checked for every backbone in
    tests/test_contracts.py). The tolerance is that of e3nn's ``D_from_matrix``, which is only good
    to ~1e-7 even in float64; a layout error shows as an O(1) difference."""
    model, task = _randomise(tiny.model, seed=7), tiny.task
    batch = task.split("valid")
    g = task.group_sample(len(batch), torch.Generator().manual_seed(2)).to(torch.float64)
    N = batch.pos.shape[1]
    g_node = E3Elements(g.rotation.repeat_interleave(N, 0), g.translation.repeat_interleave(N, 0))
    with torch.no_grad(), model.projected(False):
        model.set_gammas(0.0)
        with model.recording_branch_inputs() as layers:
            model(batch)
            before = [layer.last_input for layer in layers]
        layer0 = model.layers[0]
        rep_in, rep_out = layer0.relax0.rep_in, layer0.relax0.rep_out
        x = before[0].reshape(-1, rep_in.dim)
        a1 = torch.randn(x.shape[0], 3, dtype=x.dtype)
        ga1 = (g_node.rotation @ a1[:, :, None])[..., 0]         # the attributes rotate too (1o)
        sa = layer0.update0(*from_flat(x, rep_in.irreps), a1)
        gsa = layer0.update0(*from_flat(rep_in.act(g_node, x), rep_in.irreps), ga1)
        torch.testing.assert_close(to_flat(*gsa, rep_out.irreps), rep_out.act(g_node, to_flat(*sa, rep_out.irreps)),
                                   atol=1e-5, rtol=0)
    model.set_gammas(1.0)


def test_branch_kinds():
    linear = _built(extra=["model.branch=linear"]).model
    for layer in linear.relaxed_layers():
        assert isinstance(layer.branch, nn.Linear) and layer.branch.bias is None
    none = _built(extra=["model.branch=none"]).model
    assert none.num_gammas == 0 and none.relaxed_layers() == []
    assert none.num_parameters() < linear.num_parameters()


def test_default_configuration():
    from benchmark.backbones.segnn import SEGNNConfig
    cfg = SEGNNConfig()
    assert (cfg.hidden, cfg.layers, cfg.lmax_h, cfg.lmax_attr, cfg.branch, cfg.branch_layers) == (64, 4, 1, 1, "mlp", 3)
    run = resolve("nbody", "segnn", "unconstrained")
    assert (run.train.batch_size, run.train.lr, run.train.weight_decay) == (100, 5e-4, 1e-12)
    assert resolve("nbody", "segnn", "unconstrained", preset="ace").train.lr == 9e-4
    assert math.isclose(resolve("nbody", "segnn", "strict").train.lr, 5e-4)


def test_coefficients_keep_float64_precision():
    """Casting a model to float32 and back must not round e3nn's normalisation constants."""
    tp = TensorProductL1("4x0e + 2x1o", "3x0e + 1x1o", attr0=0.3)
    tp.float().double()
    assert tp.coef.dtype == torch.float64
    assert torch.equal(tp.coef, tp._coef64)


@pytest.mark.slow
def test_compiles_without_graph_breaks():
    """``torch.compile(model, fullgraph=True)`` (as ``train.compile`` uses it, relaxed layers
    included) traces the whole network in one graph: same values and gradients as eager."""
    model = _randomise(_built().model, seed=8)
    batch = _random_batch(_built().task.split("valid"), seed=9)
    compiled = torch.compile(model, fullgraph=True)
    results = []
    for net in (compiled, model):
        model.zero_grad()
        out = net(batch)
        (out ** 2).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-10, rtol=1e-10)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], atol=1e-9, rtol=1e-9, msg=name)


# ---------------------------------------------------------------------------------------------
# Every method trains on it
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS.list())
def test_every_method_trains(method, tiny_config, tmp_path):
    cfg = tiny_config(method, backbone="segnn", epochs=2, train_size=32)
    record, _ = train(cfg, results=tmp_path, progress=False)
    assert record["status"] == "completed", record["reason"]
    for variant in record["variants"].values():
        assert math.isfinite(variant["val_metric"]) and math.isfinite(variant["test_metric"])
