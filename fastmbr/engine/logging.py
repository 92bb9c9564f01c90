"""What a run shows as it goes: ``history.csv`` (one row per epoch) and, with ``--tensorboard``, scalars and a
grid of G(x, δ) samples per epoch; and the sample grid of A, B and G(x, δ) the main job writes.

The trainer calls ``EpochLogger.epoch`` once per finished epoch with the record it keeps in its history plus
what the logger needs (test-domain accuracies, images/s). Test-domain accuracies are monitoring only: model
selection still reads A's validation split alone.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
from pathlib import Path

import torch

from fastmbr.engine.checkpoint import atomic_write
from fastmbr.errors import FastmbrError

HISTORY_CSV = "history.csv"
RUNNING_MARK = ".running"  # {"pid", "host"} of the process training in this folder; removed when it finishes
TENSORBOARD_DIR = "tensorboard"
INSTALL_HINT = "pip install 'fastmbr[tensorboard]' (or pip install tensorboard)"
GRID_IMAGES = 8  # images per row of a sample grid


def flat_row(record: dict) -> dict:
    """``{"val": {"top1": ..}, "test": {"B": {"top1": ..}}}`` → ``{"val_top1": .., "test_B_top1": ..}``."""
    row = {}
    for key, value in record.items():
        if isinstance(value, dict):
            for sub, inner in flat_row(value).items():
                row[f"{key}_{sub}"] = inner
        elif isinstance(value, (int, float, str)) or value is None:
            row[key] = value
    return row


def read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_history(path: Path, rows: list[dict]) -> None:
    """All rows, atomically (temp file + rename): a killed run never leaves half a CSV."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


def tensorboard_writer(log_dir: Path):
    """A SummaryWriter, or one ``error:`` line saying how to install the optional extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FastmbrError(f"--tensorboard needs the tensorboard package: {INSTALL_HINT}") from None
    return SummaryWriter(log_dir=str(log_dir))


def check_tensorboard() -> None:
    """Fail before any training when --tensorboard cannot work."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise FastmbrError(f"--tensorboard needs the tensorboard package: {INSTALL_HINT}") from None


