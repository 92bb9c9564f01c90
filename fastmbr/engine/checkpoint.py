"""Atomic checkpoints and exact resume.

A checkpoint is written to a temp file in the run folder, fsync'ed, then renamed over its final name, so a
crash while writing leaves the previous checkpoint intact (a temp file a killed writer leaves behind is never
listed, and ``remove_stale_temps`` clears it at the next start). It holds everything an exact resume needs:
model, optimizer, scheduler, the position (epoch, batch) the run continues from, and every rank's RNG states
as a list indexed by rank.

Checkpoints hold tensors and plain types only (the RNG states too: numpy's key is stored as a tensor), and every
load is ``torch.load(weights_only=True)``: a file crafted to run code when unpickled is refused, never executed.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from fastmbr.errors import FastmbrError
from fastmbr.fileio import TEMP_MARK, atomic_write  # noqa: F401  (re-exported: ckpt.atomic_write)

PREFIX = "ckpt-"
CHECKPOINT_KEYS = frozenset({"epoch", "batch", "model", "optimizer", "scheduler", "rng", "meter", "history", "best",
                             "num_classes", "delta_dim", "nonfinite_total",
                             "images_seen", "train_seconds"})


def rng_state() -> dict:
    """Every RNG stream of this process, as tensors and plain types (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"python": list_tree(random.getstate()), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rng_state_of_rank(saved: list[dict] | dict, rank: int) -> dict | None:
    """This rank's RNG states from a checkpoint (a list indexed by rank; a single dict in older checkpoints).

    None when the checkpoint was written by fewer ranks than resume it: that rank starts a fresh stream.
    """
    states = saved if isinstance(saved, list) else [saved]
    return states[rank] if rank < len(states) else None


def list_tree(value):
    """Tuples (Python's RNG state) as lists, so the state holds plain types only."""
    return [list_tree(v) for v in value] if isinstance(value, (tuple, list)) else value


def tuple_tree(value):
    return tuple(tuple_tree(v) for v in value) if isinstance(value, (tuple, list)) else value


def set_rng_state(state: dict) -> None:
    random.setstate(tuple_tree(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
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


def safe_load(path: Path, map_location="cpu"):
    """``torch.load(weights_only=True)``: tensors and plain types only, so no file can run code when loaded.

    Raises FastmbrError naming the file: missing, torn, or holding anything else (a pickled object, code)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FastmbrError(f"{path}: no such file") from None
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if text.startswith("Weights only load failed"):
            body = text.split("trusted source.")[-1].split("Check the documentation")[0]
            body = body.split("WeightsUnpickler error:")[-1]
            reason = " ".join(body.split()) or "unsupported content"
            raise FastmbrError(f"{path}: refused to load: it holds more than tensors and plain values "
                               f"({reason[:160]}); fastmbr never writes such a file, so it was not loaded") from None
        raise FastmbrError(f"{path}: cannot load ({type(exc).__name__}: {text[:120]})") from None
    except Exception as exc:  # noqa: BLE001 - a truncated, corrupt or foreign file
        raise FastmbrError(f"{path}: cannot load ({type(exc).__name__}: {str(exc)[:120]})") from None


def latest_loadable(run_dir: Path) -> tuple[Path | None, dict | None]:
    """The newest checkpoint that loads, and its path; an unreadable newest one falls back to the one before.

    When checkpoints exist and none of them loads, a FastmbrError names them: resuming must never silently
    restart (and overwrite) a run."""
    paths = list_checkpoints(run_dir)
    failures = []
    for path in reversed(paths):
        try:
            state = safe_load(path)
        except FastmbrError as exc:  # a torn or corrupt file: try the previous checkpoint
            failures.append(str(exc))
            continue
        missing = sorted(CHECKPOINT_KEYS - set(state)) if isinstance(state, dict) else ["all keys"]
        if missing:
            failures.append(f"{path}: not a fastmbr checkpoint (missing {', '.join(missing)})")
            continue
        return path, state
    if paths:
        raise FastmbrError(f"{run_dir}: none of the {len(paths)} checkpoint(s) loads, so the run cannot resume "
                           f"and nothing was overwritten: {'; '.join(failures)}")
    return None, None


def load_latest(run_dir: Path) -> dict | None:
    """The newest checkpoint that loads; an unreadable newest one falls back to the one before."""
    return latest_loadable(run_dir)[1]


def load_weights(path: Path) -> dict:
    """A state dict (best.pt), loaded with ``weights_only=True``."""
    weights = safe_load(path)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise FastmbrError(f"{path}: not a model state dict (name → tensor)")
    return weights
