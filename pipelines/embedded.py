"""The embedded default dataset: a real MNIST subset shipped inside the package (see scripts/build_embedded.py)."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.types import LabeledImages


def embedded_path() -> Path:
    return Path(str(resources.files("fastmbr") / "data" / "mnist_subset.npz"))


def read(root: Path | None, split: str) -> LabeledImages:
    """The embedded MNIST subset (6,000 train / 2,000 test, balanced); verifies its recorded sha256."""
    path = embedded_path()
    meta = json.loads(path.with_suffix(".json").read_text())
    if hashlib.sha256(path.read_bytes()).hexdigest() != meta["npz_sha256"]:
        raise FastmbrError(f"{path}: sha256 does not match {path.with_suffix('.json').name}; reinstall fastmbr")
    with np.load(path) as arrays:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    return LabeledImages(
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=[str(i) for i in range(10)],
        source=f"embedded:{path.name}",
    )
