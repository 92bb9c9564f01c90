"""airbench-style loader: the whole dataset is one uint8 tensor on the training device.

Shuffling, crops and flips are batched tensor ops; there are no worker processes and no host round trips.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastmbr.pipelines.loaders.config import LoaderConfig
from fastmbr.pipelines.types import LabeledImages


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The sample order of one epoch: a permutation seeded by (seed, epoch), identical on every rank."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def shard_order(order: torch.Tensor, batch_size: int, num_shards: int, shard_id: int, drop_last: bool) -> torch.Tensor:
    """This rank's part of the order: global batches of ``batch_size·num_shards`` split evenly across ranks.

    Unless ``drop_last``, the last, partial global batch is split too, unevenly (``last_step_shares``: the first
    ranks take one sample more), so N ranks take exactly the steps and samples one process takes. A rank whose
    share is empty (fewer samples left than ranks) gets the first of them again as a placeholder, so every rank
    takes every step; the trainer gives each rank's gradient the weight of its real share (0 for a placeholder).
    """
    global_batch = batch_size * num_shards
    full = (len(order) // global_batch) * global_batch
    if num_shards == 1:
        return order[:full] if drop_last else order
    mine = order[:full].view(-1, num_shards, batch_size)[:, shard_id].reshape(-1)
    if drop_last or full == len(order):
        return mine
    rest = order[full:]
    share = rest.tensor_split(num_shards)[shard_id]
    return torch.cat([mine, share if len(share) else rest[:1]])


def last_step_shares(n: int, batch_size: int, num_shards: int) -> list[int] | None:
    """Real samples each rank takes in the last, partial global batch of an epoch of ``n`` (as ``shard_order``
    splits it: ``tensor_split``); None when the global batch divides ``n`` (or one rank takes everything)."""
    rest = n % (batch_size * num_shards)
    if num_shards == 1 or rest == 0:
        return None
    return [rest // num_shards + (1 if i < rest % num_shards else 0) for i in range(num_shards)]


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Pad by ``pad`` (reflect) and crop back at a random offset per image, as one batched gather."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    rows = (dy.view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (dx.view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    bidx = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    cidx = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[bidx, cidx, rows, cols]


def random_resized_crop_flip(x: torch.Tensor, size: int, generator: torch.Generator,
                             scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception-style random-resized crop and horizontal flip for a whole batch as one affine resampling.

    Each image gets its own crop (area fraction in ``scale``, aspect ratio in ``ratio``, log-uniform) and a coin
    flip folded into the sign of the horizontal scale; one ``grid_sample`` call resamples every crop to ``size``.
    """
    b = x.shape[0]
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(b, generator=generator)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(b, generator=generator) - 1)
    cy = (1 - h) * (2 * torch.rand(b, generator=generator) - 1)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    zero = torch.zeros(b)
    theta = torch.stack((torch.stack((w * flip, zero, cx), 1), torch.stack((zero, h, cy), 1)), 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


class TensorLoader:
    def __init__(self, data: LabeledImages, cfg: LoaderConfig):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> torch.Tensor:
        c = self.cfg
        order = epoch_order(len(self.labels), c.seed, self.epoch, c.shuffle)
        return shard_order(order, c.batch_size, c.num_shards, c.shard_id, c.drop_last)

    def __len__(self) -> int:
        n = len(self._order())
        return -(-n // self.cfg.batch_size)

    def _augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.cfg.augment in ("crop", "crop-flip"):
            x = random_crop(x, pad=max(1, x.shape[-1] // 8), generator=generator)
        if self.cfg.augment == "crop-flip":
            x = random_flip(x, generator)
        if self.cfg.augment == "rrc-flip":
            x = random_resized_crop_flip(x, self.cfg.image_size, generator)
        return x

    def __iter__(self):
        order = self._order().to(self.device)
        bs = self.cfg.batch_size
        generator = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.epoch * 104_729 + self.cfg.shard_id)
        for i in range(len(self)):
            idx = order[i * bs : (i + 1) * bs]
            x = self._augment(self.images[idx].float().div_(255.0), generator)
            if i < self.start_batch:
                continue
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]
        self.start_batch = 0
