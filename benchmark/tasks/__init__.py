"""Tasks; each module registers its task in ``TASKS`` when imported."""

from benchmark.tasks._base import SPLITS, GeometricBatch, Task

__all__ = ["Task", "GeometricBatch", "SPLITS"]
