"""Dataset registry: name → reader, on-disk folder, classes, preparation size and the shifts it supports.

``load_split`` reads one split as stored; ``load_domains`` prepares images (RGB, the preset size), applies the
shift, and carves a validation split out of domain A's training data, so model selection never sees B.
Splits inside one stored split are keyed by frame (shifts.frame_ids): every rendering of a frame lands on one side,
so neither the validation split nor G's unlabelled A and B pools share a frame with their counterpart.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.shifts import PAIRED_SHIFTS, ShiftSpec, frame_ids, parse_shift, split_domains
from fastmbr.pipelines.types import ImageFiles, LabeledImages, concat_images


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    reader: str  # "module:function" taking (root: Path, split: str)
    folder: str  # folder name under the data root
    num_classes: int
    image_size: int  # size images are prepared at (paper: 32 for digits/SVHN/CURE-TSR, 64 for GTSRB)
    splits: tuple[str, ...]
    shifts: tuple[str, ...]
    default_shift: str
    in_memory: bool = True
    description: str = ""
    # a folder beside the dataset's holding pre-rendered corruptions <corruption>/<severity>/<class>/<image> (as
    # ImageNet-C is published): domain B of a corruption shift is read from there, never rendered in memory
    prerendered: str = ""


_R = "fastmbr.pipelines.readers"
DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("mnist", f"{_R}.idx:read", "mnist", 10, 32, ("train", "test"),
                    ("background-color", "corruption"), "background-color",
                    description="MNIST idx (embedded subset when no data folder is found)"),
        DatasetInfo("fashion-mnist", f"{_R}.idx:read", "fashion-mnist", 10, 32, ("test",),
                    ("background-color", "corruption"), "background-color", description="Fashion-MNIST idx"),
        DatasetInfo("usps", f"{_R}.usps:read", "usps", 10, 32, ("test",),
                    ("background-color", "corruption"), "background-color", description="USPS LIBSVM .bz2"),
        DatasetInfo("mnist-m", f"{_R}.imagefolder:read", "mnist-m", 10, 32, ("test",), ("none", "corruption"), "none",
                    description="MNIST-M PNG folder"),
        DatasetInfo("svhn", f"{_R}.svhn:read", "svhn", 10, 32, ("train", "test"),
                    ("brightness", "contrast", "corruption"),
                    "brightness", description="SVHN .mat (format 2)"),
        DatasetInfo("gtsrb", f"{_R}.imagefolder:read", "gtsrb", 43, 32, ("train", "test"),
                    ("brightness", "contrast", "corruption"), "brightness", description="GTSRB PNG folders"),
        DatasetInfo("cure-tsr", f"{_R}.cure_tsr:read", "cure-tsr", 14, 32, ("train", "test"),
                    ("challenge", "none", "corruption"), "challenge",
                    description="CURE-TSR (challenge type and level in the file names; challenge:snow-2 default)"),
        DatasetInfo("tiny-imagenet", f"{_R}.imagefolder:read", "tiny-imagenet", 200, 64, ("val",),
                    ("none", "corruption"), "none", description="Tiny-ImageNet JPEG folder"),
        DatasetInfo("imagenette", f"{_R}.imagefolder:read_files", "imagenette", 10, 224, ("val",),
                    ("none", "corruption"), "none", in_memory=False,
                    description="Imagenette JPEG folder (decoded by the loader; into memory for a corruption)"),
        DatasetInfo("imagenet", f"{_R}.imagefolder:read_files", "imagenet", 1000, 224, ("train", "val"),
                    ("none", "corruption"), "none", in_memory=False, prerendered="imagenet-c",
                    description="ImageNet ImageFolder tree (a flat val: labelled by Kaggle's LOC_val_solution.csv; "
                                "corruptions: ImageNet-C's folders in imagenet-c/ beside it)"),
        DatasetInfo("folder", f"{_R}.imagefolder:read_files", "", 0, 224, ("train", "val"), ("none", "corruption"),
                    "none", in_memory=False, description="any ImageFolder tree (--data-dir points at it)"),
    )
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise FastmbrError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def data_root(data_dir: str | Path | None) -> Path | None:
    """--data-dir, else $FASTMBR_DATA, else None."""
    base = data_dir if data_dir is not None else os.environ.get("FASTMBR_DATA")
    return Path(base).expanduser() if base else None


def dataset_root(info: DatasetInfo, data_dir: str | Path | None) -> Path | None:
    """Where the dataset lies: ``<root>/<folder>`` or the root itself; None for the embedded MNIST subset."""
    base = data_root(data_dir)
    if base is None:
        if info.name == "mnist":
            return None
        raise FastmbrError(f"dataset {info.name!r}: no data folder; pass --data-dir or set FASTMBR_DATA")
    if not base.is_dir():
        raise FastmbrError(f"data folder {base} does not exist")
    if not info.folder:  # "folder": the root is the dataset
        return base
    # Only the dataset's own folder: <root>/<folder> (or torchvision's <root>/<Name>), or the root itself when it
    # bears one of those names. Never another dataset's folder that happens to be readable the same way.
    names = own_folder_names(info)
    candidates = [base / name for name in names] + ([base] if {base.name, base.resolve().name} & set(names) else [])
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    raise FastmbrError(f"dataset {info.name!r} not found: {base / info.folder} is missing or empty (a folder is "
                       f"taken as {info.name} only when named {' or '.join(names)})")


TORCHVISION_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "usps": "USPS", "svhn": "SVHN",
                     "gtsrb": "GTSRB"}


def own_folder_names(info: DatasetInfo) -> list[str]:
    """The folder names a dataset is found under: fastmbr's, and torchvision's where it has one."""
    return [info.folder] + ([TORCHVISION_NAMES[info.name]] if info.name in TORCHVISION_NAMES else [])


def _reader(info: DatasetInfo, root: Path | None):
    if root is None:
        from fastmbr.pipelines import embedded

        return embedded.read
    module, func = info.reader.split(":")
    return getattr(importlib.import_module(module), func)


def load_split(name: str, split: str, data_dir: str | Path | None = None,
               skip_corrupt: bool = False) -> LabeledImages | ImageFiles:
    """One split of a dataset exactly as stored (uint8, native size) or as a file list. ``skip_corrupt`` reaches
    the readers that decode image files (they then leave out, and list, the files that do not decode)."""
    info = dataset_info(name)
    root = dataset_root(info, data_dir)
    reader = _reader(info, root)
    skips = skip_corrupt and "skip_corrupt" in inspect.signature(reader).parameters
    data = reader(root, split, skip_corrupt=True) if skips else reader(root, split)
    if len(data) == 0:
        raise FastmbrError(f"dataset {name!r}: split {split!r} under {root} holds no images")
    return data


def prepare(data: LabeledImages, size: int, channels: int = 3) -> LabeledImages:
    """uint8 images → uint8 ``[N, channels, size, size]`` (grey repeated, bilinear antialiased resize)."""
    images = data.images
    if images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-2:] != (size, size):
        chunks = [
            F.interpolate(c.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            .round().clamp(0, 255).to(torch.uint8)
            for c in images.split(4096)
        ]
        images = torch.cat(chunks)
    return dataclasses.replace(data, images=images.contiguous())  # keeps subclass fields (CURE-TSR challenges)


def deterministic_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (rest, carved) with ``round(n·fraction)`` carved, from a seeded permutation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = int(round(n * fraction))
    return perm[cut:].sort().values, perm[:cut].sort().values


def frame_split(data, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``deterministic_split`` over the distinct frames of ``data``: indices (rest, carved), a frame's images together.

    Without frame ids every image is its own frame, and this is ``deterministic_split(len(data), ...)`` exactly.
    """
    keys, frame_of = torch.unique(frame_ids(data), return_inverse=True)
    _, carved_keys = deterministic_split(len(keys), fraction, seed)
    carved = torch.zeros(len(keys), dtype=torch.bool)
    carved[carved_keys] = True
    side = carved[frame_of]
    return torch.nonzero(~side).flatten(), torch.nonzero(side).flatten()


