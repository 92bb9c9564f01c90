"""The run folder: config.json, metrics.json, train.log, checkpoints, best.pt."""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from pathlib import Path

from fastmbr.engine.checkpoint import atomic_write
from fastmbr.errors import FastmbrError


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
    """A JSON object from ``path``; anything else (corrupt, a list, unreadable) is a FastmbrError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FastmbrError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FastmbrError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    except json.JSONDecodeError as exc:
        raise FastmbrError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise FastmbrError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_run_config(path: Path) -> dict:
    """config.json of a run folder, checked: a JSON object whose keys and value types are RunConfig's (plus the
    options, commit and G hashes beside it)."""
    from fastmbr.config import RunConfig
    from fastmbr.engine.trainer import TrainOptions
    from fastmbr.typed import build

    data = read_json(path)
    RunConfig.from_dict(data, str(path))
    build(TrainOptions, data.get("options", {}), f"{path}: options")
    hashes = data.get("models_sha256", {})
    if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
        raise FastmbrError(f"{path}: models_sha256 must map G folders to sha256 strings")
    return data


def make_run_folder(run_dir: Path) -> bool:
    """Create the run folder, or say in one line why it cannot be (a file in the way, no permission); returns
    whether it was created (a failed start then removes it again)."""
    made = not run_dir.exists()
    if not made and not run_dir.is_dir():
        raise FastmbrError(f"--out {run_dir} is a file, not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FastmbrError(f"--out {run_dir}: a file stands where a folder of its path should be") from None
    except OSError as exc:
        raise FastmbrError(f"--out {run_dir}: cannot create the folder ({exc.strerror})") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise FastmbrError(f"--out {run_dir}: the folder is not writable")
    return made


def write_run_config(path: Path, payload: dict) -> None:
    try:
        write_json(path, payload)
    except OSError as exc:
        raise FastmbrError(f"--out {path.parent}: cannot write {path.name} ({exc.strerror or exc})") from None


def remove_failed_start(run_dir: Path, created: bool) -> None:
    """Undo a start refused before training began: config.json and train.log go, and the folder too when this
    run created it (nothing else in it). Files the user had there are never touched."""
    for name in ("config.json", "train.log"):
        (run_dir / name).unlink(missing_ok=True)
    if created:
        try:
            run_dir.rmdir()
        except OSError:  # something else is in it: leave it
            pass


class RunLog:
    """Appends timestamped lines to train.log (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = run_dir / "train.log"
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            # file names need not be UTF-8 (a surrogate-escaped byte): written as \udcff, never a traceback
            with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(f"{_dt.datetime.now().isoformat(timespec='seconds')} {message}\n")
