"""FFCV over a cached ``.beton`` (see ``fastmbr.pipelines.prepare``).

As with the DALI loader, the order is ours: one FFCV ``Loader`` serves every epoch (building one compiles its
pipeline with numba, seconds each time), and before each epoch its traversal order is handed this shard's
indices in ``epoch_order``/``shard_order`` order, starting at ``start_batch``. That makes the order and every
un-augmented batch exact on resume; FFCV's random crop/flip draw from numba's unseeded per-thread state, so
augmented pixels after a resume are fresh draws.

Bad input is a one-line error, never a hang: image files are checked to exist (and, by ``write_beton``, to decode
before a ``.beton`` is written from them: FFCV's writer waits forever for a worker that died on a bad file), and
a cached ``.beton`` must hold as many samples as the data (FFCV would read past the end of a shorter one). Under
``skip_corrupt``
the files that do not decode are found once (the list is kept beside the cached ``.beton``s) and left out of
the ``.beton``, so FFCV's epochs run over the files that decode, in the order ``(seed, epoch)`` gives them.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fastmbr.errors import FastmbrError
from fastmbr.fileio import atomic_write
from fastmbr.pipelines.loaders.config import LoaderConfig
from fastmbr.pipelines.loaders.tensor import epoch_order, shard_order
from fastmbr.pipelines.prepare import beton_for, beton_path, check_files_exist, import_ffcv
from fastmbr.pipelines.types import ImageFiles, LabeledImages


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
        head = [CenterCropRGBImageDecoder(size, ratio=cfg.center_crop)]
    return head + [ToTensor(), ToDevice(device), ToTorchImage(channels_last=False)]


def undecodable(data: ImageFiles, workers: int) -> list[str]:
    """The listed files that do not decode, in list order."""
    from fastmbr.pipelines.readers.imagefolder import decode_error

    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow decodes without holding the GIL
        return [str(p) for p, error in zip(data.paths, pool.map(decode_error, data.paths)) if error is not None]


def skipped_files(data: ImageFiles, workers: int) -> list[str]:
    """The files of ``data`` that do not decode, found once and remembered beside the cached ``.beton``s."""
    record = beton_path(data).with_suffix(".skipped.json")
    if record.is_file():
        return json.loads(record.read_text())
    skipped = undecodable(data, workers)
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(record, lambda f: f.write(json.dumps(skipped).encode()))
    return skipped


def decodable_part(data: ImageFiles, workers: int) -> tuple[ImageFiles, list[str]]:
    """``data`` without its files that do not decode, and those files' paths."""
    skipped = set(skipped_files(data, workers))
    if not skipped:
        return data, []
    keep = torch.tensor([i for i, p in enumerate(data.paths) if str(p) not in skipped], dtype=torch.int64)
    return data.subset(keep), [str(p) for p in data.paths if str(p) in skipped]


def check_beton_matches(path: Path, data: LabeledImages | ImageFiles) -> None:
    """A ``.beton`` with other samples than ``data`` would be read past its end without a word from FFCV."""
    from ffcv.reader import Reader

    held = Reader(str(path)).num_samples
    if held != len(data):
        raise FastmbrError(f"{path} holds {held} samples but the dataset has {len(data)}: it was not written "
                           f"for this data; delete it and the loader writes it again")


def checked_beton(data: LabeledImages | ImageFiles, workers: int, known_to_decode: bool = False,
                  max_resolution: int | None = None) -> Path:
    """The dataset's ``.beton``: written (from files that decode) on first use, checked against the data."""
    if isinstance(data, ImageFiles):
        check_files_exist(data)
    path = beton_for(data, num_workers=workers, known_to_decode=known_to_decode, max_resolution=max_resolution)
    check_beton_matches(path, data)
    return path


class EpochOrder:
    """FFCV's traversal-order interface, answering each epoch with the order set just before it."""

    def __init__(self):
        self.order = np.zeros(0, dtype=np.uint64)

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.order


class FfcvLoader:
    def __init__(self, data: LabeledImages | ImageFiles, cfg: LoaderConfig):
        import_ffcv()
        self.in_memory = isinstance(data, LabeledImages)
        allowed = ("none",) if self.in_memory else ("none", "rrc-flip")
        if cfg.augment not in allowed:
            kind = "in-memory data" if self.in_memory else "image files"
            raise FastmbrError(f"loader 'ffcv' supports augment {'/'.join(allowed)} for {kind}, not {cfg.augment!r}")
        self.skipped: list[str] = []
        sorted_out = cfg.skip_corrupt and not self.in_memory  # then every kept file was decoded once already
        if sorted_out:
            check_files_exist(data)
            data, self.skipped = decodable_part(data, workers=max(1, cfg.num_workers))
        self.cfg, self.n = cfg, len(data)
        self.device = torch.device(cfg.device)
        self.path = checked_beton(data, workers=max(1, cfg.num_workers), known_to_decode=sorted_out,
                                  max_resolution=cfg.max_resolution)
        self.epoch, self.start_batch = 0, 0
        self.schedule, self._ffcv = EpochOrder(), None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> torch.Tensor:
        c = self.cfg
        order = epoch_order(self.n, c.seed, self.epoch, c.shuffle)
        return shard_order(order, c.batch_size, c.num_shards, c.shard_id, c.drop_last)

    def __len__(self) -> int:
        return -(-len(self._order()) // self.cfg.batch_size)

    def _loader(self):
        """The FFCV ``Loader``, built on first use and kept: later epochs only change its order."""
        if self._ffcv is not None:
            return self._ffcv
        from ffcv.fields.decoders import IntDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import Squeeze, ToDevice, ToTensor

        pipelines = {
            "image": image_pipeline(self.cfg, self.in_memory, self.device),
            "label": [IntDecoder(), ToTensor(), Squeeze(-1), ToDevice(self.device)],
        }
        self._ffcv = Loader(str(self.path), batch_size=self.cfg.batch_size, num_workers=max(1, self.cfg.num_workers),
                            order=OrderOption.SEQUENTIAL, pipelines=pipelines, drop_last=False, seed=self.cfg.seed)
        self._ffcv.traversal_order = self.schedule
        return self._ffcv

    def __iter__(self):
        indices = self._order()[self.start_batch * self.cfg.batch_size :].numpy()
        self.start_batch = 0
        if len(indices) == 0:
            return
        loader = self._loader()
        self.schedule.order = indices.astype(np.uint64)
        for images, labels in loader:
            x = images.float().div_(255.0)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels.view(-1).to(torch.int64)
