"""Readers of the on-disk formats: real folders from $FASTMBR_DATA, generated files for formats we do not hold."""

from __future__ import annotations

import bz2
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.datasets import load_domains
from fastmbr.pipelines.readers import cure_tsr, imagefolder, svhn, usps

from conftest import REAL_DATA as DATA  # noqa: E402


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ---- USPS (LIBSVM .bz2) ----

def test_usps_real_test_split_matches_readme_and_torchvision():
    data = usps.read(DATA / "usps", "test")
    assert data.images.shape == (2007, 1, 16, 16) and data.images.dtype == torch.uint8
    assert torch.bincount(data.labels).tolist() == [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]
    from torchvision.datasets import USPS

    reference = USPS(str(DATA / "usps"), train=False, download=False)
    assert np.array_equal(data.images[:, 0].numpy(), reference.data)
    assert data.labels.tolist() == list(reference.targets)


def write_usps(path: Path, rows: list[str]) -> None:
    path.write_bytes(bz2.compress("\n".join(rows).encode()))


def test_usps_maps_labels_and_features_and_fills_omitted_ones(tmp_path):
    write_usps(tmp_path / "usps.bz2", ["10 1:1 2:-1 256:0.5", "3 1:-1"])
    data = usps.read(tmp_path, "train")
    assert data.labels.tolist() == [9, 2]
    flat = data.images.view(2, -1)
    assert flat[0, :3].tolist() == [255, 0, 127] and flat[0, 255] == 191
    assert flat[1, 0] == 0 and flat[1, 1] == 127  # omitted feature = 0 → 127


@pytest.mark.parametrize(
    "content,culprit",
    [(b"not bz2 at all", "usps.t.bz2"), (bz2.compress(b"11 1:0.5"), "label 11"), (bz2.compress(b"2 x:1"), ":1:")],
)
def test_usps_bad_files_name_the_file(tmp_path, content, culprit):
    (tmp_path / "usps.t.bz2").write_bytes(content)
    with pytest.raises(FastmbrError, match=culprit) as err:
        usps.read(tmp_path, "test")
    assert str(tmp_path / "usps.t.bz2") in one_line(err)


def test_usps_missing_file_and_wrong_split(tmp_path):
    with pytest.raises(FastmbrError, match="usps.bz2"):
        usps.read(tmp_path, "train")
    with pytest.raises(FastmbrError, match="'val'"):
        usps.read(tmp_path, "val")


# ---- SVHN (.mat format 2) ----

def write_svhn(path: Path, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)
    scipy.io.savemat(path, {"X": x, "y": y})
    return x, y


def test_svhn_reads_format_2_with_10_meaning_zero(tmp_path):
    x, y = write_svhn(tmp_path / "test_32x32.mat", 12)
    data = svhn.read(tmp_path, "test")
    assert data.images.shape == (12, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert np.array_equal(data.images[5, 2].numpy(), x[:, :, 2, 5])  # [H, W, C, N] → [N, C, H, W]


def test_svhn_truncated_missing_and_wrong_split(tmp_path):
    write_svhn(tmp_path / "train_32x32.mat", 20)
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(FastmbrError) as err:
        svhn.read(tmp_path, "train")
    assert str(path) in one_line(err)
    with pytest.raises(FastmbrError, match="test_32x32.mat"):
        svhn.read(tmp_path, "test")
    with pytest.raises(FastmbrError, match="'val'"):
        svhn.read(tmp_path, "val")


def test_svhn_wrong_variables_are_named(tmp_path):
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"images": np.zeros((2, 2), np.uint8)})
    with pytest.raises(FastmbrError, match="X and y"):
        svhn.read(tmp_path, "test")


# ---- CURE-TSR (file-name convention) ----

CURE_FILES = {
    "ChallengeFree/01_01_00_00_0001.bmp": (0, 0, 0, (40, 30)),
    "ChallengeFree/01_14_00_00_0002.bmp": (13, 0, 0, (25, 60)),
    "Snow-3/01_04_11_03_0001.bmp": (3, 11, 3, (32, 32)),
    "Haze-5/02_07_12_05_0009.bmp": (6, 12, 5, (70, 50)),
}


