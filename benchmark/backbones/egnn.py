"""Backbone ``egnn``: E(n)-equivariant GNN with velocities (Satorras et al., 2021), relaxed per layer.

Dense batched form for small graphs: node tensors (B, N, H), edge tensors over fixed-size
neighbour lists (B, N, K, .) (K = N - 1 for a fully connected graph, so no self loops are computed). Layer ``i`` (the EGNN velocity layer):

    r_ij = x_i - x_j,  d_ij = |r_ij|^2
    m_ij = phi_e([h_i, h_j, d_ij, a_ij])                       (Linear-SiLU-Linear-SiLU)
    x_i' = x_i + mean_j clamp(r_ij * phi_x(m_ij), -100, 100) + phi_v(h_i) * v_i
    h_i' = h_i + phi_h([h_i, sum_j m_ij])

and the relaxed layer returns ``[h', x'] + gamma_i * f_neq_i([h_i, x_i, v_i])`` with ``f_neq_i`` a
per-node MLP that sees raw coordinates (so it breaks rotations, reflections and translations, not
permutations). Node input ``|v_i|`` (and the task's invariant node attributes); edge attributes
the task's invariant ones plus ``|x_i - x_j|^2`` of the input; output: final positions.

Guarantee: at ``gamma = 0`` (or in ``model.projected()``, or with ``branch=none``) the network is
exactly E(3)- and permutation-equivariant (tested in float64 to 1e-10).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmark.config import param
from benchmark.groups import CartesianRep
from benchmark.nn import BranchConfig, HomotopyModel, RelaxedLayer
from benchmark.registry import BACKBONES
from benchmark.tasks._base import GeometricBatch

__all__ = ["EGNNConfig", "EGNN", "EGNNLayer", "LAYER_VARIANTS", "neighbour_lists", "graph_inputs", "node_inputs"]

#: The layer as EGNN writes it (``egnn``), or as EGNO's released code does (``egno``; see :class:`EGNNLayer`).
LAYER_VARIANTS = ("egnn", "egno")


@dataclass(frozen=True)
class EGNNConfig(BranchConfig):
    """EGNN's settings; the branch settings (an mlp of 2 linear maps of width 64, SiLU) are
    :class:`~benchmark.nn.BranchConfig`'s."""

    hidden: int = param(64, help="hidden width", ge=1)
    layers: int = param(4, help="number of EGNN layers", ge=1)
    coord_clamp: float = param(100.0, help="clamp of each coordinate message", gt=0)


