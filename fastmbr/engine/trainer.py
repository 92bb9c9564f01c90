"""The training loop: batch → algorithm.loss → backward → fused step; eval on A's validation split each epoch.

Model selection (the weights reported on the test domains) uses A's validation split only, never B.
Metrics stay on the device between log intervals; one host read per interval feeds the progress bar.

Scale-out: under ``torchrun`` the same command runs data-parallel (DistributedDataParallel over the classifier;
G is frozen and replicated on every rank, never wrapped). ``--batch-size`` is the GLOBAL batch: each of the
W ranks takes ``batch/W`` samples of every global batch (the loaders' shards), optionally in ``--accumulate``
micro-batches whose gradients are only all-reduced on the last (``no_sync``). Decisions every rank must take
together (skip a non-finite step, stop on a signal) go through one small all-reduce per step — or, with an
optimizer that skips on the device (fused SGD/Adam, ``optim.MaskedAdadelta``), none: the skip is decided on the
device (``found_inf``) and signals are agreed on at log intervals, so a step never waits for the host. Validation
and test accuracy are computed on a strided 1/W of each split per rank and the counts summed, so every rank
holds the same numbers. Rank 0 alone writes the run folder; the per-rank parts of the state (RNG streams,
epoch meters) are gathered into the checkpoint as lists indexed by rank, and each rank restores its own.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from fastmbr.algorithms import build_algorithm
from fastmbr.algorithms.options import algorithm_options
from fastmbr.config import COMPILE_MODES, RunConfig
from fastmbr.engine import checkpoint as ckpt
from fastmbr.engine.distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    any_rank,
    barrier,
    broadcast_buffers,
    broadcast_object,
    gather_objects,
    init_from_env,
    rank_seed,
    restart_count,
    seed_everything,
    shutdown,
)
from fastmbr.engine.evaluate import accuracy, shift_summary
from fastmbr.engine.logging import EpochLogger, check_tensorboard, log_epoch
from fastmbr.engine.optim import build_optimizer, skips_nonfinite_on_device
from fastmbr.engine.resume_check import check_model_hashes, model_hashes, resumed_config
from fastmbr.engine.rundir import (
    RunLog,
    default_run_dir,
    git_sha,
    make_run_folder,
    read_run_config,
    remove_failed_start,
    write_json,
    write_run_config,
)
from fastmbr.engine.validate import check_epoch, check_expansion_memory, check_splits, validate_run
from fastmbr.errors import FastmbrError
from fastmbr.models import build_classifier, channel_stats
from fastmbr.pipelines.datasets import Domains, Splits, expand_shifts, load_domains, read_splits, unreadable_note
from fastmbr.pipelines.loaders import LoaderConfig, build_loader
from fastmbr.pipelines.loaders.config import CENTER_CROP
from fastmbr.pipelines.loaders.tensor import last_step_shares
from fastmbr.pipelines.types import LabeledImages
from fastmbr.variation.resolve import compile_variation, freeze, variation_from_specs

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FastmbrError(f"--device {name}: CUDA is not available on this machine")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise FastmbrError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def build_scheduler(cfg: RunConfig, optimizer, total_steps: int):
    """Linear decay from lr to lr_end over the run when lr_end is set (A.2's ImageNet schedule), else constant."""
    o = cfg.optim
    if o.lr_end is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    end = o.lr_end / o.lr
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 + (end - 1.0) * min(step, total_steps) / max(1, total_steps)
    )


