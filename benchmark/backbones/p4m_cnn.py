"""Backbone ``p4m-cnn``: a p4m group-equivariant CNN (escnn, ``flipRot2dOnR2(N=4)``), relaxed per convolution.

Layout (default ``fields=(8, 16, 32)``, one convolution per stage, 28x28 input)::

    lift   R2Conv(trivial -> 8 regular, 5x5)   28x28   InnerBatchNorm, ReLU   max-pool 2 -> 14x14
    stage  R2Conv(8 -> 16 regular, 3x3)        14x14   InnerBatchNorm, ReLU   max-pool 2 -> 7x7
    stage  R2Conv(16 -> 32 regular, 3x3)        7x7    InnerBatchNorm, ReLU
    group pooling (max over each regular field's 8 channels), max over the grid, Linear(32, 10)

A regular field of D4 has 8 channels, so the stages are 64, 128 and 256 channels wide. The default
network has 31,306 parameters (the strict build); the ``conv`` branches, ordinary convolutions of
their layers' shapes, add 370,688 (the relaxed build has 401,994 and three gammas).

Relaxation: every convolution is a relaxed layer,
``R2Conv(x) + gamma_i * Conv2d(x)``, the ``Conv2d`` an ordinary convolution of the same input
and output shape (``model.branch=conv``), which breaks p4m. The representations of a branch's
input and output are :class:`~benchmark.groups.FieldRep` (the grid moves, each regular field's
channels permute), so methods can act with D4 on any layer.

Guarantee: at ``gamma = 0`` (or in ``model.projected()``, or with ``branch=none``) the logits are
exactly invariant under the 8 elements of D4 (rounding only: tested to 1e-9 in float64 and 1e-5 in
float32). Pooling halves the grid only while its side is even (28 -> 14 -> 7), as pooling an odd
grid would break the symmetry; convolutions are padded by half their (odd) kernel. Each expanded
filter is projected onto the exactly D4-equivariant filters (:func:`d4_average`): escnn samples its
kernel bases in float32, which alone is equivariant to about 1e-8 only. :meth:`P4MCNN.export`
gives the projected network as plain PyTorch modules (the same function to rounding).

escnn builds its kernel bases once per layer shape (a few seconds the first time in a process);
it is imported when a network is built, so the rest of the project runs without it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.config import ConfigError, param
from benchmark.groups import FieldRep
from benchmark.groups._d4 import act_element
from benchmark.nn import BranchConfig, HomotopyModel, RelaxedLayer
from benchmark.registry import BACKBONES

__all__ = ["P4MCNNConfig", "P4MCNN", "SteerableConv", "d4_average", "import_escnn", "conv_stages"]

IMAGE_TASKS = ("rotmnist",)


def import_escnn():
    """escnn's ``gspaces`` and ``nn``, or a one-line error saying how to install them."""
    try:
        from escnn import gspaces
        from escnn import nn as enn
    except ImportError as exc:
        raise ImportError(f"p4m-cnn needs escnn ({exc}); install the images extra: pip install -e '.[images]' "
                          "(its py3nj needs a Fortran compiler: apt-get install gfortran)") from None
    return gspaces, enn