def neighbour_lists(batch: GeometricBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Padded neighbour lists ``nbr`` (N, K) and their mask (B, N, K, 1).

    Fully connected graphs (``edge_mask`` None) list the ``K = N - 1`` other nodes of each node, so
    no work is spent on self loops, and need no mask (``None``); a given ``edge_mask`` is padded to
    its largest degree and masked.
    """
    B, N, _ = batch.pos.shape
    device, dtype = batch.pos.device, batch.pos.dtype
    if batch.edge_mask is None:
        idx = torch.arange(N, device=device)
        nbr = torch.stack([torch.cat([idx[:i], idx[i + 1:]]) for i in range(N)]) if N > 1 \
            else torch.zeros(N, 0, dtype=torch.long, device=device)
        return nbr, None
    any_edge = batch.edge_mask.bool().any(0)                       # (N, N) union over the batch
    K = int(any_edge.sum(1).max().item()) if N else 0
    nbr = torch.zeros(N, K, dtype=torch.long, device=device)
    for i in range(N):
        js = torch.nonzero(any_edge[i]).flatten()
        nbr[i, :len(js)] = js
    valid = torch.arange(K, device=device)[None, :] < any_edge.sum(1)[:, None]   # (N, K)
    mask = batch.edge_mask.to(dtype)[:, torch.arange(N, device=device)[:, None], nbr] * valid
    return nbr, mask[..., None]


def graph_inputs(batch: GeometricBatch):
    """``(nbr, mask, inv_deg, edge_attr)``: the neighbour lists and mask of :func:`neighbour_lists`,
    ``1 / degree`` (a number, or (B, N, 1) under a mask) and the edge inputs (B, N, K, E + 1): the
    task's invariant edge attributes and ``|x_i - x_j|^2`` of the input positions."""
    pos = batch.pos
    nbr, mask = neighbour_lists(batch)
    # mean over neighbours: 1 / degree, (B, N, 1)
    inv_deg = 1.0 / max(nbr.shape[1], 1) if mask is None else 1.0 / mask.sum(2).clamp(min=1.0)
    rows = torch.arange(pos.shape[1], device=pos.device)[:, None]
    r0 = pos[:, :, None, :] - pos[:, nbr]
    edge_attr = torch.cat([batch.edge_attr[:, rows, nbr], (r0 * r0).sum(-1, keepdim=True)], dim=-1)
    return nbr, mask, inv_deg, edge_attr


def node_inputs(batch: GeometricBatch) -> torch.Tensor:
    """The invariant node inputs (B, N, F): ``|v_i|`` and the task's node attributes, if any."""
    node = batch.vel.norm(dim=-1, keepdim=True)
    if batch.node_attr is not None:
        node = torch.cat([node, batch.node_attr], dim=-1)
    return node


class EGNNLayer(nn.Module):
    """One EGNN velocity layer with its relaxation (see the module docstring).

    ``variant="egno"`` is the layer of EGNO's released code instead: ``h_i' = phi_h([h_i, sum_j
    m_ij])`` without the residual, the mean coordinate update clamped rather than each message,
    and a coordinate head ``phi_x`` whose last linear map has a bias and PyTorch's default
    initialisation. Its clamp shortens a mean update longer than ``coord_clamp`` to that length
    (EGNO's code clips each component, which breaks rotation equivariance once it acts).
    ``relaxed=False`` builds the equivariant update alone (no relaxed layer): a backbone that
    relaxes it in its own way calls :meth:`update`.
    """

    def __init__(self, hidden: int, edge_in: int, cfg, name: str, *, variant: str = "egnn",
                 relaxed: bool = True):
        super().__init__()
        if variant not in LAYER_VARIANTS:
            raise ValueError(f"unknown EGNN layer variant {variant!r}; allowed: {', '.join(LAYER_VARIANTS)}")
        H = hidden
        self.hidden = H
        self.clamp = cfg.coord_clamp
        self.variant = variant
        self.edge_mlp = nn.Sequential(nn.Linear(2 * H + 1 + edge_in, H), nn.SiLU(), nn.Linear(H, H), nn.SiLU())
        self.node_mlp = nn.Sequential(nn.Linear(2 * H, H), nn.SiLU(), nn.Linear(H, H))
        if variant == "egnn":
            last = nn.Linear(H, 1, bias=False)
            nn.init.xavier_uniform_(last.weight, gain=0.001)
        else:
            last = nn.Linear(H, 1)
        self.coord_mlp = nn.Sequential(nn.Linear(H, H), nn.SiLU(), last)
        self.vel_mlp = nn.Sequential(nn.Linear(H, H), nn.SiLU(), nn.Linear(H, 1))
        self.relax = None
        if relaxed:
            rep_in = CartesianRep([("scalar", H), ("position", 1), ("vector", 1)])
            rep_out = CartesianRep([("scalar", H), ("vector", 1)])
            branch = cfg.make_branch(rep_in.dim, rep_out.dim)
            self.relax = RelaxedLayer(branch, rep_in, rep_out, name)

    def update(self, h, x, vel, edge_attr, nbr, mask, inv_deg):
        """The equivariant update ``(h', x')`` of the module docstring (no relaxation)."""
        H = self.hidden
        r = x[:, :, None, :] - x[:, nbr]                            # (B, N, K, 3): x_i - x_j
        d = (r * r).sum(-1, keepdim=True)                           # (B, N, K, 1)
        # first edge linear map applied to [h_i, h_j, d, a] without materialising the concat
        lin = self.edge_mlp[0]
        W = lin.weight
        pre = (h @ W[:, :H].T)[:, :, None, :] + (h @ W[:, H:2 * H].T)[:, nbr]
        pre = pre + d * W[:, 2 * H] + edge_attr @ W[:, 2 * H + 1:].T + lin.bias
        m = self.edge_mlp[3](self.edge_mlp[2](self.edge_mlp[1](pre)))      # (B, N, K, H)
        trans = r * self.coord_mlp(m)
        if self.variant == "egnn":
            trans = torch.clamp(trans, -self.clamp, self.clamp)
        if mask is not None:
            m = m * mask
            trans = trans * mask
        mean = trans.sum(2) * inv_deg
        if self.variant == "egnn":
            x_new = x + mean + self.vel_mlp(h) * vel
            h_new = h + self.node_mlp(torch.cat([h, m.sum(2)], dim=-1))
        else:
            # by length, not per component: the same rescaling for every orientation (equivariant)
            shrink = self.clamp / (mean * mean).sum(-1, keepdim=True).clamp_min(self.clamp ** 2).sqrt()
            x_new = x + mean * shrink + self.vel_mlp(h) * vel
            h_new = self.node_mlp(torch.cat([h, m.sum(2)], dim=-1))
        return h_new, x_new

    def forward(self, h, x, vel, edge_attr, nbr, mask, inv_deg):
        """h (B, N, H), x and vel (B, N, 3), edge_attr (B, N, K, E) over neighbour lists nbr (N, K)."""
        H = self.hidden
        h_new, x_new = self.update(h, x, vel, edge_attr, nbr, mask, inv_deg)
        if self.relax is None:
            return h_new, x_new
        out = self.relax(torch.cat([h_new, x_new], dim=-1), lambda: torch.cat([h, x, vel], dim=-1))
        return out[..., :H], out[..., H:]


@BACKBONES.register("egnn", config=EGNNConfig)
class EGNN(HomotopyModel):
    """Relaxed EGNN for tasks whose batches are :class:`GeometricBatch` with position targets."""

    tasks = ("nbody", "nbody-field", "mocap-run")

    def __init__(self, cfg: EGNNConfig, task):
        super().__init__()
        sample = task.split("valid")
        if not isinstance(sample, GeometricBatch):
            raise TypeError(f"egnn needs a task with geometric batches; {task.name} gives {type(sample).__name__}")
        node_in = 1 + (0 if sample.node_attr is None else sample.node_attr.shape[-1])
        edge_in = sample.edge_attr.shape[-1] + 1
        self.cfg = cfg
        self.embedding = nn.Linear(node_in, cfg.hidden)
        self.layers = nn.ModuleList(EGNNLayer(cfg.hidden, edge_in, cfg, f"layer{i}") for i in range(cfg.layers))

    def forward(self, batch: GeometricBatch) -> torch.Tensor:
        nbr, mask, inv_deg, edge_attr = graph_inputs(batch)
        h = self.embedding(node_inputs(batch))
        x = batch.pos
        for layer in self.layers:
            h, x = layer(h, x, batch.vel, edge_attr, nbr, mask, inv_deg)
        return x
