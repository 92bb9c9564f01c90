"""``fastmbr runs [ROOT]``: the run folders under a root, one line each, read from what each folder holds.

A run folder is a folder with a ``config.json`` written by ``fastmbr train`` (a ``data`` and an ``algo`` part).
Its status:

- finished: ``metrics.json`` is there (the test domains were scored);
- interrupted: stopped by a signal (Ctrl-C, SIGTERM), which writes a checkpoint and says so as the last line of
  ``train.log``; ``--resume`` continues it;
- running: no metrics yet, and the process named by the folder's ``.running`` marker is alive on this host (or,
  before the loop starts, ``train.log`` was written within the last ``RUNNING_WINDOW_S`` seconds);
- failed: anything else: stopped by an error, or killed without warning (``--resume`` continues it from its last
  checkpoint, if it wrote one).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fastmbr.engine.logging import RUNNING_MARK, marked_running
from fastmbr.errors import FastmbrError

RUNNING_WINDOW_S = 120
KEYED_K = ("mrt", "mat", "mda", "pgd")  # algorithms whose k means something (draws or steps)
_EPOCH_LINE = re.compile(r" epoch (\d+): loss ")
_SIGNAL_LINE = re.compile(r" signal \d+: checkpoint written .*; exiting$")


@dataclass
class RunRow:
    path: str
    dataset: str
    shift: str
    algorithm: str
    k: int | None
    epochs_done: int
    epochs: int
    a_top1: float | None
    b_top1: float | None
    status: str


def find_run_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` (``root`` included) whose config.json is a training run's, sorted."""
    if not root.exists():
        raise FastmbrError(f"{root} does not exist")
    if not root.is_dir():
        raise FastmbrError(f"{root} is not a folder")
    found = []
    for config in sorted(root.rglob("config.json")):
        try:
            saved = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(saved, dict) and "data" in saved and "algo" in saved:
            found.append(config.parent)
    return found


def epochs_done(run_dir: Path) -> int:
    """Epochs finished, from train.log's ``epoch N: loss`` lines (written at the end of each epoch)."""
    log = run_dir / "train.log"
    if not log.exists():
        return 0
    return max((int(m.group(1)) for m in _EPOCH_LINE.finditer(log.read_text(errors="replace"))), default=0)


def run_status(run_dir: Path, now: float | None = None) -> str:
    if (run_dir / "metrics.json").exists():
        return "finished"
    log = run_dir / "train.log"
    lines = log.read_text(errors="replace").rstrip().splitlines() if log.exists() else []
    if lines and _SIGNAL_LINE.search(lines[-1]):
        return "interrupted"
    if marked_running(run_dir):
        return "running"
    recent = log.exists() and (now or time.time()) - log.stat().st_mtime < RUNNING_WINDOW_S
    if recent and not (run_dir / RUNNING_MARK).exists():  # still loading its data
        return "running"
    return "failed"


def run_row(run_dir: Path, root: Path, now: float | None = None) -> RunRow:
    config = json.loads((run_dir / "config.json").read_text())
    algo, data = config["algo"], config["data"]
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    test = metrics.get("test", {})
    status = run_status(run_dir, now)
    done = len(metrics["epochs"]) if "epochs" in metrics else epochs_done(run_dir)
    return RunRow(
        path=str(run_dir.relative_to(root)) if run_dir != root else ".",
        dataset=data["dataset"], shift=data.get("shift") or metrics.get("shift") or "(default)",
        algorithm=algo["name"], k=_k(algo) if algo["name"] in KEYED_K else None,
        epochs_done=done, epochs=config["optim"]["epochs"],
        a_top1=test.get("A", {}).get("top1"), b_top1=test.get("B", {}).get("top1"), status=status,
    )


def _k(algo: dict) -> int:
    if algo.get("k") is not None:
        return int(algo["k"])
    from fastmbr.algorithms.base import algorithm_class

    return int(algorithm_class(algo["name"]).k)


def list_runs(root: Path) -> list[RunRow]:
    now = time.time()
    return [run_row(d, root, now) for d in find_run_dirs(root)]


COLUMNS = ("run", "dataset", "shift", "algo", "k", "epochs", "A top-1", "B top-1", "status")


def table_lines(rows: list[RunRow]) -> list[str]:
    """Plain aligned columns (one line per run, easy to grep)."""
    cells = [COLUMNS] + [(r.path, r.dataset, r.shift, r.algorithm, "-" if r.k is None else str(r.k),
                          f"{r.epochs_done}/{r.epochs}", _pct(r.a_top1), _pct(r.b_top1), r.status) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]


def print_runs(rows: list[RunRow], root: Path, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return
    if not rows:
        print(f"no run folders under {root}")
        return
    print("\n".join(table_lines(rows)))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
