"""torchvision's ImageFolder layout ``<root>/<split>/<class>/<image>``: decoded into memory, or listed as files.

Class folders sort into label order (``0``…``9``, ``00000``…``00042``, wnids). Every image is converted to RGB,
because real trees mix colour and greyscale JPEGs (Tiny-ImageNet holds 168 ``L`` images among 10,000).

A split folder holding its images flat, as ImageNet's ``val`` of Kaggle's download does, is labelled by the
``LOC_<split>_solution.csv`` found beside it or up to four folders above (``ImageId,PredictionString``, the
wnid first in each prediction), with the class folders of the ``train`` split beside it as the class list.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.types import ImageFiles, LabeledImages

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
_CHUNK = 256  # files per decode task: small PNGs are too cheap to schedule one by one


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def decode_rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file → uint8 ``[H, W, 3]`` (optionally resized bilinearly to ``size`` = (w, h));
    a truncated or unreadable file is a FastmbrError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size is not None and image.size != size:
                image = image.resize(size, Image.Resampling.BILINEAR)
            return np.array(image)  # writable: callers hand it to torch.from_numpy
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise FastmbrError(f"{path}: cannot decode image ({exc})") from None


def decode_error(path: Path) -> str | None:
    """The one-line error ``decode_rgb`` raises for ``path``, or None when it decodes."""
    try:
        decode_rgb(path)
    except FastmbrError as exc:
        return str(exc)
    return None


def _checked(entry: os.DirEntry, kind: str) -> bool:
    """``entry.is_dir()`` / ``is_file()``, with a symbolic-link loop or an unreadable entry as a FastmbrError
    naming it (never skipped: a missing class folder would shift every later label)."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError as exc:
        raise FastmbrError(f"{entry.path}: {exc.strerror or exc} (a symbolic link loop?)") from None


def _scandir(folder) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as exc:
        raise FastmbrError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None


def _subfolders(folder: Path) -> list[os.DirEntry]:
    return sorted((e for e in _scandir(folder) if _checked(e, "dir")), key=lambda e: e.name)


def _image_names(folder: str) -> list[str]:
    return sorted(e.name for e in _scandir(folder) if is_image(e.name) and _checked(e, "file"))


def _holds_class_folders(folder: Path) -> bool:
    """True when ``folder`` looks like a split folder: its first subfolder holds image files directly."""
    subs = _subfolders(folder)
    return bool(subs) and bool(_image_names(subs[0].path))


def split_folder(root: Path, split: str, accept_root: bool = False) -> Path:
    """``<root>/<split>``; with ``accept_root`` also ``root`` itself when it already holds class folders."""
    root = Path(root)
    if not root.is_dir():
        raise FastmbrError(f"image folder {root} does not exist")
    candidate = root / split
    if candidate.is_dir():
        return candidate
    if accept_root and _holds_class_folders(root):
        return root
    present = ", ".join(e.name for e in _subfolders(root)) or "nothing"
    raise FastmbrError(f"{root}: no split folder {split!r} (found: {present})")


def solution_file(folder: Path, split: str) -> Path | None:
    """Kaggle's ImageNet labels for a flat split folder: ``LOC_<split>_solution.csv`` beside it or above it."""
    name = f"LOC_{split}_solution.csv"
    return next((place / name for place in (folder, *folder.parents[:4]) if (place / name).is_file()), None)


def read_solution(path: Path) -> dict[str, str]:
    """Image id → wnid from a ``LOC_*_solution.csv`` (``ImageId,PredictionString``, the wnid first)."""
    with open(path, newline="") as f:
        rows = csv.reader(f)
        if next(rows, None) != ["ImageId", "PredictionString"]:
            raise FastmbrError(f"{path}: expected the header ImageId,PredictionString (Kaggle's ImageNet labels)")
        wnids = {}
        for line, row in enumerate(rows, start=2):
            if len(row) != 2 or not row[1].split():
                raise FastmbrError(f"{path}, line {line}: expected ImageId,<wnid> ..., got {','.join(row)!r}")
            wnids[row[0]] = row[1].split()[0]
    return wnids


def list_flat(folder: Path, solution: Path) -> tuple[list[Path], torch.Tensor, list[str]]:
    """A flat split folder labelled by ``solution``; the classes are the train split's class folders when it
    stands beside this one (so the labels are the training labels), else the wnids the solution names."""
    wnids = read_solution(solution)
    names = _image_names(str(folder))
    stems = [os.path.splitext(n)[0] for n in names]
    unlisted = next((i for i, stem in enumerate(stems) if stem not in wnids), None)
    if unlisted is not None:
        raise FastmbrError(f"{folder / names[unlisted]}: not listed in {solution}")
    wnid_of = [wnids[stem] for stem in stems]
    train = folder.parent / "train"
    classes = [e.name for e in _subfolders(train)] if train.is_dir() and train != folder else []
    classes = classes or sorted(set(wnid_of))
    index = {c: i for i, c in enumerate(classes)}
    foreign = next((i for i, wnid in enumerate(wnid_of) if wnid not in index), None)
    if foreign is not None:
        raise FastmbrError(f"{folder / names[foreign]}: labelled {wnid_of[foreign]} in {solution}, a class "
                           f"{train} has no folder for")
    labels = torch.tensor([index[wnid] for wnid in wnid_of], dtype=torch.int64)
    return [folder / n for n in names], labels, classes


