"""Corruption shifts: parsing, the corrupted pixels, the on-disk cache, and the domains they make."""

import pytest
import torch

from fastmbr.errors import FastmbrError
from fastmbr.pipelines import corruptions
from fastmbr.pipelines.corruptions import cached_corruption, corrupt_images, parse_corruption
from fastmbr.pipelines.datasets import load_domains
from fastmbr.pipelines.shifts import parse_shift


def _images(n=3, channels=3, side=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, side, side), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("text, message", [
    ("snow", "NAME-SEVERITY"), ("snow-6", "severity 1-5"), ("snow-0", "severity 1-5"),
    ("rain-2", "unknown corruption 'rain'"),
])
def test_bad_corruption_specs_are_one_line_errors(text, message):
    with pytest.raises(FastmbrError, match=message):
        parse_shift(f"corruption:{text}")


def test_shift_spec_names_clean_and_the_corruption():
    assert parse_shift("corruption:gaussian_noise-2").b == "gaussian_noise-2"
    assert parse_corruption("gaussian_noise-2") == ("gaussian_noise", 2)
    assert parse_shift("corruption").a == "clean"


@pytest.mark.parametrize("channels", [1, 3])
def test_corrupted_images_keep_shape_and_are_reproducible(channels):
    x = _images(channels=channels)
    once, again = corrupt_images(x, "snow", 3, seed=5), corrupt_images(x, "snow", 3, seed=5)
    assert once.shape == x.shape and once.dtype == torch.uint8
    assert torch.equal(once, again) and not torch.equal(once, x)
    assert not torch.equal(once, corrupt_images(x, "snow", 3, seed=6))


def test_higher_severity_moves_further_from_the_clean_image():
    x = _images(n=4, seed=1)
    distance = [(corrupt_images(x, "contrast", s, 0).float() - x.float()).abs().mean() for s in (1, 5)]
    assert distance[1] > distance[0] > 0


def test_small_images_are_refused():
    with pytest.raises(FastmbrError, match="at least 32"):
        corrupt_images(_images(side=28), "fog", 1, 0)


def test_cache_is_written_once_and_read_back(tmp_path, monkeypatch):
    x, y = _images(), torch.arange(3)
    first = cached_corruption(x, y, "fog", 2, 0, cache=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1

    def fail(*args):
        raise AssertionError("recomputed instead of reading the cache")

    monkeypatch.setattr(corruptions, "corrupt_images", fail)
    assert torch.equal(cached_corruption(x, y, "fog", 2, 0, cache=tmp_path), first)
    with pytest.raises(AssertionError, match="recomputed"):
        cached_corruption(x, y, "fog", 3, 0, cache=tmp_path)


def test_domains_pair_clean_and_corrupted_test_images(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    d = load_domains("mnist", "corruption:pixelate-4", limit=200)
    a, b = d.test["A"], d.test["B"]
    assert torch.equal(a.labels, b.labels) and not torch.equal(a.images, b.images)
    assert a.images.shape == b.images.shape and len(d.unlabeled["A"]) and len(d.unlabeled["B"])
    assert any((tmp_path / "fastmbr" / "corruptions").glob("*.npy"))


def test_prepare_command_fills_the_cache_and_refuses_unknown_formats(tmp_path, monkeypatch, capsys):
    from fastmbr.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    main(["prepare", "mnist", "--shift", "corruption:pixelate-2"])
    assert "clean→pixelate-2" in capsys.readouterr().out
    assert len(list((tmp_path / "fastmbr" / "corruptions").glob("*.npy"))) == 2
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "mnist", "--format", "tfrecord"])
    assert exc.value.code == 2 and "unknown --format 'tfrecord'" in capsys.readouterr().err
