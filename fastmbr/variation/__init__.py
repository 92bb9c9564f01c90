"""Models of natural variation G(x, δ): one interface, a registry, known and learned models."""

from fastmbr.variation.base import NaturalVariation, build_variation, register_variation, variation_names
from fastmbr.variation.compose import ComposedVariation

__all__ = ["NaturalVariation", "ComposedVariation", "build_variation", "register_variation", "variation_names"]
