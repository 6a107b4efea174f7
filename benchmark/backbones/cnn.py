"""Backbone ``cnn``: a plain CNN with the stages of ``p4m-cnn`` and about its parameter count, for reference.

Layout (default ``channels=(18, 36, 74)``, one convolution per stage, 28x28 input)::

    Conv2d(1 -> 18, 5x5)    28x28   BatchNorm, ReLU   max-pool 2 -> 14x14
    Conv2d(18 -> 36, 3x3)   14x14   BatchNorm, ReLU   max-pool 2 -> 7x7
    Conv2d(36 -> 74, 3x3)    7x7    BatchNorm, ReLU
    max over the grid, Linear(74, 10)

31,392 parameters, against 31,306 of the default ``p4m-cnn`` (0.3% more): the same stages, with
widths chosen to match the count.

The network is not equivariant at all and has no relaxed layers (``num_gammas == 0``): every method
trains it as it is, and its ``projected`` variant is the network itself. ``equivariant = False``
declares this to the harness and to the contract tests, which then check that it is measurably not
invariant instead of exactly invariant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmark.backbones.p4m_cnn import IMAGE_TASKS, conv_stages
from benchmark.config import ConfigError, param
from benchmark.nn import BranchConfig, HomotopyModel
from benchmark.registry import BACKBONES

__all__ = ["CNNConfig", "CNN"]


@dataclass(frozen=True)
class CNNConfig(BranchConfig):
    """The network's size; it has no branch (``branch`` is ``none`` only)."""

    branch: str = param("none", help="the plain CNN has no relaxed layers, hence no branch", choices=("none",))
    channels: tuple[int, ...] = param((18, 36, 74), help="channels of each stage", ge=1)
    convs_per_stage: int = param(1, help="convolutions of each stage", ge=1)
    lift_kernel: int = param(5, help="kernel size of the first convolution (odd)", ge=1)
    kernel: int = param(3, help="kernel size of the other convolutions (odd)", ge=1)
    pool: str = param("max", help="pooling between stages", choices=("max", "avg"))

    def check(self) -> None:
        for key in ("lift_kernel", "kernel"):
            if getattr(self, key) % 2 == 0:
                raise ConfigError(f"{key}={getattr(self, key)}: must be odd (padding by half the kernel keeps "
                                  "the grid)")
        if not self.channels:
            raise ConfigError("channels=(): give at least one stage")


@BACKBONES.register("cnn", config=CNNConfig)
class CNN(HomotopyModel):
    """A plain CNN for the image tasks (batches with ``images`` (B, C, H, W)); not equivariant."""

    tasks = IMAGE_TASKS
    #: Not equivariant under the task's group, not even with every gamma at 0 (it has none).
    equivariant = False

    def __init__(self, cfg: CNNConfig, task):
        super().__init__()
        sample = task.split("valid")
        images = getattr(sample, "images", None)
        if images is None or images.dim() != 4:
            raise TypeError(f"cnn needs a task with image batches; {task.name} gives {type(sample).__name__}")
        self.cfg = cfg
        layers: list[nn.Module] = []
        current = images.shape[1]
        for s, (_, pool) in enumerate(conv_stages(images.shape[-1], len(cfg.channels))):
            for c in range(cfg.convs_per_stage):
                k = cfg.lift_kernel if s == 0 and c == 0 else cfg.kernel
                layers += [nn.Conv2d(current, cfg.channels[s], k, padding=k // 2), nn.BatchNorm2d(cfg.channels[s]),
                           nn.ReLU()]
                current = cfg.channels[s]
            if pool:
                layers.append(nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(current, 10)

    def forward(self, batch) -> torch.Tensor:
        return self.head(self.body(batch.images).amax(dim=(-2, -1)))

    def shared_output_layer(self) -> nn.Module:
        return self.head
