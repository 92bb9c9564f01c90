"""Fault injection for the fault-tolerance tests: a rank that fails at a chosen step (``InjectedFault``)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from fastmbr.engine.distributed import DistInfo, restart_count
from fastmbr.errors import FastmbrError


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
