"""Shared neural-network building blocks: the relaxed layer and the homotopy model API."""

from benchmark.nn._relaxed import (ACTIVATIONS, BRANCH_KINDS, BranchConfig, HomotopyModel, RelaxedLayer,
                                   branch_field_names, make_branch)

__all__ = ["RelaxedLayer", "HomotopyModel", "make_branch", "BRANCH_KINDS", "BranchConfig", "ACTIVATIONS",
           "branch_field_names"]
