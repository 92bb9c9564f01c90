"""The data types every reader returns and every loader consumes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class LabeledImages:
    """Images held in memory: uint8 ``[N, C, H, W]`` (C = 1 or 3) and int64 labels ``[N]``.

    ``frames`` names each image's underlying frame (renderings of one scene share one id, see shifts.frame_ids);
    None: each image is its own frame, numbered by position. ``unreadable``: the files a reader left out because
    they do not decode (``skip_corrupt``); the datasets layer collects them right after reading.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str = ""
    frames: torch.Tensor | None = None
    unreadable: tuple[str, ...] = ()

    def __post_init__(self):
        assert self.images.dtype == torch.uint8 and self.images.dim() == 4, "images must be uint8 [N, C, H, W]"
        assert self.labels.dtype == torch.int64 and self.labels.shape == (self.images.shape[0],)
        assert self.frames is None or self.frames.shape == self.labels.shape, "one frame id per image"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> "LabeledImages":
        """The images at ``index``; ``unreadable`` stays, as the provenance of the source split."""
        frames = None if self.frames is None else self.frames[index]
        return LabeledImages(self.images[index], self.labels[index], self.classes, self.source, frames,
                             self.unreadable)

    def with_frames(self) -> "LabeledImages":
        """The same images with explicit frame ids (positions where none were known), so that every later subset
        still knows which images are renderings of one frame."""
        if self.frames is not None:
            return self
        return dataclasses.replace(self, frames=torch.arange(len(self)))


def concat_images(parts: list[LabeledImages], source: str) -> LabeledImages:
    """Several labelled sets of one dataset as one (plain LabeledImages; frame ids kept where all parts have them)."""
    if any(p.classes != parts[0].classes for p in parts):
        raise ValueError("concat_images: the parts name different classes")
    frames = None if any(p.frames is None for p in parts) else torch.cat([p.frames for p in parts])
    return LabeledImages(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                         parts[0].classes, source, frames)


@dataclass
class ImageFiles:
    """Images left on disk (ImageNet-scale trees): paths and int64 labels, decoded by the loader.

    ``center_crop``: the evaluation view these files want, as the centred crop's fraction of the shorter side;
    None for the loader's (ImageNet's 224/256), 1.0 for files already cut to that view (ImageNet-C's)."""

    paths: list[Path]
    labels: torch.Tensor
    classes: list[str]
    source: str = ""
    meta: dict = field(default_factory=dict)
    center_crop: float | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: torch.Tensor) -> "ImageFiles":
        idx = index.tolist()
        return ImageFiles([self.paths[i] for i in idx], self.labels[index], self.classes, self.source, self.meta,
                          self.center_crop)
