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


def _toy_domains():
    gen = torch.Generator().manual_seed(0)
    a = (torch.rand(8, 3, 32, 32, generator=gen) * 80).to(torch.uint8)
    return a, a + 150


def _munit_cfg(**kw):
    from dataclasses import replace

    from fastmbr.variation.munit.train import MunitTrainConfig

    base = MunitTrainConfig(batch_size=2, lr=1e-3, iters=1, checkpoint_every=1, arch_overrides={"dis_layers": 2},
                            source={"dataset": "toy-a"})
    return replace(base, **kw)


def test_model_train_never_overwrites_a_finished_g(tmp_path):
    from fastmbr.variation.munit.io import CHECKPOINT, WEIGHTS
    from fastmbr.variation.munit.train import train_munit

    a, b = _toy_domains()
    train_munit(a, b, _munit_cfg(), tmp_path, progress=False)
    (tmp_path / CHECKPOINT).unlink()  # a finished G_DIR whose trainer state was cleaned away
    before = (tmp_path / WEIGHTS).read_bytes()
    with pytest.raises(FastmbrError, match="already holds a G"):
        train_munit(a, b, _munit_cfg(seed=1), tmp_path, progress=False)
    assert (tmp_path / WEIGHTS).read_bytes() == before


@pytest.mark.parametrize("change, culprit", [
    ({"lr": 5e-4}, "lr"), ({"source": {"dataset": "toy-b"}}, "source.dataset"), ({"style_dim": 4}, "style_dim"),
    ({"seed": 3}, "seed"), ({"batch_size": 4}, "batch_size"),
])
def test_model_train_resume_refuses_another_training(tmp_path, change, culprit):
    from fastmbr.variation.munit.train import train_munit

    a, b = _toy_domains()
    train_munit(a, b, _munit_cfg(), tmp_path, progress=False)
    with pytest.raises(FastmbrError, match=f"refusing to resume a different training.*{culprit}"):
        train_munit(a, b, _munit_cfg(iters=2, **change), tmp_path, progress=False, resume=True)
    train_munit(a, b, _munit_cfg(iters=2, checkpoint_every=5), tmp_path, progress=False, resume=True)  # may grow


# ---- 3. resume compares the configuration ---------------------------------------------------------------------
@pytest.mark.parametrize("flags, culprit", [
    (["--algo", "mda"], "algo.name: 'erm' → 'mda'"),
    (["--lr", "0.5"], "optim.lr: 1.0 → 0.5"),
    (["--seed", "1"], "seed: 0 → 1"),
    (["--limit", "96"], "data.limit: 192 → 96"),
    (["--shift", "background-color:red-blue"], "data.shift"),
])
def test_resume_refuses_a_changed_run(run_copy, flags, culprit, capsys):
    before = snapshot(run_copy)
    args = [*SMALL, "--out", str(run_copy), "--resume"]
    for flag_at in range(0, len(flags), 2):  # the new value replaces the one in SMALL
        if flags[flag_at] in args:
            del args[args.index(flags[flag_at]):args.index(flags[flag_at]) + 2]
    code, err = run_cli(["train", "mnist", *args, *flags], capsys)
    assert code == 2 and len(err) == 1 and "refusing to resume" in err[0] and culprit in err[0], err
    assert snapshot(run_copy) == before


def test_resume_refuses_another_dataset(run_copy, capsys):
    code, err = run_cli(["train", "fashion-mnist", "--out", str(run_copy), "--resume", "--no-progress"], capsys)
    assert code == 2 and "data.dataset: 'mnist' → 'fashion-mnist'" in err[0], err


def test_short_resume_continues_the_saved_run_and_epochs_may_grow(run_copy, capsys):
    main(["train", "mnist", "--out", str(run_copy), "--resume", "--no-progress", "--device", "auto"])
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1  # not the preset's 100 epochs: flags not given keep the saved values
    main(["train", "mnist", "--out", str(run_copy), "--resume", "--no-progress", "--epochs", "2"])
    assert len(json.loads((run_copy / "metrics.json").read_text())["epochs"]) == 2


