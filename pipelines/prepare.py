"""Prepared copies of datasets: FFCV ``.beton`` files, cached by content under ``$XDG_CACHE_HOME/fastmbr``.

In-memory images are stored exactly (an ``NDArrayField`` of uint8 ``[C, H, W]``, any channel count). Image
files are stored as JPEG at quality 90 (``RGBImageField(write_mode="jpg")``, FFCV's ImageNet recipe), so the
loader decodes with FFCV's JPEG decoder and an ImageNet-scale ``.beton`` stays near the size of the JPEG tree
instead of the ~10× of raw pixels; the crop decoders work on either. ``max_resolution`` (FFCV's recipe uses
256-512 for ImageNet) stores each file with its longer side at most that many pixels: a smaller ``.beton`` and
less to decode per image, for crops taken at a lower resolution than the originals. Files are written to a
temporary name and renamed, so an interrupted write never leaves a half ``.beton`` under the final name.
"""

from __future__ import annotations

import gc
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.types import ImageFiles, LabeledImages

JPEG_QUALITY = 90


def import_ffcv():
    try:
        import ffcv  # noqa: F401
    except ImportError as exc:
        raise FastmbrError(
            "loader 'ffcv' needs the ffcv package: apt-get install libturbojpeg0-dev libopencv-dev pkg-config, "
            f"then pip install ffcv==1.0.2 ({exc})"
        ) from None
    import ffcv.fields
    import ffcv.writer

    return ffcv


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastmbr"


def content_key(data: LabeledImages | ImageFiles) -> str:
    """A hash of what a .beton would hold: pixels and labels, or file paths with their size and mtime."""
    digest = hashlib.sha256(data.labels.numpy().tobytes())
    if isinstance(data, LabeledImages):
        digest.update(str(tuple(data.images.shape)).encode())
        digest.update(data.images.contiguous().numpy().tobytes())
    else:
        for path in data.paths:
            stat = Path(path).stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


class _InMemory:
    def __init__(self, data: LabeledImages):
        self.images, self.labels = data.images.numpy(), data.labels.numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


class _Files:
    def __init__(self, data: ImageFiles):
        self.paths, self.labels = data.paths, data.labels.numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from fastmbr.pipelines.readers.imagefolder import decode_rgb

        return decode_rgb(self.paths[i]), int(self.labels[i])


def check_files_exist(data: ImageFiles) -> None:
    missing = next((p for p in data.paths if not Path(p).is_file()), None)
    if missing is not None:
        raise FastmbrError(f"{missing}: listed in the dataset but not on disk (files changed since it was read?)")


def check_files_decode(data: ImageFiles, workers: int) -> None:
    """Every listed file decodes, else a one-line error naming it.

    FFCV's writer waits forever for a worker process that died on an unreadable file, so a ``.beton`` is only
    written from files known to decode: one extra decode per file, paid when the ``.beton`` is written."""
    from fastmbr.pipelines.readers.imagefolder import decode_rgb

    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow decodes without holding the GIL
        for _ in pool.map(decode_rgb, data.paths):
            pass


def check_max_resolution(max_resolution: int | None) -> None:
    if max_resolution is not None and max_resolution < 1:
        raise FastmbrError(f"--max-resolution must be a positive number of pixels, not {max_resolution}")


def write_beton(data: LabeledImages | ImageFiles, path: Path, num_workers: int = 2,
                known_to_decode: bool = False, max_resolution: int | None = None) -> Path:
    """Write ``data`` to an FFCV ``.beton`` at ``path`` (atomically); image files are checked first, unless the
    caller has just decoded every one of them (``known_to_decode``: one pass over ImageNet saved), and stored
    with their longer side at most ``max_resolution`` (in-memory images are stored exactly)."""
    check_max_resolution(max_resolution)
    ffcv = import_ffcv()
    if isinstance(data, ImageFiles):
        check_files_exist(data)
        if not known_to_decode:
            check_files_decode(data, max(1, num_workers))
    if isinstance(data, LabeledImages):
        image_field = ffcv.fields.NDArrayField(np.dtype("uint8"), tuple(data.images.shape[1:]))
        source = _InMemory(data)
    else:
        image_field = ffcv.fields.RGBImageField(write_mode="jpg", jpeg_quality=JPEG_QUALITY,
                                                max_resolution=max_resolution)
        source = _Files(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fields = {"image": image_field, "label": ffcv.fields.IntField()}
    # FFCV's writer forks its workers. Garbage left in this process (a finished DALI pipeline, say) would be
    # collected in a forked child, where DALI's teardown segfaults and the parent then waits for the dead worker
    # forever; collect it here, before the fork.
    gc.collect()
    try:
        ffcv.writer.DatasetWriter(str(temp), fields, num_workers=num_workers).from_indexed_dataset(source)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def beton_path(data: LabeledImages | ImageFiles, max_resolution: int | None = None) -> Path:
    """Where the cached .beton of ``data`` lives (named by its content and, for files, their encoding)."""
    if isinstance(data, LabeledImages):
        kind = "memory"
    else:
        kind = f"files-jpg{JPEG_QUALITY}" + (f"-max{max_resolution}" if max_resolution is not None else "")
    return cache_dir() / "beton" / f"{kind}-{content_key(data)}.beton"


def beton_for(data: LabeledImages | ImageFiles, num_workers: int = 2, known_to_decode: bool = False,
              max_resolution: int | None = None) -> Path:
    """The cached .beton of ``data``, written on first use."""
    path = beton_path(data, max_resolution)
    if path.is_file():
        return path
    return write_beton(data, path, num_workers, known_to_decode, max_resolution)
