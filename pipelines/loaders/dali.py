"""NVIDIA DALI over an image-file list: read, decode (``mixed`` = nvJPEG on CUDA, ``cpu`` elsewhere), crop, flip.

The sample order is not DALI's: each epoch we hand ``fn.readers.file`` this shard's files already in the order
every backend uses (``epoch_order`` then ``shard_order``), so switching backends or the number of ranks keeps the
order a function of ``(seed, epoch)``. DALI's random ops draw from the pipeline's seeded stream, so an
augmenting epoch resumed at batch ``s`` runs batches ``0..s-1`` through the pipeline and drops them (exact, but
costs their decode); without augmentation the epoch simply starts at file ``s·batch_size``. A file DALI cannot
decode fails the whole pipeline without naming it: Pillow finds it among the batches in flight; under
``skip_corrupt`` it is dropped and a pipeline rebuilt over the rest of the epoch.
"""

from __future__ import annotations

import numpy as np
import torch

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.loaders.config import LoaderConfig
from fastmbr.pipelines.loaders.tensor import epoch_order, shard_order
from fastmbr.pipelines.types import ImageFiles

AUGMENTS = ("none", "rrc-flip")
PREFETCH = 2
RRC_AREA, RRC_ASPECT = [0.08, 1.0], [3 / 4, 4 / 3]  # random-resized-crop's (Szegedy et al.), as the other loaders
# nvJPEG's buffers sized up front for ImageNet-sized JPEGs (NVIDIA's ResNet-50 DALI pipeline), so the first
# epochs do not reallocate them image by image
NVJPEG_PADDING = {"device_memory_padding": 211_025_920, "host_memory_padding": 140_544_512}


def import_dali():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as exc:
        raise FastmbrError(f"loader 'dali' needs nvidia-dali (pip install nvidia-dali-cuda130): {exc}") from None
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    return Pipeline, fn, types


def dali_available() -> bool:
    try:
        import_dali()
    except FastmbrError:
        return False
    return True


def build_pipeline(files: list[str], labels: list[int], cfg: LoaderConfig, seed: int):
    """One epoch's pipeline: files (in order) → float32 CHW images in [0, 1] and int32 labels."""
    Pipeline, fn, types = import_dali()
    device = torch.device(cfg.device)
    on_gpu = device.type == "cuda"
    pipe = Pipeline(
        batch_size=cfg.batch_size, num_threads=max(1, cfg.num_workers), seed=seed,
        device_id=(device.index or 0) if on_gpu else None, prefetch_queue_depth=PREFETCH,
    )
    size = cfg.image_size
    with pipe:
        encoded, label = fn.readers.file(files=files, labels=labels, random_shuffle=False, pad_last_batch=True,
                                         name="Reader")
        decoding = {"device": "mixed" if on_gpu else "cpu", "output_type": types.RGB,
                    **(NVJPEG_PADDING if on_gpu else {})}
        if cfg.augment == "rrc-flip":
            # the crop window is drawn before decoding, so only that region is decoded (nvJPEG / libjpeg-turbo ROI)
            images = fn.decoders.image_random_crop(encoded, random_area=RRC_AREA, random_aspect_ratio=RRC_ASPECT,
                                                   num_attempts=10, **decoding)
            images = fn.resize(images, size=(size, size), antialias=True)
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(encoded, **decoding)
            images = fn.resize(images, resize_shorter=int(size / cfg.center_crop))
            mirror = 0
        images = fn.crop_mirror_normalize(images, crop=(size, size), mirror=mirror, dtype=types.FLOAT,
                                          output_layout="CHW", mean=[0.0], std=[255.0])
        pipe.set_outputs(images, label)
    pipe.build()
    return pipe


def to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """A DALI batch (CPU or GPU) → a torch tensor on ``device``."""
    dense = tensor_list.as_tensor()
    if device.type != "cuda":
        return torch.from_numpy(np.array(dense))
    from nvidia.dali.plugin.pytorch import feed_ndarray

    out = torch.empty(dense.shape(), dtype=torch.float32, device=device)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
    return out


def find_culprit(paths: list[str]) -> tuple[int | None, str]:
    """The position in ``paths`` of the first file Pillow cannot decode, and the error naming it (DALI's decoder
    errors do not name the file); position None when every one decodes."""
    from fastmbr.pipelines.readers.imagefolder import decode_error

    for position, path in enumerate(paths):
        if (error := decode_error(path)) is not None:
            return position, error
    return None, f"DALI could not decode one of {paths[0]} … {paths[-1]}"


class DaliLoader:
    def __init__(self, data: ImageFiles, cfg: LoaderConfig):
        import_dali()
        if not isinstance(data, ImageFiles):
            raise FastmbrError("loader 'dali' reads image files; use --loader tensor or torch for in-memory datasets")
        if cfg.augment not in AUGMENTS:
            raise FastmbrError(f"loader 'dali' supports augment {'/'.join(AUGMENTS)}, not {cfg.augment!r}")
        self.data, self.cfg = data, cfg
        self.device = torch.device(cfg.device)
        self.paths = [str(p) for p in data.paths]
        self.epoch, self.start_batch = 0, 0
        self.skipped: list[str] = []

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> torch.Tensor:
        c = self.cfg
        order = epoch_order(len(self.paths), c.seed, self.epoch, c.shuffle)
        return shard_order(order, c.batch_size, c.num_shards, c.shard_id, c.drop_last)

    def __len__(self) -> int:
        return -(-len(self._order()) // self.cfg.batch_size)

    def _seed(self) -> int:
        return (self.cfg.seed * 1_000_003 + self.epoch * 7919 + self.cfg.shard_id) % (2**31 - 1)

    def __iter__(self):
        bs = self.cfg.batch_size
        order = self._order().tolist()
        skip = self.start_batch if self.cfg.augment == "rrc-flip" else 0
        order = order[(self.start_batch - skip) * bs :]
        self.start_batch = 0
        files = [self.paths[i] for i in order]
        labels = self.data.labels[order].tolist()
        done, rebuilds = 0, 0  # files delivered (or dropped) so far; pipelines rebuilt after a corrupt file
        while done < len(files):
            pipe = build_pipeline(files[done:], labels[done:], self.cfg, (self._seed() + rebuilds) % (2**31 - 1))
            try:
                for x, y, count in self._batches(pipe, len(files) - done):
                    batch = done // bs
                    done += count
                    if batch >= skip:
                        yield x, y
            except _Undecodable:
                position, message = find_culprit(files[done : done + (PREFETCH + 1) * bs])
                if position is None or not self.cfg.skip_corrupt:
                    raise FastmbrError(message) from None
                culprit = files.pop(done + position)
                labels.pop(done + position)
                if culprit not in self.skipped:
                    self.skipped.append(culprit)
                rebuilds += 1

    def _batches(self, pipe, remaining: int):
        """``(x, y, images)`` per batch of ``pipe``; a decoding failure surfaces as ``_Undecodable``."""
        bs = self.cfg.batch_size
        for i in range(-(-remaining // bs)):
            try:
                images, labels = pipe.run()
            except RuntimeError:
                raise _Undecodable from None
            count = min(bs, remaining - i * bs)
            x = to_torch(images, self.device)[:count]
            y = torch.from_numpy(np.array(labels.as_tensor())).view(-1)[:count].to(torch.int64)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device), count


class _Undecodable(Exception):
    """DALI's pipeline failed on a file of the batches it was running."""
