"""The LoaderConfig contract, checked on every backend this machine can run.

Each test image is one flat colour that encodes its sample index (red = 8·index) and label (green = 50·label),
so a batch tells which samples it holds even after resizing and cropping: cover, sharding and resume are
checked by sample identity, not just by labels.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.loaders import BACKENDS, LoaderConfig, build_loader
from fastmbr.pipelines.loaders.dali import dali_available
from fastmbr.pipelines.loaders.ffcv import ffcv_available
from fastmbr.pipelines.loaders.tensor import (
    TensorLoader,
    epoch_order,
    last_step_shares,
    random_crop,
    random_flip,
    shard_order,
)
from fastmbr.pipelines.loaders.torch import TorchLoader
from fastmbr.pipelines.readers.imagefolder import read, read_files

CLASSES, PER_CLASS, SIDE = 3, 7, 16
N = CLASSES * PER_CLASS

needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")
needs_ffcv = pytest.mark.skipif(not ffcv_available(), reason="ffcv is not installed (optional; needs system libs)")
CASES = [
    pytest.param("tensor", "memory", id="tensor-memory"),
    pytest.param("torch", "memory", id="torch-memory"),
    pytest.param("torch", "files", id="torch-files"),
    pytest.param("dali", "files", id="dali-files", marks=needs_dali),
    pytest.param("ffcv", "memory", id="ffcv-memory", marks=needs_ffcv),
    pytest.param("ffcv", "files", id="ffcv-files", marks=needs_ffcv),
    pytest.param("nvjpeg", "files", id="nvjpeg-files"),
]
# FFCV's random crop/flip draw from its own state: its augmented pixels after a resume are fresh draws.
AUGMENTED_EXACT_RESUME = [c for c in CASES if c.values[0] != "ffcv"]


def write_flat_tree(root: Path) -> Path:
    """``<root>/train/<class>/<i>.png``: flat 16×16 PNGs, sample ``index`` in class ``label``."""
    for label in range(CLASSES):
        folder = root / "train" / f"c{label}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            index = label * PER_CLASS + i
            pixel = np.array([8 * index, 50 * label, 255 - 8 * index], dtype=np.uint8)
            Image.fromarray(np.broadcast_to(pixel, (SIDE, SIDE, 3)).copy()).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_flat_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module")
def textured(tmp_path_factory) -> Path:
    """The same layout with random pixels, so crops and flips show."""
    root = tmp_path_factory.mktemp("textured")
    rng = np.random.default_rng(0)
    for label in range(CLASSES):
        folder = root / "train" / f"c{label}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """FFCV's .beton cache goes to the test's own folder, never to the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def dataset(tree: Path, kind: str):
    return read(tree, "train") if kind == "memory" else read_files(tree, "train")


def make(tree: Path, backend: str, kind: str, **overrides):
    settings = dict(batch_size=5, shuffle=False, image_size=SIDE, backend=backend,
                    num_workers=0 if backend == "torch" else 2)
    settings.update(overrides)
    return build_loader(dataset(tree, kind), LoaderConfig(**settings))


