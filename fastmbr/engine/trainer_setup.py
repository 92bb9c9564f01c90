"""Setting a run up: data, loaders, classifier, G, algorithm and optimizer (``TrainerSetup``, part of ``Trainer``)."""

from __future__ import annotations

import os

import torch
from torch import nn

from fastmbr.algorithms import build_algorithm
from fastmbr.algorithms.options import algorithm_options
from fastmbr.config import COMPILE_MODES, RunConfig
from fastmbr.engine.distributed import rank_seed, seed_everything
from fastmbr.engine.faults import InjectedFault
from fastmbr.engine.logging import check_tensorboard
from fastmbr.engine.meters import EpochMeter, SkippedSteps
from fastmbr.engine.optim import build_optimizer, skips_nonfinite_on_device
from fastmbr.engine.validate import check_expansion_memory, check_splits
from fastmbr.errors import FastmbrError
from fastmbr.models import build_classifier, channel_stats
from fastmbr.pipelines.datasets import Domains, Splits, load_domains, unreadable_note
from fastmbr.pipelines.loaders import LoaderConfig, build_loader
from fastmbr.pipelines.loaders.config import CENTER_CROP
from fastmbr.pipelines.loaders.tensor import last_step_shares
from fastmbr.pipelines.types import LabeledImages
from fastmbr.variation.resolve import compile_variation, freeze, variation_from_specs

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def build_scheduler(cfg: RunConfig, optimizer, total_steps: int):
    """Linear decay from lr to lr_end over the run when lr_end is set (A.2's ImageNet schedule), else constant."""
    o = cfg.optim
    if o.lr_end is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    end = o.lr_end / o.lr
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 + (end - 1.0) * min(step, total_steps) / max(1, total_steps)
    )


