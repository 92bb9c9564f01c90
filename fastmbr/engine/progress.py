"""The training progress bar (``ProgressBar``): epoch, loss, accuracy and images/s on the console."""

from __future__ import annotations

from fastmbr.config import RunConfig


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
