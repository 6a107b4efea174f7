"""Backbone ``egno``: Equivariant Graph Neural Operator (Xu et al., ICML 2024), relaxed as in ACE.

EGNO predicts a trajectory: the input state is repeated over ``P`` future time points
(``timesteps``, 5), each copy tagged with a sinusoidal embedding of its time index, and ``layers``
blocks alternate convolutions along time, in Fourier space, with EGNN layers acting on each time
point's graph. Tensors are (B, P, N, C); block ``i``:

    h  <- h + LeakyReLU(K_h * h)                         Fourier convolution of the invariant features
    [x - c, v]  <- [x - c, v] + K_x * [x - c, v]          equivariant Fourier convolution (c: centroid)
    (h', x')  = EGNN layer on every time point's graph   (v is used, not updated)

where ``K * z`` keeps the ``modes`` lowest temporal Fourier modes of ``z`` (along P), multiplies
each by a learned complex matrix over channels and transforms back (``irfft`` to P points). ``K_x``
mixes only the time modes and the two vector channels ``(x - c, v)``, with one matrix for the x, y
and z axes alike, so it commutes with every rotation and reflection and never mixes axes; ``c``,
the centroid of the input positions, makes it translation-equivariant. The output is the final
positions at the P time points, (B, P, N, 3), when the batch has ``target_seq`` (the task averages
its loss over the frames and scores the last), otherwise the last time point, (B, N, 3).

Relaxation (``branch=egno-ace``, the default): the ACE authors' EGNO, two relaxed layers per
block (``block{i}.h`` and ``block{i}.x``; 12 gammas for 6 layers):

* a feature stream ``s``: ``s_0 = Linear(node inputs + time embedding -> H)``, then per block
  ``s_{i+1} = SN-Linear(H, H)(BatchNorm(s_i))`` and ``h = h' + gamma_h,i * s_{i+1}``. The branch of
  ``block{i}.h`` maps ``s_i`` to ``s_{i+1}`` (block 0's includes the first Linear and takes the
  node inputs and time embedding). The stream sees only the task's invariant node inputs (``|v|``,
  its node attributes) and the time index, never the equivariant state, so it is invariant under
  the task's group: its branches are declared ``scalar`` to ``scalar`` (a Lie derivative of zero
  for lie-anneal, exactly as they act). They change the function class, not the symmetry. (A
  task whose node attributes are not invariant under ``task.group``, MoCap's height feature under
  E(3), makes neither the stream nor the equivariant path invariant; both keep the symmetry of the
  node attributes, MoCap's ``extra_groups["vertical"]``.)
* a coordinate branch: ``x = x' + gamma_x,i * f_i(x)``, with ``x`` the block's positions after the
  temporal convolution (the EGNN layer's input) and ``f_i = Linear(3, 3) -> BatchNorm -> SN-Linear
  (3, branch_hidden) -> act -> BatchNorm -> SN-Linear(branch_hidden, 3)``, the first ``Linear(3,
  3)`` shared by every block. It sees raw coordinates (``position`` in, ``vector`` out), and breaks
  rotations, reflections and translations.

``SN`` is spectral normalisation (``spectral_iterations`` power iterations, 5). ``branch=mlp`` or
``linear`` instead relaxes each block's EGNN layer with the project's common per-node branch on
``[h, x, v]`` (as the ``egnn`` backbone does; one gamma per block); ``branch=none`` is the strict
network.

BatchNorm in the branches: in evaluation mode it uses its running statistics. In training mode
the model's own forward passes with autograd on (the training steps) normalise with the batch
statistics and update the running ones; any other evaluation in training mode (a method calling a
branch on its own, e.g. lie-anneal's penalty on the recorded branch inputs, or a pass under
``torch.no_grad``) normalises with the batch statistics of the last training step, held constant,
and updates nothing. That keeps such a branch a per-sample map (a Lie derivative by
``torch.func.jvp`` is the one of the map the step applied) and the running statistics a record of
the training batches alone.

Where this follows the paper and where the released code: the structure (time embedding, Fourier
convolutions on features and on centred (x, v), EGNN layers, loss over the P frames) is the
paper's. From EGNO's released code: time points are the integers ``0 .. P-1`` embedded as ``[sin(t
w_k), cos(t w_k)]`` with ``w_k = 10000^(-k / (D/2 - 1))``, ``k < D/2``; the feature convolution's
activation is a LeakyReLU (slope 0.01) after the spectral product and the coordinate convolution
has none; complex weights are initialised ``U[0, 1) / C^2`` (features) and ``0.1 U[0, 1)``
(coordinates); the centroid is that of the input positions, fixed for every block; the EGNN layer
is the code's (``EGNNLayer(variant="egno")``: no residual on ``h``, the clamp on the mean
coordinate update, a coordinate head with a bias, ``x' = x + phi_v(h) v + mean update`` with ``v``
returned unchanged, so only the temporal convolutions move ``v``), except that the clamp shortens
an update longer than ``coord_clamp`` to that length where the code clips each component (which
breaks exact equivariance whenever it acts). The relaxation follows the ACE authors' EGNO code, as described
above.

Guarantee: at ``gamma = 0`` (or in ``model.projected()``, or with ``branch=none``) the network is
exactly E(3)- and permutation-equivariant (tested in float64 to 1e-10): the branches enter only
through :class:`~benchmark.nn.RelaxedLayer`, and the feature stream is computed only when a
relaxed layer evaluates its branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.config import ConfigError, param
from benchmark.groups import CartesianRep
from benchmark.nn import ACTIVATIONS, BranchConfig, HomotopyModel, RelaxedLayer
from benchmark.registry import BACKBONES
from benchmark.tasks._base import GeometricBatch
from benchmark.backbones.egnn import EGNNLayer, graph_inputs, node_inputs

__all__ = ["EGNOConfig", "EGNO", "EGNO_BRANCHES", "time_embedding", "TemporalConv", "EquivariantTemporalConv"]

#: The branches this backbone builds (see the module docstring).
EGNO_BRANCHES = ("egno-ace", "mlp", "linear", "none")


@dataclass(frozen=True)
class EGNOConfig(BranchConfig):
    """EGNO's settings (the defaults are the MoCap model of EGNO and ACE: width 128, 6 layers,
    5 time points, 2 Fourier modes, a 32-dim time embedding)."""

    branch: str = param("egno-ace", help="relaxation: the ACE authors' EGNO streams (egno-ace), the common "
                        "per-node branch on each EGNN layer (mlp, linear), or none", choices=EGNO_BRANCHES)
    branch_hidden: int = param(128, help="hidden width of the coordinate branch (egno-ace) or of the mlp branch",
                               ge=1)
    hidden: int = param(128, help="hidden width", ge=1)
    layers: int = param(6, help="number of blocks (temporal convolutions + EGNN layer)", ge=1)
    timesteps: int = param(5, help="time points P predicted (the task's target_seq frames)", ge=1)
    modes: int = param(2, help="temporal Fourier modes kept by each convolution", ge=1)
    time_emb_dim: int = param(32, help="size of the sinusoidal time embedding (even)", ge=4)
    coord_clamp: float = param(100.0, help="length to which a longer mean coordinate update is shortened", gt=0)
    spectral_iterations: int = param(5, help="power iterations of the branches' spectral normalisation", ge=1)

    def check(self) -> None:
        if self.time_emb_dim % 2:
            raise ConfigError(f"time_emb_dim={self.time_emb_dim}: must be even")
        most = self.timesteps // 2 + 1
        if self.modes > most:
            raise ConfigError(f"modes={self.modes}: timesteps={self.timesteps} has at most {most} Fourier modes")


def time_embedding(steps: int, dim: int, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """The sinusoidal embedding (steps, dim) of the time indices ``0 .. steps-1``: ``[sin(t w_k),
    cos(t w_k)]`` for ``w_k = 10000^(-k / (dim/2 - 1))``, ``k = 0 .. dim/2 - 1``.

    >>> e = time_embedding(5, 8)
    >>> e.shape, e[0].tolist() == [0.0] * 4 + [1.0] * 4
    (torch.Size([5, 8]), True)
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"a time embedding needs an even size of at least 4, got {dim}")
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, dtype=torch.float64))
    angle = torch.arange(steps, dtype=torch.float64)[:, None] * freq[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).to(dtype=dtype, device=device)


