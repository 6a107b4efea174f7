"""Task ``nbody``: the charged 5-body system of EGNN (Satorras et al., 2021).

Input: positions and velocities of 5 charged particles at frame 30 and their charges; target:
positions at frame 40 (1000 integration steps later). Metric: MSE over all coordinates (lower is
better). Training sets are the first ``train_size`` of the 10000 generated training trajectories;
validation and test hold 2000 each. The data are generated on first use by
:mod:`benchmark.tasks.nbody_sim`, which reproduces the original generator bit for bit, cached under
``datasets/nbody/cache/`` (or ``$RELAXBENCH_DATA/nbody/cache/``) and verified on every load: the
standard split against the committed sha256 fingerprints (package data), other splits against the
``fingerprints.json`` written with them. A cache that fails to load or to verify is moved to
``cache/quarantine/`` with a warning and regenerated.

Symmetry: E(3) acting on positions (rotation, reflection, translation) and on velocities (rotation,
reflection); charges are invariant. With ``clip=component`` (the original) the ground truth is only
approximately equivariant (forces clipped per Cartesian component); ``clip=norm`` clips each force
by its length and makes it exactly equivariant.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from benchmark.config import param
from benchmark.fileio import QUARANTINE, move_aside  # noqa: F401 - QUARANTINE: where bad caches go
from benchmark.fileio import warn as _warn
from benchmark.groups import EuclideanGroup
from benchmark.registry import TASKS
from benchmark.tasks import nbody_sim
from benchmark.tasks._base import GeometricBatch, Task

__all__ = ["NBodyConfig", "NBody", "data_root", "ensure_data", "DataCacheError"]

STANDARD = {"num_train": 10000, "num_valid": 2000, "num_test": 2000, "data_seed": 43}
MANIFEST = "fingerprints.json"


class DataCacheError(RuntimeError):
    """The N-body data do not match the committed reference fingerprints even when freshly
    generated (a different generator or numpy build): regenerating cannot fix it."""


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
    # formerly `seed`; configuration hashes still take it under that name (experiment.HASH_RENAMES)
    data_seed: int = param(43, help="seed of the data generator's random stream (the run's seed is --seed)",
                           ge=0, lt=2**32)

    #: The folder under :func:`data_root` that holds this data set's caches.
    data_name: ClassVar[str] = "nbody"

    def check(self) -> None:
        from benchmark.config import ConfigError
        if self.frame_out <= self.frame_in:
            raise ConfigError(f"task.frame_out={self.frame_out}: must be > task.frame_in={self.frame_in}")

    @property
    def is_standard(self) -> bool:
        return all(getattr(self, k) == v for k, v in STANDARD.items())

    def cache_tag(self) -> str:
        """The name of this configuration's cache folder: one per generated data set."""
        # the tag keeps the word `seed` (the field's old name) so that existing caches stay valid
        return f"clip-{self.clip}_train{self.num_train}_valid{self.num_valid}_test{self.num_test}_seed{self.data_seed}"

    def simulator_settings(self) -> dict[str, Any]:
        """Keyword arguments of :func:`nbody_sim.generate` besides the split sizes and the seed."""
        return {"clip": self.clip}


def _cache_dir(cfg: NBodyConfig) -> Path:
    return data_root() / cfg.data_name / "cache" / cfg.cache_tag()


def _reference_for(cfg: NBodyConfig) -> dict | None:
    """The committed fingerprints when ``cfg`` is the standard split with the original clip, else
    ``None`` (the cache's own manifest is then the reference). A missing reference file is an error."""
    if cfg.is_standard and cfg.clip == "component":
        return nbody_sim.load_reference_fingerprints()
    return None


def _shapes(cfg: NBodyConfig) -> dict[str, dict[str, list[int]]]:
    frames = nbody_sim.LENGTH // nbody_sim.SAMPLE_FREQ - 1
    n, d = nbody_sim.N_BALLS, nbody_sim.DIM
    sizes = {"train": cfg.num_train, "valid": cfg.num_valid, "test": cfg.num_test}
    return {split: {"loc": [m, frames, d, n], "vel": [m, frames, d, n], "edges": [m, n, n], "charges": [m, n, 1]}
            for split, m in sizes.items()}