def test_learned_g_is_pinned_by_content_on_resume_and_eval(run_copy, tmp_path, capsys):
    from fastmbr.engine.resume_check import model_hashes
    from fastmbr.variation.munit import MunitVariation, arch_preset, save_variation

    g_dir = tmp_path / "G"
    save_variation(MunitVariation(arch_preset("tiny"), 32), g_dir, "tiny")
    recorded = model_hashes([str(g_dir), "known:brightness"])
    assert list(recorded) == [str(g_dir)] and len(recorded[str(g_dir)]) == 64
    torch.manual_seed(1)
    save_variation(MunitVariation(arch_preset("tiny"), 32), g_dir, "tiny")  # another G at the same path
    config = json.loads((run_copy / "config.json").read_text())
    config["models_sha256"] = recorded
    (run_copy / "config.json").write_text(json.dumps(config))
    code, err = run_cli(["eval", str(run_copy), "--device", "cpu"], capsys)
    assert code == 2 and len(err) == 1 and "now holds another G" in err[0], err
    code, err = run_cli(["train", "mnist", "--out", str(run_copy), "--resume", "--no-progress"], capsys)
    assert code == 2 and len(err) == 1 and "now holds another G" in err[0], err


def test_new_run_records_its_learned_g(tmp_path):
    """config.json holds the sha256 of every learned G the run uses (known models need none)."""
    from fastmbr.config import preset_config
    from fastmbr.engine.run_open import open_run_folder
    from fastmbr.engine.trainer import TrainOptions

    cfg = preset_config("mnist", "mrt", "background-color")
    cfg.out = str(tmp_path / "r")
    open_run_folder(cfg, False, TrainOptions())
    assert json.loads((tmp_path / "r" / "config.json").read_text())["models_sha256"] == {}


# ---- 4. degenerate values: one line, before anything is written ---------------------------------------------
@pytest.mark.parametrize("flags, culprit", [
    (["--algo", "mda", "--lambda", "nan"], "--lambda must be a finite number"),
    (["--algo", "mda", "--lambda", "inf"], "--lambda must be a finite number"),
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--lr", "-1"], "--lr must be a finite number and > 0.0"),
    (["--log-every", "0"], "--log-every must be an integer >= 1"),
    (["--image-size", "0"], "--image-size must be an integer >= 8"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--accumulate", "0"], "--accumulate must be an integer >= 1"),
    (["--limit", "1"], "--limit must be an integer >= 2"),
    (["--limit", "4"], "validation split is empty"),  # known only once the data is read
    (["--compile-mode", "turbo"], "unknown --compile-mode"),  # refused in set-up, after config.json was written
])
def test_degenerate_values_are_refused_and_leave_no_run_folder(tmp_path, flags, culprit, capsys):
    out = tmp_path / "r"
    args = [a for a in SMALL]
    for flag_at in range(0, len(flags), 2):
        if flags[flag_at] in args:
            del args[args.index(flags[flag_at]):args.index(flags[flag_at]) + 2]
    code, err = run_cli(["train", "mnist", *args, *flags, "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1 and culprit in err[0], err
    assert not out.exists()  # the corrected command is not blocked by a half run folder
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("the user's")
    code, err = run_cli(["train", "mnist", *args, *flags, "--out", str(existing)], capsys)
    assert code == 2 and sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def test_prepare_refuses_image_size_0(capsys):
    code, err = run_cli(["prepare", "mnist", "--image-size", "0"], capsys)
    assert code == 2 and len(err) == 1 and "--image-size must be an integer >= 8" in err[0], err


def test_an_epoch_whose_every_step_was_skipped_is_an_error(tmp_path, capsys, monkeypatch):
    """3 steps per epoch, all NaN, --max-nonfinite 5: no "in a row" limit is reached, yet nothing was trained."""
    from fastmbr.algorithms.erm import ERM

    plain = ERM.loss
    monkeypatch.setattr(ERM, "loss", lambda self, m, G, x, y: {**plain(self, m, G, x, y),
                                                               "loss": plain(self, m, G, x, y)["loss"] * float("nan")})
    for optimizer in ("sgd", "adadelta"):  # the host-side and the device-side skip
        code, err = run_cli(["train", "mnist", *SMALL[:-1], "--limit", "96", "--optimizer", optimizer,
                             "--out", str(tmp_path / optimizer), "--no-progress"], capsys)
        assert code == 2 and len(err) == 1 and "every one of the 3 step(s) of epoch 1" in err[0], err


def test_munit_degenerate_values_are_refused(tmp_path):
    from fastmbr.variation.munit.train import train_munit

    a, b = _toy_domains()
    for change, culprit in (({"lr": -1.0}, "--lr"), ({"lr": float("nan")}, "--lr"), ({"style_dim": 0}, "style-dim"),
                            ({"recon_x_cyc": float("inf")}, "--cycle")):
        with pytest.raises(FastmbrError, match=culprit):
            train_munit(a, b, _munit_cfg(**change), tmp_path / "g", progress=False)
        assert not (tmp_path / "g").exists()


# ---- 5. errors a user can read ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, culprit", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"data": {"dataset": 3}, "algo": {}, "optim": {}}', "data: dataset: 3 is not of type str"),
    ('{"data": {}, "algo": {}, "optim": {"epohcs": 3}}', "unknown key(s) epohcs"),
    ('{"data": {}, "algo": {}, "optim": {}, "seeed": 1}', "unknown key(s) seeed"),
])
def test_corrupt_or_foreign_config_json_is_one_line(run_copy, text, culprit, capsys):
    (run_copy / "config.json").write_text(text)
    for args in (["eval", str(run_copy), "--device", "cpu"],
                 ["train", "mnist", "--out", str(run_copy), "--resume", "--no-progress"]):
        code, err = run_cli(args, capsys)
        assert code == 2 and len(err) == 1 and culprit in err[0], err


def test_out_that_is_a_file_or_cannot_be_created_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    for out, culprit in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "sub", "--out"),
                         (Path("/proc/fastmbr-cannot-be-here"), "--out")):
        code, err = run_cli(["train", "mnist", *SMALL, "--out", str(out)], capsys)
        assert code == 2 and len(err) == 1 and culprit in err[0], err
    assert (tmp_path / "file").read_text() == "mine"