def _spectral(z: torch.Tensor, weight: torch.Tensor, modes: int, spec: str) -> torch.Tensor:
    """The Fourier product along axis 1 of ``z``: its ``modes`` lowest modes times the complex
    ``weight`` (C_in, C_out, modes, 2) over the channel axis named in the einsum ``spec``, back to
    as many points as ``z`` has."""
    P = z.shape[1]
    coeffs = torch.fft.rfft(z, dim=1)[:, :modes]
    out = torch.einsum(spec, coeffs, torch.view_as_complex(weight))
    return torch.fft.irfft(out, n=P, dim=1)


class TemporalConv(nn.Module):
    """``h + LeakyReLU(K * h)`` on invariant features (B, P, N, C): a Fourier convolution along time."""

    def __init__(self, channels: int, modes: int):
        super().__init__()
        self.modes = modes
        self.weight = nn.Parameter(torch.rand(channels, channels, modes, 2) / (channels * channels))
        self.act = nn.LeakyReLU()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.act(_spectral(h, self.weight, self.modes, "bmni,iom->bmno"))


class EquivariantTemporalConv(nn.Module):
    """``z + K * z`` on the pair ``z = (x - c, v)`` (B, P, N, 3, 2): mixes time modes and the two
    vector channels with one complex matrix per mode, the same for every axis, so it commutes with
    any linear map of the axes; returns the new ``(x, v)``."""

    def __init__(self, modes: int, channels: int = 2):
        super().__init__()
        self.modes = modes
        self.weight = nn.Parameter(0.1 * torch.rand(channels, channels, modes, 2))

    def forward(self, x: torch.Tensor, v: torch.Tensor, centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.stack([x - centre, v], dim=-1)
        z = z + _spectral(z, self.weight, self.modes, "bmndi,iom->bmndo")
        return z[..., 0] + centre, z[..., 1]


class _Scope:
    """What the branch modules know of the model's forward pass in progress: whether one is
    running, and the feature-stream states it has computed (``states[i]``: the input of block
    ``i``'s feature branch)."""

    def __init__(self):
        self.active = False
        self.states: dict[int, torch.Tensor] = {}


class _BatchNorm(nn.BatchNorm1d):
    """BatchNorm over every row of a (..., C) tensor, with the statistics rules of the module
    docstring."""

    def __init__(self, channels: int, scope: _Scope):
        super().__init__(channels)
        self._scope = scope
        self.register_buffer("kept_mean", None, persistent=False)
        self.register_buffer("kept_var", None, persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        rows = z.reshape(-1, z.shape[-1])
        if not self.training:
            out = super().forward(rows)
        elif self._scope.active and torch.is_grad_enabled():
            out = super().forward(rows)                  # batch statistics; running ones updated
            with torch.no_grad():
                self.kept_mean = rows.mean(0).detach()
                self.kept_var = rows.var(0, unbiased=False).detach()
        elif self.kept_mean is not None:
            out = F.batch_norm(rows, self.kept_mean.to(rows), self.kept_var.to(rows), self.weight, self.bias,
                               False, 0.0, self.eps)
        else:
            out = F.batch_norm(rows, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return out.reshape(z.shape)


class _StreamStep(nn.Module):
    """One step of the feature stream, ``s_{i+1} = net(s_i)``; during the model's forward pass it
    leaves ``s_{i+1}`` for the next block."""

    def __init__(self, net: nn.Module, index: int, scope: _Scope):
        super().__init__()
        self.net = net
        self.index = index
        self._scope = scope

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        out = self.net(s)
        if self._scope.active:
            self._scope.states[self.index + 1] = out
        return out


def _sn_linear(dim_in: int, dim_out: int, iterations: int) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(nn.Linear(dim_in, dim_out), n_power_iterations=iterations)


class EGNOBlock(nn.Module):
    """Temporal convolutions, then one EGNN layer, with this block's relaxed layers."""

    def __init__(self, cfg: EGNOConfig, edge_in: int, index: int, *, feature_branch: nn.Module | None,
                 coord_branch: nn.Module | None, feature_in: int):
        super().__init__()
        H = cfg.hidden
        self.time_h = TemporalConv(H, cfg.modes)
        self.time_x = EquivariantTemporalConv(cfg.modes)
        ace = cfg.branch == "egno-ace"
        self.egnn = EGNNLayer(H, edge_in, cfg, f"block{index}", variant="egno", relaxed=not ace)
        self.relax_h = self.relax_x = None
        if ace:
            self.relax_h = RelaxedLayer(feature_branch, CartesianRep([("scalar", feature_in)]),
                                        CartesianRep([("scalar", H)]), f"block{index}.h")
            self.relax_x = RelaxedLayer(coord_branch, CartesianRep([("position", 1)]),
                                        CartesianRep([("vector", 1)]), f"block{index}.x")


@BACKBONES.register("egno", config=EGNOConfig)
class EGNO(HomotopyModel):
    """Relaxed EGNO for tasks whose batches are :class:`GeometricBatch` with position targets
    (and, optionally, ``target_seq`` of ``timesteps`` frames)."""

    tasks = ("nbody", "nbody-field", "mocap-run")

    def __init__(self, cfg: EGNOConfig, task):
        super().__init__()
        sample = task.split("valid")
        if not isinstance(sample, GeometricBatch):
            raise TypeError(f"egno needs a task with geometric batches; {task.name} gives {type(sample).__name__}")
        seq = sample.target_seq
        if seq is not None and seq.shape[1] != cfg.timesteps:
            raise ConfigError(f"model.timesteps={cfg.timesteps}: task {task.name} gives {seq.shape[1]} target frames "
                              f"(target_seq); set model.timesteps={seq.shape[1]}")
        node_in = 1 + (0 if sample.node_attr is None else sample.node_attr.shape[-1])
        feature_in = node_in + cfg.time_emb_dim
        edge_in = sample.edge_attr.shape[-1] + 1
        self.cfg = cfg
        self._scope = _Scope()
        self.embedding = nn.Linear(feature_in, cfg.hidden)
        ace = cfg.branch == "egno-ace"
        shared = nn.Linear(3, 3) if ace else None      # the coordinate branches' shared first map
        blocks = []
        for i in range(cfg.layers):
            feature_branch = coord_branch = None
            if ace:
                H, bh, it = cfg.hidden, cfg.branch_hidden, cfg.spectral_iterations
                step = [_BatchNorm(H, self._scope), _sn_linear(H, H, it)]
                if i == 0:
                    step.insert(0, nn.Linear(feature_in, H))
                feature_branch = _StreamStep(nn.Sequential(*step), i, self._scope)
                coord_branch = nn.Sequential(shared, _BatchNorm(3, self._scope), _sn_linear(3, bh, it),
                                             ACTIVATIONS[cfg.branch_act](), _BatchNorm(bh, self._scope),
                                             _sn_linear(bh, 3, it))
            blocks.append(EGNOBlock(cfg, edge_in, i, feature_branch=feature_branch, coord_branch=coord_branch,
                                    feature_in=feature_in if i == 0 else cfg.hidden))
        self.blocks = nn.ModuleList(blocks)

    def branch_parameters(self) -> list[nn.Parameter]:
        """Parameters of the branches, each once (the coordinate branches share their first map)."""
        seen: set[int] = set()
        out = []
        for p in super().branch_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def _stream(self, k: int) -> torch.Tensor:
        """The feature-stream state ``s_k`` of this forward pass (computed once, when first needed)."""
        states = self._scope.states
        if k not in states:
            states[k] = self.blocks[k - 1].relax_h.branch_output(self._stream(k - 1))
        return states[k]

    def forward(self, batch: GeometricBatch) -> torch.Tensor:
        cfg = self.cfg
        P = cfg.timesteps
        B, N, _ = batch.pos.shape
        nbr, mask, inv_deg, edge_attr = graph_inputs(batch)
        K = nbr.shape[1]

        def over_time(t: torch.Tensor) -> torch.Tensor:        # (B, ...) -> (B * P, ...), repeated
            return t[:, None].expand((B, P) + t.shape[1:]).reshape((B * P,) + t.shape[1:])

        edge_attr = over_time(edge_attr)
        if mask is not None:
            mask, inv_deg = over_time(mask), over_time(inv_deg)
        node = node_inputs(batch)
        emb = time_embedding(P, cfg.time_emb_dim, dtype=node.dtype, device=node.device)
        feats = torch.cat([node[:, None].expand(B, P, N, node.shape[-1]),
                           emb[None, :, None, :].expand(B, P, N, emb.shape[-1])], dim=-1)   # (B, P, N, F)
        h = self.embedding(feats)
        x = batch.pos[:, None].expand(B, P, N, 3)
        v = batch.vel[:, None].expand(B, P, N, 3)
        centre = batch.pos.mean(1, keepdim=True)[:, None]                                   # (B, 1, 1, 3)

        def flat(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B * P, N, t.shape[-1])

        self._scope.active, self._scope.states = True, {0: feats}
        try:
            for i, block in enumerate(self.blocks):
                h = block.time_h(h)
                x, v = block.time_x(x, v, centre)
                if block.relax_h is None:                      # the EGNN layer relaxes itself (or is strict)
                    h_new, x_new = block.egnn(flat(h), flat(x), flat(v), edge_attr, nbr, mask, inv_deg)
                    h, x = h_new.reshape(B, P, N, -1), x_new.reshape(B, P, N, 3)
                    continue
                h_new, x_new = block.egnn.update(flat(h), flat(x), flat(v), edge_attr, nbr, mask, inv_deg)
                h_new, x_new = h_new.reshape(B, P, N, -1), x_new.reshape(B, P, N, 3)
                h = block.relax_h(h_new, lambda i=i: self._stream(i))
                x = block.relax_x(x_new, x)
        finally:
            self._scope.active, self._scope.states = False, {}
        return x if batch.target_seq is not None else x[:, -1]