@contextmanager
def stop_on_signals(flag: dict):
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and exits cleanly."""
    handlers = {}

    def request_stop(signum, frame):
        flag["signal"] = signum

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            handlers[sig] = signal.signal(sig, request_stop)
        except ValueError:  # not the main thread
            pass
    try:
        yield flag
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@dataclass
class EpochMeter:
    """Sums kept on the device; ``read`` syncs once."""

    device: torch.device
    loss: torch.Tensor = field(init=False)
    correct: torch.Tensor = field(init=False)
    seen: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.reset()

    def reset(self):
        self.loss = torch.zeros((), device=self.device, dtype=torch.float64)
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.seen = torch.zeros((), device=self.device, dtype=torch.long)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None):
        """Add a step's sums; ``weight`` (a 0/1 device tensor) drops a skipped step without a host read."""
        correct = (logits.argmax(1) == y).sum()
        self.loss += loss.detach().double() * y.shape[0]
        self.correct += correct if weight is None else (correct * weight).long()
        self.seen += y.shape[0] if weight is None else (weight * y.shape[0]).long()

    def state(self) -> dict:
        return {"loss": float(self.loss), "correct": int(self.correct), "seen": int(self.seen)}

    def load(self, state: dict):
        self.loss.fill_(state["loss"])
        self.correct.fill_(state["correct"])
        self.seen.fill_(state["seen"])

    def read(self, dist: DistInfo) -> dict:
        totals = torch.stack([self.loss, self.correct.double(), self.seen.double()])
        totals = all_reduce_sum(totals, dist).tolist()
        n = max(totals[2], 1.0)
        return {"loss": totals[0] / n, "acc": 100.0 * totals[1] / n, "n": int(totals[2])}


@dataclass
class SkippedSteps:
    """Non-finite steps skipped on the device: total, the current run of them and the longest run.

    Used with the optimizers that take a ``found_inf`` flag (fused SGD/Adam, MaskedAdadelta) and leave weights
    and state untouched when it is set, so no step has to read the loss on the host; the counts are read at log
    intervals.
    """

    device: torch.device
    counts: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.counts = torch.zeros(3, device=self.device)

    def add(self, found: torch.Tensor) -> None:
        total, run, longest = self.counts.unbind()
        run = (run + 1.0) * found
        self.counts = torch.stack([total + found, run, torch.maximum(longest, run)])

    def read(self) -> tuple[int, int]:
        """(total, longest run) — one host read."""
        total, _, longest = self.counts.tolist()
        return int(total), int(longest)


@dataclass
class TrainOptions:
    """Options of ``fastmbr train`` kept beside RunConfig (saved under "options" in config.json).

    accumulate: micro-batches per step on each rank; only memory changes, the update is the global batch's.
    sync_bn: SyncBatchNorm over all ranks (CUDA only), so BatchNorm statistics are the global batch's.
    dropout: False replaces every Dropout by the identity: runs whose math does not depend on the rank count.
    deterministic: ``torch.use_deterministic_algorithms(True)``: bit-exact resume on CUDA too.
    tensorboard: also write TensorBoard scalars and G(x, δ) samples each epoch (``logging.EpochLogger``).
    """

    accumulate: int = 1
    sync_bn: bool = False
    dropout: bool = True
    deterministic: bool = False
    tensorboard: bool = False

    # sync_bn and dropout shape the model: a resume refuses a change to them (engine/resume_check.py); the others
    # may change between attempts.


@dataclass(frozen=True)
class InjectedFault:
    """Test hook of the fault-tolerance tests: ``FASTMBR_FAULT_AT_STEP=N`` makes rank ``FASTMBR_FAULT_RANK``
    (default: the last rank) fail as it reaches global step N (epoch·steps + batch), on a job's first attempt
    only (``TORCHELASTIC_RESTART_COUNT`` unset or 0), so torchrun's restart gets past it.

    ``FASTMBR_FAULT_SIGNAL``: ``exit`` (``os._exit(1)``, the default), ``kill`` (SIGKILL to itself: no
    clean-up at all) or ``term`` (SIGTERM to itself: the graceful-stop path).
    """

    step: int | None = None
    rank: int = 0
    how: str = "exit"

    @classmethod
    def from_env(cls, dist: DistInfo) -> "InjectedFault":
        step = os.environ.get("FASTMBR_FAULT_AT_STEP")
        if step is None or restart_count() > 0:
            return cls()
        how = os.environ.get("FASTMBR_FAULT_SIGNAL", "exit").lower()
        if how not in ("exit", "kill", "term"):
            raise FastmbrError(f"FASTMBR_FAULT_SIGNAL must be exit, kill or term, got {how!r}")
        return cls(int(step), int(os.environ.get("FASTMBR_FAULT_RANK", dist.world_size - 1)), how)

    def maybe_fire(self, step: int, rank: int) -> None:
        if step != self.step or rank != self.rank:
            return
        if self.how == "exit":
            os._exit(1)
        os.kill(os.getpid(), signal.SIGKILL if self.how == "kill" else signal.SIGTERM)


