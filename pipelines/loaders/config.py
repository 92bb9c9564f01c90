"""What every loader backend takes, and the batch contract they all keep."""

from __future__ import annotations

from dataclasses import dataclass

import torch

AUGMENTS = ("none", "crop", "crop-flip", "rrc-flip")
# ImageNet's evaluation view: the shorter side resized to size·256/224, the centred size×size crop. Images already
# cut to that view (ImageNet-C's) take 1.0: resized to size, nothing cropped again.
CENTER_CROP = 224 / 256


@dataclass
class LoaderConfig:
    """Loader settings. Every backend yields ``(x, y)``: x float32 ``[B, C, H, W]`` in [0, 1] on ``device``
    (channels-last memory when asked), y int64 ``[B]`` on ``device``. The order of an epoch is a function of
    ``(seed, epoch)`` alone, so ``set_epoch(epoch, start_batch)`` resumes exactly where a run stopped.

    An image file that does not decode stops the epoch with a one-line error naming it, unless ``skip_corrupt``:
    then the file-backed loaders (torch, dali, ffcv, nvjpeg) leave it out, so a batch holding it comes one image short,
    and append its path to ``loader.skipped`` (once per file) for the trainer to report."""

    batch_size: int = 64
    shuffle: bool = True
    drop_last: bool = False
    augment: str = "none"  # none | crop (pad 4, random crop) | crop-flip | rrc-flip (random-resized-crop + flip)
    image_size: int = 32
    device: torch.device | str = "cpu"
    seed: int = 0
    num_shards: int = 1
    shard_id: int = 0
    num_workers: int = 2
    channels_last: bool = False
    backend: str = "auto"  # auto | dali | ffcv | nvjpeg | tensor | torch
    skip_corrupt: bool = False  # image files that do not decode are left out and listed in ``loader.skipped``
    center_crop: float = CENTER_CROP  # augment none, image files: the centred crop's side / the shorter side
    max_resolution: int | None = None  # ffcv: image files stored with their longer side at most this (None: as is)