def write_cure(root: Path, folder: str = "Real_Train", files: dict | None = None) -> None:
    """Random BMPs named as ``files`` (default CURE_FILES): relative path → (label, type, level, (w, h))."""
    rng = np.random.default_rng(1)
    for name, (_, _, _, (w, h)) in (files or CURE_FILES).items():
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.mark.parametrize("folder,split", [("Real_Train", "train"), ("test", "test")])
def test_cure_tsr_parses_labels_and_challenges_and_resizes(tmp_path, folder, split):
    write_cure(tmp_path, folder)
    data = cure_tsr.read(tmp_path, split)
    expected = sorted(CURE_FILES.items(), key=lambda kv: Path(kv[0]).name)
    assert data.images.shape == (4, 3, 32, 32)
    assert data.labels.tolist() == [v[0] for _, v in expected]
    assert data.challenge_types.tolist() == [v[1] for _, v in expected]
    assert data.challenge_levels.tolist() == [v[2] for _, v in expected]
    assert len(data.classes) == 14 and cure_tsr.CHALLENGE_TYPES[11] == "snow"
    part = data.subset(torch.tensor([3, 1]))
    assert part.challenge_types.tolist() == [data.challenge_types[3], data.challenge_types[1]]


@pytest.mark.parametrize("name", ["01_15_00_00_0001.bmp", "01_04_13_00_0001.bmp", "01_04_01_06_0001.bmp", "sign.bmp"])
def test_cure_tsr_bad_names_are_named(tmp_path, name):
    write_cure(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "Real_Train" / name)
    with pytest.raises(FastmbrError) as err:
        cure_tsr.read(tmp_path, "train")
    assert name in one_line(err)


def test_cure_tsr_truncated_image_missing_split_and_empty(tmp_path):
    write_cure(tmp_path)
    bad = tmp_path / "Real_Train" / "ChallengeFree" / "01_01_00_00_0001.bmp"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(FastmbrError) as err:
        cure_tsr.read(tmp_path, "train")
    assert str(bad) in one_line(err)
    with pytest.raises(FastmbrError, match="Real_Test"):
        cure_tsr.read(tmp_path, "test")
    (tmp_path / "Real_Test").mkdir()
    with pytest.raises(FastmbrError, match="no .bmp"):
        cure_tsr.read(tmp_path, "test")
    with pytest.raises(FastmbrError, match="'val'"):
        cure_tsr.read(tmp_path, "val")


@pytest.mark.parametrize("bad_name", ["ChallengeFree/01_01_00_00_0001.bmp", "ChallengeFree/01_14_00_00_0002.bmp"])
def test_cure_tsr_skip_corrupt_reads_as_if_the_file_were_absent(tmp_path, bad_name):
    """Images, labels, challenges and frame ids of the rest equal a strict read of the tree without the file."""
    write_cure(tmp_path / "with")
    shutil.copytree(tmp_path / "with", tmp_path / "without")
    (tmp_path / "without" / "Real_Train" / bad_name).unlink()
    bad = tmp_path / "with" / "Real_Train" / bad_name
    bad.write_bytes(bad.read_bytes()[:100])
    lenient = cure_tsr.read(tmp_path / "with", "train", skip_corrupt=True)
    strict = cure_tsr.read(tmp_path / "without", "train")
    assert lenient.unreadable == (str(bad),) and len(lenient) == len(CURE_FILES) - 1
    for name in ("images", "labels", "challenge_types", "challenge_levels", "frames"):
        assert torch.equal(getattr(lenient, name), getattr(strict, name)), name
    assert lenient.subset(torch.tensor([1])).unreadable == (str(bad),)


# ---- ImageFolder trees ----