def micro_batches(x: torch.Tensor, y: torch.Tensor, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(x.chunk(n), y.chunk(n)))


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


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, progress: bool = True, console=None,
                 options: TrainOptions | None = None):
        self.cfg = cfg
        self.run_dir = run_dir
        self.options = options or TrainOptions()
        self.device = resolve_device(cfg.device)
        self.dist = init_from_env(self.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.on_cuda = self.device.type == "cuda"
        self.autocast = cfg.amp if cfg.amp is not None else self.on_cuda
        self.progress = progress and self.dist.is_main
        self.console = console
        self.log = RunLog(run_dir, enabled=self.dist.is_main)
        self.started = False  # set once set-up passed: a failure before that leaves no run folder behind

    # ---- set-up -------------------------------------------------------------------------------------------
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

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def state(self, epoch: int, batch: int) -> dict:
        """The checkpoint. A collective under torchrun: every rank's RNG states and epoch sums are gathered."""
        per_rank = gather_objects({"rng": ckpt.rng_state(), "meter": self.meter.state()}, self.dist)
        return {
            "epoch": epoch, "batch": batch, "config": self.cfg.to_dict(), "options": asdict(self.options),
            "world_size": self.dist.world_size,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": [r["rng"] for r in per_rank], "meter": [r["meter"] for r in per_rank],
            "history": self.history, "best": self.best, "nonfinite_total": self.skipped_total(),
            "images_seen": self.images_seen, "train_seconds": self.train_seconds, "unreadable": self.unreadable,
            "algo": self.algo.state_dict(), "own_optimizer": self.on_own_optimizer,
            "num_classes": self.domains.num_classes, "delta_dim": self.G.delta_dim if self.G is not None else None,
        }

    def skipped_total(self) -> int:
        return self.skipped.read()[0] if self.skip_on_device else self.nonfinite_total

    def save(self, epoch: int, batch: int) -> None:
        """Every rank calls this at the same step; rank 0 alone writes."""
        state = self.state(epoch, batch)
        if self.dist.is_main:
            ckpt.save_checkpoint(self.run_dir, state, self.cfg.keep_checkpoints)

    def restore(self, state: dict) -> None:
        if state["num_classes"] != self.domains.num_classes:
            raise FastmbrError(f"{self.run_dir}: checkpoint has {state['num_classes']} classes, "
                               f"the data has {self.domains.num_classes}")
        delta_dim = self.G.delta_dim if self.G is not None else None
        if state["delta_dim"] != delta_dim:
            raise FastmbrError(f"{self.run_dir}: checkpoint was trained with δ dimension {state['delta_dim']}, "
                               f"the model of variation has {delta_dim}")
        self.model.load_state_dict(state["model"])
        if state.get("own_optimizer"):
            self.use_own_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.algo.load_state_dict(state.get("algo", {}), self.model, self.device)
        self.restore_rank_parts(state)
        self.history, self.best = state["history"], state["best"]
        self.nonfinite_total = state["nonfinite_total"]
        self.unreadable = list(state.get("unreadable", []))
        self.skipped.counts[0] = float(self.nonfinite_total)
        self.images_seen, self.train_seconds = state["images_seen"], state["train_seconds"]
        self.position = (state["epoch"], state["batch"])

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

    def restore_rank_parts(self, state: dict) -> None:
        """This rank's RNG states and epoch sums; a rank the checkpoint did not have starts fresh ones."""
        rng = ckpt.rng_state_of_rank(state["rng"], self.dist.rank)
        meters = state["meter"] if isinstance(state["meter"], list) else [state["meter"]]
        if rng is not None:
            ckpt.set_rng_state(rng)
        if self.dist.rank < len(meters):
            self.meter.load(meters[self.dist.rank])
        saved_world = state.get("world_size", 1)
        if saved_world != self.dist.world_size:
            self.log(f"checkpoint written by {saved_world} process(es), resumed on {self.dist.world_size}: "
                     f"the run continues, but not bit-identically to an uninterrupted one")

    # ---- the loop -------------------------------------------------------------------------------------------
    def amp(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else nullcontext()

    def gradient_sync(self, last: bool):
        """DDP all-reduces gradients on the last micro-batch only; the others accumulate locally (no_sync)."""
        if self.dist.enabled and not last:
            return self.step_model.no_sync()
        return nullcontext()

    def share_weight(self, batch: int, steps: int) -> float:
        """The weight of this rank's gradient at step ``batch``: 1, except in the last, partial global batch,
        split unevenly (``last_step_shares``): W·n_rank/n_step, so that DDP's mean over ranks is the mean over
        the step's samples, as in one process (0 for a rank holding only a placeholder sample)."""
        if self.last_shares is None or batch != steps - 1:
            return 1.0
        return self.dist.world_size * self.last_shares[self.dist.rank] / sum(self.last_shares)

    def train_step(self, algo, x: torch.Tensor, y: torch.Tensor, stop: dict, at_log: bool,
                   weight: float = 1.0) -> tuple[bool, bool]:
        """One optimisation step over this rank's share of the global batch, in ``accumulate`` micro-batches.

        Returns (stepped, stop_now), both agreed by every rank through one small all-reduce: a non-finite loss
        on any rank skips the update everywhere (no optimizer or scheduler step), and a signal received by any
        rank stops them all after this step. The gradients are computed even for a non-finite loss, because
        DDP's gradient all-reduce needs every rank and no rank knows the others' losses before it.

        With such an optimizer (``skip_on_device``) nothing is read on the host: the skip happens on the device
        (``found_inf``), the skipped steps are counted there, and signals are agreed on at log intervals (``at_log``)
        only.
        """
        self.optimizer.zero_grad(set_to_none=True)
        parts = micro_batches(x, y, self.options.accumulate)
        results = []
        for i, (xm, ym) in enumerate(parts):
            with self.gradient_sync(last=i == len(parts) - 1):
                with self.amp():
                    out = algo.loss(self.step_model, self.G, xm, ym)
                loss = out["loss"]
                part = (1.0 if len(parts) == 1 else ym.shape[0] / y.shape[0]) * weight
                (loss if part == 1.0 else loss * part).backward()
            results.append((loss.detach(), out["logits"], ym))
        losses = torch.stack([r[0].float() for r in results])
        results = results if weight > 0 else []  # a placeholder sample counts for nothing
        if self.skip_on_device:
            return self.update_on_device(results, losses), self.agreed_stop(stop, at_log)
        flags = torch.stack([(~torch.isfinite(losses)).any().float(),
                             torch.tensor(float(bool(stop.get("signal"))), device=losses.device)])
        skip, stop_now = any_rank(flags, self.dist)
        if skip:
            self.optimizer.zero_grad(set_to_none=True)
            return False, stop_now
        self.optimizer.step()
        self.scheduler.step()
        for loss, logits, ym in results:
            self.meter.add(loss, logits, ym)
        return True, stop_now

    def update_on_device(self, results, losses: torch.Tensor) -> bool:
        """The optimizer step, skipped on the device (weights and optimizer state untouched) if any loss is not
        finite on any rank; the meter adds only finite steps. No host synchronisation."""
        found = (~torch.isfinite(losses)).any().float()
        found = all_reduce_max(found, self.dist)
        self.optimizer.found_inf = found
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf
        self.scheduler.step()
        self.skipped.add(found)
        keep = 1.0 - found
        for loss, logits, ym in results:
            self.meter.add(torch.nan_to_num(loss) * keep, logits, ym, weight=keep)
        return True

    def agreed_stop(self, stop: dict, at_log: bool) -> bool:
        """A signal to any rank stops every rank; agreed on (one small all-reduce) at log intervals only."""
        if not self.dist.enabled:
            return bool(stop.get("signal"))
        if not at_log:
            return False
        flag = torch.tensor([float(bool(stop.get("signal")))], device=self.device)
        return bool(any_rank(flag, self.dist)[0])

    def fold_skipped(self, epoch: int, batch: int) -> None:
        """Read the device's skip counts (at log intervals and checkpoints) and stop after too many in a row."""
        total, longest = self.skipped.read()
        if total > self.nonfinite_total:
            self.log(f"{total - self.nonfinite_total} non-finite step(s) skipped before epoch {epoch + 1} "
                     f"batch {batch}")
        self.nonfinite_total = total
        self.check_nonfinite(longest, epoch, batch)

    def check_nonfinite(self, in_a_row: int, epoch: int, batch: int) -> None:
        if in_a_row > self.cfg.max_nonfinite:
            raise FastmbrError(
                f"loss was NaN/inf for {in_a_row} steps in a row (epoch {epoch + 1}, batch {batch}); stopped. "
                f"The last good checkpoint in {self.run_dir} is intact; try a lower --lr"
            )

    def log_interval(self, epoch: int, done: int, bar) -> None:
        """One host read of the (all-reduced) epoch sums: the progress bar and a train.log line."""
        stats = self.meter.read(self.dist)
        images_per_s = self.images_seen / max(self.train_seconds, 1e-9)
        bar.update(done, stats, images_per_s)
        self.log(f"epoch {epoch + 1} batch {done}/{len(self.train_loader)}: loss {stats['loss']:.9g} "
                 f"train top-1 {stats['acc']:.2f} {images_per_s:.1f} img/s")

    def run_epoch(self, epoch: int, start_batch: int, stop: dict, bar) -> bool:
        """Train one epoch from ``start_batch``; returns False when a signal (to any rank) asked the run to stop."""
        algo = self.warmup if epoch < self.cfg.optim.warmup_epochs else self.algo
        self.model.train()
        self.train_loader.set_epoch(epoch, start_batch)
        steps = len(self.train_loader)
        in_a_row, tick, ran, skipped_before = 0, time.perf_counter(), 0, self.nonfinite_total
        for batch, (x, y) in enumerate(self.train_loader, start=start_batch):
            self.fault.maybe_fire(epoch * steps + batch, self.dist.rank)
            done = batch + 1
            at_log = done % self.cfg.log_every == 0 or done == steps
            stepped, stop_now = self.train_step(algo, x, y, stop, at_log, self.share_weight(batch, steps))
            ran += 1
            if stepped:
                in_a_row = 0
            else:
                in_a_row += 1
                self.nonfinite_total += 1
                self.log(f"non-finite loss skipped at epoch {epoch + 1} batch {batch}")
                self.check_nonfinite(in_a_row, epoch, batch)
            self.images_seen += y.shape[0] * self.dist.world_size
            if at_log:
                if self.skip_on_device:
                    self.fold_skipped(epoch, done)
                now = time.perf_counter()
                self.train_seconds += now - tick
                tick = now
                self.log_interval(epoch, done, bar)
            if stop_now:
                stop.setdefault("signal", signal.SIGTERM)  # the ranks that did not receive it stop as if they had
                self.save(epoch, done)
                barrier(self.dist)  # no rank exits (and makes torchrun SIGTERM the rest) before rank 0 has written
                self.log(f"signal {stop['signal']}: checkpoint written at epoch {epoch + 1} batch {done}; exiting")
                return False
            if self.cfg.checkpoint_every and done % self.cfg.checkpoint_every == 0 and done < steps:
                self.save(epoch, done)
        self.train_seconds += time.perf_counter() - tick
        check_epoch(epoch, ran, self.nonfinite_total - skipped_before, self.run_dir)
        return True

    def evaluate(self, data) -> dict:
        """Top-1/top-5 over a whole split: each rank scores its strided share, the counts are summed."""
        loader = self.loader(data, train=False)
        r = accuracy(self.model, loader, self.device, self.autocast)
        self.note_unreadable(loader)
        counts = [round(r["top1"] * r["n"] / 100), round(r["top5"] * r["n"] / 100), r["n"]] if r["n"] else [0, 0, 0]
        top1, top5, n = all_reduce_sum(torch.tensor(counts, dtype=torch.float64, device=self.device),
                                       self.dist).tolist()
        if n == 0:
            return {"top1": float("nan"), "top5": float("nan"), "n": 0}
        return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": int(n)}

    def end_epoch(self, epoch: int) -> dict:
        train = self.meter.read(self.dist)
        self.note_unreadable(self.train_loader)
        broadcast_buffers(self.model, self.dist)
        val = self.evaluate(self.domains.val)
        record = {"epoch": epoch + 1, "train_loss": train["loss"], "train_top1": train["acc"], "val": val,
                  "lr": self.optimizer.param_groups[0]["lr"]}
        self.history.append(record)
        if val["top1"] > self.best["top1"] or self.algo.select_last:
            self.best = {"top1": val["top1"], "epoch": epoch + 1}
            if self.dist.is_main:
                ckpt.atomic_write(self.run_dir / "best.pt", lambda f: torch.save(self.model.state_dict(), f))
        self.meter.reset()
        self.log(f"epoch {epoch + 1}: loss {train['loss']:.4f} train top-1 {train['acc']:.2f} "
                 f"val top-1 {val['top1']:.2f}")
        log_epoch(self, record)  # history.csv, TensorBoard
        return record

    def fit(self, resume_state: dict | None = None) -> dict:
        self.setup()
        if resume_state is not None:
            try:
                self.restore(resume_state)
            except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:  # a foreign checkpoint
                first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
                raise FastmbrError(f"{self.run_dir}: the checkpoint does not fit this run "
                                   f"({type(exc).__name__}: {first})") from None
            self.log(f"resumed at epoch {self.position[0] + 1} batch {self.position[1]} on "
                     f"{self.dist.world_size} process(es) (restart {restart_count()})")
        start_epoch, start_batch = self.position
        self.started = True
        self.epoch_log = EpochLogger(self.run_dir, self.options.tensorboard, start_epoch, self.dist.is_main)
        with stop_on_signals({}) as stop, ProgressBar(self.progress, self.cfg, len(self.train_loader)) as bar:
            for epoch in range(start_epoch, self.cfg.optim.epochs):
                bar.start_epoch(epoch, start_batch)
                if epoch >= self.cfg.optim.warmup_epochs:
                    self.use_own_optimizer()
                if not self.run_epoch(epoch, start_batch, stop, bar):
                    raise SystemExit(130 if stop["signal"] == signal.SIGINT else 143)
                self.end_epoch(epoch)
                self.save(epoch + 1, 0)
                start_batch = 0
        self.epoch_log.close()
        return self.finish()

    def finish(self) -> dict:
        barrier(self.dist)  # rank 0 wrote best.pt; every rank reads it
        if (self.run_dir / "best.pt").exists():
            self.model.load_state_dict(ckpt.load_weights(self.run_dir / "best.pt"))
        test = {name: self.evaluate(data) for name, data in self.domains.test.items()}
        metrics = {
            "dataset": self.cfg.data.dataset, "shift": self.domains.shift.label, "algorithm": self.cfg.algo.name,
            "test": test, "val": self.history[-1]["val"] if self.history else {},
            "selection": (f"the last epoch ({self.best['epoch']}): {self.algo.name} adapts to B, which A's "
                          f"validation split cannot judge" if self.algo.select_last else
                          f"best top-1 on A's validation split (epoch {self.best['epoch']})"),
            "epochs": self.history, "images_per_s": self.images_seen / max(self.train_seconds, 1e-9),
            "train_seconds": self.train_seconds, "nonfinite_skipped": self.skipped_total(),
            "unreadable_files": sorted({p for paths in gather_objects(self.unreadable, self.dist) for p in paths}),
            "device": str(self.device), "world_size": self.dist.world_size,
            "global_batch": self.cfg.data.batch_size, "options": asdict(self.options),
            "counts": self.domains.counts(), "commit": git_sha() if self.dist.is_main else None,
        }
        if self.dist.is_main:
            write_json(self.run_dir / "metrics.json", metrics)
        return metrics


class ProgressBar:
    """A rich progress bar (epoch, loss, accuracy, images/s), or nothing when disabled."""

    def __init__(self, enabled: bool, cfg: RunConfig, total: int):
        self.enabled, self.cfg, self.total = enabled, cfg, total
        self.progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeElapsedColumn())
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int, start: int):
        if self.progress is not None:
            desc = f"{self.cfg.algo.name} epoch {epoch + 1}/{self.cfg.optim.epochs}"
            self.task = self.progress.add_task(desc, total=self.total, completed=start, stats="")

    def update(self, done: int, stats: dict, images_per_s: float):
        if self.progress is not None:
            self.progress.update(self.task, completed=done,
                                 stats=f"loss {stats['loss']:.3f} acc {stats['acc']:.1f}% {images_per_s:,.0f} img/s")


