"""history.csv and --tensorboard: one row per epoch, resumable, and logging never changes what is trained."""

import csv
import json
import sys

import pytest
import torch

from fastmbr.cli import main
from fastmbr.config import preset_config
from fastmbr.engine import checkpoint as ckpt
from fastmbr.engine.logging import HISTORY_CSV, RUNNING_MARK, EpochLogger, marked_running
from fastmbr.engine.trainer import TrainOptions, train


def tiny_config(tmp_path, name="run", algo="erm", epochs=2):
    cfg = preset_config("mnist", algo, "background-color:blue-yellow")
    cfg.data.limit, cfg.data.batch_size = 160, 32
    cfg.optim.epochs = epochs
    cfg.device, cfg.out = "cpu", str(tmp_path / name)
    cfg.algo.k = 2 if algo != "erm" else None
    return cfg


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_history_csv_has_one_row_per_epoch_matching_metrics(tmp_path, one_torch_thread):
    metrics, run_dir = train(tiny_config(tmp_path), progress=False)
    rows = read_csv(run_dir / HISTORY_CSV)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row, epoch in zip(rows, metrics["epochs"]):
        assert float(row["val_top1"]) == pytest.approx(epoch["val"]["top1"])
        assert float(row["train_loss"]) == pytest.approx(epoch["train_loss"])
        assert float(row["lr"]) == pytest.approx(epoch["lr"]) and float(row["images_per_s"]) > 0
    assert "test_B_top1" not in rows[0]  # test domains are scored per epoch for TensorBoard only
    assert not (run_dir / RUNNING_MARK).exists()  # a finished run leaves no running marker


def test_resumed_run_keeps_the_rows_of_finished_epochs_only(tmp_path):
    first = EpochLogger(tmp_path)
    for epoch in (1, 2, 3):
        first.epoch({"epoch": epoch, "train_loss": 1.0 / epoch, "val": {"top1": 90.0 + epoch}}, 100.0)
    assert len(read_csv(tmp_path / HISTORY_CSV)) == 3
    resumed = EpochLogger(tmp_path, resumed_epoch=2)  # the checkpoint had finished 2 epochs: epoch 3 is redone
    resumed.epoch({"epoch": 3, "train_loss": 0.5, "val": {"top1": 99.0}}, 50.0)
    rows = read_csv(tmp_path / HISTORY_CSV)
    assert [(r["epoch"], r["val_top1"]) for r in rows] == [("1", "91.0"), ("2", "92.0"), ("3", "99.0")]


def test_running_marker_names_a_live_process_until_the_logger_closes(tmp_path):
    logger = EpochLogger(tmp_path)
    assert marked_running(tmp_path)
    logger.close()
    assert not marked_running(tmp_path) and not (tmp_path / RUNNING_MARK).exists()


def test_tensorboard_without_the_package_is_one_error_line_and_no_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "tb"
    with pytest.raises(SystemExit) as exc:
        main(["train", "mnist", "--tensorboard", "--limit", "96", "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: --tensorboard") and "pip install" in err[0]
    assert not out.exists()


def test_tensorboard_writes_scalars_and_samples_without_changing_the_training(tmp_path, one_torch_thread):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain_metrics, plain = train(tiny_config(tmp_path, "plain", algo="mrt", epochs=1), progress=False)
    logged_metrics, logged = train(tiny_config(tmp_path, "logged", algo="mrt", epochs=1), progress=False,
                                   options=TrainOptions(tensorboard=True))
    a, b = ckpt.load_latest(plain)["model"], ckpt.load_latest(logged)["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)  # per-epoch scoring and samples draw no run RNG
    events = EventAccumulator(str(logged / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "val_A/top1", "test_A/top1", "test_B/top1", "lr", "images_per_s"} <= set(tags["scalars"])
    assert tags["images"] == ["samples/G(x,delta)"]
    assert events.Scalars("test_B/top1")[0].value == pytest.approx(logged_metrics["test"]["B"]["top1"])
    row = read_csv(logged / HISTORY_CSV)[0]
    assert float(row["test_B_top1"]) == pytest.approx(logged_metrics["test"]["B"]["top1"])
    assert json.loads((logged / "config.json").read_text())["options"]["tensorboard"] is True