def unlabeled_pools(domains: dict[str, LabeledImages], spec: ShiftSpec, seed: int, notes: list[str]):
    """G's unlabelled training pools: every domain whole, or, for a paired shift, A and B from disjoint halves of
    the frames, so that G never sees two renderings of one frame."""
    if spec.kind not in PAIRED_SHIFTS:
        return dict(domains)
    frames_a, frames_b = frame_ids(domains["A"]), frame_ids(domains["B"])
    keys = torch.unique(torch.cat([frames_a, frames_b]))
    half_a, half_b = deterministic_split(len(keys), 0.5, seed)
    notes.append(f"unlabelled G pools: A and B ({spec.kind}) from disjoint halves of the training frames")
    return {"A": domains["A"].subset(torch.nonzero(torch.isin(frames_a, keys[half_a])).flatten()),
            "B": domains["B"].subset(torch.nonzero(torch.isin(frames_b, keys[half_b])).flatten())}


def limited(data, limit: int | None, seed: int, notes: list[str]):
    """A seeded random subset of ``limit`` images (files are often sorted by class: never just the first N)."""
    if limit is None or limit >= len(data):
        return data
    _, keep = deterministic_split(len(data), limit / len(data), seed + 7)
    notes.append(f"--limit {limit}: a seeded random subset of domain A's {len(data)} training images")
    return data.subset(keep)


