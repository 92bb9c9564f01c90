"""Normalisation inside the classifier: inputs stay pixels in [0, 1] everywhere else."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def channel_stats(images: torch.Tensor, max_images: int = 20_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images ``[N, C, H, W]`` (on at most ``max_images``)."""
    x = images[:max_images].float().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()
