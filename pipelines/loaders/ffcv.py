"""FFCV over a cached ``.beton`` (see ``fastmbr.pipelines.prepare``).

As with the DALI loader, the order is ours: each epoch gets an FFCV ``Loader`` with ``OrderOption.SEQUENTIAL``
over this shard's indices in ``epoch_order``/``shard_order`` order, starting at ``start_batch``. That makes the
order and every un-augmented batch exact on resume; FFCV's random crop/flip draw from its own per-batch state,
so augmented pixels after a resume are fresh draws.
"""

from __future__ import annotations

import numpy as np
import torch

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.loaders.config import LoaderConfig
from fastmbr.pipelines.loaders.tensor import epoch_order, shard_order
from fastmbr.pipelines.prepare import beton_for, import_ffcv
from fastmbr.pipelines.types import ImageFiles, LabeledImages

EVAL_RATIO = 224 / 256


def ffcv_available() -> bool:
    try:
        import_ffcv()
    except FastmbrError:
        return False
    return True


def image_pipeline(cfg: LoaderConfig, in_memory: bool, device: torch.device) -> list:
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, NDArrayDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.transforms import RandomHorizontalFlip, ToDevice, ToTensor, ToTorchImage

    size = (cfg.image_size, cfg.image_size)
    if in_memory:
        return [NDArrayDecoder(), ToTensor(), ToDevice(device)]
    if cfg.augment == "rrc-flip":
        head = [RandomResizedCropRGBImageDecoder(size), RandomHorizontalFlip()]
    else:
        head = [CenterCropRGBImageDecoder(size, ratio=EVAL_RATIO)]
    return head + [ToTensor(), ToDevice(device), ToTorchImage(channels_last=False)]


class FfcvLoader:
    def __init__(self, data: LabeledImages | ImageFiles, cfg: LoaderConfig):
        import_ffcv()
        self.in_memory = isinstance(data, LabeledImages)
        allowed = ("none",) if self.in_memory else ("none", "rrc-flip")
        if cfg.augment not in allowed:
            kind = "in-memory data" if self.in_memory else "image files"
            raise FastmbrError(f"loader 'ffcv' supports augment {'/'.join(allowed)} for {kind}, not {cfg.augment!r}")
        self.cfg, self.n = cfg, len(data)
        self.device = torch.device(cfg.device)
        self.path = beton_for(data, num_workers=max(1, cfg.num_workers))
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> torch.Tensor:
        c = self.cfg
        order = epoch_order(self.n, c.seed, self.epoch, c.shuffle)
        return shard_order(order, c.batch_size, c.num_shards, c.shard_id, c.drop_last)

    def __len__(self) -> int:
        return -(-len(self._order()) // self.cfg.batch_size)

    def _loader(self, indices: np.ndarray):
        from ffcv.fields.decoders import IntDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import Squeeze, ToDevice, ToTensor

        pipelines = {
            "image": image_pipeline(self.cfg, self.in_memory, self.device),
            "label": [IntDecoder(), ToTensor(), Squeeze(-1), ToDevice(self.device)],
        }
        return Loader(str(self.path), batch_size=self.cfg.batch_size, num_workers=max(1, self.cfg.num_workers),
                      order=OrderOption.SEQUENTIAL, indices=indices, pipelines=pipelines, drop_last=False,
                      seed=self.cfg.seed * 1_000_003 + self.epoch)

    def __iter__(self):
        indices = self._order()[self.start_batch * self.cfg.batch_size :].numpy()
        self.start_batch = 0
        if len(indices) == 0:
            return
        for images, labels in self._loader(indices):
            x = images.float().div_(255.0)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels.view(-1).to(torch.int64)