def sample_ids(x: torch.Tensor) -> list[int]:
    """Decode each flat image's index from its red value (centre pixel, robust to resize rounding and to the
    ±2 levels of FFCV's JPEG re-encoding)."""
    red = (x[:, 0, SIDE // 2, SIDE // 2] * 255).round()
    return (red / 8).round().long().tolist()


def epoch(loader, number: int = 0, start_batch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(number, start_batch)
    return list(loader)


def test_backends_are_registered():
    assert set(BACKENDS) == {"auto", "tensor", "torch", "dali", "ffcv", "nvjpeg"}


@pytest.mark.parametrize("backend,kind", CASES)
def test_batches_keep_the_contract(tree, backend, kind):
    batches = epoch(make(tree, backend, kind))
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 1]
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, SIDE, SIDE) and x.device.type == "cpu"
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
        assert 0.0 <= x.min() and x.max() <= 1.0
    labels = torch.cat([y for _, y in batches])
    assert set(labels.tolist()) == set(range(CLASSES))


@pytest.mark.parametrize("backend,kind", CASES)
def test_unshuffled_epoch_is_every_sample_once_in_order(tree, backend, kind):
    batches = epoch(make(tree, backend, kind))
    ids = [i for x, _ in batches for i in sample_ids(x)]
    labels = torch.cat([y for _, y in batches]).tolist()
    assert ids == list(range(N))
    assert labels == [i // PER_CLASS for i in ids]


@pytest.mark.parametrize("backend,kind", CASES)
def test_shuffled_epoch_follows_seed_and_epoch(tree, backend, kind):
    loader = make(tree, backend, kind, shuffle=True, seed=3)
    ids = {e: [i for x, _ in epoch(loader, e) for i in sample_ids(x)] for e in (0, 1)}
    assert ids[0] == epoch_order(N, 3, 0, True).tolist()
    assert ids[1] == epoch_order(N, 3, 1, True).tolist()
    assert sorted(ids[0]) == list(range(N)) and ids[0] != ids[1]


@pytest.mark.parametrize("backend,kind", CASES)
def test_two_shards_are_disjoint_and_cover_the_global_batches(tree, backend, kind):
    shards = []
    for shard_id in (0, 1):
        loader = make(tree, backend, kind, shuffle=True, seed=5, num_shards=2, shard_id=shard_id)
        shards.append([i for x, _ in epoch(loader, 2) for i in sample_ids(x)])
    order = epoch_order(N, 5, 2, True)
    # 21 samples: two global batches of 10, then one sample, taken by shard 0; shard 1 holds it again as a
    # placeholder (weight 0 in training), so both take 3 steps and the real shares cover the order exactly once
    assert last_step_shares(N, 5, 2) == [1, 0]
    real = shards[0] + shards[1][:-1]
    assert sorted(real) == sorted(order.tolist()) and len(set(real)) == N
    assert shards[1][-1] == order[20].item() == shards[0][-1]
    assert shards[1] == shard_order(order, 5, 2, 1, False).tolist()


@pytest.mark.parametrize("backend,kind", CASES)
def test_resume_yields_the_rest_of_the_uninterrupted_epoch(tree, backend, kind):
    loader = make(tree, backend, kind, shuffle=True, seed=1)
    full = epoch(loader, 4)
    resumed = epoch(loader, 4, start_batch=2)
    assert len(resumed) == len(full) - 2
    for (x, y), (rx, ry) in zip(full[2:], resumed):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    assert len(epoch(loader, 4)) == len(full), "start_batch must apply to one epoch only"


@pytest.mark.parametrize("backend,kind", AUGMENTED_EXACT_RESUME)
def test_augmented_resume_is_bit_exact(textured, backend, kind):
    loader = make(textured, backend, kind, shuffle=True, seed=2, augment="rrc-flip")
    full = epoch(loader, 1)
    resumed = epoch(loader, 1, start_batch=3)
    assert len(resumed) == len(full) - 3
    assert all(torch.equal(x, rx) and torch.equal(y, ry) for (x, y), (rx, ry) in zip(full[3:], resumed))
    fixed_order = make(textured, backend, kind, shuffle=False, seed=2, augment="rrc-flip")
    first, second = epoch(fixed_order, 1), epoch(fixed_order, 2)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, second)), "augmentation must change per epoch"


def test_torch_loader_rrc_changes_pixels_but_keeps_shape(tmp_path):
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    from fastmbr.pipelines.types import LabeledImages

    data = LabeledImages(images, torch.arange(6) % 2, ["a", "b"])
    x, _ = next(iter(build_loader(data, LoaderConfig(batch_size=6, shuffle=False, augment="rrc-flip",
                                                      backend="torch", num_workers=0))))
    assert x.shape == (6, 3, 20, 20)
    assert not torch.allclose(x, images.float() / 255)


@pytest.fixture(scope="module")
def gradient_tree(tmp_path_factory) -> Path:
    """80 copies of one 96×72 PNG whose red channel is its column and green its row, scaled to 0..255."""
    root = tmp_path_factory.mktemp("gradient")
    image = np.zeros((72, 96, 3), dtype=np.uint8)
    image[..., 0] = np.round(np.arange(96) * 255 / 95)[None, :]
    image[..., 1] = np.round(np.arange(72) * 255 / 71)[:, None]
    for label in range(2):
        folder = root / "train" / f"c{label}"
        folder.mkdir(parents=True)
        for i in range(40):
            Image.fromarray(image).save(folder / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali),
                                     pytest.param("ffcv", marks=needs_ffcv), "nvjpeg"])
