"""Task ``nbody``: the charged 5-body system of EGNN (Satorras et al., 2021).

Input: positions and velocities of 5 charged particles at frame 30 and their charges; target:
positions at frame 40 (1000 integration steps later). Metric: MSE over all coordinates (lower is
better). Training sets are the first ``train_size`` of the 10000 generated training trajectories;
validation and test hold 2000 each. The data are generated on first use by
:mod:`benchmark.tasks.nbody_sim`, which reproduces the original generator bit for bit, cached under
``datasets/nbody/cache/`` and verified against committed sha256 fingerprints.

Symmetry: E(3) acting on positions (rotation, reflection, translation) and on velocities (rotation,
reflection); charges are invariant. With ``clip=component`` (the original) the ground truth is only
approximately equivariant (forces clipped per Cartesian component); ``clip=norm`` clips each force
by its length and makes it exactly equivariant.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark.config import param
from benchmark.groups import EuclideanGroup
from benchmark.registry import TASKS
from benchmark.tasks import nbody_sim
from benchmark.tasks._base import GeometricBatch, Task

__all__ = ["NBodyConfig", "NBody", "data_root"]

STANDARD = {"num_train": 10000, "num_valid": 2000, "num_test": 2000, "seed": 43}


def data_root() -> Path:
    """Where generated data are cached: ``$RELAXBENCH_DATA``, else the project's ``datasets/``."""
    env = os.environ.get("RELAXBENCH_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "datasets"
    if repo.is_dir():
        return repo
    return Path.home() / ".cache" / "relaxbench" / "datasets"


@dataclass(frozen=True)
class NBodyConfig:
    clip: str = param("component", help="force clip: per component (original) or by norm (exactly E(3))",
                      choices=("component", "norm"))
    frame_in: int = param(30, help="input frame", ge=0, le=48)
    frame_out: int = param(40, help="target frame", ge=0, le=48)
    num_train: int = param(10000, help="training trajectories generated (the pool train_size draws from)", ge=1)
    num_valid: int = param(2000, help="validation trajectories", ge=1)
    num_test: int = param(2000, help="test trajectories", ge=1)
    seed: int = param(43, help="seed of the generator's random stream", ge=0)

    def check(self) -> None:
        from benchmark.config import ConfigError
        if self.frame_out <= self.frame_in:
            raise ConfigError(f"task.frame_out={self.frame_out}: must be > task.frame_in={self.frame_in}")

    @property
    def is_standard(self) -> bool:
        return (self.num_train, self.num_valid, self.num_test, self.seed) == tuple(STANDARD.values())


def _cache_dir(cfg: NBodyConfig) -> Path:
    tag = f"clip-{cfg.clip}_train{cfg.num_train}_valid{cfg.num_valid}_test{cfg.num_test}_seed{cfg.seed}"
    return data_root() / "nbody" / "cache" / tag


def _expected_fingerprints(cfg: NBodyConfig, cache: Path) -> dict | None:
    """Committed fingerprints for the standard split, else the manifest written at generation."""
    if cfg.is_standard and cfg.clip == "component":
        try:
            return nbody_sim.load_reference_fingerprints()
        except FileNotFoundError:
            pass
    manifest = cache / "fingerprints.json"
    if manifest.exists():
        return json.loads(manifest.read_text())
    return None


def ensure_data(cfg: NBodyConfig, *, progress: bool = True) -> Path:
    """Generate (once) and verify the cached splits of ``cfg``; returns the cache folder."""
    cache = _cache_dir(cfg)
    files = [cache / f"{s}.npz" for s in ("train", "valid", "test")]
    if not all(f.exists() for f in files):
        cache.parent.mkdir(parents=True, exist_ok=True)
        data = nbody_sim.generate(num_train=cfg.num_train, num_valid=cfg.num_valid, num_test=cfg.num_test,
                                  seed=cfg.seed, clip=cfg.clip, progress=progress)
        prints = {split: {k: nbody_sim.fingerprint(v) for k, v in arrays.items()} for split, arrays in data.items()}
        expected = _expected_fingerprints(cfg, cache)
        if expected is not None:
            _compare(prints, expected, "freshly generated")
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache.parent))
        for split, arrays in data.items():
            nbody_sim.save_split(tmp, split, arrays)
        (tmp / "fingerprints.json").write_text(json.dumps(prints, indent=1, sort_keys=True))
        try:
            tmp.rename(cache)
        except OSError:  # another process finished first: keep theirs
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
    return cache