@dataclass
class Domains:
    """Everything a run needs from the data: labelled A train/val, unlabelled pools, test domains."""

    info: DatasetInfo
    shift: ShiftSpec
    train: LabeledImages | ImageFiles
    val: LabeledImages | ImageFiles
    test: dict[str, LabeledImages | ImageFiles]
    unlabeled: dict[str, LabeledImages] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    labelled_extra: dict[str, int] = field(default_factory=dict)  # --train-also: images of another domain in train
    unreadable: list[str] = field(default_factory=list)  # image files left out because they do not decode

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    def counts(self) -> dict:
        return {
            "train": {"A": len(self.train) - sum(self.labelled_extra.values()), **self.labelled_extra,
                      **{k: len(v) for k, v in self.unlabeled.items() if k != "A"}},
            "val": {"A": len(self.val)},
            "test": {k: len(v) for k, v in self.test.items()},
        }


def check_same_classes(train: LabeledImages | ImageFiles, test: LabeledImages | ImageFiles, dataset: str,
                       split: str) -> None:
    """Labels are positions in the class list, so two splits naming different classes (a class folder missing
    from one) would pair every later label with the wrong class, silently."""
    if train.classes == test.classes:
        return
    only_train = [c for c in train.classes if c not in set(test.classes)]
    only_test = [c for c in test.classes if c not in set(train.classes)]
    differ = "; ".join(f"only in {name}: {', '.join(names[:3])}{' …' if len(names) > 3 else ''}"
                       for name, names in (("train", only_train), (split, only_test)) if names)
    raise FastmbrError(f"dataset {dataset!r}: train has {len(train.classes)} classes and {split} "
                       f"{len(test.classes)}, named differently ({differ or 'in another order'}); "
                       f"both splits need the same class folders")


@dataclass
class Splits:
    """A dataset's train and test splits as read (before any shift), and what reading them noted."""

    train: LabeledImages | ImageFiles
    test: LabeledImages | ImageFiles
    notes: list[str]


def read_splits(name: str, data_dir=None, skip_corrupt: bool = False) -> Splits:
    """Read once, shared by several ``load_domains`` calls (one evaluation under many shifts reads the data once;
    nothing downstream changes them in place)."""
    notes: list[str] = []
    train, test = _train_test(dataset_info(name), data_dir, notes, skip_corrupt)
    return Splits(train, test, notes)


def _train_test(info: DatasetInfo, data_dir, notes: list[str], skip_corrupt: bool):
    if "train" in info.splits and ("test" in info.splits or "val" in info.splits):
        split = "test" if "test" in info.splits else "val"
        train = load_split(info.name, "train", data_dir, skip_corrupt)
        test = load_split(info.name, split, data_dir, skip_corrupt)
        check_same_classes(train, test, info.name, split)
        return train, test
    only = info.splits[0]
    data = load_split(info.name, only, data_dir, skip_corrupt)
    rest, carved = deterministic_split(len(data), 0.2, seed=0)
    notes.append(f"{info.name} has only a {only} split here: 80% train / 20% test, fixed seed 0")
    return data.subset(rest), data.subset(carved)


