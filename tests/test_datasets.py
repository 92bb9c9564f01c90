"""load_domains on the real data: the Table 10 band counts are independent numbers from the data README."""

from __future__ import annotations


import pytest
import torch

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.datasets import load_domains
from fastmbr.pipelines.types import LabeledImages

from conftest import REAL_DATA as DATA  # noqa: E402


@pytest.fixture(scope="module")
def gtsrb_brightness():
    return load_domains("gtsrb", "brightness", DATA)


def test_gtsrb_brightness_bands_equal_table_10_counts(gtsrb_brightness):
    d = gtsrb_brightness
    assert len(d.test["A"]) == 2611 and len(d.test["B"]) == 684  # test: B<40, B>170
    assert len(d.train) + len(d.val) == 3073 and len(d.unlabeled["B"]) == 846  # train subset
    assert len(d.val) == round(3073 * 0.1)


def test_gtsrb_contrast_bands_equal_table_10_counts():
    d = load_domains("gtsrb", "contrast:low-high", DATA)
    assert len(d.test["A"]) == 1637 and len(d.test["B"]) == 4092  # test: C<80, C>230
    assert len(d.train) + len(d.val) == 2041 and len(d.unlabeled["B"]) == 5162


def test_gtsrb_bands_really_differ_in_brightness(gtsrb_brightness):
    low = gtsrb_brightness.test["A"].images.float().mean(dim=(1, 2, 3))
    high = gtsrb_brightness.test["B"].images.float().mean(dim=(1, 2, 3))
    assert low.max() < 40 and high.min() > 170


def test_mnist_background_colour_domains():
    d = load_domains("mnist", "background-color", DATA, limit=6000)
    assert (len(d.train), len(d.val)) == (5400, 600)
    assert len(d.test["A"]) == len(d.test["B"]) == 10000
    assert len(d.unlabeled["A"]) == len(d.unlabeled["B"]) == 30000  # --limit cuts labelled A only
    corner_a = d.test["A"].images[:, :, 0, 0].float()  # MNIST corners are background
    corner_b = d.test["B"].images[:, :, 0, 0].float()
    assert (corner_a[:, 2] > corner_a[:, 0]).all() and (corner_b[:, 0] > corner_b[:, 2]).all()
    assert d.train.images.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("name,total", [("fashion-mnist", 10000), ("usps", 2007)])
def test_test_only_sets_get_a_deterministic_80_20_split(name, total):
    first = load_domains(name, None, DATA)
    again = load_domains(name, None, DATA)
    carved = round(total * 0.2)
    assert len(first.test["A"]) == carved and len(first.train) + len(first.val) == total - carved
    assert torch.equal(first.test["A"].images, again.test["A"].images)
    assert torch.equal(first.train.labels, again.train.labels)
    assert any("80% train / 20% test" in note for note in first.notes)


@pytest.mark.parametrize(
    "name,shift,culprit",
    [("cifar", None, "'cifar'"), ("gtsrb", "rotation", "'rotation'"), ("mnist", "brightness", "'brightness'"),
     ("gtsrb", "brightness:low-dim", "brightness:low-dim")],
)
def test_unknown_dataset_or_shift_is_a_one_line_error(name, shift, culprit):
    with pytest.raises(FastmbrError, match=culprit) as err:
        load_domains(name, shift, DATA)
    assert "\n" not in str(err.value)


def test_missing_data_folders_are_errors(tmp_path):
    with pytest.raises(FastmbrError, match="does not exist"):
        load_domains("gtsrb", "brightness", tmp_path / "absent")
    with pytest.raises(FastmbrError, match="'gtsrb' not found"):
        load_domains("gtsrb", "brightness", tmp_path)


@pytest.mark.parametrize("val_classes,named", [(("c0", "c2"), "only in train: c1; only in val: c2"),
                                               (("c0",), "train has 2 classes and val 1")])
def test_splits_naming_different_classes_are_refused_before_labels_go_wrong(tmp_path, val_classes, named):
    """A class folder missing from one split would shift every later label by one, silently."""
    from PIL import Image

    for split, classes in (("train", ("c0", "c1")), ("val", val_classes)):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / c / "0.png")
    with pytest.raises(FastmbrError, match=named) as err:
        load_domains("folder", None, tmp_path)
    assert "\n" not in str(err.value)
    for c in set(val_classes) - {"c0"}:
        (tmp_path / "val" / c / "0.png").rename(tmp_path / "val" / "c0" / f"{c}.png")
        (tmp_path / "val" / c).rmdir()
    (tmp_path / "val" / "c1").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "c1" / "0.png")
    assert load_domains("folder", None, tmp_path).test["A"].classes == ["c0", "c1"]

