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

import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from fastmbr.config import RunConfig
from fastmbr.engine.distributed import (
    all_reduce_max,
    any_rank,
    barrier,
    init_from_env,
    restart_count,
    shutdown,
)
from fastmbr.engine.logging import EpochLogger
from fastmbr.engine.progress import ProgressBar
from fastmbr.engine.rundir import RunLog, remove_failed_start
from fastmbr.engine.run_open import open_run
from fastmbr.engine.trainer_scores import TrainerScores
from fastmbr.engine.trainer_setup import TrainerSetup
from fastmbr.engine.trainer_state import TrainerState
from fastmbr.engine.validate import check_epoch, validate_run
from fastmbr.errors import FastmbrError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise FastmbrError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FastmbrError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


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


def micro_batches(x: torch.Tensor, y: torch.Tensor, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(x.chunk(n), y.chunk(n)))


class Trainer(TrainerSetup, TrainerState, TrainerScores):
    """One run's training loop. Its set-up (``trainer_setup``), checkpoint state (``trainer_state``) and scores
    (``trainer_scores``) are parts kept in modules of their own."""

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