@dataclass
class OpenedRun:
    """What rank 0 found or made in the run folder; every rank receives it."""

    cfg: RunConfig
    options: TrainOptions
    run_dir: Path
    checkpoint: Path | None = None
    reopened: bool = False
    created: bool = False  # the folder was made by this start (removed again if set-up refuses the run)


def open_run_folder(cfg: RunConfig, resume: bool | str, options: TrainOptions,
                    given: set[str] | None = None) -> tuple[OpenedRun, dict | None]:
    """Create or reopen the run folder (rank 0 only); never overwrite a run that exists unless resuming it, and
    resume only the same run (``resume_check``: ``given`` are the config paths the user set, None: all).

    Returns the run and the newest checkpoint that loads (None for a new run or one without checkpoints)."""
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.data.dataset, cfg.algo.name)
    config_path = run_dir / "config.json"
    if resume == "auto":
        resume = config_path.exists()
    if resume:
        if not config_path.exists():
            raise FastmbrError(f"--resume: {run_dir} holds no run (no config.json)")
        saved_json = read_run_config(config_path)
        saved, resumed_options = resumed_config(saved_json, cfg, options, given, run_dir)
        ckpt.remove_stale_temps(run_dir)
        path, state = ckpt.latest_loadable(run_dir)
        return OpenedRun(saved, resumed_options, run_dir, path, True), state
    if config_path.exists():
        raise FastmbrError(f"{run_dir} already holds a run; pass --resume to continue it or another --out")
    created = make_run_folder(run_dir)
    write_run_config(config_path, {**cfg.to_dict(), "options": asdict(options), "commit": git_sha(),
                                   "models_sha256": model_hashes(cfg.algo.models)})
    return OpenedRun(cfg, options, run_dir, created=created), None