def test_prepare_keeps_cure_tsr_challenge_fields():
    import torch

    from fastmbr.pipelines.datasets import prepare
    from fastmbr.pipelines.readers.cure_tsr import CureTsrImages

    data = CureTsrImages(torch.randint(0, 255, (3, 3, 20, 20), dtype=torch.uint8), torch.tensor([0, 1, 2]),
                         ["a", "b", "c"], "gen", challenge_types=torch.tensor([0, 11, 12]),
                         challenge_levels=torch.tensor([0, 3, 5]))
    out = prepare(data, 32)
    assert isinstance(out, CureTsrImages) and out.images.shape == (3, 3, 32, 32)
    assert out.challenge_levels.tolist() == [0, 3, 5] and out.challenge_types.tolist() == [0, 11, 12]


def test_class_subsets_are_relabelled_and_bad_specs_are_one_line_errors():
    from fastmbr.pipelines.datasets import parse_classes

    keep = [3, 4, 5, 8]
    full = load_domains("mnist", "background-color")
    part = load_domains("mnist", "background-color", classes="3-5,8")
    assert part.num_classes == 4 and part.train.classes == [full.train.classes[i] for i in keep]
    for name in ("A", "B"):
        original = full.test[name].labels
        kept = torch.isin(original, torch.tensor(keep))
        assert torch.equal(part.test[name].labels, torch.tensor([keep.index(int(v)) for v in original[kept]]))
        assert part.test[name].images.shape == full.test[name].images[kept].shape  # colours are drawn anew
    assert parse_classes("0-2,7", 10) == [0, 1, 2, 7]
    for bad, message in (("3-12", "classes 0-9"), ("a-b", "expected ranges")):
        with pytest.raises(FastmbrError, match=message):
            parse_classes(bad, 10)


def test_composite_shift_trains_on_either_a_and_tests_on_every_b_at_once():
    from fastmbr.pipelines.shifts import brightness, contrast, parse_shift, split_domains

    g = torch.Generator().manual_seed(0)
    lo = torch.rand(400, 1, 1, 1, generator=g) * 255
    hi = lo + torch.rand(400, 1, 1, 1, generator=g) * (255 - lo)
    share = torch.rand(400, 1, 1, 1, generator=g)
    lo[:40], hi[:40], share[:40] = 0, 255, 0.9  # bright AND high-contrast images (B1 ∩ B2) are rare otherwise
    images = torch.where(torch.rand(400, 3, 8, 8, generator=g) < share, hi, lo).round().to(torch.uint8)
    data = LabeledImages(images, torch.arange(400) % 10, [str(i) for i in range(10)], "synthetic")
    out = split_domains(data, parse_shift("brightness+contrast"), "gtsrb", seed=0)
    b, c = brightness(images), contrast(images)
    expect_a = (b < 40) | (c < 80)
    expect_b = (b > 170) & (c > 230)
    assert expect_a.any() and expect_b.any()
    assert torch.equal(out["A"].images, images[expect_a]) and torch.equal(out["B"].images, images[expect_b])
    with pytest.raises(FastmbrError, match="only brightness and contrast"):
        parse_shift("brightness+background-color")
    with pytest.raises(FastmbrError, match="has no shift 'brightness'"):
        load_domains("mnist", "brightness+contrast")


