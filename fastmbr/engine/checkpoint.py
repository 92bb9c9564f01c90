"""Atomic checkpoints and exact resume.

A checkpoint is written to a temp file in the run folder, fsync'ed, then renamed over its final name, so a
crash while writing leaves the previous checkpoint intact (a temp file a killed writer leaves behind is never
listed, and ``remove_stale_temps`` clears it at the next start). It holds everything an exact resume needs:
model, optimizer, scheduler, the position (epoch, batch) the run continues from, and every rank's RNG states
as a list indexed by rank.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from fastmbr.errors import FastmbrError
from fastmbr.fileio import TEMP_MARK, atomic_write  # noqa: F401  (re-exported: ckpt.atomic_write)

PREFIX = "ckpt-"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rng_state_of_rank(saved: list[dict] | dict, rank: int) -> dict | None:
    """This rank's RNG states from a checkpoint (a list indexed by rank; a single dict in older checkpoints).

    None when the checkpoint was written by fewer ranks than resume it: that rank starts a fresh stream.
    """
    states = saved if isinstance(saved, list) else [saved]
    return states[rank] if rank < len(states) else None


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_name(epoch: int, batch: int) -> str:
    return f"{PREFIX}{epoch:04d}-{batch:06d}.pt"


def save_checkpoint(run_dir: Path, state: dict, keep: int) -> Path:
    path = run_dir / checkpoint_name(state["epoch"], state["batch"])
    atomic_write(path, lambda f: torch.save(state, f))
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob(f"{PREFIX}*.pt"))


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete the temp files of writers that were killed mid-write (never a finished checkpoint)."""
    stale = [p for p in run_dir.glob(f".*{TEMP_MARK}*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def latest_loadable(run_dir: Path) -> tuple[Path | None, dict | None]:
    """The newest checkpoint that loads, and its path; an unreadable newest one falls back to the one before."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a torn or corrupt file: try the previous checkpoint
            continue
    return None, None


def load_latest(run_dir: Path) -> dict | None:
    """The newest checkpoint that loads; an unreadable newest one falls back to the one before."""
    return latest_loadable(run_dir)[1]


def load_weights(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise FastmbrError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # noqa: BLE001
        raise FastmbrError(f"{path}: cannot load checkpoint ({type(exc).__name__})") from None
