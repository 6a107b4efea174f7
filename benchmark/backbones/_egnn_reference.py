"""A straightforward per-edge EGNN forward pass over the weights of :class:`~benchmark.backbones.egnn.EGNN`.

The way EGNN is usually written (explicit edge list, gathers, ``index_add``): the dense batched
backbone is tested equal to it, and ``benchmarks/egnn_step_time.py`` measures the speed-up.
"""

from __future__ import annotations

import torch

__all__ = ["per_edge_forward"]


def per_edge_forward(model, batch):
    """EGNN as usually written: an explicit edge list, gathers and index_add (no dense tricks)."""
    B, N, _ = batch.pos.shape
    src, dst = zip(*[(i, j) for i in range(N) for j in range(N) if i != j])
    rows = torch.tensor([b * N + i for b in range(B) for i in src])
    cols = torch.tensor([b * N + j for b in range(B) for j in dst])
    x = batch.pos.reshape(B * N, 3)
    vel = batch.vel.reshape(B * N, 3)
    a = batch.edge_attr.reshape(B * N * N, -1)
    flat_pair = torch.tensor([b * N * N + i * N + j for b in range(B) for i, j in zip(src, dst)])
    edge_attr = torch.cat([a[flat_pair], ((x[rows] - x[cols]) ** 2).sum(-1, keepdim=True)], dim=-1)
    h = model.embedding(vel.norm(dim=-1, keepdim=True))
    count = torch.zeros(B * N, 1, dtype=x.dtype).index_add_(0, rows, torch.ones(len(rows), 1, dtype=x.dtype))
    for layer in model.layers:
        diff = x[rows] - x[cols]
        radial = (diff ** 2).sum(-1, keepdim=True)
        m = layer.edge_mlp(torch.cat([h[rows], h[cols], radial, edge_attr], dim=-1))
        trans = torch.clamp(diff * layer.coord_mlp(m), -100, 100)
        agg = torch.zeros_like(x).index_add_(0, rows, trans) / count
        x_new = x + agg + layer.vel_mlp(h) * vel
        magg = torch.zeros_like(h).index_add_(0, rows, m)
        h_new = h + layer.node_mlp(torch.cat([h, magg], dim=-1))
        if layer.relax.has_branch and not layer.relax.project:
            branch = layer.relax.branch(torch.cat([h, x, vel], dim=-1))
            g = layer.relax.gamma
            h_new = h_new + g * branch[:, :h.shape[1]]
            x_new = x_new + g * branch[:, h.shape[1]:]
        h, x = h_new, x_new
    return x.reshape(B, N, 3)