def test_gtsrb_reads_both_splits_with_43_classes():
    test = imagefolder.read(DATA / "gtsrb", "test")
    train = imagefolder.read(DATA / "gtsrb", "train")
    assert test.images.shape == (12630, 3, 32, 32) and train.images.shape == (15460, 3, 32, 32)
    assert test.classes == [f"{i:05d}" for i in range(43)] == train.classes
    assert torch.bincount(train.labels, minlength=43).max() <= 400  # README: train subset of at most 400 per class
    counts = torch.bincount(test.labels, minlength=43)
    assert counts.min() == 60 and counts.max() == 750 and counts.sum() == 12630


def test_mnist_m_counts_match_the_readme():
    data = imagefolder.read(DATA / "mnist-m", "test")
    assert data.images.shape == (9001, 3, 32, 32)
    assert torch.bincount(data.labels).tolist() == [878, 1016, 933, 908, 890, 807, 856, 914, 880, 919]


def test_tiny_imagenet_val_is_rgb_even_for_greyscale_jpegs():
    data = imagefolder.read(DATA / "tiny-imagenet", "val")
    assert data.images.shape == (10000, 3, 64, 64) and len(data.classes) == 200
    assert (torch.bincount(data.labels) == 50).all()
    wnids = (DATA / "tiny-imagenet" / "wnids.txt").read_text().split()
    assert data.classes == sorted(wnids)
    r, g, b = data.images[:, 0], data.images[:, 1], data.images[:, 2]
    grey = r.eq(g).flatten(1).all(1) & g.eq(b).flatten(1).all(1)
    assert grey.sum() >= 168  # the 168 mode-L JPEGs come out as three equal channels


def test_imagenette_files_are_listed_not_decoded():
    files = imagefolder.read_files(DATA / "imagenette", "val")
    assert len(files) == 1000 and len(files.classes) == 10 and (torch.bincount(files.labels) == 100).all()
    assert all(p.parent.name == files.classes[int(y)] for p, y in zip(files.paths, files.labels))
    as_split = imagefolder.read_files(DATA / "imagenette" / "val", "train")  # a split folder given directly
    assert as_split.paths == files.paths


def write_tree(root: Path, modes=("RGB", "L", "RGB")) -> list[Path]:
    paths = []
    for label, mode in enumerate(modes):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True)
        path = folder / f"img{label}.jpg"
        Image.new(mode, (10, 8), color=60 * (label + 1) if mode == "L" else (60, 120, 180)).save(path)
        paths.append(path)
    (root / "train" / "notes.txt").write_text("not an image")
    return paths


def test_generated_tree_mixes_grey_and_colour_into_rgb(tmp_path):
    write_tree(tmp_path)
    data = imagefolder.read(tmp_path, "train")
    assert data.images.shape == (3, 3, 8, 10) and data.labels.tolist() == [0, 1, 2]
    assert data.classes == ["class0", "class1", "class2"]
    grey = data.images[1]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_corrupt_jpeg_is_one_line_naming_the_file(tmp_path):
    paths = write_tree(tmp_path)
    paths[1].write_bytes(paths[1].read_bytes()[:60])
    with pytest.raises(FastmbrError) as err:
        imagefolder.read(tmp_path, "train")
    assert str(paths[1]) in one_line(err)


def test_mixed_sizes_are_named(tmp_path):
    paths = write_tree(tmp_path)
    Image.new("RGB", (12, 12)).save(paths[2])
    with pytest.raises(FastmbrError, match="read_files") as err:
        imagefolder.read(tmp_path, "train")
    assert str(paths[2]) in one_line(err)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(FastmbrError, match="does not exist"):
        imagefolder.read(tmp_path / "absent", "train")
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(FastmbrError, match="no class folders"):
        imagefolder.read(tmp_path, "train")
    with pytest.raises(FastmbrError, match=r"'test' \(found: train, val\)"):
        imagefolder.read_files(tmp_path, "test")
    (tmp_path / "train" / "empty_class").mkdir()
    with pytest.raises(FastmbrError, match="empty_class"):
        imagefolder.read_files(tmp_path, "train")


