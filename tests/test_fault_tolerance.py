"""Fault tolerance in one process: SIGKILL mid-epoch and SIGTERM resume bit-identically, a writer killed
mid-checkpoint leaves the previous checkpoint loadable, and ``--auto-resume`` serves first start and restart.

Faults are injected at a fixed step with FASTMBR_FAULT_AT_STEP (see ``InjectedFault``): the process sends
the signal to itself as it reaches that step, which the kernel handles exactly like a signal from outside,
but at a step the test knows, so no test races the training loop.
"""

import json
import re
import signal
import subprocess
import sys

import pytest
import torch

from fastmbr.cli import main
from fastmbr.config import preset_config
from fastmbr.engine import checkpoint as ckpt
from fastmbr.engine.run_open import open_run_folder
from fastmbr.engine.trainer import TrainOptions
from fastmbr.errors import FastmbrError
from processes import assert_bit_identical, run_single, succeeded, worker_env

ARGS = ["train", "mnist", "--algo", "erm", "--limit", "640", "--batch-size", "32", "--epochs", "2",
        "--image-size", "16", "--optimizer", "sgd", "--lr", "0.01", "--deterministic", "--checkpoint-every", "4",
        "--keep-checkpoints", "100", "--device", "cpu", "--no-progress"]


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / ckpt.checkpoint_name(2, 0), map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    succeeded(run_single(ARGS + ["--out", str(out)]))
    return out


@pytest.mark.timeout(600)
def test_sigkill_mid_epoch_then_resume_is_bit_identical(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    killed = run_single(ARGS + ["--out", str(out)], env=worker_env(FASTMBR_FAULT_AT_STEP="10",
                                                                   FASTMBR_FAULT_SIGNAL="kill"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    names = [p.name for p in ckpt.list_checkpoints(out)]
    assert names == [ckpt.checkpoint_name(0, 4), ckpt.checkpoint_name(0, 8)]  # killed 2 steps after the last one
    assert not (out / "metrics.json").exists()
    succeeded(run_single(ARGS + ["--out", str(out), "--resume"]))
    assert "resumed at epoch 1 batch 8" in (out / "train.log").read_text()
    assert_bit_identical(final_weights(out), final_weights(uninterrupted))


@pytest.mark.timeout(600)
def test_sigterm_checkpoints_at_next_step_exits_143_and_resumes_bit_identically(uninterrupted, tmp_path):
    out = tmp_path / "terminated"
    stopped = run_single(ARGS + ["--out", str(out)], env=worker_env(FASTMBR_FAULT_AT_STEP="10",
                                                                    FASTMBR_FAULT_SIGNAL="term"))
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert ckpt.list_checkpoints(out)[-1].name == ckpt.checkpoint_name(0, 11)  # the boundary after step 10
    assert "signal 15: checkpoint written at epoch 1 batch 11; exiting" in (out / "train.log").read_text()
    succeeded(run_single(ARGS + ["--out", str(out), "--resume"]))
    assert_bit_identical(final_weights(out), final_weights(uninterrupted))
    assert json.loads((out / "metrics.json").read_text())["test"]["A"]["n"] == 2000


TORN_WRITER = """
import io, os, signal, sys
from pathlib import Path
import torch
from fastmbr.engine import checkpoint as ckpt

run = Path(sys.argv[1])
ckpt.save_checkpoint(run, {"epoch": 0, "batch": 4, "w": torch.arange(10.0)}, keep=2)
buffer = io.BytesIO()
torch.save({"epoch": 0, "batch": 8, "w": torch.zeros(100_000)}, buffer)

def killed_halfway(f):
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

ckpt.atomic_write(run / ckpt.checkpoint_name(0, 8), killed_halfway)
"""


@pytest.mark.timeout(120)
def test_process_killed_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "CHECKPOINT_KEYS", frozenset({"epoch", "batch"}))  # the write path, with toy states
    proc = subprocess.run([sys.executable, "-c", TORN_WRITER, str(tmp_path)], env=worker_env(), capture_output=True,
                          text=True, timeout=100)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    torn = [p for p in tmp_path.iterdir() if p.name.startswith(f".{ckpt.checkpoint_name(0, 8)}")]
    assert len(torn) == 1 and torn[0].stat().st_size > 0  # the half-written temp file is really there
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [ckpt.checkpoint_name(0, 4)]
    state = ckpt.load_latest(tmp_path)
    assert state["batch"] == 4 and torch.equal(state["w"], torch.arange(10.0))
    assert ckpt.remove_stale_temps(tmp_path) == torn and not torn[0].exists()
    assert ckpt.load_latest(tmp_path)["batch"] == 4


def test_writer_that_fails_midway_leaves_no_file_and_the_previous_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "CHECKPOINT_KEYS", frozenset({"epoch", "batch"}))  # the write path, with toy states
    ckpt.save_checkpoint(tmp_path, {"epoch": 0, "batch": 4}, keep=2)

    def fails_halfway(f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_write(tmp_path / ckpt.checkpoint_name(0, 8), fails_halfway)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.checkpoint_name(0, 4)]
    assert ckpt.load_latest(tmp_path)["batch"] == 4


def test_checkpoint_rng_states_are_a_list_indexed_by_rank():
    saved = [{"rank": 0}, {"rank": 1}]
    assert ckpt.rng_state_of_rank(saved, 1) == {"rank": 1}
    assert ckpt.rng_state_of_rank(saved, 2) is None  # more ranks now than then: that rank starts afresh
    assert ckpt.rng_state_of_rank({"rank": 0}, 0) == {"rank": 0}  # a single-process checkpoint


def test_auto_resume_starts_a_new_run_then_reopens_it(tmp_path):
    cfg = preset_config("mnist", "erm")
    cfg.out = str(tmp_path / "run")
    first, _ = open_run_folder(cfg, "auto", TrainOptions(dropout=False))
    assert not first.reopened and (tmp_path / "run" / "config.json").exists()
    # a restart before any checkpoint: --accumulate may change (memory only), the model-shaping options may not
    again, state = open_run_folder(cfg, "auto", TrainOptions(accumulate=4, dropout=False))
    assert again.reopened and again.checkpoint is None and state is None
    assert again.options == TrainOptions(accumulate=4, dropout=False)
    with pytest.raises(FastmbrError, match="options.dropout: False → True"):
        open_run_folder(cfg, "auto", TrainOptions())
    kept, _ = open_run_folder(cfg, "auto", TrainOptions(), given={"options.accumulate"})  # CLI: flags not given
    assert kept.options == TrainOptions(dropout=False)  # keep their saved values
    with pytest.raises(FastmbrError, match="already holds a run"):
        open_run_folder(cfg, False, TrainOptions())
    cfg.out = str(tmp_path / "nothing")
    with pytest.raises(FastmbrError, match="holds no run"):
        open_run_folder(cfg, True, TrainOptions())


def test_auto_resume_without_out_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "mnist", "--auto-resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and re.match(r"error: --auto-resume needs --out", err[0]), err