def test_file_loaders_draw_random_resized_crops_of_the_same_distribution(gradient_tree, backend):
    """Each output's red span along its middle row is the crop's share of the width, green's of the height: every
    backend must draw areas in [0.08, 1] of the image, aspects in [3/4, 4/3] and flip half of the crops."""
    loader = make(gradient_tree, backend, "files", batch_size=80, image_size=24, augment="rrc-flip")
    x = next(iter(loader))[0] * 255
    red, green = x[:, 0, 12, :], x[:, 1, :, 12]
    width = (red.max(1).values - red.min(1).values) / 255
    height = (green.max(1).values - green.min(1).values) / 255
    area, aspect = width * height, (width * 96) / (height * 72)
    assert 0.05 < area.min() < 0.2 and 0.6 < area.max() <= 1.0 and 0.25 < area.mean() < 0.7, area
    assert 0.65 < aspect.min() < 0.9 and 1.1 < aspect.max() < 1.5, aspect
    assert 0.25 < (red[:, -1] > red[:, 0]).float().mean() < 0.75  # unflipped share


def test_torch_workers_give_the_same_batches_as_the_main_process(tree):
    inline = epoch(make(tree, "torch", "files", shuffle=True, augment="rrc-flip", num_workers=0), 1)
    workers = epoch(make(tree, "torch", "files", shuffle=True, augment="rrc-flip", num_workers=2), 1)
    assert all(torch.equal(a, b) and torch.equal(c, d) for (a, c), (b, d) in zip(inline, workers))


def reference_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per image: reflect-pad, then slice at the offsets the batched op draws (dy for all, then dx for all)."""
    b, _, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    out = []
    for i in range(b):
        padded = F.pad(x[i : i + 1], (pad, pad, pad, pad), mode="reflect")[0]
        out.append(padded[:, dy[i] : dy[i] + h, dx[i] : dx[i] + w])
    return torch.stack(out)


def reference_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flips = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.stack([img.flip(-1) if f else img for img, f in zip(x, flips)])


@pytest.mark.parametrize("shape,pad", [((7, 3, 12, 12), 1), ((5, 1, 9, 13), 3), ((4, 3, 32, 32), 4)])
def test_tensor_crop_and_flip_equal_a_per_image_reference(shape, pad):
    seed = int.from_bytes(os.urandom(4), "little")
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    batched = random_crop(x, pad, torch.Generator().manual_seed(seed + 1))
    assert torch.equal(batched, reference_crop(x, pad, torch.Generator().manual_seed(seed + 1))), f"seed {seed}"
    flipped = random_flip(x, torch.Generator().manual_seed(seed + 2))
    assert torch.equal(flipped, reference_flip(x, torch.Generator().manual_seed(seed + 2))), f"seed {seed}"


def write_jpegs(root: Path) -> Path:
    """``<root>/val/n0/{0..5}.jpg``, flat 24×24 JPEGs; returns the folder."""
    folder = root / "val" / "n0"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((24, 24, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.jpg")
    return folder


@pytest.fixture
def corrupt_tree(tmp_path) -> tuple[Path, Path]:
    bad = write_jpegs(tmp_path) / "3.jpg"
    bad.write_bytes(bad.read_bytes()[:120])
    return tmp_path, bad


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "backend,workers",
    [("torch", 0), ("torch", 2), pytest.param("dali", 2, marks=needs_dali), pytest.param("ffcv", 2, marks=needs_ffcv),
     ("nvjpeg", 0), ("nvjpeg", 2)],
)
def test_corrupt_jpeg_is_a_one_line_error_naming_the_file(corrupt_tree, backend, workers):
    root, bad = corrupt_tree
    settings = LoaderConfig(batch_size=2, shuffle=False, image_size=16, backend=backend, num_workers=workers)
    with pytest.raises(FastmbrError) as err:  # at the first batch, or (ffcv, writing its .beton) when built
        list(build_loader(read_files(root, "val"), settings))
    message = str(err.value)
    assert str(bad) in message and "\n" not in message and "Traceback" not in message


@needs_ffcv
@pytest.mark.timeout(120)
def test_ffcv_under_skip_corrupt_decodes_each_file_once_before_writing(corrupt_tree, monkeypatch):
    """Sorting out the bad files already decoded every file: the .beton write must not check them all again."""
    from fastmbr.pipelines import prepare

    monkeypatch.setattr(prepare, "check_files_decode", lambda data, workers: pytest.fail("decoded twice"))
    root, bad = corrupt_tree
    loader = build_loader(read_files(root, "val"), LoaderConfig(batch_size=2, shuffle=False, image_size=16,
                                                                backend="ffcv", skip_corrupt=True))
    assert sum(len(y) for _, y in loader) == 5 and loader.skipped == [str(bad)]


@needs_ffcv
@pytest.mark.timeout(120)
def test_prepare_ffcv_names_an_undecodable_file_instead_of_hanging(tmp_path, capsys):
    """FFCV's writer waits forever for a worker that died on a bad file: every .beton write checks first."""
    from test_engine import write_folder_with_a_truncated_jpeg

    from fastmbr.cli import main

    bad = write_folder_with_a_truncated_jpeg(tmp_path / "data")
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "folder", "--data-dir", str(tmp_path / "data"), "--format", "ffcv"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and str(bad) in err[0], err