def _mismatches(prints: dict, expected: dict, shapes: dict) -> list[str]:
    """``split/key (why)`` for each array of ``prints`` (:func:`nbody_sim.fingerprints`) that is missing,
    has no expected fingerprint, has the wrong dtype or shape, or whose sha256 differs. ``expected``
    entries are ``{"sha256", "dtype", "shape"}`` dicts or bare sha256 strings (older manifests)."""
    bad = []
    for split in nbody_sim.SPLITS:
        want_split = expected.get(split) if isinstance(expected, dict) else None
        for key in nbody_sim.ARRAY_KEYS:
            name = f"{split}/{key}"
            got = prints.get(split, {}).get(key)
            want = want_split.get(key) if isinstance(want_split, dict) else None
            if isinstance(want, str):
                want = {"sha256": want}
            if got is None:
                bad.append(f"{name} (missing)")
            elif not isinstance(want, dict) or not isinstance(want.get("sha256"), str):
                bad.append(f"{name} (no fingerprint)")
            elif got["dtype"] != "float64" or want.get("dtype", "float64") != got["dtype"]:
                bad.append(f"{name} (dtype {got['dtype']})")
            elif got["shape"] != shapes[split][key] or list(want.get("shape", got["shape"])) != got["shape"]:
                bad.append(f"{name} (shape {'x'.join(map(str, got['shape']))})")
            elif got["sha256"] != want["sha256"]:
                bad.append(f"{name} (sha256)")
    return bad


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _read_cache(cache: Path, cfg: NBodyConfig, reference: dict | None) -> tuple[dict | None, str]:
    """Load and verify the cache: ``(arrays, "")``, or ``(None, why)`` when it is not usable."""
    if not cache.is_dir():
        return None, "not a folder"
    expected = reference
    if expected is None:
        try:
            expected = json.loads((cache / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, f"{MANIFEST} is missing"
        except (OSError, ValueError) as exc:
            return None, f"{MANIFEST} is unreadable ({_one_line(exc)})"
        if not isinstance(expected, dict):
            return None, f"{MANIFEST} is unreadable (not a JSON object)"
    arrays = {}
    for split in nbody_sim.SPLITS:
        try:
            arrays[split] = nbody_sim.load_split(cache / f"{split}.npz")
        except FileNotFoundError:
            return None, f"{split}.npz is missing"
        except Exception as exc:  # a damaged file fails in many ways: BadZipFile, ValueError, EOFError, ...
            return None, f"{split}.npz does not load ({type(exc).__name__}: {_one_line(exc)})"
    bad = _mismatches(nbody_sim.fingerprints(arrays), expected, _shapes(cfg))
    if bad:
        against = "the committed reference" if reference is not None else MANIFEST
        return None, f"arrays do not match their fingerprints in {against}: {', '.join(bad)}"
    return arrays, ""


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _quarantine(cache: Path, why: str) -> bool:
    """Move a bad cache into ``quarantine/`` beside it, with a one-line warning; ``False`` when it
    could not be moved (it then stays, and freshly generated data are used without caching)."""
    try:
        target = move_aside(cache)
        if target is None:
            return True                               # another process moved it first
    except OSError as exc:
        _warn(f"nbody data cache {cache} is corrupt ({why}) and could not be moved aside "
              f"({_one_line(exc.strerror or exc)}); using freshly generated data without caching them")
        return False
    _warn(f"nbody data cache {cache} is corrupt ({why}); moved it to {target} and regenerating")
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_cache(cache: Path, data: dict, prints: dict) -> None:
    """Write the splits and their manifest into a uniquely named temporary folder beside ``cache``
    and rename it into place: readers see no cache or a complete one. When another process renamed
    its (identical) cache first, this one is discarded."""
    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.parent / f".tmp-{cache.name}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        for split, arrays in data.items():
            _fsync(nbody_sim.save_split(tmp, split, arrays))
        (tmp / MANIFEST).write_text(json.dumps(prints, indent=1, sort_keys=True), encoding="utf-8")
        _fsync(tmp / MANIFEST)
        os.rename(tmp, cache)
        tmp = None
    except OSError as exc:
        if _identity(cache) is None:                  # not lost a race: the cache really is not writable
            _warn(f"could not cache the nbody data in {cache} ({_one_line(exc.strerror or exc)}); "
                  "using them without caching")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _load_or_generate(cfg: NBodyConfig, *, progress: bool) -> tuple[Path, dict]:
    """The verified splits of ``cfg`` and their cache folder, verified once.

    A cache that fails to load, lacks its fingerprints (non-standard splits keep them in
    ``fingerprints.json``) or fails them is moved to ``quarantine/`` with a warning and regenerated.
    Freshly generated data of the standard split must match the committed reference fingerprints:
    otherwise :class:`DataCacheError`, and nothing is cached.
    """
    cache = _cache_dir(cfg)
    reference = _reference_for(cfg)
    writable = True
    for _ in range(3):
        ident = _identity(cache)
        if ident is None:
            break
        arrays, why = _read_cache(cache, cfg, reference)
        if arrays is not None:
            return cache, arrays
        if _identity(cache) != ident:                 # replaced while being read (another process): reread
            continue
        writable = _quarantine(cache, why)
        break
    data = nbody_sim.generate(num_train=cfg.num_train, num_valid=cfg.num_valid, num_test=cfg.num_test,
                              seed=cfg.data_seed, progress=progress, **cfg.simulator_settings())
    prints = nbody_sim.fingerprints(data)
    if reference is not None:
        bad = _mismatches(prints, reference, _shapes(cfg))
        if bad:
            raise DataCacheError(
                f"nbody data generated for {cache} do not match the committed reference fingerprints "
                f"({', '.join(bad)}): this generator or this numpy build differs from the one the reference "
                "was made with (bit-exact data need numpy's AVX512-SKX np.power; see 'Reproducibility' in "
                "datasets/nbody/CARD.md); nothing was cached")
    if writable:
        _write_cache(cache, data, prints)
    return cache, data


def ensure_data(cfg: NBodyConfig, *, progress: bool = True) -> Path:
    """Generate (once) and verify the cached splits of ``cfg``, regenerating a corrupt cache (see
    :func:`_load_or_generate`); returns the cache folder."""
    return _load_or_generate(cfg, progress=progress)[0]


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
    #: The papers' N-body protocols (the backbone adds its architecture under the same name, e.g.
    #: ``SEGNN.presets``): ``ace``, the ACE authors' SEGNN runs (Adam lr 9e-4 on every parameter,
    #: gammas included, no weight decay, 2000 epochs of batch 100 with the last incomplete batch
    #: dropped, evaluation every 5 epochs, no scheduler or clipping; the dual stepped by Adam at
    #: 8e-4, eps 1e-8, as their code does, where the paper's Algorithm 1 writes plain ascent);
    #: ``cr``, the constraint-relaxation protocol of Pertigkiozoglou et al. (their released code:
    #: triangular schedule, 1000 epochs of batch 100, Adam lr 5e-4, weight decay 1e-12, penalty
    #: weight 0.01 on the sums over the batch, a random rotation of every training sample).
    presets = {
        "ace": {"train.lr": 9e-4, "train.weight_decay": 0.0, "train.epochs": 2000, "train.batch_size": 100,
                "train.drop_last": True, "train.eval_every": 5, "train.grad_clip": None, "train.augment": "none",
                "method.dual_optimizer": "adam", "method.dual_lr": 8e-4, "method.dual_eps": 1e-8,
                "method.gamma_init": 1.0},
        "cr": {"train.lr": 5e-4, "train.weight_decay": 1e-12, "train.epochs": 1000, "train.batch_size": 100,
               "train.drop_last": True, "train.eval_every": 5, "train.grad_clip": None, "train.augment": "rotation",
               "method.schedule": "triangular", "method.gamma_max": 1.0, "method.lambda_reg": 0.01,
               "method.penalty_reduction": "sum"},
    }

    def __init__(self, cfg: NBodyConfig, *, train_size: int, dtype: torch.dtype = torch.float32,
                 progress: bool = True):
        super().__init__(cfg, train_size=train_size, dtype=dtype)
        if train_size > cfg.num_train:
            raise ValueError(f"train_size={train_size}: at most task.num_train={cfg.num_train}")
        self.group = EuclideanGroup(reflections=True, translations=True)
        _, data = _load_or_generate(cfg, progress=progress)   # verified (once) there
        for split in ("train", "valid", "test"):
            arrays = data[split]
            if split == "train":
                arrays = {k: v[:train_size] for k, v in arrays.items()}
            self.splits[split] = self._to_batch(arrays)

    @classmethod
    def cache_folders_to_write(cls, cfg: NBodyConfig) -> list:
        cache = _cache_dir(cfg)
        if all((cache / f"{split}.npz").is_file() for split in nbody_sim.SPLITS):
            return []
        return [cache.parent]

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
