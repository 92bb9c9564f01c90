"""A plain ``torch.utils.data.DataLoader`` over in-memory images or image files.

Every random choice of a sample (its crop window, its flip) comes from a generator seeded by
``(seed, epoch, position in the epoch)``, never from worker state, so a resumed epoch (``set_epoch(e, s)``)
yields bit-identical batches ``s..`` whatever the number of workers, and skipped batches are never decoded.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.loaders.config import CENTER_CROP, LoaderConfig
from fastmbr.pipelines.loaders.tensor import epoch_order, shard_order
from fastmbr.pipelines.types import ImageFiles, LabeledImages

RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def sample_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_000_007 + position) % (2**63))


def rrc_window(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop's window (top, left, h, w): area share in RRC_SCALE and log-uniform aspect in
    RRC_RATIO, ten tries, then the centred crop of the clamped aspect (Szegedy et al.'s recipe)."""
    area = height * width
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    for _ in range(10):
        u = torch.rand(4, generator=generator).tolist()
        target = area * (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1)), h, w
    aspect = width / height
    if aspect < RRC_RATIO[0]:
        w, h = width, round(width / RRC_RATIO[0])
    elif aspect > RRC_RATIO[1]:
        h, w = height, round(height * RRC_RATIO[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 ``[C, H, W]`` → uint8 ``[C, height, width]``, bilinear with antialiasing (torchvision's tensor path)."""
    if image.shape[-2:] == (height, width):
        return image
    out = F.interpolate(image.unsqueeze(0).float(), size=(height, width), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)


def random_resized_crop(image: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    top, left, h, w = rrc_window(image.shape[-2], image.shape[-1], generator)
    return resize(image[:, top : top + h, left : left + w], size, size)


def resize_center_crop(image: torch.Tensor, size: int, center_crop: float = CENTER_CROP) -> torch.Tensor:
    """Short side to ``size / center_crop`` (aspect kept; ImageNet's size·256/224), then the centred
    ``size``×``size`` crop."""
    height, width = image.shape[-2:]
    short = int(size / center_crop)
    scale = short / min(height, width)
    image = resize(image, max(short, round(height * scale)), max(short, round(width * scale)))
    top, left = (image.shape[-2] - size) // 2, (image.shape[-1] - size) // 2
    return image[:, top : top + size, left : left + size]


def pad_crop(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The tensor loader's crop on one image: reflect-pad by width/8 and crop back at a random offset."""
    pad = max(1, image.shape[-1] // 8)
    padded = F.pad(image.unsqueeze(0).float(), (pad, pad, pad, pad), mode="reflect").squeeze(0).to(image.dtype)
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return padded[:, dy : dy + image.shape[-2], dx : dx + image.shape[-1]]


def maybe_flip(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return image.flip(-1) if torch.rand(1, generator=generator).item() < 0.5 else image


def decode_file(path) -> torch.Tensor:
    from fastmbr.pipelines.readers.imagefolder import decode_rgb

    return torch.from_numpy(decode_rgb(path)).permute(2, 0, 1)


class Samples(Dataset):
    """Indexed by ``(index, position, epoch)``; returns a uint8 ``[C, H, W]`` image and its label."""

    def __init__(self, data: LabeledImages | ImageFiles, cfg: LoaderConfig):
        self.data, self.cfg = data, cfg
        self.from_files = isinstance(data, ImageFiles)

    def __len__(self) -> int:
        return len(self.data)

    def _image(self, index: int, generator: torch.Generator) -> torch.Tensor:
        augment, size = self.cfg.augment, self.cfg.image_size
        if not self.from_files:
            image = self.data.images[index]
            return random_resized_crop(image, image.shape[-1], generator) if augment == "rrc-flip" else image
        image = decode_file(self.data.paths[index])
        if augment == "rrc-flip":
            return random_resized_crop(image, size, generator)
        return resize_center_crop(image, size, self.cfg.center_crop)

    def __getitem__(self, key: tuple[int, int, int]):
        """``(image, label, None)``, or ``(None, None, path)`` for a file that does not decode under skip_corrupt."""
        index, position, epoch = key
        generator = sample_generator(self.cfg.seed, epoch, position)
        try:
            image = self._image(index, generator)
        except FastmbrError:
            if not (self.cfg.skip_corrupt and self.from_files):
                raise
            return None, None, str(self.data.paths[index])
        if self.cfg.augment in ("crop", "crop-flip"):
            image = pad_crop(image, generator)
        if self.cfg.augment in ("crop-flip", "rrc-flip"):
            image = maybe_flip(image, generator)
        return image.contiguous(), self.data.labels[index], None


def collate_decoded(samples: list[tuple]) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
    """Stack the samples that decoded; list the paths of those that did not."""
    kept = [(image, label) for image, label, _ in samples if image is not None]
    skipped = [path for _, _, path in samples if path is not None]
    if not kept:
        return None, None, skipped
    return torch.stack([image for image, _ in kept]), torch.stack([label for _, label in kept]), skipped


class EpochBatches(Sampler):
    """This shard's batches of ``(index, position, epoch)`` keys for the loader's current epoch, from start_batch."""

    def __init__(self, loader: "TorchLoader"):
        self.loader = loader

    def _keys(self) -> list[tuple[int, int, int]]:
        c, epoch = self.loader.cfg, self.loader.epoch
        order = epoch_order(len(self.loader.samples), c.seed, epoch, c.shuffle)
        positions = shard_order(torch.arange(len(order)), c.batch_size, c.num_shards, c.shard_id, c.drop_last)
        return list(zip(order[positions].tolist(), positions.tolist(), [epoch] * len(positions)))

    def __len__(self) -> int:
        return max(0, -(-len(self._keys()) // self.loader.cfg.batch_size) - self.loader.start_batch)

    def __iter__(self):
        keys, bs = self._keys(), self.loader.cfg.batch_size
        for start in range(self.loader.start_batch * bs, len(keys), bs):
            yield keys[start : start + bs]


def worker_message(exc: FastmbrError) -> str:
    """DataLoader re-raises a worker's error with its traceback folded into the message; keep the original line."""
    return str(exc).rsplit("FastmbrError: ", 1)[-1]


class TorchLoader:
    def __init__(self, data: LabeledImages | ImageFiles, cfg: LoaderConfig):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.samples = Samples(data, cfg)
        self.epoch, self.start_batch = 0, 0
        self.batches = EpochBatches(self)
        self.loader = DataLoader(
            self.samples, batch_sampler=self.batches, num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda", collate_fn=collate_decoded,
        )
        self.skipped: list[str] = []

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        """Batches in a full epoch of this shard (``start_batch`` does not shorten it)."""
        return -(-len(self.batches._keys()) // self.cfg.batch_size)

    def __iter__(self):
        try:
            for images, labels, skipped in self.loader:
                self.skipped += [path for path in skipped if path not in self.skipped]
                if images is None:
                    continue
                x = images.to(self.device, non_blocking=True).float().div_(255.0)
                if self.cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, labels.to(self.device, non_blocking=True)
        except FastmbrError as exc:
            raise FastmbrError(worker_message(exc)) from None
        self.start_batch = 0
