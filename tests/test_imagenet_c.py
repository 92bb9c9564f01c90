"""ImageNet-C as published: domain B of ``corruption:NAME-S`` on ImageNet is read from ``imagenet-c/NAME/S/<wnid>/``
beside the ImageNet tree (never rendered in memory), and scored at the view it was rendered at.

The trees are generated: tiny PNGs in ImageNet's layout, each class its own grey level so labels can be read back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.datasets import load_domains

WNIDS = ("n01440764", "n01443537", "n01484850")


def write_class_tree(folder: Path, per_class: int, wnids=WNIDS, side: int = 20) -> None:
    for label, wnid in enumerate(wnids):
        (folder / wnid).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (side, side), (60 * label + 20, 10 * i, 0)).save(folder / wnid / f"{wnid}_{i}.png")


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """``imagenet/{train,val}/<wnid>/`` and ``imagenet-c/{snow/3, fog/1}/<wnid>/`` (ImageNet-C is 224 px)."""
    write_class_tree(tmp_path / "imagenet" / "train", 6, side=24)
    write_class_tree(tmp_path / "imagenet" / "val", 2, side=24)
    for name, severity in (("snow", 3), ("fog", 1)):
        write_class_tree(tmp_path / "imagenet-c" / name / str(severity), 2)
    return tmp_path


def test_corruption_b_is_the_prerendered_folder_with_the_training_labels(data_dir):
    d = load_domains("imagenet", "corruption:snow-3", data_dir)
    b = d.test["B"]
    assert Path(b.source) == data_dir / "imagenet-c" / "snow" / "3" and b.center_crop == 1.0
    assert b.classes == d.train.classes == list(WNIDS)
    assert [p.parent.name for p in b.paths] == [WNIDS[i] for i in b.labels.tolist()] and len(b) == 6
    assert d.test["A"].center_crop is None and len(d.test["A"]) == 6
    assert any("pre-rendered" in note for note in d.notes)
    kept = load_domains("imagenet", "corruption:fog-1", data_dir, classes="1-2").test["B"]
    assert kept.classes == list(WNIDS[1:]) and sorted(set(kept.labels.tolist())) == [0, 1]


def test_missing_renderings_foreign_classes_and_train_also_are_named(data_dir):
    with pytest.raises(FastmbrError, match=r"imagenet-c/snow/5 is missing") as err:
        load_domains("imagenet", "corruption:snow-5", data_dir)
    assert "\n" not in str(err.value)
    (data_dir / "imagenet-c" / "fog" / "1" / WNIDS[2]).rename(data_dir / "imagenet-c" / "fog" / "1" / "n09999999")
    with pytest.raises(FastmbrError, match="only in train: n01484850; only in .*fog/1: n09999999"):
        load_domains("imagenet", "corruption:fog-1", data_dir)
    with pytest.raises(FastmbrError, match="pre-rendered for its evaluation split only"):
        load_domains("imagenet", "none", data_dir, train_also="corruption:snow-3")
    with pytest.raises(FastmbrError, match="unknown corruption 'sno'"):
        load_domains("imagenet", "corruption:sno-3", data_dir)
    with pytest.raises(FastmbrError, match="corruption:all .* is for fastmbr eval"):
        load_domains("imagenet", "corruption:all", data_dir)


def test_a_trained_classifier_is_scored_on_imagenet_c_at_its_own_view(data_dir, tmp_path, monkeypatch, capsys):
    """Train on the clean tree, then ``fastmbr eval --shift corruption:S``: B is read uncropped (ImageNet-C is
    already ImageNet's centred 224/256 crop), A at ImageNet's view."""
    from fastmbr.cli import main
    from fastmbr.engine import run_eval, trainer_setup
    from fastmbr.pipelines import datasets
    from fastmbr.pipelines.datasets import read_splits

    seen = {}

    def recording(data, cfg):
        seen[Path(data.source).relative_to(data_dir).as_posix()] = cfg.center_crop
        return build(data, cfg)

    build = trainer_setup.build_loader
    monkeypatch.setattr(trainer_setup, "build_loader", recording)
    run = tmp_path / "run"
    main(["train", "imagenet", "--data-dir", str(data_dir), "--arch", "cnn", "--optimizer", "adadelta", "--lr", "1",
          "--epochs", "1", "--image-size", "16", "--batch-size", "6", "--device", "cpu", "--no-progress",
          "--loader", "torch", "--out", str(run)])
    seen.clear()
    capsys.readouterr()
    main(["eval", str(run), "--shift", "corruption:snow-3", "--json"])
    scores = json.loads(capsys.readouterr().out)
    assert sorted(scores) == ["A", "B"] and scores["B"]["n"] == 6 and 0 <= scores["B"]["top1"] <= 100
    assert seen == {"imagenet/val": pytest.approx(224 / 256), "imagenet-c/snow/3": 1.0}

    built, read = [], []
    monkeypatch.setattr(trainer_setup, "build_loader",
                        lambda data, cfg: built.append(data.source) or build(data, cfg))
    for module in (run_eval, datasets):  # wherever the splits are read, they are counted
        monkeypatch.setattr(module, "read_splits", lambda *a: read.append(a) or read_splits(*a))
    main(["eval", str(run), "--shift", "corruption:all", "--json"])
    every = json.loads(capsys.readouterr().out)
    assert list(every["shifts"]) == ["corruption:snow-3", "corruption:fog-1"]  # ImageNet-C's order, those on disk
    assert every["shifts"]["corruption:snow-3"] == scores  # the same classifier, the same files
    assert every["shifts"]["corruption:fog-1"]["A"] == scores["A"] and len(built) == 3  # clean A scored once
    assert len(read) == 1  # and the splits read once for both shifts
    b_top1 = [every["shifts"][s]["B"]["top1"] for s in every["shifts"]]
    assert every["mean_b"] == {"top1": pytest.approx(sum(b_top1) / 2), "top5": pytest.approx(
        sum(every["shifts"][s]["B"]["top5"] for s in every["shifts"]) / 2), "shifts": 2}
    main(["eval", str(run), "--shift", "corruption:fog-1", "--shift", "corruption:snow-3"])
    table = capsys.readouterr().out
    assert "corruption:fog-1" in table and f"mean over the 2 shifted domains B: top-1 {every['mean_b']['top1']:.2f}" \
        in table and "mCE" not in table  # mCE needs all 75


def test_corruption_all_without_renderings_is_imagenet_cs_fifteen_at_five_severities(data_dir):
    from fastmbr.pipelines.datasets import expand_shifts

    shifts = expand_shifts("gtsrb", ["corruption:all", "brightness"])
    assert len(shifts) == 76 and shifts[0] == "corruption:gaussian_noise-1" and shifts[-1] == "brightness"
    assert "corruption:jpeg_compression-5" in shifts and not any("speckle" in s for s in shifts)
    with pytest.raises(FastmbrError, match="severity 1-5"):
        expand_shifts("imagenet", ["corruption:snow-3", "corruption:snow-9"], data_dir)
    with pytest.raises(FastmbrError, match="has no shift 'brightness'"):
        expand_shifts("imagenet", ["corruption:all", "brightness"], data_dir)
    for child in (data_dir / "imagenet-c").iterdir():
        shutil.rmtree(child)
    with pytest.raises(FastmbrError, match="no <corruption>/<severity>/ folders in"):
        expand_shifts("imagenet", ["corruption:all"], data_dir)


def test_mce_is_each_corruptions_error_over_alexnets_averaged_and_needs_all_75():
    """Against the definition written out: CE_c = Σ_s E_{s,c} / Σ_s E^AlexNet_{s,c}, mCE = mean_c CE_c."""
    from fastmbr.engine.evaluate import shift_summary
    from fastmbr.pipelines.corruptions import ALEXNET_ERROR

    rng = torch.Generator().manual_seed(0)
    top1 = {(c, s): float(torch.rand(1, generator=rng)) * 100 for c in ALEXNET_ERROR for s in range(1, 6)}
    results = {f"corruption:{c}-{s}": {"A": {"top1": 70.0, "top5": 90.0, "n": 9},
                                       "B": {"top1": acc, "top5": 99.0, "n": 9}} for (c, s), acc in top1.items()}
    ce = [sum(100 - top1[c, s] for s in range(1, 6)) / (5 * 100 * alexnet) for c, alexnet in ALEXNET_ERROR.items()]
    summary = shift_summary(results, "imagenet")
    assert summary["mce"] == pytest.approx(100 * sum(ce) / 15)
    assert summary["mean_b"]["top1"] == pytest.approx(sum(top1.values()) / 75) and summary["mean_b"]["shifts"] == 75
    assert "mce" not in shift_summary(results, "tiny-imagenet")  # AlexNet's errors are ImageNet's alone
    del results["corruption:fog-4"]
    assert "mce" not in shift_summary(results, "imagenet")
