"""Build fastmbr/data/mnist_subset.npz: the embedded default dataset of `make run`.

A real, class-balanced MNIST subset taken from the official idx files (the first N_PER_CLASS images of each
digit in file order), stored as a compressed array with the sha256 of the source files, so the main job runs
without network or a data folder. Usage: python scripts/build_embedded.py [MNIST_DIR]
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from fastmbr.pipelines.readers.idx import find_idx, read

TRAIN_PER_CLASS = 600
TEST_PER_CLASS = 200
OUT = Path(__file__).resolve().parents[1] / "fastmbr" / "data"


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    picks = [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
    return np.sort(np.concatenate(picks))


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(os.environ.get("FASTMBR_DATA", "../shared/data")) / "mnist")
    arrays, sources = {}, {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        data = read(root, split)
        labels = data.labels.numpy()
        keep = first_per_class(labels, per_class)
        arrays[f"{split}_images"] = data.images.numpy()[keep, 0]
        arrays[f"{split}_labels"] = labels[keep].astype(np.uint8)
        prefix = "train" if split == "train" else "t10k"
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            path = find_idx(root, f"{prefix}-{kind}")
            sources[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "mnist_subset.npz", **arrays)
    meta = {
        "what": f"MNIST subset: first {TRAIN_PER_CLASS}/class of train, first {TEST_PER_CLASS}/class of t10k",
        "source_sha256": sources,
        "npz_sha256": hashlib.sha256((OUT / "mnist_subset.npz").read_bytes()).hexdigest(),
    }
    (OUT / "mnist_subset.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2), (OUT / "mnist_subset.npz").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