def open_run(cfg: RunConfig, resume: bool | str, options: TrainOptions,
             dist: DistInfo, given: set[str] | None = None) -> tuple[OpenedRun, dict | None]:
    """Rank 0 opens the folder and picks the checkpoint; every rank gets the same answer (or the same error)
    and then loads that same file: the broadcast is the barrier between rank 0's writes and the others' reads."""
    answer, state = None, None
    if dist.is_main:
        try:
            answer, state = open_run_folder(cfg, resume, options, given)
        except FastmbrError as exc:
            answer = str(exc)
    answer = broadcast_object(answer, dist)
    if isinstance(answer, str):
        raise FastmbrError(answer)
    if not dist.is_main and answer.checkpoint is not None:
        state = ckpt.safe_load(answer.checkpoint)
    return answer, state


def train(cfg: RunConfig, resume: bool | str = False, progress: bool = True,
          options: TrainOptions | None = None, given: set[str] | None = None) -> tuple[dict, Path]:
    """Run (or resume) one training run, in one process or under torchrun; returns its metrics and run folder.

    ``resume``: False starts a new run folder (and refuses one that holds a run); True continues the run in
    ``cfg.out`` from its newest loadable checkpoint (from scratch if it has none yet); ``"auto"`` does the
    latter when ``cfg.out`` holds a run and the former otherwise, so one command line serves the first start
    and every restart (``torchrun --max-restarts``, a requeued Slurm job).
    """
    options = options or TrainOptions()
    validate_run(cfg, options)  # before anything is written
    dist = init_from_env(resolve_device(cfg.device))
    opened = trainer = None
    try:
        opened, state = open_run(cfg, resume, options, dist, given)
        trainer = Trainer(opened.cfg, opened.run_dir, progress=progress, options=opened.options)
        if opened.reopened and state is None:
            trainer.log("resumed a run folder without a checkpoint: starting from scratch")
        metrics = trainer.fit(state)
    except (FastmbrError, SystemExit) as exc:  # decisions every rank took together: leave the group cleanly
        if isinstance(exc, FastmbrError) and opened is not None and not opened.reopened and dist.is_main and (
                trainer is None or not trainer.started):
            remove_failed_start(opened.run_dir, opened.created)  # refused at set-up: not left to block the fix
        shutdown(dist)
        raise
    shutdown(dist)
    return metrics, opened.run_dir