def parse_classes(text: str, num_classes: int) -> list[int]:
    """``"10-199"`` / ``"0,3,7"`` / ``"0-4,9"`` → sorted class indices, each checked against the dataset."""
    keep: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            keep.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise FastmbrError(f"--classes {text!r}: expected ranges like 10-199 or a list like 0,3,7") from None
    if not keep or min(keep) < 0 or max(keep) >= num_classes:
        raise FastmbrError(f"--classes {text!r}: the dataset has classes 0-{num_classes - 1}")
    return sorted(keep)


def select_classes(data: LabeledImages | ImageFiles, keep: list[int]) -> LabeledImages | ImageFiles:
    """The images of the ``keep`` classes, relabelled 0..len(keep)-1 in that order."""
    wanted = torch.tensor(keep)
    sub = data.subset(torch.nonzero(torch.isin(data.labels, wanted)).flatten())
    remap = torch.full((max(keep) + 1,), -1, dtype=torch.long)
    remap[wanted] = torch.arange(len(keep))
    return dataclasses.replace(sub, labels=remap[sub.labels], classes=[data.classes[i] for i in keep])


MAX_DECODED_BYTES = 8 << 30  # a file-backed split decoded for a pixel shift must fit in memory


def decoded_for_shift(data: ImageFiles, size: int, shift: str, notes: list[str],
                      skip_corrupt: bool = False) -> LabeledImages:
    """A file-backed split in memory at ``size`` px, because ``shift`` changes pixels; refused when too large."""
    from fastmbr.pipelines.readers.imagefolder import decode_files

    need = len(data) * 3 * size * size
    if need > MAX_DECODED_BYTES:
        raise FastmbrError(f"shift {shift}: {data.source} holds {len(data)} images, {need / 2**30:.0f} GiB "
                           f"decoded at {size} px; pass a smaller --image-size")
    if len(data):
        notes.append(f"{data.source}: {len(data)} images decoded into memory at {size} px for the shift {shift}")
    return decode_files(data, size, skip_corrupt)


def prerendered_root(info: DatasetInfo, data_dir) -> Path:
    """The folder of the dataset's pre-rendered corruptions: beside the dataset's own (``imagenet-c/``)."""
    return dataset_root(info, data_dir).parent / info.prerendered


def prerendered_corruption(info: DatasetInfo, data_dir, spec: ShiftSpec, train: ImageFiles) -> ImageFiles:
    """Domain B of a corruption shift as published files (ImageNet-C's ``<corruption>/<severity>/<wnid>/``): the
    benchmark's own renderings, already cut to ImageNet's evaluation view (so the loader crops nothing again)."""
    from fastmbr.pipelines.corruptions import parse_corruption
    from fastmbr.pipelines.readers.imagefolder import list_tree

    name, severity = parse_corruption(spec.b)
    base = prerendered_root(info, data_dir)
    folder = base / name / str(severity)
    if not folder.is_dir():
        raise FastmbrError(f"{info.name} {spec.label}: {folder} is missing ({info.name} is too large to corrupt in "
                           f"memory; domain B comes from {base}/<corruption>/<severity>/<class>/, ImageNet-C's layout)")
    paths, labels, classes = list_tree(folder)
    rendered = ImageFiles(paths, labels, classes, source=str(folder), center_crop=1.0)
    check_same_classes(train, rendered, info.name, str(folder))
    return rendered


def prerendered_domain(info: DatasetInfo, data_dir, spec: ShiftSpec, also: ShiftSpec | None, train,
                       notes: list[str]) -> ImageFiles | None:
    """Domain B from the dataset's pre-rendered corruptions, when it has them and ``spec`` is a corruption."""
    if not info.prerendered:
        return None
    if also is not None and "corruption" in also.kinds:
        raise FastmbrError(f"--train-also corruption:{also.b}: {info.name}'s corruptions are pre-rendered for its "
                           f"evaluation split only, none are labelled for training")
    if spec.kind != "corruption":
        return None
    rendered = prerendered_corruption(info, data_dir, spec, train)
    notes.append(f"domain B ({spec.b}): {len(rendered)} pre-rendered images from {rendered.source}")
    return rendered


