"""``strict``: the exactly equivariant reference (gamma = 0).

The backbone is built without unconstrained branches (``model.branch=none``), so the network is
``f_eq`` alone: no gamma, no branch parameters, nothing that can break the symmetry.
"""

from __future__ import annotations

from benchmark.method import Method
from benchmark.registry import METHODS


@METHODS.register("strict")
class Strict(Method):
    """Train the exactly equivariant network; report it as ``projected`` (it is its own projection)."""

    variants = ("projected",)
    uses_branch = False
