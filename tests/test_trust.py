"""Trust (issue 17): no code runs from a file, no run is lost, nothing is silently substituted or reused.

Each test plays a hostile or careless user against the CLI and asserts a one-line ``error:`` (exit 2) and that
nothing the user had was overwritten.
"""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from fastmbr.cli import main
from fastmbr.engine import checkpoint as ckpt
from fastmbr.errors import FastmbrError

SMALL = ["--algo", "erm", "--limit", "192", "--batch-size", "32", "--epochs", "1", "--device", "cpu",
         "--no-progress"]


def run_cli(args, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return exc.value.code, err


class WritesAFile:
    """Unpickling this runs ``open(path, "w")``: what a crafted checkpoint would do with a worse payload."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def crafted_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"model": WritesAFile(marker), "epoch": 1}, protocol=2))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One small finished ERM run (1 epoch, 192 images), copied by each test that changes it."""
    out = tmp_path_factory.mktemp("trust") / "run"
    main(["train", "mnist", *SMALL, "--out", str(out)])
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---- 1. no code runs from a file ----------------------------------------------------------------------------
def test_checkpoints_hold_only_tensors_and_plain_values(finished_run):
    for path in ckpt.list_checkpoints(finished_run):
        state = torch.load(path, weights_only=True)  # raises on anything else
        assert state["rng"][0]["numpy"]["keys"].dtype == torch.int64


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    path = tmp_path / "rng.pt"
    torch.save(ckpt.rng_state(), path)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    np.random.randn()  # a cached Gaussian in numpy's state must not survive the restore
    ckpt.set_rng_state(torch.load(path, weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_crafted_checkpoint_is_refused_by_train_resume(run_copy, tmp_path, capsys):
    marker = tmp_path / "pwned"
    for path in ckpt.list_checkpoints(run_copy):
        crafted_pickle(path, marker)
    before = snapshot(run_copy)
    code, err = run_cli(["train", "mnist", *SMALL, "--out", str(run_copy), "--resume"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "refused to load" in err[0], err
    assert not marker.exists()
    assert snapshot(run_copy) == before  # nothing restarted, nothing overwritten


def test_crafted_best_pt_is_refused_by_eval(run_copy, tmp_path, capsys):
    marker = tmp_path / "pwned"
    crafted_pickle(run_copy / "best.pt", marker)
    code, err = run_cli(["eval", str(run_copy), "--device", "cpu"], capsys)
    assert code == 2 and len(err) == 1 and "best.pt: refused to load" in err[0], err
    assert not marker.exists()


def test_crafted_munit_checkpoint_is_refused(tmp_path):
    from fastmbr.variation.munit.io import load_checkpoint

    marker = tmp_path / "pwned"
    crafted_pickle(tmp_path / "checkpoint.pt", marker)
    with pytest.raises(FastmbrError, match="refused to load"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert not marker.exists()


def test_no_torch_load_in_the_package_trusts_its_file():
    """Every torch.load of the package goes through ``safe_load`` (weights_only=True)."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for folder in ("fastmbr", "pipelines", "kernels", "bench"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            if "weights_only=False" in text or ("torch.load(" in text and path.name != "checkpoint.py"):
                offenders.append(str(path.relative_to(root)))
    assert not offenders, offenders


# ---- 2. resume never discards a run ---------------------------------------------------------------------------
def test_resume_when_no_checkpoint_loads_names_them_and_overwrites_nothing(run_copy, capsys):
    paths = ckpt.list_checkpoints(run_copy)
    for path in paths:
        path.write_bytes(path.read_bytes()[:100])  # torn
    before = snapshot(run_copy)
    code, err = run_cli(["train", "mnist", *SMALL, "--out", str(run_copy), "--resume"], capsys)
    assert code == 2 and len(err) == 1 and "none of the" in err[0], err
    assert all(p.name in err[0] for p in paths)
    assert snapshot(run_copy) == before


def test_foreign_checkpoint_is_one_line(run_copy, capsys):
    for path in ckpt.list_checkpoints(run_copy):
        torch.save({"weights": torch.zeros(2)}, path)
    code, err = run_cli(["train", "mnist", *SMALL, "--out", str(run_copy), "--resume"], capsys)
    assert code == 2 and len(err) == 1 and "not a fastmbr checkpoint" in err[0], err
    torch.save({"epoch": "x"}, run_copy / "best.pt")
    code, err = run_cli(["eval", str(run_copy), "--device", "cpu"], capsys)
    assert code == 2 and len(err) == 1 and "not a model state dict" in err[0], err
