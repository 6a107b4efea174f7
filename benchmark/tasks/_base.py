"""What a task is: data splits, its symmetry group and action, its loss and its metric.

A task owns its metric (name, direction, scale) and its group action, so the train loop,
the equivariance measurement and the methods work on every task alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping

import torch

from benchmark.groups import Group, GroupElements

__all__ = ["Task", "GeometricBatch", "SPLITS"]

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class GeometricBatch:
    """A batch of point sets: ``B`` samples of ``N`` nodes in 3-D, as dense tensors.

    Attributes
    ----------
    pos, vel : (B, N, 3)
        Positions and velocities (vectors; positions also translate).
    edge_attr : (B, N, N, E)
        Invariant edge attributes (e.g. the product of charges).
    target : (B, N, 3)
        Target positions.
    edge_mask : (B, N, N) or None
        1 where an edge exists; ``None`` means fully connected without self loops.
    node_attr : (B, N, F) or None
        Invariant node attributes, if the task has any.
    target_seq : (B, P, N, 3) or None
        The ``P`` target frames ending at the target (``target == target_seq[:, -1]``), for tasks
        whose backbones may predict a trajectory; ``None`` for a single target frame.
    """

    pos: torch.Tensor
    vel: torch.Tensor
    edge_attr: torch.Tensor
    target: torch.Tensor
    edge_mask: torch.Tensor | None = None
    node_attr: torch.Tensor | None = None
    target_seq: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.pos.shape[0]

    def replace(self, **changes: Any) -> "GeometricBatch":
        return dataclasses.replace(self, **changes)

    def index(self, idx: torch.Tensor | slice) -> "GeometricBatch":
        return GeometricBatch(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[idx])
                                 for f in dataclasses.fields(self)})

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "GeometricBatch":
        """The batch with floating-point fields cast to ``dtype`` and every field moved to ``device``."""
        def conv(t):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        return GeometricBatch(**{f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def permute_nodes(self, perm: torch.Tensor) -> "GeometricBatch":
        """The same batch with nodes relabelled by ``perm`` (shape (N,))."""
        def node(t):
            return None if t is None else t[:, perm]

        def edge(t):
            return None if t is None else t[:, perm][:, :, perm]
        return GeometricBatch(pos=node(self.pos), vel=node(self.vel), edge_attr=edge(self.edge_attr),
                              target=node(self.target), edge_mask=edge(self.edge_mask),
                              node_attr=node(self.node_attr),
                              target_seq=None if self.target_seq is None else self.target_seq[:, :, perm])


class Task:
    """Base class of every task. Subclasses register with ``@TASKS.register(name, config=...)``.

    A task is built for one configuration, training-set size and dtype; it holds its splits in
    memory and yields batches. Class attributes describe the protocol:

    ``version``: bumped whenever the data or the metric changes (it enters the config hash).
    ``metric`` / ``higher_is_better`` / ``metric_scale``: the task's metric, its direction and the
    factor it is reported with (e.g. 1e-2 for "MSE x 1e-2").
    ``train_defaults``: the primal schedule of the task (``TrainConfig`` keys).
    ``train_sizes``: the default grid of training-set sizes for sample-efficiency curves.
    ``presets``: named override sets reproducing a paper's primal settings.
    """

    registry_name: ClassVar[str] = "?"
    version: ClassVar[str] = "1"
    metric: ClassVar[str] = "mse"
    higher_is_better: ClassVar[bool] = False
    metric_scale: ClassVar[float] = 1.0
    train_defaults: ClassVar[Mapping[str, Any]] = {}
    train_sizes: ClassVar[tuple[int, ...]] = ()
    default_train_size: ClassVar[int] = 1000
    max_train_size: ClassVar[int] = 10**9
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: Per task setting a grid may vary (``eps``), named reference curves over its values, drawn
    #: beside the metric (the data's own symmetry defect: what no strict model can beat).
    setting_floors: ClassVar[Mapping[str, Mapping[str, Mapping[float, float]]]] = {}
    group: Group

    @classmethod
    def check_registration(cls, name: str) -> None:
        """Called by the registry: the declared protocol attributes have their declared types."""
        if not isinstance(cls.higher_is_better, bool) or not isinstance(cls.metric, str):
            raise TypeError(f"task {name!r}: metric must be a name and higher_is_better a bool")
        for attr in ("train_defaults", "presets"):
            if not isinstance(getattr(cls, attr), Mapping):
                raise TypeError(f"task {name!r}: {attr} must be a mapping")

    def __init__(self, cfg: Any, *, train_size: int, dtype: torch.dtype = torch.float32, progress: bool = True):
        """``progress``: show progress of a long data preparation (tasks without one ignore it)."""
        self.cfg = cfg
        self.train_size = train_size
        self.dtype = dtype
        #: The splits held in memory (``train``/``valid``/``test`` -> a batch object with
        #: ``to(device=...)``); a task fills it, or overrides :meth:`split` and :meth:`to`.
        self.splits: dict[str, Any] = {}
        #: Further groups the task's action takes whose equivariance error is measured too, by
        #: name: a subgroup under which partly symmetric data is exactly symmetric (rotations
        #: about the vertical axis, say). Empty by default.
        self.extra_groups: dict[str, Group] = {}

    @property
    def name(self) -> str:
        return type(self).registry_name

    @classmethod
    def max_train_size_for(cls, cfg: Any) -> int:
        """The largest training-set size the task offers under ``cfg``."""
        return cls.max_train_size

    @classmethod
    def cache_folders_to_write(cls, cfg: Any) -> list:
        """Folders that building the task under ``cfg`` would still have to write (a data cache
        not generated yet); checked to be writable before a run starts. Default: none."""
        return []

    # -- data -------------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> "Task":
        """Move the splits held in memory to ``device`` (in place); returns the task.

        The default moves every object of :attr:`splits`; a task that keeps its data elsewhere
        overrides this.
        """
        for key, value in self.splits.items():
            self.splits[key] = value.to(device=device)
        self.device = torch.device(device)
        return self

    def split(self, split: str) -> Any:
        """The whole split as one batch object (held in memory): by default from :attr:`splits`."""
        if split not in self.splits:
            raise KeyError(f"task {self.name!r} holds no split {split!r}; it holds {', '.join(self.splits) or 'none'}")
        return self.splits[split]

    def split_size(self, split: str) -> int:
        return len(self.split(split))

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[Any]:
        """Batches of ``split``; with ``shuffle`` the order is drawn from ``generator`` only."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        data = self.split(split)
        n = len(data)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            yield data.index(idx) if shuffle else data.index(slice(start, start + batch_size))

    # -- symmetry ---------------------------------------------------------------------------------
    def permute_nodes(self, perm: torch.Tensor, batch: Any) -> Any:
        """``batch`` with its nodes relabelled by ``perm``, or ``None`` for a task without nodes
        (then no permutation equivariance is asked of its backbones). Default: a
        :class:`GeometricBatch`'s ``permute_nodes``."""
        return batch.permute_nodes(perm) if isinstance(batch, GeometricBatch) else None

    def permute_output(self, perm: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The output of a node-permuted input: node outputs (axis 1) permuted. A task whose
        output is invariant to permutations (one value per graph) overrides this."""
        return y[:, perm]

    def group_sample(self, n: int, generator: torch.Generator) -> GroupElements:
        return self.group.sample(n, generator, dtype=self.dtype)

    def act_input(self, g: GroupElements, batch: Any) -> Any:
        raise NotImplementedError

    def act_output(self, g: GroupElements, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- objective --------------------------------------------------------------------------------
    def loss(self, pred: torch.Tensor, batch: Any) -> torch.Tensor:
        """The training loss on a minibatch (a mean)."""
        raise NotImplementedError

    def metric_per_sample(self, pred: torch.Tensor, batch: Any) -> torch.Tensor:
        """The task metric of each sample, shape (B,); the split's metric is their mean."""
        raise NotImplementedError

    def test_breakdown(self, pred: torch.Tensor, batch: Any) -> dict[str, Any] | None:
        """Further quantities of a variant's test predictions that the record keeps beside its test
        metric (``variants.<name>.test_breakdown``), e.g. a classifier's per-class errors; ``None``
        (the default) keeps none."""
        return None

    def output_error(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-sample norm of the difference of two outputs, shape (B,) (for equivariance errors)."""
        return (a - b).flatten(1).norm(dim=1)

    def output_norm(self, a: torch.Tensor) -> torch.Tensor:
        return a.flatten(1).norm(dim=1)
