"""The idx format of the MNIST family (MNIST, Fashion-MNIST, Q/E/K-MNIST): gzip + big-endian header."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.types import LabeledImages

_PREFIX = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(raw: bytes, path: Path) -> np.ndarray:
    """Decode one idx file's bytes; a short or malformed file is a FastmbrError naming it."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise FastmbrError(f"{path}: not an idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    need = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) < need:
        raise FastmbrError(f"{path}: truncated idx file ({len(raw)} bytes, header says {need})")
    return np.frombuffer(raw, dtype=dtype, count=int(np.prod(dims)), offset=header).reshape(dims)


def read_idx_file(path: Path) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise FastmbrError(f"{path}: cannot read ({exc})") from None
    return parse_idx(raw, path)


def find_idx(root: Path, stem: str) -> Path:
    """Look for ``stem`` (.gz or raw) flat in root, or in its ``raw/`` (torchvision's ``<Name>/raw/`` layout, when
    ``dataset_root`` picked ``<Name>``). Never in a sibling dataset's folder: MNIST and Fashion-MNIST share every
    file name."""
    candidates = [root / f"{stem}.gz", root / stem, root / "raw" / f"{stem}.gz", root / "raw" / stem]
    for path in candidates:
        if path.is_file():
            return path
    raise FastmbrError(f"{root}: no {stem}(.gz) found (flat or in raw/)")


def read(root: Path, split: str) -> LabeledImages:
    """Read one split of an idx dataset as uint8 ``[N, 1, 28, 28]`` images with labels 0..9."""
    if split not in _PREFIX:
        raise FastmbrError(f"idx datasets have splits train/test, not {split!r}")
    images_path = find_idx(root, f"{_PREFIX[split]}-images-idx3-ubyte")
    labels_path = find_idx(root, f"{_PREFIX[split]}-labels-idx1-ubyte")
    images, labels = read_idx_file(images_path), read_idx_file(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise FastmbrError(f"{images_path}: {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels")
    return LabeledImages(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=[str(i) for i in range(10)],
        source=str(root),
    )