@dataclass(frozen=True)
class P4MCNNConfig(BranchConfig):
    """The network's size; the branch settings are :class:`~benchmark.nn.BranchConfig`'s, with a
    convolution for branch (its MLP settings are not used)."""

    branch: str = param("conv", help="branch of each relaxed convolution: an ordinary Conv2d of the same "
                                     "shape, or none (strict)", choices=("conv", "none"))
    fields: tuple[int, ...] = param((8, 16, 32), help="regular fields (8 channels each) of each stage", ge=1)
    convs_per_stage: int = param(1, help="convolutions of each stage (the first lifts, or widens)", ge=1)
    lift_kernel: int = param(5, help="kernel size of the lifting convolution (odd)", ge=1)
    kernel: int = param(3, help="kernel size of the other convolutions (odd)", ge=1)
    pool: str = param("max", help="pooling between stages", choices=("max", "avg"))

    def check(self) -> None:
        for key in ("lift_kernel", "kernel"):
            if getattr(self, key) % 2 == 0:
                raise ConfigError(f"{key}={getattr(self, key)}: must be odd (an even kernel shifts the grid "
                                  "and breaks exact p4m equivariance)")
        if not self.fields:
            raise ConfigError("fields=(): give at least one stage")

    def make_branch(self, dim_in: int, dim_out: int, kernel_size: int = 3) -> nn.Module | None:
        """The branch of one relaxed convolution: ``Conv2d(dim_in, dim_out, kernel_size)`` padded to
        keep the grid (``None`` for ``branch="none"``); ``dim_in``/``dim_out`` are channels."""
        if self.branch == "none":
            return None
        return nn.Conv2d(dim_in, dim_out, kernel_size, padding=kernel_size // 2)


def conv_stages(size: int, stages: int) -> list[tuple[int, bool]]:
    """``(side, pool_after)`` per stage: the grid side a stage works on, and whether it is pooled
    after it (only when more stages follow and the side is even, so pooling keeps the symmetry).

    >>> conv_stages(28, 4)
    [(28, True), (14, True), (7, False), (7, False)]
    """
    out = []
    for s in range(stages):
        pool = s < stages - 1 and size % 2 == 0 and size >= 2
        out.append((size, pool))
        size = size // 2 if pool else size
    return out


def d4_average(weight: torch.Tensor, bias: torch.Tensor | None, rep_in: FieldRep, rep_out: FieldRep
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The projection of a convolution ``(weight (O, I, k, k), bias (O,))`` onto the D4-equivariant
    ones: the mean over the 8 elements ``g`` of ``rho_out(g) [g . weight] rho_in(g)^-1`` (``g .``
    moving the kernel's grid as :func:`~benchmark.groups._d4.apply_d4` moves an image) and of
    ``rho_out(g) bias``. An equivariant convolution is its own projection."""
    w_sum = None
    b_sum = None
    perms = rep_in.permutations is not None and rep_out.permutations is not None
    for e in range(8):
        moved = act_element(e, weight)                                          # g . weight, (O, I, k, k)
        if perms:
            p_out = rep_out.permutations[e].to(weight.device)
            p_in = rep_in.permutations[e].to(weight.device)
            term = moved.index_select(0, p_out).index_select(1, p_in)
            b_term = None if bias is None else bias.index_select(0, p_out)
        else:
            m_out = rep_out.matrices[e].to(weight)
            m_in = rep_in.matrices[e].to(weight)
            term = torch.einsum("ac,cdhw,bd->abhw", m_out, moved, m_in)
            b_term = None if bias is None else m_out @ bias
        w_sum = term if w_sum is None else w_sum + term
        if b_term is not None:
            b_sum = b_term if b_sum is None else b_sum + b_term
    return w_sum / 8, (None if b_sum is None else b_sum / 8)


class SteerableConv(nn.Module):
    """An escnn ``R2Conv`` applied to plain tensors, exactly equivariant in any floating-point type,
    with a state dict that never depends on the mode.

    * escnn samples its kernel basis at float32 points, so its filters are equivariant to about
      1e-8 only; the expanded filter is therefore projected onto the exactly equivariant filters
      (:func:`d4_average`, a change of that size), which makes the convolution equivariant to
      rounding in float64 too. Gradients pass through the projection.
    * escnn's convolution registers its expanded filter as a buffer in evaluation mode (and drops it
      in training mode), so a state dict saved in one mode would not load in the other. Here the
      escnn module always stays in training mode and holds only its weights and basis; the filter
      is expanded at every training forward, and in evaluation without gradients it is expanded
      once and kept (as a plain attribute) until a weight changes.
    """

    def __init__(self, in_type, out_type, kernel_size: int):
        super().__init__()
        _, enn = import_escnn()
        self.conv = enn.R2Conv(in_type, out_type, kernel_size, padding=kernel_size // 2)
        self.conv.train(True)                  # drops escnn's filter buffers
        self.padding = kernel_size // 2
        self.rep_in = FieldRep(in_type, 1, 1)
        self.rep_out = FieldRep(out_type, 1, 1)
        self._cache: tuple[Any, torch.Tensor, torch.Tensor | None] | None = None

    def train(self, mode: bool = True) -> "SteerableConv":
        self.training = mode                   # the escnn module itself stays in training mode
        self._cache = None
        return self

    def _key(self) -> tuple:
        w = self.conv.weights
        b = self.conv.bias
        return (w.data_ptr(), w._version, w.dtype, w.device,
                None if b is None else (b.data_ptr(), b._version))

    def expanded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The filter and bias of the convolution (expanded from the basis and projected)."""
        if self.training or torch.is_grad_enabled():
            return d4_average(*self.conv.expand_parameters(), self.rep_in, self.rep_out)
        key = self._key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                w, b = d4_average(*self.conv.expand_parameters(), self.rep_in, self.rep_out)
            self._cache = (key, w, b)
        return self._cache[1], self._cache[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.expanded()
        return F.conv2d(x, w, b, padding=self.padding)

    @torch.no_grad()
    def export(self) -> nn.Conv2d:
        """The convolution as a plain ``nn.Conv2d`` holding the current (projected) filter."""
        w, b = self.expanded()
        conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], padding=self.padding, bias=b is not None)
        conv = conv.to(dtype=w.dtype, device=w.device)
        conv.weight.copy_(w)
        if b is not None:
            conv.bias.copy_(b)
        return conv


class _RelaxedConv(nn.Module):
    """``R2Conv(x) + gamma * Conv2d(x)`` followed by InnerBatchNorm and ReLU."""

    def __init__(self, in_type, out_type, kernel: int, side: int, cfg: P4MCNNConfig, name: str):
        super().__init__()
        _, enn = import_escnn()
        self.out_type = out_type
        self.conv = SteerableConv(in_type, out_type, kernel)
        branch = cfg.make_branch(in_type.size, out_type.size, kernel)
        self.relax = RelaxedLayer(branch, FieldRep(in_type, side, side), FieldRep(out_type, side, side), name)
        self.norm = enn.InnerBatchNorm(out_type)
        self.act = enn.ReLU(out_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, enn = import_escnn()
        y = self.relax(self.conv(x), x)
        return self.act(self.norm(enn.GeometricTensor(y, self.out_type))).tensor


@BACKBONES.register("p4m-cnn", config=P4MCNNConfig)
class P4MCNN(HomotopyModel):
    """Relaxed p4m-equivariant CNN for the image tasks (batches with ``images`` (B, 1, 28, 28))."""

    tasks = IMAGE_TASKS
    train_defaults = {task: {"compile": "off"} for task in IMAGE_TASKS}   # escnn modules run eagerly

    def __init__(self, cfg: P4MCNNConfig, task):
        super().__init__()
        gspaces, enn = import_escnn()
        sample = task.split("valid")
        images = getattr(sample, "images", None)
        if images is None or images.dim() != 4 or images.shape[-1] != images.shape[-2]:
            raise TypeError(f"p4m-cnn needs a task with square image batches; {task.name} gives "
                            f"{type(sample).__name__}")
        self.cfg = cfg
        space = gspaces.flipRot2dOnR2(N=4)
        self.in_type = enn.FieldType(space, images.shape[1] * [space.trivial_repr])
        side = images.shape[-1]
        blocks: list[nn.Module] = []
        self._pool_after: list[bool] = []
        current = self.in_type
        for s, (grid, pool) in enumerate(conv_stages(side, len(cfg.fields))):
            out_type = enn.FieldType(space, cfg.fields[s] * [space.regular_repr])
            for c in range(cfg.convs_per_stage):
                kernel = cfg.lift_kernel if s == 0 and c == 0 else cfg.kernel
                name = "lift" if s == 0 and c == 0 else f"stage{s}.conv{c}"
                blocks.append(_RelaxedConv(current, out_type, kernel, grid, cfg, name))
                self._pool_after.append(False)
                current = out_type
            self._pool_after[-1] = pool
        self.blocks = nn.ModuleList(blocks)
        pool_cls = enn.PointwiseMaxPool2D if cfg.pool == "max" else enn.PointwiseAvgPool2D
        self.pools = nn.ModuleList(pool_cls(b.out_type, 2) if p else nn.Identity()
                                   for b, p in zip(blocks, self._pool_after))
        # group pooling in torch: escnn's GroupPooling returns float32 whatever its input's dtype
        self.group_pool = _InvariantPool(cfg.fields[-1])
        self.head = nn.Linear(cfg.fields[-1], 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The invariant vector (B, fields[-1]) the classifier reads."""
        _, enn = import_escnn()
        x = images
        for block, pool, pooled in zip(self.blocks, self.pools, self._pool_after):
            x = block(x)
            if pooled:
                x = pool(enn.GeometricTensor(x, block.out_type)).tensor
        return self.group_pool(x)

    def forward(self, batch) -> torch.Tensor:
        return self.head(self.features(batch.images))

    def shared_output_layer(self) -> nn.Module:
        """The last layer both a task loss and an equivariance loss reach (for GradNorm)."""
        return self.head

    @torch.no_grad()
    def export(self) -> nn.Module:
        """The projected network (every gamma taken as 0) as plain PyTorch modules (escnn's
        ``export`` for the convolutions, batch norms and ReLUs), in evaluation mode: a
        ``Sequential`` mapping images (B, 1, H, W) to logits. The model's own mode is kept."""
        was_training = self.training
        mods: list[nn.Module] = []
        for block, pooled in zip(self.blocks, self._pool_after):
            mods += [block.conv.export(), _export_norm(block.norm), block.act.export()]
            if pooled:
                mods.append(nn.MaxPool2d(2) if self.cfg.pool == "max" else nn.AvgPool2d(2))
        mods += [_InvariantPool(self.cfg.fields[-1]), copy.deepcopy(self.head)]
        self.train(was_training)
        ref = self.head.weight
        return nn.Sequential(*mods).to(dtype=ref.dtype, device=ref.device).eval()


def _export_norm(norm) -> nn.BatchNorm2d:
    """escnn's ``InnerBatchNorm.export`` as a ``BatchNorm2d`` in the norm's own dtype: escnn's
    export writes the statistics into a float32 module, which would round them."""
    plain = norm.export()
    inner = [m for m in norm.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    ref = next(norm.parameters(), None)
    if ref is not None:
        plain = plain.to(dtype=ref.dtype, device=ref.device)
    if len(inner) == 1:                       # one field size (every field regular): copy exactly
        reps = norm.in_type.size // inner[0].num_features                 # channels per field
        with torch.no_grad():
            for name in ("running_mean", "running_var", "weight", "bias"):
                src = getattr(inner[0], name)
                if src is not None:
                    getattr(plain, name).copy_(src.repeat_interleave(reps))
    return plain


class _InvariantPool(nn.Module):
    """Max over each regular field's 8 channels, then over the grid: ``(B, 8 F, H, W) -> (B, F)``,
    exactly invariant (a max does not depend on the order of its arguments)."""

    def __init__(self, fields: int):
        super().__init__()
        self.fields = fields

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return x.reshape(b, self.fields, 8, h, w).amax(dim=(2, 3, 4))
