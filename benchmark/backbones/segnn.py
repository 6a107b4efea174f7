"""Backbone ``segnn``: steerable E(3)-equivariant GNN (Brandstetter et al., ICLR 2022), relaxed as in ACE.

Dense batched form for small fully connected graphs: node tensors ``(B, N, ...)``, edge tensors
``(B, N, N, ...)``; steerable features are pairs ``(s, v)`` of scalars ``(..., C0)`` and vectors
``(..., 3, C1)`` (see :mod:`benchmark.nn._tensor_product`), and every steerable layer is e3nn's
``FullyConnectedTensorProduct(features, attributes, out)`` with its own weights, computed as a few
dense contractions (exactly e3nn's numbers; a per-edge e3nn implementation is checked against it in
the tests).

Geometry (positions are not updated; everything below is computed once per forward)::

    r_ij = x_j - x_i                  (the neighbour j seen from the receiver i)
    a_ij = Y(r_ij / |r_ij|)           spherical harmonics l <= 1, integral normalisation
    a_i  = mean_j a_ij + Y(v_i / |v_i|), with its l = 0 component set to 1

Network (``TP_a(f)``: tensor product of ``f`` with attributes ``a`` plus a bias on scalar outputs;
``G``: gate, SiLU on scalars and sigmoid gates on vectors, as e3nn's ``Gate``)::

    f_i  = TP_ai([x_i - mean_k x_k, v_i, |v_i|, node scalars])            input 2x1o + (1+F)x0e
    m_ij = G(TP_aij(G(TP_aij([f_i, f_j, |x_i - x_j|, edge scalars]))))   message: two gated layers
    u_i  = G(TP0_ai([f_i, sum_j m_ij]) + gamma_0 f_neq0([f_i, sum_j m_ij]))
    f_i <- f_i + TP1_ai(u_i) + gamma_1 f_neq1(u_i)                        update: residual
    out  = x_i + TP_ai(G(TP_ai(f_i)))                                     readout to 1x1o

The centroid is the mean over particles of each system (the published code averaged each
particle's coordinates instead, which breaks equivariance). Hidden features are the
weight-balanced irreps of ``hidden`` (:func:`~benchmark.nn._tensor_product.weight_balanced_irreps`:
``N x 0e + N x 1o`` with as many weights per layer as a ``hidden x 0e`` one; 64 gives
``32x0e + 32x1o``). No normalisation layers. Relaxation as in ACE's SEGNN: two relaxed layers per
layer, on the update's two tensor products (``layer{i}.update0``, ``layer{i}.update1``), whose
branches see the flattened e3nn irreps vector of the product's input and return one of its
output irreps (``rep_in`` / ``rep_out`` are :class:`~benchmark.groups.IrrepsRep` of those).

Guarantee: at ``gamma = 0`` (or in ``model.projected()``, or with ``branch=none``) the network is
exactly E(3)- and permutation-equivariant (tested in float64 to 1e-10).

Speed: the first message product is applied to nodes and broadcast to edges, the ``<a1, .>``
contractions run on node tensors, and the whole network traces into one ``torch.compile`` graph
(``train.compile``). ``benchmarks/segnn_step_time.py`` times a training step against the per-edge
e3nn implementation of the tests: at batch 100 on one CPU thread about 3x faster eagerly, about 5x
compiled for the strict network; with ACE's MLP branches (the same cost in both) 2.5x and 3.5-4x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from e3nn import o3
from torch import nn

from benchmark.config import param
from benchmark.groups import IrrepsRep
from benchmark.nn import ACTIVATIONS, BranchConfig, HomotopyModel, RelaxedLayer
from benchmark.nn._tensor_product import (SH0, SH1, TensorProductL1, cartesian_to_e3nn, e3nn_to_cartesian,
                                          from_flat, gate, gate_activations, gate_irreps, irreps_blocks, split_channels,
                                          to_flat, weight_balanced_irreps)
from benchmark.registry import BACKBONES
from benchmark.tasks._base import GeometricBatch

__all__ = ["SEGNNConfig", "SEGNN", "SEGNNLayer", "Geometry"]


@dataclass(frozen=True)
class SEGNNConfig(BranchConfig):
    """SEGNN's settings; the branch settings are :class:`~benchmark.nn.BranchConfig`'s, here an
    mlp of 3 linear maps of width 64 with GELU by default."""

    branch_layers: int = param(3, help="linear layers of the mlp branch", ge=1)
    branch_act: str = param("gelu", help="activation between the branch's linear maps", choices=tuple(ACTIVATIONS))
    hidden: int = param(64, help="width of the weight-balanced hidden irreps (64: 32x0e + 32x1o)", ge=1)
    layers: int = param(4, help="number of message-passing layers", ge=1)
    lmax_h: int = param(1, help="largest degree of the hidden irreps (the dense products cover 1)", choices=(1,))
    lmax_attr: int = param(1, help="largest degree of the edge and node attributes", choices=(1,))
    branch_at: str = param("gate-input", help="where the first update branch is added: into the gate's input "
                           "(gate-input) or to the gate's output (gate-output, the ACE authors' code)",
                           choices=("gate-input", "gate-output"))
    centre_input: bool = param(True, help="subtract each system's centroid from the input positions (E(3)); "
                               "false feeds absolute positions, as the ACE authors' code (O(3) about the origin)")


class Geometry(NamedTuple):
    """What every layer reads of the (fixed) geometry of a batch."""

    mask: torch.Tensor          # (B or 1, N, N, 1): 1 where j sends to i
    edge_sh: torch.Tensor       # (B, N, N, 3): l = 1 harmonics of r_ij (l = 0 is the constant SH0)
    edge_sh_sq: torch.Tensor    # (B, N, N, 1): |edge_sh|^2 (SH1^2, or 0 on self loops)
    edge_scalars: torch.Tensor  # (B, N, N, 1 + E): |x_i - x_j| and the task's invariant edge attributes
    node_sh: torch.Tensor       # (B, N, 3): l = 1 part of the node attributes (l = 0 is 1)


def geometry(pos: torch.Tensor, vel: torch.Tensor, edge_attr: torch.Tensor,
             edge_mask: torch.Tensor | None) -> Geometry:
    """The attributes every layer reads (see the module docstring), from a batch's tensors."""
    N = pos.shape[1]
    if edge_mask is not None:
        mask = edge_mask.to(pos.dtype)
    else:
        mask = (1.0 - torch.eye(N, dtype=pos.dtype, device=pos.device))[None]
    mask = mask[..., None]
    rel = pos[:, None, :, :] - pos[:, :, None, :]                      # rel[b, i, j] = x_j - x_i
    r2 = (rel * rel).sum(-1, keepdim=True)
    dist = torch.where(r2 > 0, r2, torch.ones_like(r2)).sqrt()         # no 0/0 on self loops
    edge_sh = SH1 * cartesian_to_e3nn(rel / dist)
    deg = mask.sum(2).clamp(min=1.0)
    node_sh = (edge_sh * mask).sum(2) / deg + SH1 * cartesian_to_e3nn(F.normalize(vel, dim=-1))
    edge_scalars = torch.cat([dist, edge_attr], dim=-1)
    return Geometry(mask, edge_sh, (edge_sh * edge_sh).sum(-1, keepdim=True), edge_scalars, node_sh)


