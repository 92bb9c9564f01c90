"""`fastmbr runs`: one line per run folder under a root, with the status each folder's files show."""

import json
import os
import socket
import subprocess
import sys

import pytest

from fastmbr.cli import main
from fastmbr.config import preset_config
from fastmbr.engine.logging import RUNNING_MARK
from fastmbr.engine.runs import list_runs
from fastmbr.engine.trainer import train
from fastmbr.errors import FastmbrError


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
    """Four runs: finished, stopped by SIGTERM, stopped by an error (NaN loss), and one still 'running'."""
    root = tmp_path_factory.mktemp("runs")
    train(tiny(root, "done", algo="mrt"), progress=False)
    os.environ.update(FASTMBR_FAULT_AT_STEP="1", FASTMBR_FAULT_SIGNAL="term")
    try:
        with pytest.raises(SystemExit):
            train(tiny(root, "stopped"), progress=False)
    finally:
        del os.environ["FASTMBR_FAULT_AT_STEP"], os.environ["FASTMBR_FAULT_SIGNAL"]
    with pytest.raises(FastmbrError, match="NaN/inf"):
        train(tiny(root, "sub/nan", optimizer="sgd", lr=1e30), progress=False)
    mark = root / "sub" / "nan" / RUNNING_MARK  # in a real failure the process has exited: its pid is gone
    mark.write_text(json.dumps({**json.loads(mark.read_text()), "pid": dead_pid()}))
    running = root / "live"
    running.mkdir()
    (running / "config.json").write_text((root / "stopped" / "config.json").read_text())
    (running / RUNNING_MARK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
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
    assert rows["stopped"].k is None and rows["stopped"].a_top1 is None and rows["stopped"].epochs_done == 0


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