def evaluation_config(run_dir: Path, dataset: str | None, shift: str | None, data_dir: str | None,
                      device: str = "auto", skip_corrupt: bool | None = None) -> RunConfig:
    """A run's configuration pointed at the data to score it on (by default: what it was trained on)."""
    if not (run_dir / "config.json").exists():
        raise FastmbrError(f"{run_dir}: not a run folder (no config.json)")
    saved = read_run_config(run_dir / "config.json")
    check_model_hashes(saved.get("models_sha256", {}), run_dir, missing_ok=True)
    cfg = RunConfig.from_dict(saved)
    data = replace(cfg.data, dataset=dataset or cfg.data.dataset, shift=shift if dataset or shift else cfg.data.shift,
                   data_dir=data_dir or cfg.data.data_dir,
                   skip_corrupt=cfg.data.skip_corrupt if skip_corrupt is None else skip_corrupt)
    return replace(cfg, data=data, device=device, compile=False)


def evaluation_trainer(cfg: RunConfig, run_dir: Path, splits: Splits | None = None) -> Trainer:
    """A trainer holding the run's classifier (best.pt) and the test domains ``cfg`` names."""
    trainer = Trainer(cfg, run_dir, progress=False)
    trainer.channels_last = False
    trainer.domains = trainer.load_data(test_only=True, splits=splits)
    trainer.model = trainer.build_model()
    weights = ckpt.load_weights(run_dir / "best.pt")
    try:
        trainer.model.load_state_dict(weights)
    except RuntimeError:
        raise FastmbrError(f"{run_dir}/best.pt does not fit {cfg.data.dataset}: class count or image size "
                           f"differs") from None
    return trainer


