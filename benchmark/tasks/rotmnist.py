"""Task ``rotmnist``: digit classification with a dial from upright to fully rotated.

Every image is rotated about its centre by its own angle, drawn uniformly from
``[-max_angle, max_angle]`` degrees (bilinear interpolation, zeros outside the image, 28x28 as
MNIST): ``task.max_angle=0`` is upright MNIST, ``180`` is MNIST-rot (every orientation equally
likely). The angles are fixed per sample: angle ``i`` of a split is ``max_angle * u_i`` with
``u_i`` uniform in [-1, 1) drawn from ``task.data_seed`` and the split alone, so every method,
training size and seed sees the same images, and turning the dial scales every angle alike.
MNIST's digits lie in the central 20x20 box, so a rotation keeps them (0.05% of the ink lies
outside the inscribed circle of the 28x28 frame; that part can leave the frame).

Splits: training, the first ``train_size`` (at most 10000) of MNIST's training pool; validation,
the next ``task.num_valid`` (2000); test, the first ``task.num_test`` (all 10000) of the test
pool. Metric: test error in percent (lower is better); loss: cross-entropy on the logits.

Symmetry: p4m's point group D4 (quarter turns and reflections, :class:`~benchmark.groups.D4Group`)
acting exactly on the input image (a permutation of its pixels); the logits are invariant
(``act_output`` is the identity). Note that D4 is a symmetry of the *model* class, not of the data:
upright digits are not invariant (a 6 turned by a half turn is a 9), which is what the dial probes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.config import param
from benchmark.groups import D4Group
from benchmark.groups._d4 import apply_d4
from benchmark.registry import TASKS
from benchmark.tasks._base import Task
from benchmark.tasks._mnist import cache_path, load_mnist

__all__ = ["ImageBatch", "RotMNISTConfig", "RotMNIST", "rotate_images", "split_angles", "POOL"]

#: Largest split sizes (the angle streams are drawn at these sizes, whatever a run uses).
POOL = {"train": 10000, "valid": 10000, "test": 10000}
_SPLIT_CODE = {"train": 0, "valid": 1, "test": 2}
NUM_CLASSES = 10


@dataclass(frozen=True)
class ImageBatch:
    """A batch of ``B`` single-channel images and their class labels.

    Attributes
    ----------
    images : (B, 1, H, W) floating point, values in [0, 1]
    labels : (B,) int64 in 0..9
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def replace(self, **changes: Any) -> "ImageBatch":
        return dataclasses.replace(self, **changes)

    def index(self, idx: torch.Tensor | slice) -> "ImageBatch":
        return ImageBatch(self.images[idx], self.labels[idx])

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "ImageBatch":
        """The batch with its images cast to ``dtype`` and both fields moved to ``device``."""
        return ImageBatch(self.images.to(device=device, dtype=dtype), self.labels.to(device=device))


@dataclass(frozen=True)
class RotMNISTConfig:
    max_angle: float = param(180.0, help="rotation angles uniform in [-max_angle, max_angle] degrees "
                                         "(0: upright MNIST; 180: MNIST-rot)", ge=0, le=180)
    data_seed: int = param(0, help="seed of the per-sample rotation angles (the run's seed is --seed)",
                           ge=0, lt=2**32)
    num_valid: int = param(2000, help="validation images (from MNIST's training pool, after the training ones)",
                           ge=1, le=POOL["valid"])
    num_test: int = param(10000, help="test images (from MNIST's test pool)", ge=1, le=POOL["test"])


def split_angles(split: str, n: int, max_angle: float, data_seed: int) -> np.ndarray:
    """The rotation angles (degrees, float64) of the first ``n`` samples of ``split``: the first
    ``n`` of a stream of ``POOL[split]`` draws from ``(data_seed, split)`` alone.

    >>> a = split_angles("test", 5, 90.0, 0)
    >>> bool(np.all(np.abs(a) <= 90)), bool(np.allclose(split_angles("test", 3, 45.0, 0), a[:3] / 2))
    (True, True)
    """
    if not 0 <= n <= POOL[split]:
        raise ValueError(f"{split}: {n} samples requested, the split holds at most {POOL[split]}")
    rng = np.random.Generator(np.random.PCG64([int(data_seed), _SPLIT_CODE[split]]))
    u = rng.uniform(-1.0, 1.0, size=POOL[split])
    return float(max_angle) * u[:n]


