"""Learned models of natural variation: MUNIT (content encoder, style code δ, AdaIN decoder).

``load_variation(G_DIR)`` gives the trained A→B model as a :class:`MunitVariation`; ``train_munit`` learns one
from two unpaired uint8 image domains; ``score`` judges it. Importing this package registers nothing.
"""

from fastmbr.variation.munit.io import load_variation, save_variation
from fastmbr.variation.munit.networks import MunitArch, adain, arch_preset
from fastmbr.variation.munit.train import MunitTrainConfig, train_munit
from fastmbr.variation.munit.variation import MunitVariation, sample_prior

__all__ = ["MunitArch", "MunitTrainConfig", "MunitVariation", "adain", "arch_preset", "load_variation",
           "sample_prior", "save_variation", "train_munit"]