def without_dropout(module: nn.Module) -> nn.Module:
    """Replace every Dropout layer by the identity, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.dropout._DropoutNd):
            setattr(module, name, nn.Identity())
        else:
            without_dropout(child)
    return module


def make_deterministic(on_cuda: bool) -> None:
    """Deterministic kernels for the whole process (cuBLAS needs its workspace setting before first use)."""
    if on_cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


class TrainerSetup:
    """The set-up part of ``Trainer``: what ``setup`` builds before the first step, and the loaders and model that
    evaluating a saved run builds too."""

    def check_options(self) -> None:
        o, world, batch = self.options, self.dist.world_size, self.cfg.data.batch_size
        if self.cfg.compile_mode not in COMPILE_MODES:
            raise FastmbrError(f"unknown --compile-mode {self.cfg.compile_mode!r}; known: {', '.join(COMPILE_MODES)}")
        if batch % world:
            raise FastmbrError(f"--batch-size {batch} is the global batch and does not split evenly over "
                               f"{world} processes")
        if not 1 <= o.accumulate <= batch // world:
            raise FastmbrError(f"--accumulate must be between 1 and the per-process batch {batch // world}, "
                               f"got {o.accumulate}")
        if o.sync_bn and self.dist.enabled and not self.on_cuda:
            raise FastmbrError("--sync-bn needs CUDA: SyncBatchNorm has no CPU implementation")
        if o.tensorboard:
            check_tensorboard()

    def per_rank_batch(self) -> int:
        """``--batch-size`` is the global batch; each rank takes an equal share of every global batch."""
        return self.cfg.data.batch_size // self.dist.world_size

    def load_data(self, test_only: bool = False, splits: Splits | None = None) -> Domains:
        d = self.cfg.data
        return load_domains(d.dataset, d.shift, d.data_dir, image_size=d.image_size, seed=self.cfg.seed,
                            val_fraction=d.val_fraction, limit=d.limit, classes=d.classes, train_also=d.train_also,
                            test_only=test_only, skip_corrupt=d.skip_corrupt, splits=splits)

    def rank_share(self, data):
        """This rank's strided 1/W of an evaluation split (the whole split in one process)."""
        if not self.dist.enabled:
            return data
        return data.subset(torch.arange(self.dist.rank, len(data), self.dist.world_size))

    def loader(self, data, train: bool):
        """Training: this rank's shard of every global batch. Evaluation: this rank's share of the split."""
        d = self.cfg.data
        size = d.image_size or self.domains.info.image_size
        shards = (self.dist.world_size, self.dist.rank) if train else (1, 0)
        return build_loader(data if train else self.rank_share(data), LoaderConfig(
            batch_size=self.per_rank_batch() if train else d.eval_batch_size, shuffle=train, drop_last=False,
            augment=d.augment if train else "none", image_size=size, device=self.device, seed=self.cfg.seed,
            num_shards=shards[0], shard_id=shards[1], num_workers=d.num_workers,
            channels_last=self.channels_last, backend=d.loader, skip_corrupt=d.skip_corrupt,
            max_resolution=d.max_resolution, center_crop=getattr(data, "center_crop", None) or CENTER_CROP,
        ))

    def note_unreadable(self, loader) -> None:
        """Log, once each, the image files a loader left out (``--skip-corrupt``): a counted skip, never silent."""
        new = [path for path in getattr(loader, "skipped", []) if path not in self.unreadable]
        if new:
            self.unreadable += new
            self.log(unreadable_note(new))

    def build_model(self) -> nn.Module:
        train = self.domains.train
        measured = isinstance(train, LabeledImages) and len(train) > 0  # empty when scoring: weights bring theirs
        mean, std = channel_stats(train.images) if measured else (IMAGENET_MEAN, IMAGENET_STD)
        size = self.cfg.data.image_size or self.domains.info.image_size
        model = build_classifier(self.cfg.arch, self.domains.num_classes, len(mean), size, mean, std)
        if not self.options.dropout:
            model = without_dropout(model)
        if self.options.sync_bn and self.dist.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def wrap_for_steps(self, model: nn.Module) -> nn.Module:
        """The module training steps call: compiled (CUDA default) and, under torchrun, DDP around it."""
        cfg = self.cfg
        if cfg.compile if cfg.compile is not None else self.on_cuda:
            model = torch.compile(model, mode=cfg.compile_mode)
        if self.dist.enabled:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.on_cuda else None)
        return model

    def setup(self):
        cfg = self.cfg
        self.check_options()
        if self.options.deterministic:
            make_deterministic(self.on_cuda)
        seed_everything(cfg.seed)  # the same initial weights on every rank (DDP would broadcast rank 0's anyway)
        # channels-last is the faster layout for convolutions on CUDA and on CPU alike (bench: classifier step)
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else True
        self.domains = self.load_data()
        check_splits(self.domains, cfg.data.limit)
        for note in self.domains.notes:
            self.log(note)
        self.model = self.build_model()
        self.G = variation_from_specs(cfg.algo.models, cfg.algo.shared_delta)
        if self.G is not None:
            self.G = freeze(self.G).to(self.device)  # replicated on every rank, frozen: never wrapped in DDP
            if cfg.compile if cfg.compile is not None else self.on_cuda:
                self.G = compile_variation(self.G, cfg.compile_mode)
        self.algo = build_algorithm(cfg.algo.name, k=cfg.algo.k, lam=cfg.algo.lam, **algorithm_options(cfg.algo))
        self.algo.check_variation(self.G)
        check_expansion_memory(cfg.algo.name, self.algo.k, max(1, self.per_rank_batch() // self.options.accumulate),
                               3, cfg.data.image_size or self.domains.info.image_size, self.device)  # RGB prepared
        if self.algo.uses_target:
            self.attach_target()
        self.warmup = build_algorithm("erm")
        self.train_loader = self.loader(self.domains.train, train=True)
        self.last_shares = last_step_shares(len(self.domains.train), self.per_rank_batch(), self.dist.world_size)
        self.optimizer = build_optimizer(cfg, self.model.parameters())
        self.scheduler = build_scheduler(cfg, self.optimizer, cfg.optim.epochs * len(self.train_loader))
        self.step_model = self.wrap_for_steps(self.model)
        self.meter = EpochMeter(self.device)
        self.history: list[dict] = []
        self.best = {"top1": -1.0, "epoch": -1}
        self.position = (0, 0)
        self.nonfinite_total = 0
        self.skipped = SkippedSteps(self.device)
        self.unreadable: list[str] = list(self.domains.unreadable)  # left out when read (its note says so)
        self.skip_on_device = skips_nonfinite_on_device(self.optimizer)
        self.on_own_optimizer = False
        self.images_seen, self.train_seconds = 0, 0.0
        self.fault = InjectedFault.from_env(self.dist)
        seed_everything(rank_seed(cfg.seed, self.dist.rank))  # per-rank streams: dropout masks, δ draws

    def attach_target(self) -> None:
        """ADDA-like algorithms: domain B's unlabelled training pool, on the device, after an ERM warm-up."""
        name = self.cfg.algo.name
        if self.dist.enabled:
            raise FastmbrError(f"{name} runs in one process (its critic is not data-parallel); drop torchrun")
        if self.algo.needs_warmup and self.cfg.optim.warmup_epochs < 1:
            raise FastmbrError(f"{name} adapts a source classifier: give --warmup-epochs N (N >= 1 epochs of ERM "
                               f"on A before adaptation)")
        pool = self.domains.unlabeled.get("B")
        if not isinstance(pool, LabeledImages):
            raise FastmbrError(f"{name} needs unlabelled domain-B training images; {self.cfg.data.dataset} with "
                               f"shift {self.cfg.data.shift!r} has none in memory")
        self.algo.attach_target(pool.images.to(self.device), self.cfg.seed)

    def use_own_optimizer(self) -> None:
        """After the warm-up, the algorithm's own optimizer (if it has one) replaces the run's, at a constant lr."""
        if self.on_own_optimizer:
            return
        own = self.algo.own_optimizer(self.model, fused=self.cfg.optim.fused)
        if own is None:
            return
        self.optimizer = own
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(own, lambda step: 1.0)
        self.skip_on_device = skips_nonfinite_on_device(own)
        self.on_own_optimizer = True
