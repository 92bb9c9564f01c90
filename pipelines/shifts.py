"""Domains A and B of a shift, in the paper's notation "source (A→B)".

A shift turns one split of a dataset into named domains. ``background-color`` paints MNIST-style digits onto
blue (A) or red (B) backgrounds; ``corruption:NAME-S`` corrupts every image (B) of the clean split (A), see
corruptions.py; ``brightness`` and ``contrast`` threshold real images by Table 10
(brightness B(x) = mean pixel value 0-255, contrast C(x) = max - min) into low / medium / high bands, and a
spec such as ``brightness:high-low`` picks which bands are A and B; ``challenge:TYPE-LEVEL`` (CURE-TSR) takes
the challenge-free images (A) and those of one challenge type at one level 1-5 (B), as in Table 2.

Paired shifts render A and B from the same underlying frames (a digit painted twice, an image and its
corruption, a CURE-TSR crop and its snowy rendering); ``frame_ids`` names each image's frame, so that a split
keyed by frame keeps every rendering of a frame on one side.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.readers.cure_tsr import CHALLENGE_TYPES, MAX_LEVEL, CureTsrImages
from fastmbr.pipelines.types import LabeledImages

# Table 10: (low, (medium_lo, medium_hi), high); a band is low < t_low, medium in (lo, hi), high > t_high.
TABLE10 = {
    "svhn": {"brightness": (60, (160, 170), 180), "contrast": (80, (90, 100), 190)},
    "gtsrb": {"brightness": (40, (85, 125), 170), "contrast": (80, (140, 200), 230)},
}
BANDS = ("low", "medium", "high")
# background-color domains: per-channel uniform ranges of the background colour (0-1). Blue, red and green light
# one channel; their complements yellow, cyan and magenta light the other two, so a pair such as blue-yellow has
# no channel in which the white digit stands out on both backgrounds (the paper's blue-red shares green's).
COLOUR_RANGES = {
    "blue": ((0.0, 0.2), (0.0, 0.2), (0.6, 1.0)),
    "red": ((0.6, 1.0), (0.0, 0.2), (0.0, 0.2)),
    "green": ((0.0, 0.2), (0.6, 1.0), (0.0, 0.2)),
    "yellow": ((0.6, 1.0), (0.6, 1.0), (0.0, 0.2)),
    "cyan": ((0.0, 0.2), (0.6, 1.0), (0.6, 1.0)),
    "magenta": ((0.6, 1.0), (0.0, 0.2), (0.6, 1.0)),
}
# shifts whose A and B are renderings of the same frames: G's unlabelled pools must come from disjoint frames
PAIRED_SHIFTS = ("background-color", "corruption", "challenge")
CHALLENGE_FREE = "challenge-free"


@dataclass(frozen=True)
class ShiftSpec:
    """A parsed ``--shift``: the kind, and the names of domain A and domain B."""

    kind: str
    a: str
    b: str
    parts: tuple["ShiftSpec", ...] = ()  # a composite shift (Table 4): A = ∪ of the parts' A, B = ∩ of their B

    @property
    def label(self) -> str:
        if self.parts:
            return " + ".join(p.label for p in self.parts) + " (A: either, B: all at once)"
        return f"{self.kind} ({self.a}→{self.b})"

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(p.kind for p in self.parts) or (self.kind,)


_DEFAULT_DOMAINS = {
    "background-color": ("blue", "red"),
    "brightness": ("low", "high"),
    "challenge": (CHALLENGE_FREE, "snow-2"),
    "contrast": ("low", "high"),
    "corruption": ("clean", "snow-3"),
    "none": ("all", "all"),
}


def shift_names() -> list[str]:
    return sorted(_DEFAULT_DOMAINS)


def parse_shift(text: str) -> ShiftSpec:
    """``brightness`` → low→high; ``brightness:high-low`` → high→low; ``background-color:blue-green``;
    ``corruption:fog-4`` → clean→fog at severity 4; ``challenge:haze-4`` → challenge-free→haze at level 4."""
    if "+" in text:
        return composite_shift(text)
    kind, _, domains = text.partition(":")
    if kind not in _DEFAULT_DOMAINS:
        raise FastmbrError(f"unknown shift {text!r}; known: {', '.join(shift_names())}")
    a, b = _DEFAULT_DOMAINS[kind]
    if kind == "corruption":
        from fastmbr.pipelines.corruptions import parse_corruption

        name, severity = parse_corruption(domains or b)
        return ShiftSpec(kind, "clean", f"{name}-{severity}")
    if kind == "challenge":
        name, level = parse_challenge(domains or b)
        return ShiftSpec(kind, a, f"{name}-{level}")
    if domains:
        parts = domains.split("-")
        allowed = COLOUR_RANGES if kind == "background-color" else BANDS
        if len(parts) != 2 or not all(p in allowed for p in parts):
            raise FastmbrError(f"shift {text!r}: domains must be A-B with A, B in {', '.join(allowed)}")
        a, b = parts
    return ShiftSpec(kind, a, b)


def challenge_names() -> tuple[str, ...]:
    """The CURE-TSR challenge types a shift can name (every type but "none", the challenge-free one)."""
    return CHALLENGE_TYPES[1:]


def parse_challenge(text: str) -> tuple[str, int]:
    """``snow-2`` → ("snow", 2); type names hold underscores (``lens_blur-3``), so the level follows the last '-'."""
    name, _, level = text.rpartition("-")
    if name not in challenge_names() or not level.isdigit() or not 1 <= int(level) <= MAX_LEVEL:
        raise FastmbrError(f"shift 'challenge:{text}': expected challenge:TYPE-LEVEL with LEVEL 1-{MAX_LEVEL} and "
                           f"TYPE one of {', '.join(challenge_names())}")
    return name, int(level)


def composite_shift(text: str) -> ShiftSpec:
    """``brightness+contrast`` or ``brightness:low-high+contrast:high-low``: simultaneous threshold shifts.

    Training sees A1 ∪ A2 (either shift's domain A), testing B1 ∩ B2 (every shift at once), as in Table 4.
    """
    parts = tuple(parse_shift(p) for p in text.split("+"))
    if len(parts) < 2 or any(p.kind not in ("brightness", "contrast") for p in parts):
        raise FastmbrError(f"shift {text!r}: only brightness and contrast shifts combine with '+'")
    return ShiftSpec("+".join(p.kind for p in parts), "∪".join(p.a for p in parts), "∩".join(p.b for p in parts),
                     parts)


def brightness(images: torch.Tensor) -> torch.Tensor:
    """B(x): mean pixel value (0-255) over all pixels and channels."""
    return images.float().mean(dim=(1, 2, 3))


def contrast(images: torch.Tensor) -> torch.Tensor:
    """C(x): largest minus smallest pixel value (0-255)."""
    flat = images.flatten(1)
    return (flat.amax(1) - flat.amin(1)).float()


def band_mask(values: torch.Tensor, thresholds: tuple, band: str) -> torch.Tensor:
    low, (mid_lo, mid_hi), high = thresholds
    if band == "low":
        return values < low
    if band == "medium":
        return (values > mid_lo) & (values < mid_hi)
    return values > high


def thresholds_for(dataset: str, kind: str, override: tuple | None = None) -> tuple:
    if override is not None:
        return override
    return TABLE10.get(dataset, TABLE10["gtsrb"])[kind]


def colourise(gray: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """uint8 grey digits ``[N, 1, H, W]`` → uint8 RGB with background colour ``[N, 3]`` (0-1): g + (1-g)·c."""
    g = gray.float() / 255.0
    rgb = g + (1.0 - g) * colours.view(-1, 3, 1, 1)
    return (rgb * 255.0).round().clamp(0, 255).to(torch.uint8)


def draw_colours(n: int, name: str, generator: torch.Generator) -> torch.Tensor:
    ranges = torch.tensor(COLOUR_RANGES[name])
    u = torch.rand(n, 3, generator=generator)
    return ranges[:, 0] + (ranges[:, 1] - ranges[:, 0]) * u


def to_gray(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def split_domains(
    data: LabeledImages, spec: ShiftSpec, dataset: str, seed: int, thresholds: tuple | None = None
) -> dict[str, LabeledImages]:
    """One split → ``{"A": ..., "B": ...}`` under the shift ``spec``."""
    if spec.kind == "none":
        return {"A": data}
    if spec.kind == "background-color":
        gen = torch.Generator().manual_seed(seed)
        gray = to_gray(data.images)
        out = {}
        for role, name in (("A", spec.a), ("B", spec.b)):
            painted = colourise(gray, draw_colours(len(data), name, gen))
            out[role] = dataclasses.replace(data, images=painted, source=f"{data.source} [{name} background]")
        return out
    if spec.kind == "corruption":
        from fastmbr.pipelines.corruptions import cached_corruption, parse_corruption

        name, severity = parse_corruption(spec.b)
        corrupted = cached_corruption(data.images, data.labels, name, severity, seed)
        return {"A": data, "B": dataclasses.replace(data, images=corrupted, source=f"{data.source} [{spec.b}]")}
    if spec.kind == "challenge":
        return challenge_domains(data, spec)
    if spec.parts:
        masks = [threshold_masks(data, part, dataset, None) for part in spec.parts]
        a = torch.stack([m["A"] for m in masks]).any(0)
        b = torch.stack([m["B"] for m in masks]).all(0)
        return {"A": data.subset(torch.nonzero(a).flatten()), "B": data.subset(torch.nonzero(b).flatten())}
    masks = threshold_masks(data, spec, dataset, thresholds)
    return {role: data.subset(torch.nonzero(mask).flatten()) for role, mask in masks.items()}


def threshold_masks(data: LabeledImages, spec: ShiftSpec, dataset: str, thresholds: tuple | None):
    """Which images fall in domain A's and domain B's band of a brightness or contrast shift."""
    measure = brightness if spec.kind == "brightness" else contrast
    values = measure(data.images)
    limits = thresholds_for(dataset, spec.kind, thresholds)
    return {"A": band_mask(values, limits, spec.a), "B": band_mask(values, limits, spec.b)}


def challenge_domains(data: LabeledImages, spec: ShiftSpec) -> dict[str, LabeledImages]:
    """A: the challenge-free images (type 00, level 00); B: those of the spec's challenge type at its level."""
    if not isinstance(data, CureTsrImages):
        raise FastmbrError(f"shift {spec.label}: {data.source} carries no challenge types and levels (CURE-TSR only)")
    name, level = parse_challenge(spec.b)
    kind = CHALLENGE_TYPES.index(name)
    free = (data.challenge_types == 0) & (data.challenge_levels == 0)
    challenged = (data.challenge_types == kind) & (data.challenge_levels == level)
    if not free.any():
        raise FastmbrError(f"{data.source}: no challenge-free images (type 00, level 00) for domain A")
    if not challenged.any():
        present = sorted(set(data.challenge_levels[data.challenge_types == kind].tolist()))
        found = f"{name} at level(s) {', '.join(map(str, present))} only" if present else f"no {name} images"
        raise FastmbrError(f"{data.source}: no {name} images at level {level} for domain B ({found})")
    return {"A": data.subset(torch.nonzero(free).flatten()), "B": data.subset(torch.nonzero(challenged).flatten())}


def frame_ids(data) -> torch.Tensor:
    """The underlying frame of each image: images with one id are renderings of one scene.

    Readers that know the pairing attach ``frames`` (CURE-TSR); otherwise each image is its own frame, numbered by
    position, which pairs A[i] with B[i] for the shifts that render B from A image by image (painted, corrupted).
    """
    frames = getattr(data, "frames", None)
    return frames if frames is not None else torch.arange(len(data))
