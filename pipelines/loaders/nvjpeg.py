"""Image files decoded in batches on the training device: workers read bytes, torchvision's ``decode_jpeg``
decodes a whole batch in one call (nvJPEG on CUDA, libjpeg-turbo on a CPU), crops and resizes run where the
pixels already are.

The GPU decoder for machines without DALI: torchvision ships nvJPEG with every CUDA build. Crop windows and
flips come from the torch loader's per-sample generators (``sample_generator(seed, epoch, position)``), so both
backends cut the same windows from the same samples, in the same order, resume included; the pixels differ
only by the decoders. Files that are not JPEG (PNG trees), and JPEGs nvJPEG refuses (CMYK, say), are decoded
by Pillow one by one; a file nothing decodes is a one-line error naming it, or a counted skip.

torchvision 0.29 deprecates its image decoders in favour of TorchCodec's; they still ship (and are what the
lent GPU machine's torchvision has), so the warning is silenced here, and this one module moves when they go.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.loaders.config import LoaderConfig
from fastmbr.pipelines.loaders.torch import (EpochBatches, decode_file, maybe_flip, random_resized_crop,
                                             resize_center_crop, sample_generator, worker_message)
from fastmbr.pipelines.types import ImageFiles

AUGMENTS = ("none", "rrc-flip")
JPEG_MAGIC = b"\xff\xd8"


def read_bytes(path) -> torch.Tensor:
    """A file's bytes as a uint8 tensor; a missing or unreadable file is a FastmbrError naming it."""
    try:
        return torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
    except OSError as exc:
        raise FastmbrError(f"{path}: cannot read image file ({exc.strerror or exc})") from None


def is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 2 and bytes(data[:2].tolist()) == JPEG_MAGIC


class EncodedFiles(Dataset):
    """Indexed by ``(index, position, epoch)``: the file's bytes (None if unreadable under skip_corrupt)."""

    def __init__(self, data: ImageFiles, cfg: LoaderConfig):
        self.data, self.cfg = data, cfg

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int, int]):
        try:
            encoded = read_bytes(self.data.paths[key[0]])
        except FastmbrError:
            if not self.cfg.skip_corrupt:
                raise
            encoded = None
        return encoded, key


def keep_lists(samples: list[tuple]) -> tuple[list, list]:
    """Batches of variable-length byte tensors stay lists (no stacking)."""
    return [encoded for encoded, _ in samples], [key for _, key in samples]


def decode_on(device: torch.device, encoded: list[torch.Tensor | None], paths: list) -> list[torch.Tensor | None]:
    """uint8 ``[3, H, W]`` images on ``device``: JPEGs in one batched call, the rest (and a batch the batched
    call refuses, image by image) through Pillow; None where nothing decodes."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(encoded)
    jpegs = [i for i, data in enumerate(encoded) if data is not None and is_jpeg(data)]
    if jpegs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
            for i, image in zip(jpegs, decoded):
                out[i] = image
        except RuntimeError:
            pass  # one bad file fails the whole batch: Pillow takes each file below
    for i, image in enumerate(out):
        if image is None and encoded[i] is not None:
            out[i] = pillow_or_none(paths[i], device)
    return out


def pillow_or_none(path, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_file(path).to(device)
    except FastmbrError:
        return None


class NvjpegLoader:
    def __init__(self, data: ImageFiles, cfg: LoaderConfig):
        if not isinstance(data, ImageFiles):
            raise FastmbrError("loader 'nvjpeg' decodes image files; use --loader tensor or torch for in-memory "
                               "datasets")
        if cfg.augment not in AUGMENTS:
            raise FastmbrError(f"loader 'nvjpeg' supports augment {'/'.join(AUGMENTS)}, not {cfg.augment!r}")
        self.data, self.cfg = data, cfg
        self.device = torch.device(cfg.device)
        self.samples = EncodedFiles(data, cfg)
        self.epoch, self.start_batch = 0, 0
        self.batches = EpochBatches(self)
        self.loader = DataLoader(self.samples, batch_sampler=self.batches, num_workers=cfg.num_workers,
                                 collate_fn=keep_lists)
        self.skipped: list[str] = []

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        """Batches in a full epoch of this shard (``start_batch`` does not shorten it)."""
        return -(-len(self.batches._keys()) // self.cfg.batch_size)

    def _transform(self, image: torch.Tensor, key: tuple[int, int, int]) -> torch.Tensor:
        """The torch loader's crop and flip of one sample, from the same per-sample generator."""
        index, position, epoch = key
        generator = sample_generator(self.cfg.seed, epoch, position)
        size = self.cfg.image_size
        if self.cfg.augment == "rrc-flip":
            return maybe_flip(random_resized_crop(image, size, generator), generator)
        return resize_center_crop(image, size, self.cfg.center_crop)

    def _batch(self, encoded: list, keys: list) -> tuple[torch.Tensor, torch.Tensor] | None:
        paths = [self.data.paths[index] for index, _, _ in keys]
        images = decode_on(self.device, encoded, paths)
        kept = []
        for image, key, path in zip(images, keys, paths):
            if image is not None:
                kept.append((image, key))
            elif not self.cfg.skip_corrupt:
                raise FastmbrError(f"{path}: cannot decode image")
            elif str(path) not in self.skipped:
                self.skipped.append(str(path))
        if not kept:
            return None
        x = torch.stack([self._transform(image, key) for image, key in kept]).float().div_(255.0)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.data.labels[torch.tensor([key[0] for _, key in kept])]
        return x, y.to(self.device, non_blocking=True)

    def __iter__(self):
        try:
            for encoded, keys in self.loader:
                batch = self._batch(encoded, keys)
                if batch is not None:
                    yield batch
        except FastmbrError as exc:
            raise FastmbrError(worker_message(exc)) from None
        self.start_batch = 0