def list_split(folder: Path, split: str) -> tuple[list[Path], torch.Tensor, list[str]]:
    """Paths, labels and class names of one split folder: class folders, or flat images with Kaggle's labels."""
    if not _subfolders(folder) and _image_names(str(folder)):
        solution = solution_file(folder, split)
        if solution is None:
            raise FastmbrError(f"{folder}: its images lie flat, with no class folders and no "
                               f"LOC_{split}_solution.csv beside or above it to label them "
                               f"(expected {folder}/<class>/<image>)")
        return list_flat(folder, solution)
    return list_tree(folder)


def list_tree(folder: Path) -> tuple[list[Path], torch.Tensor, list[str]]:
    """Paths, int64 labels and sorted class names of one split folder; an empty class is an error, as in
    torchvision, because it would silently shift every later label."""
    classes = _subfolders(folder)
    if not classes:
        raise FastmbrError(f"{folder}: no class folders (expected {folder}/<class>/<image>)")
    paths: list[Path] = []
    labels: list[int] = []
    for label, entry in enumerate(classes):
        names = _image_names(entry.path)
        if not names:
            raise FastmbrError(f"{entry.path}: class folder holds no images")
        paths.extend(Path(entry.path) / name for name in names)
        labels.extend([label] * len(names))
    return paths, torch.tensor(labels, dtype=torch.int64), [e.name for e in classes]


def _decode_into(out: np.ndarray, paths: list[Path], start: int, size: tuple[int, int] | None,
                 unreadable: list[int] | None) -> None:
    expected = out.shape[1:3]
    for i, path in enumerate(paths, start):
        try:
            pixels = decode_rgb(path, size)
        except FastmbrError:
            if unreadable is None:
                raise
            unreadable.append(i)
            continue
        if pixels.shape[:2] != expected:
            raise FastmbrError(
                f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]} but the first image of the folder is "
                f"{expected[1]}x{expected[0]}; use a file-list dataset (read_files) for mixed sizes"
            )
        out[i] = pixels


def decode_all(paths: list[Path], size: tuple[int, int] | None = None, workers: int | None = None,
               unreadable: list[int] | None = None) -> torch.Tensor:
    """Decode ``paths`` (all one size, or resized to ``size`` = (w, h)) into uint8 ``[N, 3, H, W]``.

    A file that does not decode is a one-line error naming it; given an ``unreadable`` list, it is left out of the
    result instead and its position appended there. Chunks run in a thread pool: Pillow releases the GIL while
    inflating or IDCT-decoding, so JPEGs gain from threads; tiny PNGs are bound by Python overhead either way."""
    first = _first_decodable(paths, size, unreadable is not None)
    out = np.empty((len(paths), *first.shape), dtype=np.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    starts = range(0, len(paths), _CHUNK)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = [pool.submit(_decode_into, out, paths[s : s + _CHUNK], s, size, unreadable) for s in starts]
        for job in jobs:
            job.result()
    images = torch.from_numpy(out).permute(0, 3, 1, 2)
    if unreadable:
        unreadable.sort()  # the chunks append in the order they finish
        images = images[decodable_mask(len(paths), unreadable)]
    return images.contiguous()


def decodable_mask(n: int, unreadable: list[int]) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[unreadable] = False
    return keep


def _first_decodable(paths: list[Path], size: tuple[int, int] | None, skip: bool) -> np.ndarray:
    """The first image (its shape sizes the output); when skipping, the first one that decodes."""
    for path in paths:
        try:
            return decode_rgb(path, size)
        except FastmbrError:
            if not skip:
                raise
    raise FastmbrError(f"{paths[0].parent.parent}: none of its {len(paths)} image files decodes")


def decode_labelled(paths: list[Path], labels: torch.Tensor, classes: list[str], source: str,
                    size: tuple[int, int] | None = None, skip_corrupt: bool = False) -> LabeledImages:
    """``paths`` decoded with their labels; under ``skip_corrupt`` without the files that do not decode, which
    the result lists in ``unreadable``."""
    unreadable: list[int] | None = [] if skip_corrupt else None
    images = decode_all(paths, size=size, unreadable=unreadable)
    if unreadable:
        labels = labels[decodable_mask(len(paths), unreadable)]
    return LabeledImages(images, labels, classes, source=source,
                         unreadable=tuple(str(paths[i]) for i in unreadable or ()))


def read(root: Path, split: str, skip_corrupt: bool = False) -> LabeledImages:
    """Decode ``<root>/<split>/<class>/*`` into memory as uint8 RGB ``[N, 3, H, W]``."""
    folder = split_folder(root, split)
    paths, labels, classes = list_split(folder, split)
    return decode_labelled(paths, labels, classes, str(folder), skip_corrupt=skip_corrupt)


def decode_files(files: ImageFiles, size: int, skip_corrupt: bool = False) -> LabeledImages:
    """A listed split decoded into memory at ``size`` px (Pillow's bilinear resize, antialiased when shrinking):
    the pixel shifts (corruptions) of a file-backed dataset need the images themselves."""
    if not files.paths:
        return LabeledImages(torch.zeros(0, 3, size, size, dtype=torch.uint8), files.labels, files.classes,
                             files.source)
    return decode_labelled(files.paths, files.labels, files.classes, files.source, (size, size), skip_corrupt)


def read_files(root: Path, split: str) -> ImageFiles:
    """List ``<root>/<split>/<class>/*`` (or ``root`` itself when it is the split folder) without decoding."""
    folder = split_folder(root, split, accept_root=True)
    paths, labels, classes = list_split(folder, split)
    return ImageFiles(paths, labels, classes, source=str(folder), meta={"split": split})