ALL_CORRUPTIONS = "corruption:all"


def expand_shifts(name: str, shifts: list[str], data_dir=None) -> list[str]:
    """``corruption:all`` → every ``corruption:NAME-S`` the dataset has: the pre-rendered folders on disk
    (ImageNet-C: whichever of its 75 are there), else ImageNet-C's 15 corruptions × severities 1-5. Each shift
    is checked here, so a bad one stops a long evaluation before it starts, not when it is reached."""
    from fastmbr.pipelines.corruptions import parse_corruption

    info, out = dataset_info(name), []
    for shift in shifts:
        out += corruptions_of(name, data_dir) if shift == ALL_CORRUPTIONS else [shift]
    for shift in out:
        spec = parse_shift(shift)
        check_shift_kinds(info, spec)
        for part in spec.parts or (spec,):
            if part.kind == "corruption":
                parse_corruption(part.b)
    return out


def corruptions_of(name: str, data_dir) -> list[str]:
    from fastmbr.pipelines.corruptions import SEVERITIES, corruption_names, import_imagecorruptions

    info = dataset_info(name)
    if "corruption" not in info.shifts:
        raise FastmbrError(f"{ALL_CORRUPTIONS}: dataset {name!r} has no corruption shift; it has: "
                           f"{', '.join(info.shifts)}")
    if not info.prerendered:
        common = import_imagecorruptions().get_corruption_names("common")
        return [f"corruption:{c}-{s}" for c in common for s in SEVERITIES]
    base = prerendered_root(info, data_dir)
    found = [f"corruption:{c}-{s}" for c in corruption_names() for s in SEVERITIES if (base / c / str(s)).is_dir()]
    if not found:
        raise FastmbrError(f"{ALL_CORRUPTIONS}: no <corruption>/<severity>/ folders in {base} (ImageNet-C's layout)")
    return found


def unreadable_note(paths: list[str]) -> str:
    """The one line that reports image files left out because they do not decode (``--skip-corrupt``)."""
    more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
    return f"left out {len(paths)} image file(s) that do not decode (--skip-corrupt): {paths[0]}{more}"


def left_out(train, test, notes: list[str]) -> list[str]:
    """The files the readers left out of either split (``skip_corrupt``), noted once."""
    unreadable = list(dict.fromkeys([*getattr(train, "unreadable", ()), *getattr(test, "unreadable", ())]))
    if unreadable:
        notes.append(unreadable_note(unreadable))
    return unreadable


def check_shift_kinds(info: DatasetInfo, spec: ShiftSpec) -> None:
    for kind in spec.kinds:
        if kind not in info.shifts and kind != "none":
            raise FastmbrError(f"dataset {info.name!r} has no shift {kind!r}; it has: {', '.join(info.shifts)}")


def labelled_shifted(train: LabeledImages, labelled_a: LabeledImages, val: LabeledImages, spec: ShiftSpec,
                     info: DatasetInfo, seed: int, thresholds: tuple | None) -> LabeledImages:
    """Domain B of the shift ``spec`` drawn from the training split, labelled, for the paper's "+Aug" baselines
    (Table 2: ERM+Aug sees labelled challenge-level 0 AND level 2 images).

    A paired shift contributes the renderings of the labelled A images' frames only; any shift loses the frames of
    the validation split, so model selection still sees no frame the classifier trained on.
    """
    shifted = split_domains(train, spec, info.name, seed=seed + 1, thresholds=thresholds)["B"]
    frames = frame_ids(shifted)
    keep = ~torch.isin(frames, frame_ids(val))
    if spec.kind in PAIRED_SHIFTS:
        keep &= torch.isin(frames, frame_ids(labelled_a))
    return shifted.subset(torch.nonzero(keep).flatten())


