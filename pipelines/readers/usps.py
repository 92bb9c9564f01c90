"""USPS in LIBSVM text format (``usps.bz2`` train, ``usps.t.bz2`` test): ``label idx:value ...`` per line.

Labels 1-10 become 0-9 and the 256 features in [-1, 1] become a 16×16 grey image with torchvision's mapping
``uint8((v + 1) / 2 · 255)`` in float32, so the pixels equal ``torchvision.datasets.USPS`` bit for bit.
Features a line leaves out are 0, as LIBSVM's sparse format allows.
"""

from __future__ import annotations

import bz2
from pathlib import Path

import numpy as np
import torch

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.types import LabeledImages

FILES = {"train": "usps", "test": "usps.t"}
SIDE = 16


def find_file(root: Path, split: str) -> Path:
    if split not in FILES:
        raise FastmbrError(f"usps has splits train/test, not {split!r}")
    stem = FILES[split]
    for path in (root / f"{stem}.bz2", root / stem):
        if path.is_file():
            return path
    raise FastmbrError(f"{root}: no {stem}.bz2 (USPS {split} split, LIBSVM format)")


def read_text(path: Path) -> str:
    try:
        raw = bz2.decompress(path.read_bytes()) if path.suffix == ".bz2" else path.read_bytes()
        return raw.decode("ascii")
    except (OSError, EOFError, ValueError) as exc:
        raise FastmbrError(f"{path}: cannot read ({exc})") from None


def parse_line(line: str, path: Path, number: int) -> tuple[int, np.ndarray]:
    """One LIBSVM row → (label 0-9, 256 float features)."""
    fields = line.split()
    features = np.zeros(SIDE * SIDE, dtype=np.float32)
    try:
        label = int(float(fields[0])) - 1
        for item in fields[1:]:
            index, value = item.split(":")
            features[int(index) - 1] = float(value)
    except (ValueError, IndexError):
        raise FastmbrError(f"{path}:{number}: not a LIBSVM row with 256 features") from None
    if not 0 <= label <= 9:
        raise FastmbrError(f"{path}:{number}: label {label + 1} outside 1-10")
    return label, features


def to_pixels(features: np.ndarray) -> np.ndarray:
    return ((np.clip(features, -1.0, 1.0) + 1.0) / 2.0 * 255.0).astype(np.uint8)


def read(root: Path, split: str) -> LabeledImages:
    """USPS as uint8 ``[N, 1, 16, 16]`` with labels 0-9."""
    path = find_file(Path(root), split)
    rows = [parse_line(line, path, n) for n, line in enumerate(read_text(path).splitlines(), 1) if line.strip()]
    if not rows:
        raise FastmbrError(f"{path}: holds no rows")
    labels = np.array([label for label, _ in rows], dtype=np.int64)
    pixels = to_pixels(np.stack([features for _, features in rows])).reshape(-1, 1, SIDE, SIDE)
    return LabeledImages(torch.from_numpy(pixels), torch.from_numpy(labels), [str(i) for i in range(10)], str(path))
