"""CURE-TSR: traffic-sign crops whose file names carry the label and the challenge.

Names follow ``<sequenceType>_<signType>_<challengeType>_<challengeLevel>_<index>.bmp``, e.g.
``01_04_00_00_0001.bmp`` (real sequence, sign 4, no challenge). Images lie anywhere below ``<root>/Real_Train`` or
``<root>/Real_Test`` (the release nests them in per-challenge folders; ``train/`` and ``test/`` are accepted too).
Crops vary in size, so they are resized to ``size``×``size`` on read.

Under ``skip_corrupt`` a file that does not decode is left out as it is read (listed in ``unreadable``); the
labels, challenges and frame ids of the rest stay aligned with their images.

Every challenged image is rendered from a challenge-free frame with the same sequence, sign and index, so each
image also carries a frame id: images sharing one are renderings of one crop. Ids are numbered within a split
(Real_Train and Real_Test are separate recordings), so they are compared only inside one split.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.readers.imagefolder import decodable_mask, decode_all
from fastmbr.pipelines.types import LabeledImages

SIGN_TYPES = (
    "speed_limit", "goods_vehicles", "no_overtaking", "no_stopping", "no_parking", "stop", "bicycle",
    "hump", "no_left", "no_right", "priority_to", "no_entry", "yield", "parking",
)
CHALLENGE_TYPES = (
    "none", "decolorization", "lens_blur", "codec_error", "darkening", "dirty_lens", "exposure",
    "gaussian_blur", "noise", "rain", "shadow", "snow", "haze",
)
MAX_LEVEL = 5
SPLIT_FOLDERS = {"train": ("Real_Train", "train"), "test": ("Real_Test", "test")}
_NAME = re.compile(r"^(\d{2})_(\d{2})_(\d{2})_(\d{2})_(\d+)\.bmp$", re.IGNORECASE)


@dataclass
class CureTsrImages(LabeledImages):
    """LabeledImages plus each image's challenge type (index into CHALLENGE_TYPES), level (0-5) and frame id.

    ``frames`` defaults to one frame per image (position order) when the caller knows no pairing.
    """

    challenge_types: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    challenge_levels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    def __post_init__(self):
        super().__post_init__()
        n = len(self)
        if self.frames is None:
            self.frames = torch.arange(n)
        assert self.challenge_types.shape == (n,) and self.challenge_levels.shape == (n,)
        assert self.frames.shape == (n,)

    def subset(self, index: torch.Tensor) -> "CureTsrImages":
        return CureTsrImages(
            self.images[index], self.labels[index], self.classes, self.source, frames=self.frames[index],
            challenge_types=self.challenge_types[index], challenge_levels=self.challenge_levels[index],
            unreadable=self.unreadable,
        )


class CureTsrName(NamedTuple):
    """What a CURE-TSR file name says: the label and challenge, and the frame (sequence, sign, index) it shows."""

    label: int
    challenge: int
    level: int
    sequence: int
    index: int


def split_folder(root: Path, split: str) -> Path:
    if split not in SPLIT_FOLDERS:
        raise FastmbrError(f"cure-tsr has splits train/test, not {split!r}")
    for name in SPLIT_FOLDERS[split]:
        if (Path(root) / name).is_dir():
            return Path(root) / name
    raise FastmbrError(f"{root}: no {' or '.join(SPLIT_FOLDERS[split])} folder (CURE-TSR {split} split)")


def parse_name(path: Path) -> CureTsrName:
    """File name → label 0-13, challenge type 0-12, level 0-5, sequence and index; anything else names the file."""
    match = _NAME.match(path.name)
    if match is None:
        raise FastmbrError(f"{path}: not a CURE-TSR name <sequence>_<sign>_<challenge>_<level>_<index>.bmp")
    sequence, sign, challenge, level, index = (int(g) for g in match.groups())
    if not 1 <= sign <= len(SIGN_TYPES):
        raise FastmbrError(f"{path}: sign type {sign:02d} outside 01-{len(SIGN_TYPES)}")
    if not 0 <= challenge < len(CHALLENGE_TYPES):
        raise FastmbrError(f"{path}: challenge type {challenge:02d} outside 00-{len(CHALLENGE_TYPES) - 1:02d}")
    if not 0 <= level <= MAX_LEVEL:
        raise FastmbrError(f"{path}: challenge level {level:02d} outside 00-{MAX_LEVEL:02d}")
    return CureTsrName(sign - 1, challenge, level, sequence, index)


def frames_of(names: list[CureTsrName]) -> torch.Tensor:
    """Dense ids 0..F-1, one per distinct (sequence, sign, index): the frame every rendering of a crop shares."""
    keys = torch.tensor([(n.sequence, n.label, n.index) for n in names], dtype=torch.int64)
    return torch.unique(keys, dim=0, return_inverse=True)[1]


def list_bmps(folder: Path) -> list[Path]:
    found = [Path(d) / f for d, _, files in os.walk(folder) for f in files if f.lower().endswith(".bmp")]
    if not found:
        raise FastmbrError(f"{folder}: holds no .bmp images")
    return sorted(found, key=lambda p: (p.name, str(p)))


def read(root: Path, split: str, size: int = 32, skip_corrupt: bool = False) -> CureTsrImages:
    """CURE-TSR as uint8 RGB ``[N, 3, size, size]``, labels 0-13, with per-image challenge type, level and frame."""
    folder = split_folder(root, split)
    paths = list_bmps(folder)
    names = [parse_name(p) for p in paths]
    unreadable: list[int] | None = [] if skip_corrupt else None
    images = decode_all(paths, size=(size, size), unreadable=unreadable)
    if unreadable:
        keep = decodable_mask(len(paths), unreadable).tolist()
        names = [n for n, kept in zip(names, keep) if kept]
    column = torch.tensor(names, dtype=torch.int64).T
    return CureTsrImages(images, column[0].contiguous(), list(SIGN_TYPES), str(folder), frames=frames_of(names),
                         unreadable=tuple(str(paths[i]) for i in unreadable or ()),
                         challenge_types=column[1].contiguous(), challenge_levels=column[2].contiguous())