def write_kaggle_imagenet(root: Path, val_wnids: list[str], train_wnids=("n01", "n02", "n03")) -> Path:
    """Kaggle's layout: ``ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/ flat}`` and ``LOC_val_solution.csv`` on top;
    returns the CLS-LOC folder."""
    top = root / "ILSVRC" / "Data" / "CLS-LOC"
    for wnid in train_wnids:
        (top / "train" / wnid).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(top / "train" / wnid / f"{wnid}_1.JPEG")
    (top / "val").mkdir(parents=True)
    rows = ["ImageId,PredictionString"]
    for i, wnid in enumerate(val_wnids):
        image_id = f"ILSVRC2012_val_{i + 1:08d}"
        Image.new("RGB", (8, 8)).save(top / "val" / f"{image_id}.JPEG")
        rows.append(f"{image_id},{wnid} 1 2 7 7 {wnid} 0 0 5 5")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return top


def test_a_flat_val_folder_is_labelled_by_kaggles_solution_file_with_the_train_classes(tmp_path):
    top = write_kaggle_imagenet(tmp_path, ["n03", "n01", "n03", "n02"])
    val = imagefolder.read_files(top, "val")
    assert [p.name for p in val.paths] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 5)]
    assert val.classes == ["n01", "n02", "n03"] and val.labels.tolist() == [2, 0, 2, 1]
    assert imagefolder.read(top, "val").labels.tolist() == [2, 0, 2, 1]
    data = tmp_path / "data"
    data.mkdir()
    (data / "imagenet").symlink_to(top)
    domains = load_domains("imagenet", None, data)
    assert domains.test["A"].labels.tolist() == [2, 0, 2, 1] and domains.train.classes == val.classes


def test_a_flat_val_folder_without_labels_or_with_foreign_ones_is_named(tmp_path):
    top = write_kaggle_imagenet(tmp_path, ["n01", "n09"])
    with pytest.raises(FastmbrError, match="ILSVRC2012_val_00000002.JPEG: labelled n09") as err:
        imagefolder.read_files(top, "val")
    assert "\n" not in str(err.value)
    Image.new("RGB", (8, 8)).save(top / "val" / "stray.JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01 1 2 3 4\n")
    with pytest.raises(FastmbrError, match="ILSVRC2012_val_00000002.JPEG: not listed in"):
        imagefolder.read_files(top, "val")
    (tmp_path / "LOC_val_solution.csv").write_text("id,label\n")
    with pytest.raises(FastmbrError, match="expected the header ImageId,PredictionString"):
        imagefolder.read_files(top, "val")
    (tmp_path / "LOC_val_solution.csv").unlink()
    with pytest.raises(FastmbrError, match="lie flat, with no class folders and no LOC_val_solution.csv"):
        imagefolder.read_files(top, "val")

@pytest.mark.parametrize("bad_index", [0, 3])  # 0: the image that would size the output
def test_read_with_skip_corrupt_leaves_out_what_does_not_decode_and_keeps_labels_aligned(tmp_path, bad_index):
    paths = []
    for c in range(2):
        folder = tmp_path / "test" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(3):
            paths.append(folder / f"{i}.png")
            Image.fromarray(np.full((8, 8, 3), 40 * (3 * c + i), dtype=np.uint8)).save(paths[-1])
    paths[bad_index].write_bytes(paths[bad_index].read_bytes()[:30])
    with pytest.raises(FastmbrError, match=str(paths[bad_index])):
        imagefolder.read(tmp_path, "test")
    data = imagefolder.read(tmp_path, "test", skip_corrupt=True)
    kept = [i for i in range(6) if i != bad_index]
    assert data.unreadable == (str(paths[bad_index]),)
    assert data.images[:, 0, 4, 4].tolist() == [40 * i for i in kept]
    assert data.labels.tolist() == [i // 3 for i in kept]
