"""The data types every reader returns and every loader consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class LabeledImages:
    """Images held in memory: uint8 ``[N, C, H, W]`` (C = 1 or 3) and int64 labels ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str = ""

    def __post_init__(self):
        assert self.images.dtype == torch.uint8 and self.images.dim() == 4, "images must be uint8 [N, C, H, W]"
        assert self.labels.dtype == torch.int64 and self.labels.shape == (self.images.shape[0],)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> "LabeledImages":
        return LabeledImages(self.images[index], self.labels[index], self.classes, self.source)


@dataclass
class ImageFiles:
    """Images left on disk (ImageNet-scale trees): paths and int64 labels, decoded by the loader."""

    paths: list[Path]
    labels: torch.Tensor
    classes: list[str]
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: torch.Tensor) -> "ImageFiles":
        idx = index.tolist()
        return ImageFiles([self.paths[i] for i in idx], self.labels[index], self.classes, self.source, self.meta)
