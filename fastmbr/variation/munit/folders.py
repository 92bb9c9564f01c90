"""Unlabelled image folders as a MUNIT domain (``--a-dir`` / ``--b-dir``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fastmbr.errors import FastmbrError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


def image_paths(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FastmbrError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FastmbrError(f"image folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def read_folder(folder: str | Path, size: int | None = None) -> torch.Tensor:
    """Every image under folder as uint8 RGB ``[N, 3, size, size]``; size defaults to the first image's (square)."""
    from PIL import Image

    images = []
    for path in image_paths(Path(folder)):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if size is None:
                    if im.width != im.height:
                        raise FastmbrError(f"{path} is {im.width}×{im.height}: pass --image-size to resize")
                    size = im.width
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8))
        except OSError as exc:
            raise FastmbrError(f"{path}: cannot read the image ({exc})") from None
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