class EpochLogger:
    """``history.csv`` in the run folder, rewritten whole each epoch; a resumed run keeps the rows of the epochs
    its checkpoint had finished and drops those of epochs it will train again. Rank 0 writes; every rank
    computes the test-domain accuracies (an all-reduce) when ``tensorboard`` asks for them."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, resumed_epoch: int = 0, enabled: bool = True):
        self.path = run_dir / HISTORY_CSV
        self.enabled, self.tensorboard = enabled, tensorboard
        self.rows = [r for r in read_history(self.path) if int(r["epoch"]) <= resumed_epoch] if enabled else []
        self.writer = tensorboard_writer(run_dir / TENSORBOARD_DIR) if tensorboard and enabled else None
        self.last = None  # (images seen, training seconds) at the end of the previous epoch
        self.grid_x = None  # the validation images whose G(x, δ) TensorBoard shows each epoch
        self.mark = run_dir / RUNNING_MARK
        if enabled:
            self.mark.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))

    @property
    def wants_test(self) -> bool:
        """Per-epoch test-domain accuracies are computed for TensorBoard only (they cost an evaluation pass)."""
        return self.tensorboard

    def epoch_rate(self, images_seen: int, seconds: float) -> float:
        """Training images/s over the epoch just finished (over the run so far for the first one logged)."""
        seen0, sec0 = self.last or (0, 0.0)
        self.last = (images_seen, seconds)
        return (images_seen - seen0) / max(seconds - sec0, 1e-9)

    def epoch(self, record: dict, images_per_s: float, test: dict | None = None, samples: torch.Tensor | None = None):
        if not self.enabled:
            return
        full = {**record, "images_per_s": images_per_s, **({"test": test} if test else {})}
        self.rows.append(flat_row(full))
        write_history(self.path, self.rows)
        if self.writer is not None:
            self.scalars(full)
            if samples is not None:
                self.writer.add_image("samples/G(x,delta)", samples, full["epoch"])
            self.writer.flush()

    def scalars(self, full: dict) -> None:
        step = full["epoch"]
        w = self.writer
        w.add_scalar("train/loss", full["train_loss"], step)
        w.add_scalar("train/top1", full["train_top1"], step)
        w.add_scalar("val_A/top1", full["val"]["top1"], step)
        w.add_scalar("lr", full["lr"], step)
        w.add_scalar("images_per_s", full["images_per_s"], step)
        for name, r in (full.get("test") or {}).items():
            w.add_scalar(f"test_{name}/top1", r["top1"], step)

    def close(self) -> None:
        """The loop is over: the marker goes (a run that stops otherwise leaves it, naming a process gone)."""
        if self.writer is not None:
            self.writer.close()
        if self.enabled:
            self.mark.unlink(missing_ok=True)


def marked_running(run_dir: Path) -> bool:
    """Is the process named by the folder's running marker alive (on this host)?"""
    try:
        mark = json.loads((run_dir / RUNNING_MARK).read_text())
    except (OSError, ValueError):
        return False
    if mark.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(mark["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def log_epoch(trainer, record: dict) -> None:
    """The trainer's per-epoch hook: a history.csv row and, with --tensorboard, test accuracies and samples."""
    logger: EpochLogger = trainer.epoch_log
    rate = logger.epoch_rate(trainer.images_seen, trainer.train_seconds)
    test, samples = None, None
    if logger.wants_test:
        test = {name: trainer.evaluate(data) for name, data in trainer.domains.test.items()}
        if trainer.G is not None and logger.enabled:
            samples = epoch_samples(trainer, logger, record["epoch"])
    logger.epoch(record, rate, test, samples)


def epoch_samples(trainer, logger: EpochLogger, epoch: int) -> torch.Tensor:
    """G(x, δ) of the first validation images, δ from a generator of its own (the run's RNG streams untouched)."""
    if logger.grid_x is None:
        x, _ = next(iter(trainer.loader(trainer.domains.val, train=False)))
        logger.grid_x = x[:GRID_IMAGES].float().contiguous()
    generator = torch.Generator().manual_seed(epoch)
    return variation_grid(trainer.G, logger.grid_x, rows=2, generator=generator)


@torch.no_grad()
def variations(G, x: torch.Tensor, rows: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """G(x, δ) for ``rows`` random δ per image of x (float 0-1, ``[n, C, H, W]``): ``[rows·n, C, H, W]``, row by row."""
    delta = G.sample_delta(x.shape[0], k=rows, generator=generator)
    return G.expand(x, delta.to(x.device)).reshape(-1, *x.shape[1:]).float().clamp(0, 1)


def variation_grid(G, x: torch.Tensor, rows: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """x on the first row, then ``rows`` rows of G(x, δ) for random δ, as one ``[3, H', W']`` image."""
    from torchvision.utils import make_grid

    images = torch.cat([x.float(), variations(G, x, rows, generator)]).cpu()
    return make_grid(images, nrow=x.shape[0], padding=2, pad_value=1.0)


def save_sample_grid(path: Path, dataset: str, shift: str, data_dir: str | None, models: list[str], seed: int,
                     n: int = GRID_IMAGES) -> Path:
    """Rows: n test images of A, the same digits in B, then G(x, δ) of the A row for two random δ each."""
    from torchvision.utils import make_grid, save_image

    from fastmbr.pipelines.datasets import load_domains
    from fastmbr.variation.resolve import variation_from_specs

    domains = load_domains(dataset, shift, data_dir, seed=seed, test_only=True)
    a, b = (domains.test[d].images[:n].float() / 255.0 for d in ("A", "B"))
    G = variation_from_specs(models)
    varied = variations(G, a, rows=2, generator=torch.Generator().manual_seed(seed))
    save_image(make_grid(torch.cat([a, b, varied]), nrow=n, padding=2, pad_value=1.0), path)
    return path