def centroid(pos: torch.Tensor) -> torch.Tensor:
    """The centre of each system, ``(B, 1, 3)``: the mean over its particles (not over the
    coordinates of each particle, the published code's slip)."""
    return pos.mean(dim=1, keepdim=True)


def input_features(pos: torch.Tensor, vel: torch.Tensor, node_attr: torch.Tensor | None, centre: bool = True):
    """``(s, v)`` of the input irreps ``2x1o + (1+F)x0e``: vectors ``[x_i - centroid, v_i]`` (``[x_i,
    v_i]`` with ``centre=False``), scalars ``[|v_i|, node scalars]``."""
    x = pos - centroid(pos) if centre else pos
    v = torch.stack([cartesian_to_e3nn(x), cartesian_to_e3nn(vel)], dim=-1)   # (B, N, 3, 2)
    s = vel.norm(dim=-1, keepdim=True)
    if node_attr is not None:
        s = torch.cat([s, node_attr], dim=-1)
    return s, v


def aggregate_messages(s: torch.Tensor, v: torch.Tensor, geo: Geometry, tp0: TensorProductL1,
                       tp1: TensorProductL1, hidden: tuple[int, int]):
    """``sum_j m_ij``, ``m_ij = G(TP1_aij(G(TP0_aij([f_i, f_j, e_ij]))))``, masked: node tensors
    ``(B, N, C0)`` and ``(B, N, 3, C1)``. ``hidden = (h0, h1)``: hidden scalar and vector channels.

    The first product is linear in ``[f_i, f_j, e_ij]``: it is applied to the nodes and then
    broadcast to the edges, with ``<a1_ij, .>`` contracted on node tensors by batched matmuls.
    The second needs ``<a1_ij, m_ij>`` of the gated vector messages ``m_ij = g_ij (a1_ij sv_ij +
    p_i + q_j)``, which is ``g_ij (|a1_ij|^2 sv_ij + <a1_ij, p_i> + <a1_ij, q_j>)``, again from
    node tensors; its ``a1_ij sv_ij`` part and its own ``0e x 1o -> 1o`` paths are summed over
    ``j`` as one batched matmul with ``a1``. The only per-edge vector tensors left are
    ``g_ij (p_i + q_j)``, its channel product and the output gates.
    """
    h0, h1 = hidden
    c0, c1 = tp0.cs_out, tp0.cv_out                       # gated outputs: scalars and gates, vectors
    c = c0 + c1
    a1 = geo.edge_sh
    # first product: rows [s_i, s_j, e_ij, v_i, v_j]; the nodes times [K_i | K_j] in one product each
    Ki, Kj, Ke, Kvi, Kvj = tp0.kernel().split([h0, h0, tp0.cs_in - 2 * h0, h1, h1], dim=0)
    Si, Sj = (s @ torch.cat([Ki, Kj], dim=1)).split([c, c], dim=-1)                  # (B, N, C)
    Vi, Vj = (v @ torch.cat([Kvi, Kvj], dim=1)).split([c, c], dim=-1)                # (B, N, 3, C)
    lin0, sv = (Si.unsqueeze(2) + Sj.unsqueeze(1) + geo.edge_scalars @ Ke).split([c0, c1], dim=-1)
    dot0, dot1 = (a1 @ Vi + (a1.transpose(1, 2) @ Vj).transpose(1, 2)).split([c0, c1], dim=-1)
    p, q = Vi.split([c0, c1], dim=-1)[1], Vj.split([c0, c1], dim=-1)[1]
    ms, g = gate_activations(lin0 + dot0 + tp0.bias, h0)
    a1v = (geo.edge_sh_sq * sv + dot1) * g                                             # <a1_ij, m_ij>
    # second product (edge attributes again), gated and masked, summed over j
    KA, KB = tp1.kernel().split([h0, h1], dim=0)
    B0, B1 = KB.split([c0, c1], dim=1)
    o0, o1 = (ms @ KA).split([c0, c1], dim=-1)
    out_s, G = gate_activations(o0 + a1v @ B0 + tp1.bias, h0, geo.mask)
    mvB = ((p.unsqueeze(2) + q.unsqueeze(1)) * g.unsqueeze(-2)) @ B1
    o1 = o1 + (g * sv) @ B1
    agg_v = (mvB * G.unsqueeze(-2)).sum(2) + a1.transpose(-1, -2) @ (o1 * G)
    return out_s.sum(2), agg_v