def test_labelled_shifted_keeps_its_domain_b_minus_the_validation_frames():
    """An unpaired (threshold) shift adds every B image of the training split but those the validation split holds;
    frame ids attached before the split survive every subset, so the check is exact."""
    from fastmbr.pipelines.datasets import dataset_info, labelled_shifted
    from fastmbr.pipelines.shifts import brightness, contrast, parse_shift

    g = torch.Generator().manual_seed(3)
    levels = torch.randint(0, 256, (300, 1, 1, 1), generator=g)
    spread = torch.randint(0, 60, (300, 1, 1, 1), generator=g)
    noise = torch.rand(300, 3, 8, 8, generator=g)
    images = (levels - spread / 2 + spread * noise).round().clamp(0, 255).to(torch.uint8)
    train = LabeledImages(images, torch.arange(300) % 43, [str(i) for i in range(43)], "synthetic").with_frames()
    dark = torch.nonzero(brightness(train.images) < 40).flatten()
    labelled, val = train.subset(dark[: len(dark) // 2]), train.subset(dark[len(dark) // 2:])
    bright = labelled_shifted(train, labelled, val, parse_shift("brightness"), dataset_info("gtsrb"), 0, None)
    assert bright.frames.tolist() == torch.nonzero(brightness(train.images) > 170).flatten().tolist()
    flat = labelled_shifted(train, labelled, val, parse_shift("contrast:high-low"), dataset_info("gtsrb"), 0,
                            None)
    held_out = set(val.frames.tolist())
    want = [i for i in torch.nonzero(contrast(train.images) < 80).flatten().tolist() if i not in held_out]
    assert flat.frames.tolist() == want and len(want) < int((contrast(train.images) < 80).sum())
    assert torch.equal(flat.labels, train.labels[torch.tensor(want)])


def test_train_also_on_a_painted_shift_adds_the_red_renderings_of_the_labelled_digits(monkeypatch):
    from fastmbr.pipelines.datasets import load_domains

    monkeypatch.delenv("FASTMBR_DATA", raising=False)
    plain = load_domains("mnist", "background-color", None, limit=400)
    aug = load_domains("mnist", "background-color", None, limit=400, train_also="background-color:blue-red")
    n = len(plain.train)
    assert len(aug.train) == 2 * n and torch.equal(aug.train.images[:n], plain.train.images)
    assert torch.equal(aug.train.frames[n:], plain.train.frames)
    assert torch.equal(aug.train.labels[n:], plain.train.labels)
    red = aug.train.images[n:].float()
    assert red[:, 0].mean() - red[:, 2].mean() > 50  # red backgrounds, where domain A's are blue
    assert not set(aug.train.frames.tolist()) & set(aug.val.frames.tolist())


def test_concat_images_keeps_frames_only_when_every_part_has_them():
    from fastmbr.pipelines.types import concat_images

    a = LabeledImages(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), ["x", "y"]).with_frames()
    b = LabeledImages(torch.ones(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([1, 1, 0]), ["x", "y"])
    both = concat_images([a, b.with_frames()], "ab")
    assert both.labels.tolist() == [0, 1, 1, 1, 0] and both.frames.tolist() == [0, 1, 0, 1, 2]
    assert concat_images([a, b], "ab").frames is None
    with pytest.raises(ValueError, match="different classes"):
        concat_images([a, LabeledImages(b.images, b.labels, ["x", "z"])], "az")


def test_a_corruption_of_a_file_backed_dataset_decodes_it_into_memory_at_the_asked_size(data_root):
    from fastmbr.pipelines.readers.imagefolder import decode_rgb

    d = load_domains("imagenette", "corruption:snow-2", data_root, image_size=32)
    assert isinstance(d.train, LabeledImages) and d.train.images.shape[1:] == (3, 32, 32)
    assert d.counts()["train"]["A"] + d.counts()["val"]["A"] == 800 and d.counts()["test"] == {"A": 200, "B": 200}
    plain = load_domains("imagenette", None, data_root)  # no pixel shift: files, decoded by the loader
    first = decode_rgb(plain.test["A"].paths[0], (32, 32))
    assert torch.equal(d.test["A"].images[0], torch.from_numpy(first).permute(2, 0, 1))
    assert (d.test["B"].images.float() - d.test["A"].images.float()).abs().mean() > 5  # snow changes the pixels
    assert any("decoded into memory at 32 px" in note for note in d.notes)


def test_a_file_backed_split_too_large_to_decode_is_a_named_error(data_root, monkeypatch):
    import fastmbr.pipelines.datasets as datasets

    monkeypatch.setattr(datasets, "MAX_DECODED_BYTES", 1 << 20)
    with pytest.raises(FastmbrError, match=r"holds 800 images, .* decoded at 64 px; pass a smaller --image-size"):
        load_domains("imagenette", "corruption:fog-1", data_root, image_size=64)


@pytest.mark.parametrize("dataset,shift", [("mnist", "background-color"), ("gtsrb", "contrast"),
                                           ("imagenette", "corruption:frost-1"), ("imagenette", None)])
def test_test_only_prepares_the_same_test_domains_and_no_training_images(data_root, dataset, shift):
    data_dir = None if dataset == "mnist" else data_root
    full = load_domains(dataset, shift, data_dir, image_size=32, seed=4)
    test_only = load_domains(dataset, shift, data_dir, image_size=32, seed=4, test_only=True)
    assert len(test_only.train) == len(test_only.val) == 0 and len(full.train) > 0
    assert test_only.num_classes == full.num_classes and set(test_only.test) == set(full.test)
    for name, domain in full.test.items():
        if shift is None:  # files, decoded by the loader
            assert test_only.test[name].paths == domain.paths
        else:
            assert test_only.train.images.shape[1:] == (3, 32, 32)
            assert torch.equal(test_only.test[name].images, domain.images)
        assert torch.equal(test_only.test[name].labels, domain.labels)