# ---- 7. repro: names, staleness, atomic report ------------------------------------------------------------------
RECIPE = 'title: "trust"\ndataset: mnist\nshift: background-color\nseeds: 1\nsettings: {epochs: 1}\n'


@pytest.mark.parametrize("text, culprit", [
    (RECIPE + "runs:\n  ../../x: {algo: erm}\n", "must match [A-Za-z0-9._-]+"),
    (RECIPE + "runs:\n  erm: {algo: erm, epohcs: 3}\n", "unknown key 'epohcs'"),
    (RECIPE.replace("{epochs: 1}", "{epohcs: 3}") + "runs:\n  erm: {algo: erm}\n", "settings: unknown key 'epohcs'"),
    (RECIPE.replace("seeds: 1", "seeds: three") + "runs:\n  erm: {algo: erm}\n", "seeds must be int"),
    (RECIPE + "runs:\n  erm: !!python/object/apply:os.system [touch pwned]\n", "not a valid recipe"),
    ("- a\n- list\n", "expected a mapping, got list"),
    (RECIPE + "runs: [erm]\n", "runs must be dict"),
    (RECIPE + "runs:\n  erm: {k: 3}\n", "missing key 'algo'"),
])
def test_bad_recipes_are_one_line(tmp_path, text, culprit, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    code, err = run_cli(["repro", str(tmp_path / "bad.yaml"), "--root", str(tmp_path / "runs")], capsys)
    assert code == 2 and len(err) == 1 and culprit in err[0], err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "x").exists()


def test_run_folders_stay_under_the_root(tmp_path):
    from fastmbr.repro.check import run_folder

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link-s0").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FastmbrError, match="outside the runs root"):
        run_folder(tmp_path / "root", "link", 0)
    with pytest.raises(FastmbrError, match="must match"):
        run_folder(tmp_path / "root", "a/b", 0)
    assert run_folder(tmp_path / "root", "erm", 0) == tmp_path / "root" / "erm-s0"
    (tmp_path / "other" / "erm-s0").mkdir(parents=True)  # same_as: a run of a recipe beside this one
    (tmp_path / "root" / "shared-s0").symlink_to(tmp_path / "other" / "erm-s0")
    assert run_folder(tmp_path / "root", "shared", 0) == tmp_path / "root" / "shared-s0"


