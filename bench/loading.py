"""Loader benchmarks over a JPEG tree written for the run: each file backend alone, then ERM's training step fed
by it against the same step on a batch already resident on the device (the loader's cost is the gap).

The tree holds photo-like images (smooth colour fields with grain, JPEG quality 90) at ImageNet's typical
aspect, scaled to the bench's image size: 500×375 for 224 px. Every backend reads the same files with
random-resized-crop + flip, the training augmentation; the first epoch is a warm-up (DALI's pipeline build,
FFCV's ``.beton`` write, worker start-up, compilation), the epochs after it are timed.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastmbr.bench.stages import sync
from fastmbr.pipelines.types import ImageFiles

FILE_BACKENDS = ("torch", "nvjpeg", "dali", "ffcv")
TIMED_EPOCHS = 2
CLASSES = 10


def capped_resolution(image_size: int) -> int:
    """The longer side FFCV's ``.beton`` is capped at in the capped case: 256 for 224 px crops (FFCV's recipe
    stores ImageNet at 256-512), scaled with the image size."""
    return round(image_size * 256 / 224)


def tree_shape(image_size: int) -> tuple[int, int]:
    """(width, height) of the tree's images: ImageNet's typical 500×375 at 224 px, scaled with the image size."""
    return round(image_size * 500 / 224), round(image_size * 375 / 224)


def photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random colour field with fine grain: JPEG sizes and decode costs near a photograph's."""
    coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    grain = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    return np.clip(field + grain, 0, 255).astype(np.uint8)


def write_jpeg_tree(root: Path, images: int, image_size: int, seed: int = 0, workers: int = 4) -> ImageFiles:
    """``root/train/<class>/<i>.jpg``, ``images`` files over CLASSES classes, listed as the loaders take them."""
    width, height = tree_shape(image_size)
    paths = [root / "train" / f"c{i % CLASSES}" / f"{i:06d}.jpg" for i in range(images)]
    for folder in {p.parent for p in paths}:
        folder.mkdir(parents=True, exist_ok=True)

    def write(i: int) -> None:
        rng = np.random.default_rng((seed, i))
        Image.fromarray(photo_like(rng, width, height)).save(paths[i], quality=90)

    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow encodes without holding the GIL
        list(pool.map(write, range(images)))
    labels = torch.tensor([i % CLASSES for i in range(images)], dtype=torch.int64)
    return ImageFiles(paths, labels, [f"c{c}" for c in range(CLASSES)], source=str(root / "train"))


@contextmanager
def private_cache(folder: Path) -> Iterator[None]:
    """FFCV's ``.beton`` of the throw-away tree goes beside it, never into the user's cache."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder / "cache")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = before


@contextmanager
def jpeg_tree(images: int, image_size: int, workers: int) -> Iterator[ImageFiles]:
    with tempfile.TemporaryDirectory(prefix="fastmbr-bench-") as folder, private_cache(Path(folder)):
        yield write_jpeg_tree(Path(folder), images, image_size, workers=workers)


def file_loader(files: ImageFiles, backend: str, batch: int, image_size: int, device: torch.device,
                workers: int, channels_last: bool = False, max_resolution: int | None = None):
    from fastmbr.pipelines.loaders import LoaderConfig, build_loader

    return build_loader(files, LoaderConfig(batch_size=batch, augment="rrc-flip", image_size=image_size,
                                            device=device, backend=backend, num_workers=workers,
                                            drop_last=True, channels_last=channels_last,
                                            max_resolution=max_resolution))


def timed_epochs(loader, device: torch.device, per_batch: Callable[[torch.Tensor, torch.Tensor], object]) -> float:
    """Images per second over TIMED_EPOCHS epochs after one warm-up epoch, ``per_batch`` applied to each batch."""
    seen = 0
    for epoch in range(1 + TIMED_EPOCHS):
        if epoch == 1:
            sync(device)
            start, seen = time.perf_counter(), 0
        loader.set_epoch(epoch)
        for x, y in loader:
            per_batch(x, y)
            seen += y.shape[0]
    sync(device)
    return seen / (time.perf_counter() - start)


def backend_error(backend: str) -> str | None:
    """Why ``backend`` cannot run here (its package missing), or None."""
    from fastmbr.pipelines.loaders.dali import dali_available
    from fastmbr.pipelines.loaders.ffcv import ffcv_available

    if backend == "dali" and not dali_available():
        return "nvidia-dali is not installed here"
    if backend == "ffcv" and not ffcv_available():
        return "ffcv is not installed here"
    return None


def bench_file_loader(files: ImageFiles, backend: str, batch: int, image_size: int, device: torch.device,
                      workers: int, max_resolution: int | None = None) -> dict:
    """One backend alone: decode, random-resized-crop, flip, onto the device (FFCV's files stored with their
    longer side capped at ``max_resolution`` when given)."""
    width, height = tree_shape(image_size)
    name = backend if max_resolution is None else f"{backend} max-res {max_resolution}"
    case = {"case": f"loader {name} (JPEG {width}×{height} → {image_size}px, rrc-flip)", "images": len(files)}
    if (error := backend_error(backend)) is not None:
        return {**case, "error": error}
    loader = file_loader(files, backend, batch, image_size, device, workers, max_resolution=max_resolution)
    return {**case, "images/s": timed_epochs(loader, device, lambda x, y: None), "workers": workers}


def bench_erm_fed_by(files: ImageFiles, backend: str, step: Callable, batch: int, image_size: int,
                     device: torch.device, workers: int, label: str) -> dict:
    """ERM's step fed by ``backend`` against the same step on one resident batch, as many steps."""
    case = {"case": f"ERM fed by {backend} ({label})", "images": len(files)}
    if (error := backend_error(backend)) is not None:
        return {**case, "error": error}
    loader = file_loader(files, backend, batch, image_size, device, workers, channels_last=True)
    fed = timed_epochs(loader, device, step)
    x = torch.rand(batch, 3, image_size, image_size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (batch,), device=device)
    steps = TIMED_EPOCHS * (len(files) // batch)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    sync(device)
    resident = steps * batch / (time.perf_counter() - start)
    return {**case, "fed images/s": fed, "resident images/s": resident, "fed / resident": fed / resident,
            "workers": workers}