class SEGNNLayer(nn.Module):
    """One SEGNN layer (two gated message products, two update products, residual) with the two
    relaxed layers of ACE's SEGNN on the update products."""

    def __init__(self, hidden: o3.Irreps, edge_scalars: int, cfg: SEGNNConfig, name: str):
        super().__init__()
        self.hidden = hidden
        self.h0, self.h1 = split_channels(hidden)
        gated = gate_irreps(hidden)
        update_in = o3.Irreps(f"{2 * self.h0}x0e + {2 * self.h1}x1o")       # [f_i, sum_j m_ij], scalars first
        self.message0 = TensorProductL1(hidden + hidden + o3.Irreps(f"{edge_scalars}x0e"), gated, attr0=SH0)
        self.message1 = TensorProductL1(hidden, gated, attr0=SH0)
        self.update0 = TensorProductL1(update_in, gated)
        self.update1 = TensorProductL1(hidden, hidden)
        # flat layouts of the relaxed layers' input and output, as plain integers
        self.blocks_update0 = (irreps_blocks(update_in), irreps_blocks(gated))
        self.blocks_update1 = (irreps_blocks(hidden), irreps_blocks(hidden))
        self.branch_after_gate = cfg.branch_at == "gate-output"
        # the first branch reads the update's input; it returns the gate's input (gate-input) or,
        # as in the ACE authors' code, a hidden feature added to the gate's output (gate-output)
        self.relax0 = self._relaxed_layer(cfg, update_in, hidden if self.branch_after_gate else gated,
                                          f"{name}.update0")
        if self.branch_after_gate:
            self.blocks_update0 = (irreps_blocks(update_in), irreps_blocks(hidden))
        self.relax1 = self._relaxed_layer(cfg, hidden, hidden, f"{name}.update1")

    @staticmethod
    def _relaxed_layer(cfg: SEGNNConfig, irreps_in: o3.Irreps, irreps_out: o3.Irreps, name: str) -> RelaxedLayer:
        rep_in, rep_out = IrrepsRep(irreps_in), IrrepsRep(irreps_out)
        branch = cfg.make_branch(rep_in.dim, rep_out.dim)
        return RelaxedLayer(branch, rep_in, rep_out, name)

    def forward(self, s: torch.Tensor, v: torch.Tensor, geo: Geometry):
        agg_s, agg_v = aggregate_messages(s, v, geo, self.message0, self.message1, (self.h0, self.h1))
        x_s, x_v = torch.cat([s, agg_s], dim=-1), torch.cat([v, agg_v], dim=-1)
        if self.branch_after_gate:
            u_s, u_v = gate(*self.update0(x_s, x_v, geo.node_sh), self.h0)
            u_s, u_v = _relax(self.relax0, u_s, u_v, self.blocks_update0, x_s, x_v)
        else:
            u_s, u_v = _relax(self.relax0, *self.update0(x_s, x_v, geo.node_sh), self.blocks_update0, x_s, x_v)
            u_s, u_v = gate(u_s, u_v, self.h0)
        d_s, d_v = _relax(self.relax1, *self.update1(u_s, u_v, geo.node_sh), self.blocks_update1, u_s, u_v)
        return s + d_s, v + d_v