def fake_train(cfg, **kw):
    """Writes what a finished run leaves for the report: config.json and metrics.json."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict()))
    top = {"top1": 90.0, "top5": 99.0, "n": 10}
    (out / "metrics.json").write_text(json.dumps({"dataset": "mnist", "shift": "blue → red", "device": "cpu",
                                                  "test": {"A": top, "B": top}, "val": top}))


def test_repro_refuses_a_run_trained_under_another_recipe_and_the_report_leaves_it_out(tmp_path, monkeypatch,
                                                                                        capsys):
    from fastmbr import repro

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fastmbr.engine.trainer.train", fake_train)
    recipe = tmp_path / "stale.yaml"
    recipe.write_text(RECIPE + "runs:\n  erm: {algo: erm}\n  mda: {algo: mda, k: 3}\n")
    repro.run_recipe(str(recipe), None, False, None, "cpu", tmp_path / "runs")
    assert "| ERM | – | 1 |" in (tmp_path / "results" / "stale.md").read_text()
    recipe.write_text(RECIPE.replace("{epochs: 1}", "{epochs: 3}") + "runs:\n  erm: {algo: erm}\n"
                      "  mda: {algo: mda, k: 3}\n")
    before = (tmp_path / "runs" / "stale" / "erm-s0" / "metrics.json").read_text()
    code, err = run_cli(["repro", str(recipe), "--root", str(tmp_path / "runs")], capsys)
    assert code == 2 and len(err) == 1 and "optim.epochs: 1 → 3" in err[0] and "erm-s0" in err[0], err
    assert (tmp_path / "runs" / "stale" / "erm-s0" / "metrics.json").read_text() == before
    code, err = run_cli(["repro", str(recipe), "--root", str(tmp_path / "runs"), "--report"], capsys)
    assert code == 2 and "no finished runs" in err[0], err  # both left out: none of them has the new budget
    recipe.write_text(RECIPE + "runs:\n  erm: {algo: erm}\n  mda: {algo: mda, k: 5}\n")
    main(["repro", str(recipe), "--root", str(tmp_path / "runs"), "--report"])
    report = (tmp_path / "results" / "stale.md").read_text()
    assert "| MDA | known:background-color, k=5 | 0 |" in report and "Left out" in report and "mda-s0" in report


def test_corrupt_metrics_json_in_report_is_one_line(tmp_path, monkeypatch, capsys):
    from fastmbr import repro

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fastmbr.engine.trainer.train", fake_train)
    recipe = tmp_path / "rep.yaml"
    recipe.write_text(RECIPE + "runs:\n  erm: {algo: erm}\n")
    repro.run_recipe(str(recipe), None, False, None, "cpu", tmp_path / "runs")
    metrics = tmp_path / "runs" / "rep" / "erm-s0" / "metrics.json"
    metrics.write_text('{"test": ')
    code, err = run_cli(["repro", str(recipe), "--root", str(tmp_path / "runs"), "--report"], capsys)
    assert code == 2 and len(err) == 1 and str(metrics) in err[0] and "not valid JSON" in err[0], err


def test_report_is_written_atomically(tmp_path, monkeypatch):
    from fastmbr import repro

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fastmbr.engine.trainer.train", fake_train)
    recipe = tmp_path / "atomic.yaml"
    recipe.write_text(RECIPE + "runs:\n  erm: {algo: erm}\n")
    report = repro.run_recipe(str(recipe), None, False, None, "cpu", tmp_path / "runs")
    report.write_text("the previous report")

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        repro.write_report(str(recipe), tmp_path / "runs")
    assert report.read_text() == "the previous report"  # never half a report


@pytest.mark.parametrize("edit, culprit", [
    (lambda m: m.update(epohcs=3), "unknown key(s) epohcs"),
    (lambda m: m.update(image_size="32"), "image_size must be int"),
    (lambda m: m["arch"].update(dimm=3), "arch: unknown key(s) dimm"),
    (lambda m: m["arch"].update(dim="wide"), "arch: dim: 'wide' is not of type int"),
    (lambda m: m.pop("prior"), "missing key 'prior'"),
    (lambda m: m.update(delta_box=[1]), "delta_box must be [low, high]"),
])
def test_foreign_g_json_is_one_line(tmp_path, edit, culprit, capsys):
    from fastmbr.variation.munit import MunitVariation, arch_preset, save_variation

    g_dir = tmp_path / "G"
    save_variation(MunitVariation(arch_preset("tiny"), 32), g_dir, "tiny")
    meta = json.loads((g_dir / "G.json").read_text())
    edit(meta)
    (g_dir / "G.json").write_text(json.dumps(meta))
    code, err = run_cli(["export", str(g_dir), "--onnx", str(tmp_path / "g.onnx")], capsys)
    assert code == 2 and len(err) == 1 and culprit in err[0], err
    (g_dir / "G.json").write_text("[1, 2]")
    code, err = run_cli(["export", str(g_dir), "--onnx", str(tmp_path / "g.onnx")], capsys)
    assert code == 2 and len(err) == 1 and "unknown format" in err[0], err


# ---- 6. a missing dataset is never replaced by another -----------------------------------------------------------
def test_a_torchvision_root_gives_each_dataset_its_own_files(data_root, tmp_path):
    from fastmbr.pipelines.datasets import load_split

    root = tmp_path / "tv"
    for name, source in (("FashionMNIST", "fashion-mnist"), ("MNIST", "mnist")):
        (root / name / "raw").mkdir(parents=True)
        for f in (data_root / source).glob("t10k-*"):
            (root / name / "raw" / f.name).symlink_to(f)
    mnist = load_split("mnist", "test", root)
    fashion = load_split("fashion-mnist", "test", root)
    assert mnist.source.endswith("MNIST") and fashion.source.endswith("FashionMNIST")
    assert not torch.equal(mnist.images, fashion.images)
    reference = load_split("mnist", "test", data_root)
    assert torch.equal(mnist.images, reference.images)
    shutil.rmtree(root / "MNIST")  # now only Fashion-MNIST is there: mnist is missing, not substituted
    with pytest.raises(FastmbrError, match="'mnist' not found"):
        load_split("mnist", "test", root)


def test_another_datasets_root_is_not_taken_for_a_missing_dataset(data_root, capsys):
    code, err = run_cli(["datasets", "show", "mnist-m", "--data-dir", str(data_root / "gtsrb")], capsys)
    assert code == 2 and len(err) == 1 and "'mnist-m' not found" in err[0], err
    main(["datasets", "show", "mnist-m", "--data-dir", str(data_root / "mnist-m"), "--json"])  # its own folder
    counts = json.loads(capsys.readouterr().out)
    assert sum(counts[split]["A"] for split in ("train", "val", "test")) == 9001


def test_symlink_loops_in_an_image_tree_are_one_line(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("c0", "c1"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(tmp_path / "d" / split / c / f"{i}.png")
    loop = tmp_path / "d" / "train" / "c0" / "loop.png"
    loop.symlink_to(loop.name)
    code, err = run_cli(["datasets", "show", "folder", "--data-dir", str(tmp_path / "d")], capsys)
    assert code == 2 and len(err) == 1 and str(loop) in err[0] and "symbolic link" in err[0], err
    loop.unlink()
    (tmp_path / "d" / "train" / "c2").symlink_to("c2")
    code, err = run_cli(["datasets", "show", "folder", "--data-dir", str(tmp_path / "d")], capsys)
    assert code == 2 and len(err) == 1 and "c2" in err[0] and "symbolic link" in err[0], err


def test_a_non_utf8_file_name_is_logged_not_a_traceback(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "d"
    for split in ("train", "val"):
        for c in ("c0", "c1"):
            (root / split / c).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (20, 20), (40 * i, 20 * len(c), 0)).save(root / split / c / f"{i}.jpg")
    bad = os.path.join(os.fsencode(root / "train" / "c1"), b"\xff\xfe.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8 not a jpeg")
    out = tmp_path / "run"
    main(["train", "folder", "--data-dir", str(root), "--epochs", "1", "--image-size", "16", "--batch-size", "8",
          "--device", "cpu", "--no-progress", "--skip-corrupt", "--out", str(out)])
    log = (out / "train.log").read_bytes().decode("utf-8")  # still valid UTF-8
    assert "\\udcff\\udcfe.jpg" in log
    assert json.loads((out / "metrics.json").read_text())["unreadable_files"][0].endswith("\udcff\udcfe.jpg")


# ---- 8. runaway memory ------------------------------------------------------------------------------------------
def test_a_k_too_large_for_memory_is_refused_with_what_it_needs(tmp_path, capsys):
    out = tmp_path / "r"
    code, err = run_cli(["train", "mnist", "--algo", "mrt", "-k", "100000000", *SMALL[2:], "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1 and "GiB" in err[0] and "-k 100000000" in err[0], err
    assert not out.exists()


def test_the_memory_estimate_is_k_times_the_batch(monkeypatch):
    from fastmbr.engine import validate

    monkeypatch.setattr(validate, "available_memory", lambda device: 10 * 2**20)  # 10 MiB
    validate.check_expansion_memory("mrt", 10, 32, 3, 32, torch.device("cpu"))  # 7.5 MiB: fits
    with pytest.raises(FastmbrError, match="need at least 15.0 MiB on cpu .* but 10.0 MiB is available"):
        validate.check_expansion_memory("mda", 20, 32, 3, 32, torch.device("cpu"))
    validate.check_expansion_memory("mat", 10**6, 32, 3, 32, torch.device("cpu"))  # no k-fold expansion


@pytest.mark.parametrize("flag, value", [("--image-size", "0"), ("--iters", "0"), ("--lr", "0"), ("--lr-step", "0"),
                                         ("--lr", "nan")])
def test_model_train_zero_is_not_the_preset(tmp_path, flag, value, capsys):
    code, err = run_cli(["model", "train", "mnist", "--shift", "background-color", "--out", str(tmp_path / "g"),
                         flag, value, "--no-progress", "--device", "cpu"], capsys)
    assert code == 2 and len(err) == 1 and flag in err[0], err
    assert not (tmp_path / "g").exists()