def evaluate_run(run_dir: Path, dataset: str | None, shift: str | None, data_dir: str | None,
                 device: str = "auto", skip_corrupt: bool | None = None) -> dict:
    """Score a trained classifier (best.pt) on any dataset's test domains (how transfer is scored); a domain
    whose loader left files out (``skip_corrupt``, default: as trained) lists them under ``unreadable_files``."""
    trainer = evaluation_trainer(evaluation_config(run_dir, dataset, shift, data_dir, device, skip_corrupt), run_dir)
    return {name: score_domain(trainer, d) for name, d in trainer.domains.test.items()}


def evaluate_shifts(run_dir: Path, dataset: str | None, shifts: list[str], data_dir: str | None,
                    device: str = "auto", skip_corrupt: bool | None = None) -> dict[str, dict]:
    """``evaluate_run`` under each shift (``corruption:all`` expanded), the data read and the classifier loaded
    once, with the summary of ``shift_summary``. Domain A of a corruption shift is the clean test split whatever
    the corruption: scored once, its scores repeated."""
    base = evaluation_config(run_dir, dataset, None, data_dir, device, skip_corrupt)
    shifts = expand_shifts(base.data.dataset, shifts, base.data.data_dir)
    splits = read_splits(base.data.dataset, base.data.data_dir, base.data.skip_corrupt)
    trainer, results, clean = None, {}, None
    for shift in shifts:
        cfg = replace(base, data=replace(base.data, shift=shift))
        if trainer is None:
            trainer = evaluation_trainer(cfg, run_dir, splits)
        else:
            trainer.cfg = cfg
            trainer.domains = trainer.load_data(test_only=True, splits=splits)
        corruption = trainer.domains.shift.kind == "corruption"
        results[shift] = {}
        for name, data in trainer.domains.test.items():
            reuse = corruption and name == "A" and clean is not None
            results[shift][name] = clean if reuse else score_domain(trainer, data)
            if corruption and name == "A":
                clean = results[shift][name]
    return shift_summary(results, base.data.dataset)


def score_domain(trainer: Trainer, data) -> dict:
    """Accuracy on one test domain, with the files left out of it (when the test split was read, or by the
    loader) under ``unreadable_files``."""
    loader = trainer.loader(data, train=False)
    result = accuracy(trainer.model, loader, trainer.device)
    unreadable = [*trainer.domains.unreadable, *getattr(loader, "skipped", [])]
    return {**result, "unreadable_files": unreadable} if unreadable else result