def load_domains(
    name: str,
    shift: str | None = None,
    data_dir: str | Path | None = None,
    *,
    image_size: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    limit: int | None = None,
    thresholds: tuple | None = None,
    classes: str | None = None,
    train_also: str | None = None,
    test_only: bool = False,
    skip_corrupt: bool = False,
    splits: Splits | None = None,
) -> Domains:
    """Prepare a dataset under a shift: A's train (minus val) is labelled; B is only for testing and G.

    ``train_also`` (a shift such as ``challenge:snow-2``) adds that shift's domain B of the training split,
    labelled, to the training set: the "+Aug" baselines, which see labelled shifted images our algorithms do not.
    ``test_only`` prepares the test domains alone (train and val come back empty): scoring a trained classifier
    needs nothing else, and corrupting the training split would cost more than the test itself.
    ``skip_corrupt``: image files decoded here that do not decode are left out and listed in ``unreadable``.
    ``splits``: the splits already read by ``read_splits`` (same dataset, data folder and ``skip_corrupt``).
    """
    info = dataset_info(name)
    spec = parse_shift(shift or info.default_shift)
    check_shift_kinds(info, spec)
    also = parse_shift(train_also) if train_also and not test_only else None  # a bad one fails before any decoding
    if also is not None:
        check_shift_kinds(info, also)
    notes: list[str] = []
    if dataset_root(info, data_dir) is None:
        notes.append("using the embedded MNIST subset (6,000 train / 2,000 test); --data-dir for the full set")
    splits = splits or read_splits(name, data_dir, skip_corrupt)
    train, test = splits.train, splits.test
    notes += splits.notes
    rendered = prerendered_domain(info, data_dir, spec, also, train, notes)
    if classes:
        keep = parse_classes(classes, len(train.classes))
        notes.append(f"classes {classes}: {len(keep)} of {len(train.classes)} kept, relabelled 0-{len(keep) - 1}")
        train, test = select_classes(train, keep), select_classes(test, keep)
        rendered = None if rendered is None else select_classes(rendered, keep)
    if test_only:
        train = train.subset(torch.zeros(0, dtype=torch.long))
    size = image_size or info.image_size
    pixel_shift = train_also if also is not None else (spec.label if spec.kind != "none" else None)
    if isinstance(train, ImageFiles) and pixel_shift and rendered is None:
        train, test = (decoded_for_shift(d, size, pixel_shift, notes, skip_corrupt) for d in (train, test))
    unreadable = left_out(None if test_only else train, test, notes)
    if isinstance(train, ImageFiles):
        train = limited(train, limit, seed, notes)
        rest, carved = frame_split(train, val_fraction, seed)
        test_domains = {"A": test} if rendered is None else {"A": test, "B": rendered}
        return Domains(info, spec, train.subset(rest), train.subset(carved), test_domains, notes=notes,
                       unreadable=unreadable)
    test = prepare(test, size)
    test_domains = split_domains(test, spec, name, seed=seed + 2, thresholds=thresholds)
    if test_only:
        empty = prepare(train, size)  # prepared all the same: the classifier is built from its channel count
        return Domains(info, spec, empty, empty, test_domains, notes=notes, unreadable=unreadable)
    train = prepare(train, size).with_frames()
    train_domains = split_domains(train, spec, name, seed=seed + 1, thresholds=thresholds)
    train_a = limited(train_domains["A"], limit, seed, notes)
    if len(train_a) == 0:
        raise FastmbrError(f"{name} {spec.label}: domain A of the training split is empty")
    rest, carved = frame_split(train_a, val_fraction, seed)
    labelled, val = train_a.subset(rest), train_a.subset(carved)
    unlabeled = unlabeled_pools(train_domains, spec, seed + 3, notes)
    extra = {}
    if also is not None:
        shifted = labelled_shifted(train, labelled, val, also, info, seed, thresholds)
        if len(shifted) == 0:
            raise FastmbrError(f"--train-also {train_also}: {name} has no training images in domain B of {also.label}")
        extra = {f"labelled {also.b}": len(shifted)}
        notes.append(f"--train-also {train_also}: {len(shifted)} labelled images of its domain B added to the "
                     f"{len(labelled)} of domain A (a '+Aug' baseline); validation stays on A")
        labelled = concat_images([labelled, shifted], f"{labelled.source} + {train_also}")
    return Domains(info, spec, labelled, val, test_domains, unlabeled, notes, extra, unreadable)
