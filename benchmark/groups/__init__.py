"""Symmetry groups: sampled elements, their actions on data, and representations of layers.

A task names its group; a relaxed layer names the representations (:class:`Rep`) of its branch's
input and output, so methods can act on any layer of any backbone without knowing the backbone.
"""

from benchmark.groups._base import Group, GroupElements, Rep
from benchmark.groups._d4 import D4Elements, D4Group, FieldRep
from benchmark.groups._e3 import AxialEuclideanGroup, CartesianRep, E3Elements, EuclideanGroup, IrrepsRep

__all__ = ["Group", "GroupElements", "Rep", "EuclideanGroup", "AxialEuclideanGroup", "D4Group", "D4Elements", "FieldRep", "E3Elements", "CartesianRep", "IrrepsRep"]
