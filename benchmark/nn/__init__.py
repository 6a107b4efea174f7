"""Shared neural-network building blocks: the relaxed layer and the homotopy model API."""

from benchmark.nn._relaxed import BRANCH_KINDS, HomotopyModel, RelaxedLayer, make_branch

__all__ = ["RelaxedLayer", "HomotopyModel", "make_branch", "BRANCH_KINDS"]
