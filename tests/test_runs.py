"""`fastmbr runs`: one line per run folder under a root, with the status each folder's files show."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from fastmbr.cli import main
from fastmbr.config import preset_config
from fastmbr.engine.logging import RUNNING_MARK
from fastmbr.engine.runs import list_runs
from fastmbr.engine.trainer import train


def tiny(root, name, algo="erm", **optim):
    cfg = preset_config("mnist", algo, "background-color:blue-yellow")
    cfg.data.limit, cfg.data.batch_size = 96, 32
    cfg.optim.epochs = 1
    for key, value in optim.items():
        setattr(cfg.optim, key, value)
    cfg.algo.k = 2 if algo != "erm" else None
    cfg.device, cfg.out, cfg.max_nonfinite, cfg.log_every = "cpu", str(root / name), 0, 1
    return cfg


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def root(tmp_path_factory, one_torch_thread):
    """Four run folders from one real run: finished; stopped by a signal (the trainer's last log line);
    stopped by an error or a kill (no metrics, the marker names a process gone); one still running."""
    root = tmp_path_factory.mktemp("runs")
    train(tiny(root, "done", algo="mrt"), progress=False)
    for name in ("stopped", "sub/nan", "live"):
        shutil.copytree(root / "done", root / name)
        (root / name / "metrics.json").unlink()
    with open(root / "stopped" / "train.log", "a") as f:
        f.write("2026-12-03T10:00:00 signal 15: checkpoint written at epoch 1 batch 2; exiting\n")
    (root / "sub" / "nan" / RUNNING_MARK).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    (root / "live" / RUNNING_MARK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    old = 1_000_000_000  # train.log last written long ago: only the marker can say "running"
    for name in ("stopped", "sub/nan", "live"):
        os.utime(root / name / "train.log", (old, old))
    (root / "G").mkdir()
    (root / "G" / "config.json").write_text('{"size": "tiny"}')  # not a training run: left out
    return root


def test_each_run_folder_is_one_row_with_its_status(root):
    rows = {r.path: r for r in list_runs(root)}
    assert set(rows) == {"done", "stopped", "sub/nan", "live"}
    assert {p: r.status for p, r in rows.items()} == {"done": "finished", "stopped": "interrupted",
                                                      "sub/nan": "failed", "live": "running"}
    done = rows["done"]
    metrics = json.loads((root / "done" / "metrics.json").read_text())
    assert (done.dataset, done.algorithm, done.k, done.epochs_done, done.epochs) == ("mnist", "mrt", 2, 1, 1)
    assert done.a_top1 == metrics["test"]["A"]["top1"] and done.b_top1 == metrics["test"]["B"]["top1"]
    assert done.shift == "background-color:blue-yellow"
    assert rows["stopped"].a_top1 is None and rows["stopped"].epochs_done == 1


def test_cli_prints_one_line_per_run_and_json(root, capsys):
    main(["runs", str(root)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["run", "dataset", "shift", "algo", "k", "epochs", "A", "top-1", "B", "top-1",
                                "status"]
    assert len(lines) == 5 and any(line.startswith("sub/nan") and line.endswith("failed") for line in lines)
    main(["runs", str(root), "--json"])
    assert {r["status"] for r in json.loads(capsys.readouterr().out)} == {"finished", "interrupted", "failed",
                                                                        "running"}


def test_missing_root_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["runs", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "does not exist" in err[0]