@needs_ffcv
def test_prepare_with_max_resolution_writes_the_capped_betons_a_training_loader_then_finds(tmp_path, monkeypatch,
                                                                                           capsys):
    from ffcv.reader import Reader
    from test_engine import write_folder_with_a_truncated_jpeg

    from fastmbr.cli import main
    from fastmbr.pipelines import prepare
    from fastmbr.pipelines.datasets import load_domains

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bad = write_folder_with_a_truncated_jpeg(tmp_path / "data")
    Image.new("RGB", (20, 20), (90, 40, 10)).save(bad)
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "folder", "--data-dir", str(tmp_path / "data"), "--max-resolution", "12"])
    assert exc.value.code == 2 and "--max-resolution applies to --format ffcv" in capsys.readouterr().err
    main(["prepare", "folder", "--data-dir", str(tmp_path / "data"), "--format", "ffcv", "--max-resolution", "12"])
    betons = sorted((tmp_path / "cache" / "fastmbr" / "beton").glob("files-jpg90-max12-*.beton"))
    assert len(betons) == 3  # train-A, val-A, test-A
    assert all(set(Reader(str(b)).metadata["f0"]["width"].tolist()) == {12} for b in betons)
    monkeypatch.setattr(prepare, "write_beton", lambda *a, **k: pytest.fail("the prepared .beton was not found"))
    train = load_domains("folder", None, tmp_path / "data").train
    loader = build_loader(train, LoaderConfig(batch_size=4, image_size=8, backend="ffcv", max_resolution=12))
    assert sum(len(y) for _, y in loader) == len(train)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "backend,workers,sizes",
    [("torch", 0, [2, 1, 2]), ("torch", 2, [2, 1, 2]), pytest.param("dali", 2, [2, 2, 1], marks=needs_dali),
     pytest.param("ffcv", 2, [2, 2, 1], marks=needs_ffcv), ("nvjpeg", 0, [2, 1, 2]), ("nvjpeg", 2, [2, 1, 2])],
)
def test_skip_corrupt_leaves_the_file_out_lists_it_and_keeps_the_rest_in_order(corrupt_tree, backend, workers,
                                                                                 sizes):
    """torch and nvjpeg leave the file out of its batch (one image short); DALI rebuilds its pipeline past it, and
    FFCV writes its .beton without it, so their later batches move up by one. Every epoch lists it once."""
    root, bad = corrupt_tree
    settings = LoaderConfig(batch_size=2, shuffle=False, image_size=16, backend=backend, num_workers=workers,
                            skip_corrupt=True)
    loader = build_loader(read_files(root, "val"), settings)
    for number in (0, 1):
        batches = epoch(loader, number)
        grey = [round(v / 40) for x, _ in batches for v in (x[:, 0, 8, 8] * 255).tolist()]
        assert [len(y) for _, y in batches] == sizes and grey == [0, 1, 2, 4, 5]
        assert loader.skipped == [str(bad)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "backend", ["torch", pytest.param("dali", marks=needs_dali), pytest.param("ffcv", marks=needs_ffcv), "nvjpeg"],
)
def test_a_listed_file_gone_from_disk_is_a_one_line_error_naming_it(tmp_path, backend):
    write_jpegs(tmp_path)
    data = read_files(tmp_path, "val")
    gone = Path(data.paths[4])
    gone.unlink()
    with pytest.raises(FastmbrError) as err:
        list(build_loader(data, LoaderConfig(batch_size=2, shuffle=False, image_size=16, backend=backend)))
    assert str(gone) in str(err.value) and "\n" not in str(err.value)


