"""ImageNet-C-style corruptions (snow, fog, frost, brightness, contrast, ... at severities 1-5) as a shift.

``--shift corruption:snow-3``: domain A is the clean images, domain B the same images corrupted with ``snow`` at
severity 3 by the maintained fork of Hendrycks' code (``imagecorruptions-imaug``; the original package breaks on
numpy 2). Corrupting is slow (seconds per thousand small images, minutes for large ones), so each corrupted
array is cached on disk by the content of its input (``$XDG_CACHE_HOME/fastmbr/corruptions``); ``fastmbr prepare
DATASET --shift corruption:NAME-S`` fills the cache ahead of training. Each image's randomness (snow flakes,
noise) comes from its own seeded stream, so the result does not depend on the order or batching of images.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from fastmbr.errors import FastmbrError

SEVERITIES = (1, 2, 3, 4, 5)


def import_imagecorruptions():
    try:
        import imagecorruptions
    except ImportError:
        raise FastmbrError("corruption shifts need imagecorruptions-imaug: pip install 'fastmbr[corruptions]'") \
            from None
    return imagecorruptions


def corruption_names() -> list[str]:
    return list(import_imagecorruptions().get_corruption_names("all"))


# AlexNet's top-1 error on ImageNet-C, averaged over severities 1-5 (Hendrycks & Dietterich, 2019): the
# denominators of the corruption error CE and of its mean over the 15 corruptions, mCE
ALEXNET_ERROR = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640, "defocus_blur": 0.819880,
    "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360, "snow": 0.866816, "frost": 0.826572,
    "fog": 0.819324, "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
}


def mean_corruption_error(top1: dict[tuple[str, int], float]) -> float | None:
    """ImageNet-C's mCE (%) from top-1 accuracies (%) keyed by (corruption, severity): each corruption's error
    summed over the five severities over AlexNet's, averaged over the 15; None unless all 75 are there."""
    if any((name, s) not in top1 for name in ALEXNET_ERROR for s in SEVERITIES):
        return None
    ce = [sum(100 - top1[name, s] for s in SEVERITIES) / (len(SEVERITIES) * 100 * ALEXNET_ERROR[name])
          for name in ALEXNET_ERROR]
    return 100 * sum(ce) / len(ce)


def parse_corruption(text: str) -> tuple[str, int]:
    """``snow-3`` → ("snow", 3); names with underscores (``gaussian_noise-2``) are fine."""
    if text == "all":
        raise FastmbrError("corruption:all (every corruption and severity) is for fastmbr eval; here one is "
                           "needed, e.g. corruption:snow-3")
    name, _, severity = text.rpartition("-")
    if not name or not severity.isdigit() or int(severity) not in SEVERITIES:
        raise FastmbrError(f"corruption {text!r}: expected NAME-SEVERITY with severity 1-5, e.g. snow-3")
    known = corruption_names()
    if name not in known:
        raise FastmbrError(f"unknown corruption {name!r}; known: {', '.join(known)}")
    return name, int(severity)


def corrupt_one(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """One uint8 HWC image (C = 1 or 3) → corrupted uint8 of the same shape, from the stream ``seed``."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
        out = import_imagecorruptions().corrupt(rgb, corruption_name=name, severity=severity)
    finally:
        np.random.set_state(state)
    out = np.clip(np.asarray(out, dtype=np.float64), 0, 255).round().astype(np.uint8)
    if out.shape[:2] != image.shape[:2]:
        raise FastmbrError(f"corruption {name!r} changed the image size {image.shape[:2]} → {out.shape[:2]}")
    return out.mean(axis=2, keepdims=True).round().astype(np.uint8) if image.shape[2] == 1 else out


def corrupt_images(images: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` → corrupted uint8 ``[N, C, H, W]``; image i uses the stream ``seed·1000003 + i``."""
    if min(images.shape[-2:]) < 32:
        raise FastmbrError(f"corruptions need images of at least 32×32 px, got {tuple(images.shape[-2:])}")
    hwc = images.permute(0, 2, 3, 1).numpy()
    out = np.stack([corrupt_one(img, name, severity, seed * 1_000_003 + i) for i, img in enumerate(hwc)])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def corruption_cache_dir() -> Path:
    from fastmbr.pipelines.prepare import cache_dir

    return cache_dir() / "corruptions"


def cached_corruption(images: torch.Tensor, labels: torch.Tensor, name: str, severity: int, seed: int,
                      cache: Path | None = None) -> torch.Tensor:
    """``corrupt_images`` once per (pixels, labels, corruption, severity, seed); later calls read the cache."""
    from fastmbr.pipelines.prepare import content_key
    from fastmbr.pipelines.types import LabeledImages

    key = content_key(LabeledImages(images, labels, [], "")) + f"-{name}-{severity}-{seed}"
    folder = cache or corruption_cache_dir()
    path = folder / f"{key}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    out = corrupt_images(images, name, severity, seed)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as tmp:
        np.save(tmp, out.numpy())
    os.replace(tmp.name, path)
    return out