def _compare(prints: dict, expected: dict, what: str) -> None:
    bad = []
    for split, arrays in expected.items():
        for key, want in arrays.items():
            want_hash = want["sha256"] if isinstance(want, dict) else want
            got = prints.get(split, {}).get(key)
            if got != want_hash:
                bad.append(f"{split}/{key}")
    if bad:
        raise RuntimeError(f"nbody data ({what}) do not match their fingerprints: {', '.join(bad)}; "
                           "delete the cache folder and regenerate with `relaxbench data nbody`")


@TASKS.register("nbody", config=NBodyConfig)
class NBody(Task):
    version = "1"
    metric = "mse"
    higher_is_better = False
    metric_scale = 1.0
    train_defaults = {"epochs": 1000, "batch_size": 100, "lr": 5e-4, "weight_decay": 1e-12,
                      "eval_every": 5, "optimizer": "adam"}
    train_sizes = (500, 1000, 2000, 3000, 5000, 7000, 9000)
    default_train_size = 3000
    max_train_size = 10000
    presets = {"ace": {"train.lr": 9e-4}}

    def __init__(self, cfg: NBodyConfig, *, train_size: int, dtype: torch.dtype = torch.float32,
                 progress: bool = True):
        super().__init__(cfg, train_size=train_size, dtype=dtype)
        if train_size > cfg.num_train:
            raise ValueError(f"train_size={train_size}: at most task.num_train={cfg.num_train}")
        self.group = EuclideanGroup(reflections=True, translations=True)
        cache = ensure_data(cfg, progress=progress)
        expected = _expected_fingerprints(cfg, cache)
        self._splits: dict[str, GeometricBatch] = {}
        for split in ("train", "valid", "test"):
            arrays = nbody_sim.load_split(cache / f"{split}.npz")
            if expected is not None and split in expected:
                _compare({split: {k: nbody_sim.fingerprint(v) for k, v in arrays.items()}},
                         {split: expected[split]}, f"cached in {cache.name}")
            if split == "train":
                arrays = {k: v[:train_size] for k, v in arrays.items()}
            self._splits[split] = self._to_batch(arrays)

    @classmethod
    def max_train_size_for(cls, cfg: NBodyConfig) -> int:
        return min(cls.max_train_size, cfg.num_train)

    def _to_batch(self, arrays: dict[str, np.ndarray]) -> GeometricBatch:
        loc = torch.from_numpy(np.ascontiguousarray(arrays["loc"].transpose(0, 1, 3, 2)))  # (S, T, 5, 3)
        vel = torch.from_numpy(np.ascontiguousarray(arrays["vel"].transpose(0, 1, 3, 2)))
        charges = torch.from_numpy(arrays["charges"])  # (S, 5, 1)
        a, b = self.cfg.frame_in, self.cfg.frame_out
        edge_attr = charges[:, :, None, :] * charges[:, None, :, :]  # q_i q_j, (S, 5, 5, 1)
        batch = GeometricBatch(pos=loc[:, a], vel=vel[:, a], edge_attr=edge_attr, target=loc[:, b])
        return batch.to(self.dtype)

    def split(self, split: str) -> GeometricBatch:
        return self._splits[split]

    # symmetry: positions and target rotate, reflect and translate; velocities rotate and reflect
    def act_input(self, g, batch: GeometricBatch) -> GeometricBatch:
        R = g.rotation.to(batch.pos)
        t = g.translation.to(batch.pos)
        return batch.replace(pos=batch.pos @ R.transpose(1, 2) + t[:, None, :],
                             vel=batch.vel @ R.transpose(1, 2),
                             target=batch.target @ R.transpose(1, 2) + t[:, None, :])

    def act_output(self, g, y: torch.Tensor) -> torch.Tensor:
        R = g.rotation.to(y)
        return y @ R.transpose(1, 2) + g.translation.to(y)[:, None, :]

    def loss(self, pred: torch.Tensor, batch: GeometricBatch) -> torch.Tensor:
        return torch.mean((pred - batch.target) ** 2)

    def metric_per_sample(self, pred: torch.Tensor, batch: GeometricBatch) -> torch.Tensor:
        return ((pred - batch.target) ** 2).flatten(1).mean(dim=1)
