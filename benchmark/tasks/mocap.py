"""Tasks ``mocap-run`` and ``mocap-walk``: human motion from the CMU motion-capture database.

The protocol of EGNO (Xu et al., ICML 2024), reused by ACE (Manolache et al., NeurIPS 2025): a
skeleton of 31 joints; input: joint positions and velocities (next frame minus this frame) at a
start frame ``s``; target: positions at ``s + 30`` and, for backbones that predict a trajectory,
the ``P = 5`` frames ``s + 26 ... s + 30`` (``target_seq``). Graph: the bones plus 2-hop
neighbours along the skeleton, edge attribute 1 for a bone and 2 for a 2-hop pair (no self
loops); the backbones add squared distances themselves. Metric: MSE of the positions at the target
frame, reported x 1e-2.

* ``mocap-run``: subject 9, 11 running trials, vendored as ``datasets/cmu_mocap/run.npz`` and
  checked against its sha256 on every load; train trials 1, 2, 5, 6, 10, validation 0, 4, 9, test
  3, 7, 8, 80 start frames per trial (from frames 0..89); 200 / 240 / 240 samples.
* ``mocap-walk``: subject 35, 23 walking trials, which the user converts from CMU's ASF/AMC files
  (``relaxbench data mocap``) and names with ``task.path``; train trials 20, 1, 17, 13, 14, 9, 4,
  2, 7, 5, 16, validation 3, 8, 11, 12, 15, 18, test 6, 19, 21, 0, 22, 10, 100 start frames per
  trial (from frames 0..299); 198 (11 x 18) / 600 / 600 samples.

A split of ``m`` samples takes the first ``m // n_trials`` start frames of each of its ``n_trials``
trials (the training size ``train_size`` plays ``m`` for the training split). The start frames of
both data sets are one draw of numpy's legacy ``RandomState(100)``: for the training, then the
validation, then the test trials in the order listed, ``choice(frames, per_trial, replace=False)``
(:func:`draw_starts`; it reproduces the vendored file's start lists exactly).

Node features (``height=True``, EGNO's): ``|v|`` (added by the backbones) and the height, the
vertical coordinate ``y`` (CMU's up axis, index 1) divided by 10 and then by its maximum over a
normalisation block (EGNO: ``Z = x[..., 1] / 10; Z / Z.max()``, the maximum over every node of
every sample of a minibatch). Here a block is ``task.height_block`` (12, EGNO's batch size)
consecutive samples of a batch, the last block holding the rest, and the feature is computed
from the batch's own positions wherever a batch is made: for each batch :meth:`Mocap.batches`
yields (at EGNO's batch size 12 one block per training batch, as EGNO), for each stored split in
consecutive blocks of its samples in split order (the blocks EGNO's evaluation loader forms), so
that evaluation in chunks of any ``train.eval_batch_size`` sees the same feature, and by
:meth:`Mocap.act_input` from the transformed positions. A slice of a batch keeps the feature
of the batch it came from; :meth:`Mocap.act_input` on a slice that does not start and end on block
boundaries recomputes it over other blocks (act on whole batches).

Symmetry. ``task.group`` is E(3) (rotations, reflections, translations acting on positions and
targets, rotations and reflections on velocities), measured with every derived feature
recomputed from the transformed coordinates. The height changes under rotations that tilt the
vertical axis and under vertical translations, so with ``height=True`` no backbone is E(3)-
equivariant on these tasks; they are exactly symmetric under rotations about the vertical axis
and reflections through planes containing it, ``extra_groups["vertical"]``. With
``height=False`` there is no node feature and the input is E(3)-symmetric.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from benchmark.config import ConfigError, param
from benchmark.groups import AxialEuclideanGroup, EuclideanGroup
from benchmark.registry import TASKS
from benchmark.tasks._base import SPLITS, GeometricBatch, Task

__all__ = ["MocapRunConfig", "MocapWalkConfig", "MocapRun", "MocapWalk", "Protocol", "RUN", "WALK",
           "MocapDataError", "draw_starts", "load_trials", "skeleton_graph", "height_feature",
           "VERTICAL", "RUN_FILE", "RUN_SHA256"]

#: The vertical coordinate of CMU's data (ASF files are y-up).
VERTICAL = 1
#: The vendored subject-9 file and its sha256 (``datasets/cmu_mocap/CARD.md``).
RUN_FILE = Path(__file__).resolve().parents[2] / "datasets" / "cmu_mocap" / "run.npz"
RUN_SHA256 = "9c1e88de83299375a34e653cd7fb818e373e47a5230cd29c921e911392a21d98"
N_JOINTS = 31
WALK_HELP = ("convert CMU subject 35's walking trials with `relaxbench data mocap --asf 35.asf --amc "
             "35_01.amc ... 35_16.amc 35_28.amc ... 35_34.amc --out walk.npz` (the 23 files in that order; "
             "datasets/cmu_mocap/CARD.md) and pass task.path=walk.npz")


class MocapDataError(ValueError):
    """A motion data file that is missing, damaged, not the expected one or not of the layout;
    the message is one line."""


@dataclass(frozen=True)
class Protocol:
    """Which trials form each split, how many start frames each trial has and from which frames
    they are drawn, and the validation and test sizes."""

    train_trials: tuple[int, ...]
    valid_trials: tuple[int, ...]
    test_trials: tuple[int, ...]
    per_trial: int
    start_frames: int
    valid_samples: int
    test_samples: int
    seed: int = 100

    def trials(self, split: str) -> tuple[int, ...]:
        return {"train": self.train_trials, "valid": self.valid_trials, "test": self.test_trials}[split]


RUN = Protocol((1, 2, 5, 6, 10), (0, 4, 9), (3, 7, 8), per_trial=80, start_frames=90,
               valid_samples=240, test_samples=240)
WALK = Protocol((20, 1, 17, 13, 14, 9, 4, 2, 7, 5, 16), (3, 8, 11, 12, 15, 18), (6, 19, 21, 0, 22, 10),
                per_trial=100, start_frames=300, valid_samples=600, test_samples=600)


def draw_starts(protocol: Protocol) -> dict[str, np.ndarray]:
    """The start frames of each split, ``(n_trials, per_trial)`` int64, row ``i`` for trial
    ``protocol.trials(split)[i]`` (see the module docstring for the draw)."""
    rs = np.random.RandomState(protocol.seed)
    out = {}
    for split in SPLITS:
        rows = [rs.choice(np.arange(protocol.start_frames), size=protocol.per_trial, replace=False)
                for _ in protocol.trials(split)]
        out[split] = np.stack(rows).astype(np.int64)
    return out


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_trials(path: Path, sha256: str | None = None) -> tuple[np.ndarray, list[np.ndarray], dict[str, Any]]:
    """``(bones (E, 2), [trial positions (T_k, J, 3)], {"<split>_trials"/"<split>_starts": array})``
    from a motion data file, after checking its sha256 (when given) and its layout; every failure
    is a one-line :class:`MocapDataError`. Read with ``allow_pickle=False``."""
    path = Path(path)
    if not path.is_file():
        raise MocapDataError(f"{path}: no such file")
    if sha256:
        got = sha256_of(path)
        if got != sha256.lower():
            raise MocapDataError(f"{path}: sha256 {got} differs from the expected {sha256.lower()} "
                                 "(a damaged or different file)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # a damaged file fails in many ways: BadZipFile, ValueError, OSError, ...
        raise MocapDataError(f"{path}: does not load as an npz file without pickles "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    if "bones" not in arrays:
        raise MocapDataError(f"{path}: no 'bones' array")
    bones = arrays["bones"]
    if bones.ndim != 2 or bones.shape[1] != 2 or bones.dtype.kind not in "iu":
        raise MocapDataError(f"{path}: 'bones' must be (E, 2) integers, got {bones.dtype} {bones.shape}")
    trials = []
    while f"trial_{len(trials):02d}" in arrays:
        x = arrays[f"trial_{len(trials):02d}"]
        name = f"trial_{len(trials):02d}"
        if x.ndim != 3 or x.shape[2] != 3 or x.dtype.kind != "f":
            raise MocapDataError(f"{path}: {name} must be (T, J, 3) floats, got {x.dtype} {x.shape}")
        if not np.isfinite(x).all():
            raise MocapDataError(f"{path}: {name} has non-finite values")
        trials.append(x.astype(np.float64))
    if not trials:
        raise MocapDataError(f"{path}: no trial_00 array")
    joints = {t.shape[1] for t in trials}
    if len(joints) != 1:
        raise MocapDataError(f"{path}: trials have different numbers of joints: {sorted(joints)}")
    J = joints.pop()
    if bones.size and (bones.min() < 0 or bones.max() >= J):
        raise MocapDataError(f"{path}: 'bones' index joints outside 0..{J - 1}")
    lists = {k: v for k, v in arrays.items() if k.endswith("_trials") or k.endswith("_starts")}
    return bones.astype(np.int64), trials, lists


def skeleton_graph(bones: np.ndarray, n: int) -> np.ndarray:
    """Edge attributes (n, n): 1 for a bone, 2 for a pair two bones apart (not a bone), 0
    elsewhere and on the diagonal (EGNO's graph).

    >>> skeleton_graph(np.array([[1, 0], [2, 1]]), 3).tolist()
    [[0, 1, 2], [1, 0, 1], [2, 1, 0]]
    """
    adj = np.zeros((n, n), dtype=np.int64)
    adj[bones[:, 0], bones[:, 1]] = 1
    adj[bones[:, 1], bones[:, 0]] = 1
    two = (adj @ adj) > 0
    out = np.where(adj > 0, 1, np.where(two, 2, 0))
    np.fill_diagonal(out, 0)
    return out


def height_feature(pos: torch.Tensor, block: int) -> torch.Tensor:
    """EGNO's height feature (B, N, 1) of positions (B, N, 3): ``z = y / 10`` and ``z / max z``,
    the maximum over every node of each block of ``block`` consecutive samples (the last block
    holds the rest)."""
    z = pos[..., VERTICAL:VERTICAL + 1] / 10
    parts = []
    for start in range(0, z.shape[0], block):
        chunk = z[start:start + block]
        parts.append(chunk / chunk.amax())
    return torch.cat(parts, dim=0) if parts else z


@dataclass(frozen=True)
class MocapRunConfig:
    path: str = param("", help="motion data file (empty: the vendored datasets/cmu_mocap/run.npz, checked "
                      "against its sha256)")
    sha256: str = param("", help="expected sha256 of task.path (empty: only the vendored file is checked)")
    height: bool = param(True, help="EGNO's height node feature (breaks tilting rotations); false: no node "
                         "feature, an E(3)-symmetric input")
    height_block: int = param(12, help="consecutive samples over which the height is normalised by its "
                              "maximum (EGNO: its batch size)", ge=1)
    frames_ahead: int = param(30, help="target frame = start frame + frames_ahead", ge=1)
    target_frames: int = param(5, help="frames of target_seq, ending at the target frame (EGNO's P)", ge=1)

    def check(self) -> None:
        if self.target_frames > self.frames_ahead:
            raise ConfigError(f"task.target_frames={self.target_frames}: at most task.frames_ahead="
                              f"{self.frames_ahead}")
        if self.sha256 and (len(self.sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in self.sha256)):
            raise ConfigError(f"task.sha256={self.sha256!r}: expected 64 hexadecimal digits")


@dataclass(frozen=True)
class MocapWalkConfig(MocapRunConfig):
    path: str = param("", help="the converted subject-35 walking trials (`relaxbench data mocap`); required")

    def check(self) -> None:
        super().check()
        if not self.path:
            raise ConfigError(f"task.path is not set: mocap-walk has no data in the project; {WALK_HELP}")


class Mocap(Task):
    """A CMU motion-capture task (see the module docstring); subclasses name the protocol."""

    version = "1"
    metric = "mse"
    higher_is_better = False
    metric_scale = 1e-2
    # EGNO / ACE MoCap: Adam 5e-4, weight decay 1e-10, batch 12 (EGNO drops the last incomplete
    # batch), gradients clipped at norm 1, evaluation every 5 epochs, 3000 epochs (ACE). Their code
    # trains through loss spikes (EGNO's first steps can reach 1e6 and recover): a run here ends as
    # diverged only after 5 consecutive epochs above train.divergence_threshold, or a non-finite loss
    train_defaults = {"epochs": 3000, "batch_size": 12, "lr": 5e-4, "weight_decay": 1e-10, "eval_every": 5,
                      "optimizer": "adam", "grad_clip": 1.0, "drop_last": True, "divergence_patience": 5}
    presets = {"egno": {"train.epochs": 2000},
               "ace": {"method.dual_optimizer": "adam", "method.dual_lr": 2e-4, "method.dual_eps": 1e-4}}
    default_train_size = 200
    protocol: Protocol

    def __init__(self, cfg: MocapRunConfig, *, train_size: int, dtype: torch.dtype = torch.float32,
                 progress: bool = True):
        super().__init__(cfg, train_size=train_size, dtype=dtype)
        p = self.protocol
        if not len(p.train_trials) <= train_size <= self.max_train_size_for(cfg):
            raise ValueError(f"train_size={train_size}: {self.name} takes {len(p.train_trials)} .. "
                             f"{self.max_train_size_for(cfg)} ({len(p.train_trials)} training trials, "
                             f"{p.per_trial} start frames each)")
        self.group = EuclideanGroup(reflections=True, translations=True)
        # vertical translations change the height feature: the group about y has none
        self.extra_groups = {"vertical": AxialEuclideanGroup(axis=VERTICAL, reflections=True, translations=False)}
        path, sha = self._source(cfg)
        bones, trials, lists = load_trials(path, sha)
        if trials[0].shape[1] != N_JOINTS or bones.shape[0] != N_JOINTS - 1:
            raise MocapDataError(f"{path}: expected {N_JOINTS} joints and {N_JOINTS - 1} bones, got "
                                 f"{trials[0].shape[1]} and {bones.shape[0]}")
        need = 1 + max(p.train_trials + p.valid_trials + p.test_trials)
        if len(trials) < need:
            raise MocapDataError(f"{path}: {self.name} uses trials 0..{need - 1}, the file has {len(trials)}")
        starts = self._starts(path, lists)
        graph = torch.from_numpy(skeleton_graph(bones, N_JOINTS))
        self._edge_attr = graph.to(torch.float64)[..., None]
        self._edge_mask = (graph > 0).to(torch.float64)
        sizes = {"train": train_size, "valid": p.valid_samples, "test": p.test_samples}
        for split in SPLITS:
            self.splits[split] = self._split(path, trials, p.trials(split), starts[split], sizes[split])

    # -- data -------------------------------------------------------------------------------------
    def _source(self, cfg: MocapRunConfig) -> tuple[Path, str | None]:
        return Path(cfg.path), cfg.sha256 or None

    def _starts(self, path: Path, lists: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The file's start lists where it has them (checked against its trial lists), else the draw."""
        drawn = draw_starts(self.protocol)
        keys = {"train": "train", "valid": "val", "test": "test"}
        out = {}
        for split, key in keys.items():
            trials, starts = lists.get(f"{key}_trials"), lists.get(f"{key}_starts")
            if trials is None and starts is None:
                out[split] = drawn[split]
                continue
            want = np.array(self.protocol.trials(split))
            if trials is None or starts is None or trials.shape != want.shape or (trials != want).any():
                raise MocapDataError(f"{path}: {key}_trials/{key}_starts do not give the trials "
                                     f"{', '.join(map(str, want))} of the {self.name} protocol")
            if starts.shape != (len(want), self.protocol.per_trial) or starts.dtype.kind not in "iu":
                raise MocapDataError(f"{path}: {key}_starts must be ({len(want)}, {self.protocol.per_trial}) "
                                     f"integers, got {starts.dtype} {starts.shape}")
            out[split] = starts.astype(np.int64)
        return out

    def _split(self, path: Path, trials: list[np.ndarray], ids: tuple[int, ...], starts: np.ndarray,
               samples: int) -> GeometricBatch:
        cfg = self.cfg
        each = samples // len(ids)
        P = cfg.target_frames
        pos, vel, seq = [], [], []
        for row, k in enumerate(ids):
            x = trials[k]
            v = x[1:] - x[:-1]             # velocity of a frame: the next frame minus this one
            x = x[:-1]                     # the last frame has no velocity
            s = starts[row, :each]
            if s.size and (s.min() < 0 or s.max() + cfg.frames_ahead >= len(x)):
                raise MocapDataError(f"{path}: trial_{k:02d} has {len(x) + 1} frames, too few for start frame "
                                     f"{s.max()} + {cfg.frames_ahead}")
            pos.append(x[s])
            vel.append(v[s])
            seq.append(np.stack([x[s + cfg.frames_ahead - P + 1 + i] for i in range(P)], axis=1))
        pos_t = torch.from_numpy(np.concatenate(pos))
        seq_t = torch.from_numpy(np.concatenate(seq))
        S = pos_t.shape[0]
        batch = GeometricBatch(pos=pos_t, vel=torch.from_numpy(np.concatenate(vel)),
                               edge_attr=self._edge_attr.expand(S, -1, -1, -1).clone(),
                               target=seq_t[:, -1].clone(), edge_mask=self._edge_mask.expand(S, -1, -1).clone(),
                               target_seq=seq_t).to(self.dtype)
        return self._with_height(batch)

    def _with_height(self, batch: GeometricBatch) -> GeometricBatch:
        if not self.cfg.height:
            return batch
        return batch.replace(node_attr=height_feature(batch.pos, self.cfg.height_block))

    @classmethod
    def max_train_size_for(cls, cfg: Any) -> int:
        return len(cls.protocol.train_trials) * cls.protocol.per_trial

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[GeometricBatch]:
        """Batches of ``split``, each with its height feature computed from its own samples (in
        blocks of ``task.height_block``)."""
        for batch in super().batches(split, batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last):
            yield self._with_height(batch)

    # -- symmetry ---------------------------------------------------------------------------------
    def act_input(self, g, batch: GeometricBatch) -> GeometricBatch:
        """Positions and targets rotate, reflect and translate, velocities rotate and reflect;
        the height feature is recomputed from the new positions."""
        R = g.rotation.to(batch.pos)
        t = g.translation.to(batch.pos)
        Rt = R.transpose(1, 2)
        moved = batch.replace(pos=batch.pos @ Rt + t[:, None, :], vel=batch.vel @ Rt,
                              target=batch.target @ Rt + t[:, None, :],
                              target_seq=None if batch.target_seq is None
                              else batch.target_seq @ Rt[:, None] + t[:, None, None, :])
        return self._with_height(moved)

    def act_output(self, g, y: torch.Tensor) -> torch.Tensor:
        """``y`` (B, N, 3) or a trajectory (B, P, N, 3), moved by ``g``."""
        R = g.rotation.to(y).transpose(1, 2)
        t = g.translation.to(y)
        if y.dim() == 4:
            return y @ R[:, None] + t[:, None, None, :]
        return y @ R + t[:, None, :]

    def permute_output(self, perm: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y[..., perm, :]

    # -- objective --------------------------------------------------------------------------------
    def _check_pred(self, pred: torch.Tensor, batch: GeometricBatch) -> None:
        if pred.dim() == 4 and batch.target_seq is not None and pred.shape == batch.target_seq.shape:
            return
        if pred.shape != batch.target.shape:
            want = f"{tuple(batch.target.shape)}" + ("" if batch.target_seq is None
                                                     else f" or {tuple(batch.target_seq.shape)}")
            raise ValueError(f"{self.name}: prediction of shape {tuple(pred.shape)}; expected {want}")

    def loss(self, pred: torch.Tensor, batch: GeometricBatch) -> torch.Tensor:
        """MSE against the target frame, or for a trajectory against ``target_seq`` (the mean
        over its frames)."""
        self._check_pred(pred, batch)
        ref = batch.target_seq if pred.dim() == 4 else batch.target
        return torch.mean((pred - ref) ** 2)

    def metric_per_sample(self, pred: torch.Tensor, batch: GeometricBatch) -> torch.Tensor:
        """MSE of each sample at the target frame (a trajectory's last frame)."""
        self._check_pred(pred, batch)
        last = pred[:, -1] if pred.dim() == 4 else pred
        return ((last - batch.target) ** 2).flatten(1).mean(dim=1)


@TASKS.register("mocap-run", config=MocapRunConfig)
class MocapRun(Mocap):
    """CMU subject 9, running (vendored, checksummed)."""

    protocol = RUN
    train_sizes = (50, 100, 200, 400)

    def _source(self, cfg: MocapRunConfig) -> tuple[Path, str | None]:
        if not cfg.path:
            return RUN_FILE, RUN_SHA256
        return Path(cfg.path), cfg.sha256 or None


@TASKS.register("mocap-walk", config=MocapWalkConfig)
class MocapWalk(Mocap):
    """CMU subject 35, walking (converted by the user from CMU's files)."""

    protocol = WALK
    train_sizes = (198, 550, 1100)

    def _source(self, cfg: MocapWalkConfig) -> tuple[Path, str | None]:
        path = Path(cfg.path)
        if not path.is_file():
            raise MocapDataError(f"task.path={cfg.path}: no such file; {WALK_HELP}")
        return path, cfg.sha256 or None
