"""Classifiers. Every classifier takes pixels in [0, 1]; its first layer normalises."""

from __future__ import annotations

from torch import nn

from fastmbr.errors import FastmbrError
from fastmbr.models.cnn import PaperCNN
from fastmbr.models.normalize import Normalize, channel_stats
from fastmbr.models.resnet import resnet

ARCHS = ("cnn", "resnet18", "resnet34", "resnet50")


def build_classifier(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> nn.Sequential:
    """``Sequential(Normalize(mean, std), net)``: the model sees [0, 1] pixels, normalises, classifies."""
    if arch == "cnn":
        net = PaperCNN(num_classes, in_channels, image_size)
    elif arch.startswith("resnet") and arch in ARCHS:
        net = resnet(int(arch[6:]), num_classes, in_channels, image_size)
    else:
        raise FastmbrError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    mean = mean if mean is not None else [0.5] * in_channels
    std = std if std is not None else [0.25] * in_channels
    return nn.Sequential(Normalize(mean, std), net)


__all__ = ["build_classifier", "channel_stats", "ARCHS", "Normalize"]
