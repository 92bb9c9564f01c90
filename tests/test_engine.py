"""Training runs end to end: exact resume, run folder contents, evaluation, and user errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from fastmbr.cli import main
from fastmbr.config import preset_config
from fastmbr.engine import checkpoint as ckpt
from fastmbr.engine.trainer import train


def small_config(tmp_path, algo="mrt", epochs=2, **algo_overrides):
    cfg = preset_config("mnist", algo, "background-color")
    cfg.data.limit, cfg.data.batch_size = 192, 32
    cfg.optim.epochs = epochs
    cfg.device, cfg.out = "cpu", str(tmp_path / "run")
    cfg.algo.k = algo_overrides.get("k", 3)
    return cfg


def final_weights(run_dir):
    return ckpt.load_latest(run_dir)["model"]


def test_run_folder_holds_config_metrics_and_checkpoints(tmp_path):
    metrics, run_dir = train(small_config(tmp_path, epochs=1), progress=False)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved["test"]) == {"A", "B"}
    for domain in ("A", "B"):
        r = saved["test"][domain]
        assert 0 <= r["top1"] <= r["top5"] <= 100 and r["n"] == 2000
    assert saved["counts"]["val"]["A"] > 0 and saved["images_per_s"] > 0
    assert (run_dir / "config.json").exists() and (run_dir / "best.pt").exists()
    assert ckpt.list_checkpoints(run_dir)


def assert_resume_from_checkpoint_is_exact(cfg, tmp_path, epoch: int, batch: int) -> Path:
    """Train, then replay the run as if killed right after checkpoint (epoch, batch): same final weights."""
    cfg.checkpoint_every, cfg.keep_checkpoints = 2, 100
    _, run_dir = train(cfg, progress=False)
    reference = final_weights(run_dir)
    interrupted = tmp_path / "interrupted"
    shutil.copytree(run_dir, interrupted)
    checkpoints = ckpt.list_checkpoints(interrupted)
    mid = [p for p in checkpoints if p.name == ckpt.checkpoint_name(epoch, batch)]
    assert mid, [p.name for p in checkpoints]
    for later in checkpoints[checkpoints.index(mid[0]) + 1:]:
        later.unlink()
    (interrupted / "metrics.json").unlink()
    cfg.out = str(interrupted)
    train(cfg, resume=True, progress=False)
    resumed = final_weights(interrupted)
    for name, tensor in reference.items():
        assert torch.equal(tensor, resumed[name]), name
    return run_dir


def test_resume_from_mid_epoch_checkpoint_equals_uninterrupted_run(tmp_path):
    assert_resume_from_checkpoint_is_exact(small_config(tmp_path, epochs=2), tmp_path, epoch=1, batch=2)


def test_torn_checkpoint_falls_back_to_the_previous_one(tmp_path):
    _, run_dir = train(small_config(tmp_path, algo="erm", epochs=2), progress=False)
    newest = ckpt.list_checkpoints(run_dir)[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    state = ckpt.load_latest(run_dir)
    assert state is not None and state["epoch"] == 1


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return exc.value.code, err


@pytest.mark.parametrize("args, culprit", [
    (["train", "cifar99"], "unknown dataset 'cifar99'"),
    (["train", "mnist", "--algo", "trades"], "unknown algorithm 'trades'"),
    (["train", "mnist", "--compile-mode", "turbo"], "unknown --compile-mode 'turbo'"),
    (["train", "mnist", "--algo", "mrt", "-k", "0"], "-k must be an integer >= 1"),
    (["train", "mnist", "--algo", "mda", "--lambda", "-1"], "--lambda must be a finite number and >= 0"),
    (["train", "mnist", "--shift", "fog"], "unknown shift 'fog'"),
    (["train", "gtsrb", "--data-dir", "/nonexistent/data"], "/nonexistent/data does not exist"),
    (["train", "mnist", "--device", "cuda"] if not torch.cuda.is_available() else ["train", "mnist", "--device", "tpu"],
     "--device"),
    (["train", "mnist", "--model", "known:fog", "--algo", "mrt"], "unknown model of variation 'fog'"),
    (["eval", "/nonexistent/run"], "not a run folder"),
])
def test_bad_input_is_one_error_line_and_exit_2(args, culprit, capsys, tmp_path):
    code, err = run_cli(args + (["--out", str(tmp_path / "r")] if args[0] == "train" else []), capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and culprit in err[0], err


def test_nan_loss_stops_with_one_line_and_keeps_the_run_folder(tmp_path, capsys):
    out = tmp_path / "nan"
    code, err = run_cli(["train", "mnist", "--algo", "erm", "--limit", "96", "--batch-size", "32", "--epochs", "1",
                         "--optimizer", "sgd", "--lr", "1e30", "--max-nonfinite", "1", "--device", "cpu", "--out", str(out), "--no-progress"],
                        capsys)
    assert code == 2 and len(err) == 1 and "NaN/inf" in err[0], err
    assert json.loads((out / "config.json").read_text())["algo"]["name"] == "erm"


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    code, err = run_cli(["train", "mnist", "--out", str(out)], capsys)
    assert code == 2 and "already holds a run" in err[0]
    assert (out / "config.json").read_text() == "{}"


def test_checkpoint_with_other_delta_dimension_is_refused(tmp_path, capsys):
    cfg = small_config(tmp_path, epochs=1)
    _, run_dir = train(cfg, progress=False)
    config = json.loads((run_dir / "config.json").read_text())
    config["algo"]["models"] = ["known:brightness"]  # q = 1 instead of background-color's 3
    config["optim"]["epochs"] = 2
    (run_dir / "config.json").write_text(json.dumps(config))
    code, err = run_cli(["train", "mnist", "--out", str(run_dir), "--resume", "--no-progress"], capsys)
    assert code == 2 and "δ dimension 3" in err[0], err


def test_cli_train_then_eval_end_to_end(tmp_path, capsys):
    out = tmp_path / "e2e"
    main(["train", "mnist", "--algo", "mda", "-k", "2", "--limit", "128", "--batch-size", "32", "--epochs", "1",
          "--device", "cpu", "--out", str(out), "--no-progress"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["algorithm"] == "mda"
    main(["eval", str(out), "--json", "--device", "cpu"])
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.index("{\n"):])
    assert result["A"]["top1"] == pytest.approx(metrics["test"]["A"]["top1"])


def test_export_run_classifier_to_onnx_matches_pytorch(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from fastmbr.engine.export import load_run_classifier

    _, run_dir = train(small_config(tmp_path, algo="erm", epochs=1), progress=False)
    main(["export", str(run_dir), "--onnx", str(tmp_path / "clf.onnx")])
    model, size = load_run_classifier(run_dir)
    x = torch.rand(5, 3, size, size)
    session = ort.InferenceSession(str(tmp_path / "clf.onnx"), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(onnx_logits, model(x).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_adda_after_warmup_resumes_exactly_and_needs_a_warmup(tmp_path, capsys):
    cfg = small_config(tmp_path, algo="adda", epochs=2)
    cfg.optim.warmup_epochs = 1
    run_dir = assert_resume_from_checkpoint_is_exact(cfg, tmp_path, epoch=1, batch=4)
    last = ckpt.load_latest(run_dir)
    assert "critic" in last["algo"] and last["own_optimizer"]
    assert last["optimizer"]["param_groups"][0]["betas"] == (0.5, 0.999)  # ADDA's Adam, not the warm-up's Adadelta
    after_warmup = torch.load(run_dir / ckpt.checkpoint_name(1, 0), weights_only=False)
    assert not after_warmup["own_optimizer"] and "betas" not in after_warmup["optimizer"]["param_groups"][0]
    *encoder, head = [name for name in last["model"] if name.endswith(".weight")]
    assert torch.equal(last["model"][head], after_warmup["model"][head])  # the source head never moves
    assert any(not torch.equal(last["model"][n], after_warmup["model"][n]) for n in encoder)  # the encoder does
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["selection"].startswith("the last epoch (2)")
    code, err = run_cli(["train", "mnist", "--algo", "adda", "--epochs", "1", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and len(err) == 1 and "--warmup-epochs" in err[0]


def test_fused_optimizer_skips_a_nan_step_on_the_device_like_the_host_path(tmp_path, monkeypatch):
    """A NaN loss at one step: the device-side skip (fused SGD, found_inf) leaves the same weights as the
    host-side skip (plain SGD), and both count one skipped step."""
    from fastmbr.algorithms.erm import ERM

    plain_loss = ERM.loss
    calls = {"n": 0}

    def nan_on_third_call(self, model, G, x, y):
        calls["n"] += 1
        out = plain_loss(self, model, G, x, y)
        return {**out, "loss": out["loss"] * float("nan")} if calls["n"] == 3 else out

    monkeypatch.setattr(ERM, "loss", nan_on_third_call)
    weights, skipped = {}, {}
    for fused in (True, False):
        calls["n"] = 0
        cfg = small_config(tmp_path / str(fused), algo="erm", epochs=1)
        cfg.optim.optimizer, cfg.optim.lr, cfg.optim.fused = "sgd", 0.05, fused
        metrics, run_dir = train(cfg, progress=False)
        weights[fused], skipped[fused] = final_weights(run_dir), metrics["nonfinite_skipped"]
    assert skipped == {True: 1, False: 1}
    for name, tensor in weights[True].items():
        assert torch.isfinite(tensor.float()).all(), name
        torch.testing.assert_close(tensor, weights[False][name], atol=1e-6, rtol=1e-5)


def test_compile_mode_reaches_torch_compile_for_classifier_and_g(tmp_path, monkeypatch):
    """``--compile-mode reduce-overhead`` (CUDA graphs on CUDA) is what torch.compile receives for both."""
    seen = []

    def record(module, mode="default", **kwargs):
        seen.append((type(module).__name__, mode))
        return module

    monkeypatch.setattr(torch, "compile", record)
    cfg = small_config(tmp_path, algo="mda", epochs=1)
    cfg.algo.models = ["known:background-color"]
    cfg.compile, cfg.compile_mode = True, "reduce-overhead"
    from fastmbr.engine.trainer import Trainer

    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.setup()
    from fastmbr.variation.munit import MunitVariation, arch_preset
    from fastmbr.variation.resolve import compile_variation

    compile_variation(MunitVariation(arch_preset("tiny"), 32), cfg.compile_mode)
    assert [name for name, _ in seen] == ["Sequential", "ContentEncoder", "Decoder"]  # (normalise, CNN), G
    assert all(mode == "reduce-overhead" for _, mode in seen)


def write_folder_with_a_truncated_jpeg(root: Path) -> Path:
    """``root/{train,val}/c{0,1}/*.jpg`` (random 20×20 JPEGs); one training file cut short. Returns that file."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 6)):
        for c in range(2):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    bad = root / "train" / "c1" / "3.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    return bad


def test_an_undecodable_image_stops_the_run_unless_skip_corrupt_leaves_it_out_and_lists_it(tmp_path, capsys):
    bad = write_folder_with_a_truncated_jpeg(tmp_path / "data")
    common = ["train", "folder", "--data-dir", str(tmp_path / "data"), "--epochs", "2", "--image-size", "16",
              "--batch-size", "8", "--device", "cpu", "--no-progress"]
    code, err = run_cli([*common, "--out", str(tmp_path / "strict")], capsys)
    assert code == 2 and len(err) == 1 and str(bad) in err[0], err
    main([*common, "--skip-corrupt", "--out", str(tmp_path / "lenient")])
    metrics = json.loads((tmp_path / "lenient" / "metrics.json").read_text())
    assert metrics["unreadable_files"] == [str(bad)]
    log = (tmp_path / "lenient" / "train.log").read_text()
    assert log.count(f"left out 1 image file(s) that do not decode (--skip-corrupt): {bad}") == 1
    test_file = tmp_path / "data" / "val" / "c0" / "2.jpg"  # the folder's val/ split is its test domain
    test_file.write_bytes(test_file.read_bytes()[:100])
    capsys.readouterr()
    main(["eval", str(tmp_path / "lenient"), "--device", "cpu", "--json"])  # skips as the run was trained
    (scored,) = json.loads(capsys.readouterr().out).values()
    assert scored["unreadable_files"] == [str(test_file)] and scored["n"] == 11
    code, err = run_cli(["eval", str(tmp_path / "lenient"), "--device", "cpu", "--no-skip-corrupt"], capsys)
    assert code == 2 and len(err) == 1 and str(test_file) in err[0], err


def test_skip_corrupt_also_leaves_out_files_of_a_dataset_decoded_into_memory(tmp_path, capsys):
    """MNIST-M is decoded when read (no file loader involved): --skip-corrupt reaches its reader."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(10):
        folder = tmp_path / "data" / "mnist-m" / "test" / str(c)
        folder.mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    bad = tmp_path / "data" / "mnist-m" / "test" / "7" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])
    common = ["train", "mnist-m", "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "8",
              "--device", "cpu", "--no-progress"]
    code, err = run_cli([*common, "--out", str(tmp_path / "strict")], capsys)
    assert code == 2 and len(err) == 1 and str(bad) in err[0], err
    main([*common, "--skip-corrupt", "--out", str(tmp_path / "lenient")])
    metrics = json.loads((tmp_path / "lenient" / "metrics.json").read_text())
    assert metrics["unreadable_files"] == [str(bad)]
    counts = metrics["counts"]
    assert counts["train"]["A"] + counts["val"]["A"] + counts["test"]["A"] == 49  # 50 files, one left out
    assert f"left out 1 image file(s) that do not decode (--skip-corrupt): {bad}" in \
        (tmp_path / "lenient" / "train.log").read_text()
