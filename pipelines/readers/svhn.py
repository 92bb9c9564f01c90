"""SVHN format 2 (cropped digits): ``train_32x32.mat`` / ``test_32x32.mat`` / ``extra_32x32.mat``.

Each file holds ``X`` uint8 ``[32, 32, 3, N]`` and ``y`` ``[N, 1]`` with labels 1-10, where 10 stands for digit 0.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.types import LabeledImages

SPLITS = ("train", "test", "extra")


def find_file(root: Path, split: str) -> Path:
    if split not in SPLITS:
        raise FastmbrError(f"svhn has splits {'/'.join(SPLITS)}, not {split!r}")
    path = Path(root) / f"{split}_32x32.mat"
    if not path.is_file():
        raise FastmbrError(f"{path} not found (SVHN format 2 .mat)")
    return path


def load_mat(path: Path) -> dict:
    """scipy.io.loadmat with every failure (truncated, HDF5/v7.3, not a .mat) turned into one line."""
    import scipy.io

    try:
        return scipy.io.loadmat(path, variable_names=("X", "y"))
    except (OSError, EOFError, ValueError, TypeError, NotImplementedError, zlib.error) as exc:
        raise FastmbrError(f"{path}: cannot read as a MATLAB v5 .mat file ({exc})") from None


def read(root: Path, split: str) -> LabeledImages:
    """SVHN as uint8 ``[N, 3, 32, 32]`` with labels 0-9."""
    path = find_file(root, split)
    mat = load_mat(path)
    if "X" not in mat or "y" not in mat:
        found = ", ".join(sorted(k for k in mat if not k.startswith("__"))) or "none"
        raise FastmbrError(f"{path}: expected variables X and y, found {found}")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != y.shape[0] or x.dtype != np.uint8:
        raise FastmbrError(f"{path}: X is {x.dtype} {list(x.shape)}, expected uint8 [32, 32, 3, {y.shape[0]}]")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise FastmbrError(f"{path}: labels must be 1-10 (10 = digit 0), found {int(y.min())}-{int(y.max())}")
    labels = np.where(y == 10, 0, y).astype(np.int64)
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return LabeledImages(torch.from_numpy(images), torch.from_numpy(labels), [str(i) for i in range(10)], str(path))
