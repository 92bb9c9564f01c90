"""Sums the training loop keeps on the device: the epoch's loss and accuracy, the non-finite steps skipped."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastmbr.engine.distributed import DistInfo, all_reduce_sum


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
