"""The run folder: config.json, metrics.json, train.log, checkpoints, best.pt."""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
from pathlib import Path

from fastmbr.engine.checkpoint import atomic_write


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def default_run_dir(dataset: str, algo: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{dataset}-{algo}-{stamp}"


def write_json(path: Path, payload: dict) -> None:
    text = json.dumps(payload, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


class RunLog:
    """Appends timestamped lines to train.log (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = run_dir / "train.log"
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(f"{_dt.datetime.now().isoformat(timespec='seconds')} {message}\n")