@needs_ffcv
def test_ffcv_stores_image_files_as_jpeg_and_decodes_them_close_to_the_torch_loader(tmp_path):
    """An ImageNet-scale .beton of raw pixels would be ~10× the JPEG tree: files are re-encoded as JPEG, and
    what FFCV decodes from them is the torch loader's centre crop of the original file, give or take JPEG and
    the resize filter (mean difference 0.010 from raw pixels, 0.016 from JPEG, measured)."""
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.reader import Reader

    from fastmbr.pipelines.prepare import beton_for

    rng = np.random.default_rng(1)
    folder = tmp_path / "train" / "c0"
    folder.mkdir(parents=True)
    for i in range(4):
        smooth = F.interpolate(torch.from_numpy(rng.random((1, 3, 6, 6), dtype=np.float32)), size=(48, 48),
                               mode="bicubic", align_corners=False).clamp(0, 1)[0]
        Image.fromarray((smooth.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / f"{i}.png")
    data = read_files(tmp_path, "train")
    modes = Reader(str(beton_for(data, num_workers=1))).metadata["f0"]["mode"]
    assert set(modes.tolist()) == {IMAGE_MODES["jpg"]}
    ffcv_x, torch_x = (torch.cat([b for b, _ in epoch(make(tmp_path, backend, "files", batch_size=4,
                                                           image_size=32))]) for backend in ("ffcv", "torch"))
    assert ffcv_x.shape == torch_x.shape == (4, 3, 32, 32)  # the same centre crop, decoded two ways
    assert 0 < (ffcv_x - torch_x).abs().mean() < 0.03


@needs_ffcv
def test_ffcv_max_resolution_stores_files_scaled_to_that_longer_side_and_decodes_the_same_picture(tmp_path):
    """FFCV's ImageNet recipe caps the stored resolution: files with a longer side above the cap are stored scaled
    down (aspect kept), smaller ones as they are, in a .beton cached apart from the full-size one. The crops
    decoded from it are those of the full-size .beton give or take the extra downscale (0.004 measured; FFCV
    against the torch loader: 0.018 at full size, 0.019 capped)."""
    from ffcv.reader import Reader

    from fastmbr.pipelines.prepare import beton_for

    rng = np.random.default_rng(2)
    folder = tmp_path / "train" / "c0"
    folder.mkdir(parents=True)
    sizes = [(120, 80), (60, 96), (40, 20)]  # (width, height)
    for i, (w, h) in enumerate(sizes):
        smooth = F.interpolate(torch.from_numpy(rng.random((1, 3, 3, 3), dtype=np.float32)), size=(h, w),
                               mode="bicubic", align_corners=False).clamp(0, 1)[0]
        Image.fromarray((smooth.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / f"{i}.png")
    data = read_files(tmp_path, "train")
    capped, full = (Reader(str(beton_for(data, num_workers=1, max_resolution=m))).metadata["f0"] for m in (48, None))
    want = [(w, h) if max(w, h) <= 48 else (round(w * 48 / max(w, h)), round(h * 48 / max(w, h))) for w, h in sizes]
    assert list(zip(capped["width"].tolist(), capped["height"].tolist())) == want == [(48, 32), (30, 48), (40, 20)]
    assert list(zip(full["width"].tolist(), full["height"].tolist())) == sizes
    crops = {(backend, cap): torch.cat([b for b, _ in epoch(make(tmp_path, backend, "files", batch_size=3,
                                                                 image_size=16, max_resolution=cap))])
             for backend, cap in (("ffcv", 48), ("ffcv", None), ("torch", None))}
    capped_crops = crops["ffcv", 48]
    assert capped_crops.shape == crops["ffcv", None].shape == (3, 3, 16, 16)
    assert 0 < (capped_crops - crops["ffcv", None]).abs().mean() < 0.01
    assert (capped_crops - crops["torch", None]).abs().mean() < 0.03


@pytest.mark.parametrize("backend,cap,match", [("torch", 256, "needs --loader ffcv, not 'torch'"),
                                               ("auto", 256, "needs --loader ffcv, not 'auto'"),
                                               ("ffcv", 0, "positive number of pixels, not 0")])
def test_max_resolution_is_refused_where_it_would_do_nothing(tree, backend, cap, match):
    with pytest.raises(FastmbrError, match=match):
        make(tree, backend, "files", max_resolution=cap)


@pytest.mark.parametrize("backend,tolerance", [
    ("torch", 0.0), ("nvjpeg", 0.0), pytest.param("dali", 0.01, marks=needs_dali),
    pytest.param("ffcv", 0.03, marks=needs_ffcv)])
def test_center_crop_one_reads_images_already_cut_to_the_view_as_they_are(tmp_path, backend, tolerance):
    """ImageNet-C is published at ImageNet's evaluation view (short side 256, centred 224): cropping it again at
    224/256 would zoom domain B against A. With ``center_crop=1`` a file at the image size comes back whole; at
    the default it is the zoomed centre."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "val" / "c0"
    folder.mkdir(parents=True)
    pixels = []
    for i in range(3):
        smooth = F.interpolate(torch.from_numpy(rng.random((1, 3, 3, 3), dtype=np.float32)), size=(16, 16),
                               mode="bicubic", align_corners=False).clamp(0, 1)[0]
        pixels.append((smooth * 255).round().byte())
        Image.fromarray(pixels[-1].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    whole = torch.stack(pixels).float() / 255
    files = read_files(tmp_path, "val")
    workers = 0 if backend in ("torch", "nvjpeg") else 1
    settings = dict(batch_size=3, shuffle=False, image_size=16, backend=backend, num_workers=workers)
    uncut, default = (torch.cat([x for x, _ in epoch(build_loader(files, LoaderConfig(**settings, **crop)))])
                      for crop in ({"center_crop": 1.0}, {}))
    assert (uncut - whole).abs().mean() <= tolerance
    assert (default - whole).abs().mean() > tolerance + 0.01  # the 14/16 centre, resized back up to 16


@needs_dali
@pytest.mark.parametrize("operator", ["image", "image_random_crop"])
def test_the_gpu_only_nvjpeg_buffer_sizes_are_arguments_dali_accepts(tmp_path, operator):
    """They are passed on CUDA alone; DALI rejects an unknown argument when the pipeline is built, so build one."""
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    from fastmbr.pipelines.loaders.dali import NVJPEG_PADDING

    folder = write_jpegs(tmp_path)
    pipe = Pipeline(batch_size=2, num_threads=1, seed=0, device_id=None)
    with pipe:
        encoded, _ = fn.readers.file(files=[str(p) for p in sorted(folder.iterdir())], labels=list(range(6)))
        pipe.set_outputs(getattr(fn.decoders, operator)(encoded, device="cpu", output_type=types.RGB,
                                                        **NVJPEG_PADDING))
    pipe.build()
    (images,) = pipe.run()
    assert len(images) == 2


@pytest.mark.parametrize("augment", ["rrc-flip", "none"])
def test_nvjpeg_decodes_jpegs_in_one_batched_call_and_cuts_the_torch_loaders_windows(tmp_path, monkeypatch,
                                                                                     augment):
    """Same samples, same crop windows and flips as the torch loader (shared per-sample generators); the pixels
    differ only by the decoder. No JPEG goes through the Pillow fallback."""
    from fastmbr.bench.loading import write_jpeg_tree
    from fastmbr.pipelines.loaders import nvjpeg

    files = write_jpeg_tree(tmp_path, 12, 32, workers=2)
    monkeypatch.setattr(nvjpeg, "pillow_or_none", lambda path, device: pytest.fail(f"Pillow decoded {path}"))
    settings = dict(batch_size=5, shuffle=True, seed=3, augment=augment, image_size=24, num_workers=0)
    loaders = {b: build_loader(files, LoaderConfig(backend=b, **settings)) for b in ("nvjpeg", "torch")}
    ours, theirs = (epoch(loaders[b], 1) for b in ("nvjpeg", "torch"))
    assert [len(y) for _, y in ours] == [len(y) for _, y in theirs] == [5, 5, 2]
    for (x, y), (tx, ty) in zip(ours, theirs):
        assert torch.equal(y, ty) and x.shape == tx.shape == (len(y), 3, 24, 24)
        assert (x - tx).abs().mean() < 0.01  # 0 here (both libjpeg-turbo); another seed's windows: 0.24-0.26


@needs_ffcv
def test_ffcv_compiles_its_pipeline_once_for_every_epoch(tree, monkeypatch):
    """Building an FFCV Loader compiles its pipeline (3.5 s on 2 cores): epochs reuse one, only the order moves."""
    import ffcv.loader

    built = []

    class Counted(ffcv.loader.Loader):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ffcv.loader, "Loader", Counted)
    loader = make(tree, "ffcv", "files", shuffle=True, seed=4)
    runs = ((0, 0), (1, 0), (1, 2))  # (epoch, start_batch)
    orders = [[i for x, _ in epoch(loader, e, start_batch=s) for i in sample_ids(x)] for e, s in runs]
    assert orders[0] == epoch_order(N, 4, 0, True).tolist() and orders[1] == epoch_order(N, 4, 1, True).tolist()
    assert orders[2] == orders[1][10:] and len(built) == 1


@needs_ffcv
def test_a_cached_beton_of_other_data_is_refused(tree):
    """FFCV itself would read past the end of a shorter .beton without a word."""
    from fastmbr.pipelines.prepare import beton_path, write_beton
    from fastmbr.pipelines.types import LabeledImages

    data = dataset(tree, "memory")
    path = write_beton(LabeledImages(data.images[:6], data.labels[:6], data.classes), beton_path(data))
    with pytest.raises(FastmbrError, match="holds 6 samples but the dataset has 21") as err:
        make(tree, "ffcv", "memory")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_auto_picks_tensor_for_memory_and_torch_for_files_on_cpu(tree):
    assert isinstance(make(tree, "auto", "memory"), TensorLoader)
    assert isinstance(make(tree, "auto", "files", device="cpu"), TorchLoader)


@pytest.mark.parametrize(
    "backend,kind,overrides,culprit",
    [
        ("nope", "memory", {}, "'nope'"),
        ("tensor", "files", {}, "tensor"),
        ("torch", "memory", {"augment": "mixup"}, "'mixup'"),
        ("torch", "memory", {"shard_id": 2, "num_shards": 2}, "shard id 2"),
        ("torch", "memory", {"device": "cuda:99"}, "cuda:99"),
        ("torch", "memory", {"device": "quantum"}, "quantum"),
        pytest.param("dali", "memory", {}, "dali", marks=needs_dali),
        pytest.param("dali", "files", {"augment": "crop"}, "'crop'", marks=needs_dali),
    ],
)
def test_bad_settings_are_one_line_errors(tree, backend, kind, overrides, culprit):
    with pytest.raises(FastmbrError, match=culprit) as err:
        make(tree, backend, kind, **overrides)
    assert "\n" not in str(err.value)


def test_missing_ffcv_is_a_clear_error(tree, monkeypatch):
    monkeypatch.setitem(sys.modules, "ffcv", None)
    with pytest.raises(FastmbrError, match="loader 'ffcv' needs the ffcv package"):
        make(tree, "ffcv", "memory")