def _relax(layer: RelaxedLayer, s, v, blocks, in_s, in_v):
    """``f_eq + gamma * f_neq`` on the flattened e3nn irreps vectors (skipped when ``f_eq`` alone
    is evaluated, to spare the layout round trip)."""
    if layer.branch is None or layer.project:
        return s, v
    blocks_in, blocks_out = blocks
    out = layer(to_flat(s, v, blocks_out), lambda: to_flat(in_s, in_v, blocks_in))
    return from_flat(out, blocks_out)


@BACKBONES.register("segnn", config=SEGNNConfig)
class SEGNN(HomotopyModel):
    """Relaxed SEGNN for tasks whose batches are :class:`GeometricBatch` with position targets."""

    tasks = ("nbody", "nbody-field")
    #: The architecture under each paper's protocol (the task's preset of the same name holds the
    #: schedule): ``ace``, the ACE authors' SEGNN (hidden 32x0e + 32x1o, 4 layers, the first branch
    #: added after the gate, their MLP branches ``ace-mlp`` with GELU, about 790k branch
    #: parameters, and absolute input positions); ``cr``, Pertigkiozoglou et al.'s (a bias-free
    #: linear branch, N(0, 1e-4^2), after the gate; centred inputs: relaxbench's default).
    presets = {
        "ace": {"model.hidden": 64, "model.layers": 4, "model.lmax_h": 1, "model.lmax_attr": 1,
                "model.branch": "ace-mlp", "model.branch_act": "gelu", "model.branch_at": "gate-output",
                "model.centre_input": False},
        "cr": {"model.hidden": 64, "model.layers": 4, "model.lmax_h": 1, "model.lmax_attr": 1,
               "model.branch": "linear", "model.branch_at": "gate-output"},
    }

    def __init__(self, cfg: SEGNNConfig, task):
        super().__init__()
        sample = task.split("valid")
        if not isinstance(sample, GeometricBatch):
            raise TypeError(f"segnn needs a task with geometric batches; {task.name} gives {type(sample).__name__}")
        if cfg.lmax_h != 1 or cfg.lmax_attr != 1:
            raise ValueError(f"segnn: lmax_h={cfg.lmax_h}, lmax_attr={cfg.lmax_attr}; only 1 is implemented")
        node_scalars = 1 + (0 if sample.node_attr is None else sample.node_attr.shape[-1])
        edge_scalars = 1 + sample.edge_attr.shape[-1]
        self.cfg = cfg
        self.hidden_irreps = weight_balanced_irreps(cfg.hidden, cfg.lmax_h)
        self.input_irreps = o3.Irreps(f"2x1o + {node_scalars}x0e")
        hidden = self.hidden_irreps
        self.embedding = TensorProductL1(self.input_irreps, hidden)
        self.layers = nn.ModuleList(SEGNNLayer(hidden, edge_scalars, cfg, f"layer{i}") for i in range(cfg.layers))
        self.readout0 = TensorProductL1(hidden, gate_irreps(hidden))
        self.readout1 = TensorProductL1(hidden, "1x1o")

    centroid = staticmethod(centroid)

    def input_features(self, batch: GeometricBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, v)`` of the input irreps ``2x1o + (1+F)x0e``: vectors ``[x_i - centroid, v_i]``,
        scalars ``[|v_i|, node scalars]``."""
        return input_features(batch.pos, batch.vel, batch.node_attr, self.cfg.centre_input)

    def input_flat(self, batch: GeometricBatch) -> torch.Tensor:
        """The input features in e3nn's flat layout of :attr:`input_irreps`."""
        return to_flat(*self.input_features(batch), self.input_irreps)

    def forward(self, batch: GeometricBatch) -> torch.Tensor:
        pos = batch.pos
        geo = geometry(pos, batch.vel, batch.edge_attr, batch.edge_mask)
        s, v = self.embedding(*input_features(pos, batch.vel, batch.node_attr, self.cfg.centre_input), geo.node_sh)
        for layer in self.layers:
            s, v = layer(s, v, geo)
        s, v = gate(*self.readout0(s, v, geo.node_sh), self.readout1.cs_in)      # h0 scalars, h1 gates
        _, v = self.readout1(s, v, geo.node_sh)                                  # 1x1o: the displacement
        return pos + e3nn_to_cartesian(v[..., 0])