def rotate_images(images: torch.Tensor, degrees: np.ndarray | torch.Tensor, *, chunk: int = 2048) -> torch.Tensor:
    """Each image of ``images`` (n, 1, H, W) rotated about its centre by its angle (degrees,
    counter-clockwise as displayed with row 0 on top), bilinear, zero outside the image; computed
    in float64 and returned in ``images``' dtype. An angle of 0 returns the image unchanged."""
    angles = torch.as_tensor(np.asarray(degrees, dtype=np.float64)) * (math.pi / 180.0)
    if images.dim() != 4 or angles.shape != (images.shape[0],):
        raise ValueError(f"rotate_images: images (n, C, H, W) and n angles, got {tuple(images.shape)} "
                         f"and {tuple(angles.shape)}")
    out = images.clone()
    moved = (angles != 0).nonzero().flatten()
    for start in range(0, len(moved), chunk):
        rows = moved[start:start + chunk]
        a = angles[rows]
        cos, sin = torch.cos(a), torch.sin(a)
        zero = torch.zeros_like(a)
        # output pixel (x, y) samples the input at R(-a) (x, y) (normalised coordinates, y down)
        theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
        src = images[rows].to(torch.float64)
        grid = F.affine_grid(theta, list(src.shape), align_corners=False)
        out[rows] = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=False).to(images.dtype)
    return out


@TASKS.register("rotmnist", config=RotMNISTConfig)
class RotMNIST(Task):
    version = "1"
    metric = "error"
    higher_is_better = False
    metric_scale = 1.0
    train_defaults = {"epochs": 10, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.0, "optimizer": "adam",
                      "eval_every": 1, "equivariance_samples": 1}
    train_sizes = (1000, 2000, 5000, 10000)
    default_train_size = 10000
    max_train_size = POOL["train"]
    presets: dict = {}

    def __init__(self, cfg: RotMNISTConfig, *, train_size: int, dtype: torch.dtype = torch.float32,
                 progress: bool = True):
        super().__init__(cfg, train_size=train_size, dtype=dtype)
        if not 1 <= train_size <= POOL["train"]:
            raise ValueError(f"train_size={train_size}: allowed 1..{POOL['train']}")
        self.group = D4Group()
        self.extra_groups: dict = {}
        data = load_mnist()
        pools = {"train": (data["train_images"], data["train_labels"], 0, train_size),
                 "valid": (data["train_images"], data["train_labels"], POOL["train"], cfg.num_valid),
                 "test": (data["test_images"], data["test_labels"], 0, cfg.num_test)}
        for split, (images, labels, start, n) in pools.items():
            x = torch.from_numpy(np.array(images[start:start + n], dtype=np.float64) / 255.0)[:, None]
            x = rotate_images(x, split_angles(split, n, cfg.max_angle, cfg.data_seed))
            y = torch.from_numpy(np.array(labels[start:start + n], dtype=np.int64))
            self.splits[split] = ImageBatch(x.to(dtype), y)

    @classmethod
    def cache_folders_to_write(cls, cfg: RotMNISTConfig) -> list:
        path = cache_path()
        return [] if path.is_file() else [path.parent]

    # symmetry: D4 moves the pixels; the logits are invariant
    def act_input(self, g, batch: ImageBatch) -> ImageBatch:
        return batch.replace(images=apply_d4(g, batch.images))

    def act_output(self, g, y: torch.Tensor) -> torch.Tensor:
        return y

    def target(self, batch: ImageBatch) -> torch.Tensor:
        """The labels as one-hot vectors in the images' dtype (what a method comparing outputs with
        labels compares the logits with)."""
        return F.one_hot(batch.labels, NUM_CLASSES).to(batch.images.dtype)

    def loss(self, pred: torch.Tensor, batch: ImageBatch) -> torch.Tensor:
        return F.cross_entropy(pred, batch.labels)

    def metric_per_sample(self, pred: torch.Tensor, batch: ImageBatch) -> torch.Tensor:
        """100 where the top logit is not the label, else 0: the split's mean is its error in percent."""
        return 100.0 * (pred.argmax(dim=-1) != batch.labels).to(pred.dtype)

    def test_breakdown(self, pred: torch.Tensor, batch: ImageBatch) -> dict[str, Any]:
        """The error of each digit (percent of its test images misclassified) and the two confusions
        a rotation by 180 degrees makes ambiguous: the percent of 6s classified as 9 and of 9s as 6.
        A model invariant under the 180-degree rotation (p4m, projected) sees a 6 and a 9 as the
        same image up to handwriting; the upright data keep the orientation that tells them apart."""
        top = pred.argmax(dim=-1)
        labels = batch.labels

        def pct(mask: torch.Tensor) -> float | None:
            return None if mask.numel() == 0 else 100.0 * mask.to(torch.float64).mean().item()
        per_class = [pct(top[labels == c] != c) for c in range(NUM_CLASSES)]
        return {"per_class_error": per_class, "six_as_nine": pct(top[labels == 6] == 9),
                "nine_as_six": pct(top[labels == 9] == 6)}
