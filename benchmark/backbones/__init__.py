"""Homotopy backbones; each module registers its backbone in ``BACKBONES`` when imported."""
