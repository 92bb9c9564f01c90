"""``fastmbr model train|sample|score`` through typer's CliRunner, and the ONNX export of G."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fastmbr.cli_model import export_command, model_app
from fastmbr.errors import FastmbrError
from fastmbr.variation.munit import MunitVariation, arch_preset, load_variation, save_variation



pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_folder(folder, n: int, background: tuple[int, int, int], seed: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.empty((32, 32, 3), np.uint8)
        img[:] = background
        r, c = rng.integers(0, 24, 2)
        img[r:r + 8, c:c + 8] = 255
        Image.fromarray(img).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def trained_g(tmp_path_factory):
    """A 2-iteration G trained from two folders of 32 px images through the CLI."""
    root = tmp_path_factory.mktemp("munit_cli")
    _write_folder(root / "a", 6, (0, 0, 200), 0)
    _write_folder(root / "b", 6, (200, 0, 0), 1)
    g_dir = root / "G"
    result = CliRunner().invoke(model_app, ["train", "--a-dir", str(root / "a"), "--b-dir", str(root / "b"),
                                            "--iters", "2", "--batch-size", "2", "--out", str(g_dir),
                                            "--device", "cpu", "--checkpoint-every", "2", "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return g_dir


def test_train_from_folders_writes_a_loadable_g(trained_g):
    meta = json.loads((trained_g / "G.json").read_text())
    assert meta["training"]["iterations"] == 2 and meta["training"]["images_a"] == 6
    assert meta["image_size"] == 32 and meta["size"] == "tiny"
    assert (trained_g / "samples" / "iter_0000002.png").is_file()
    assert isinstance(load_variation(trained_g), MunitVariation)


def test_train_refuses_an_existing_checkpoint_without_resume(trained_g):
    result = CliRunner().invoke(model_app, ["train", "--a-dir", str(trained_g.parent / "a"), "--b-dir",
                                            str(trained_g.parent / "b"), "--iters", "1", "--out", str(trained_g),
                                            "--no-progress"])
    assert result.exit_code != 0 and isinstance(result.exception, FastmbrError)
    assert "--resume" in str(result.exception)


def test_train_needs_a_dataset_or_two_folders(tmp_path):
    result = CliRunner().invoke(model_app, ["train", "--a-dir", str(tmp_path), "--out", str(tmp_path / "G")])
    assert isinstance(result.exception, FastmbrError) and "--b-dir" in str(result.exception)


def test_sample_and_score_on_embedded_mnist(trained_g, tmp_path, monkeypatch):
    """Plumbing only, so the embedded MNIST subset (always present, loads in seconds) stands in for the data."""
    monkeypatch.delenv("FASTMBR_DATA", raising=False)
    runner = CliRunner()
    grid = tmp_path / "grid.png"
    result = runner.invoke(model_app, ["sample", str(trained_g), "--dataset", "mnist", "--k", "3", "--rows", "2",
                                       "--out", str(grid), "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    from PIL import Image

    with Image.open(grid) as im:  # 2 rows × (input + 3 draws + real B), 32 px + 1 px padding
        assert im.size == (5 * 33 + 1, 2 * 33 + 1)
    result = runner.invoke(model_app, ["score", str(trained_g), "--dataset", "mnist", "--json", "--epochs", "1",
                                       "--max-train", "64", "--max-test", "32",
                                       "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(result.output)
    assert report["n_test"] == 32
    for part in (report, report["identity"], report["real_b"]):
        assert 0.0 <= part["content_kept"] <= 1.0 and 0.0 <= part["shift_achieved"] <= 1.0
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_score_of_a_missing_g_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(model_app, ["score", str(tmp_path / "none"), "--dataset", "mnist"])
    assert isinstance(result.exception, FastmbrError) and "G.json is missing" in str(result.exception)


def test_onnx_export_matches_pytorch(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    save_variation(MunitVariation(arch_preset("tiny"), 32).freeze(), tmp_path / "G", "tiny")
    path = export_command(tmp_path / "G", tmp_path / "g.onnx")
    g = load_variation(tmp_path / "G")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    delta = g.sample_delta(3, 1, torch.Generator().manual_seed(2))[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.numpy(), "delta": delta.numpy()})
    assert np.abs(y - g(x, delta).numpy()).max() < 1e-4
