"""Known models of natural variation (section 4.1): each maps δ in a box Δ to a differentiable image edit.

Every scalar model uses δ ∈ [-1, 1]^q and maps it to a physical parameter, so that the box is the same for
all of them and δ = 0 is the identity (except background-color, whose δ *is* the colour).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastmbr.errors import FastmbrError
from fastmbr.variation.base import NaturalVariation, register_variation

_LUMA = (0.299, 0.587, 0.114)


def _as_scalar(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """δ [B, 1] → a [B, 1, 1, 1] factor broadcastable over x."""
    return delta.reshape(delta.shape[0], *([1] * (x.dim() - 1))).to(x.dtype)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x[:, :3] * w).sum(1, keepdim=True)


class _ScalarVariation(NaturalVariation):
    def __init__(self):
        super().__init__(delta_dim=1)

    def forward(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        self.check_delta(delta, leading=1)
        return self.apply(x, _as_scalar(delta, x)).clamp(0.0, 1.0)

    def apply(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@register_variation("additive")
class Additive(NaturalVariation):
    """G(x, δ) = x + δ with ||δ||∞ ≤ ε (eq. 4.1): the perturbation model behind PGD. q = C·H·W."""

    def __init__(self, shape: tuple[int, int, int] = (3, 32, 32), eps: float = 8 / 255):
        c, h, w = shape
        super().__init__(delta_dim=c * h * w, low=-eps, high=eps)
        self.shape = (c, h, w)
        self.eps = eps

    def forward(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        self.check_delta(delta, leading=1)
        if tuple(x.shape[1:]) != self.shape:
            raise FastmbrError(f"additive: built for images {self.shape}, got {tuple(x.shape[1:])}")
        return (x + delta.view_as(x).to(x.dtype)).clamp(0.0, 1.0)


@register_variation("brightness")
class Brightness(_ScalarVariation):
    """Multiplicative gain: x · max_gain^δ (δ ∈ [-1, 1])."""

    def __init__(self, max_gain: float = 3.0):
        super().__init__()
        self.log_gain = math.log(max_gain)

    def apply(self, x, d):
        return x * torch.exp(d * self.log_gain)


@register_variation("contrast")
class Contrast(_ScalarVariation):
    """Scale deviations from the image's mean grey level by max_factor^δ."""

    def __init__(self, max_factor: float = 3.0):
        super().__init__()
        self.log_factor = math.log(max_factor)

    def apply(self, x, d):
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        return mean + (x - mean) * torch.exp(d * self.log_factor)


@register_variation("gamma")
class Gamma(_ScalarVariation):
    """Gamma curve x^(max_gamma^δ)."""

    def __init__(self, max_gamma: float = 3.0):
        super().__init__()
        self.log_gamma = math.log(max_gamma)

    def apply(self, x, d):
        return x.clamp_min(1e-6) ** torch.exp(d * self.log_gamma)


@register_variation("saturation")
class Saturation(_ScalarVariation):
    """Blend with the grey image: saturation factor max_factor^δ."""

    def __init__(self, max_factor: float = 3.0):
        super().__init__()
        self.log_factor = math.log(max_factor)

    def apply(self, x, d):
        g = _gray(x)
        return g + (x - g) * torch.exp(d * self.log_factor)


@register_variation("hue")
class Hue(_ScalarVariation):
    """Hue rotation by δ·max_turn·2π about the grey axis (a rotation of the YIQ chroma plane)."""

    _RGB2YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))

    def __init__(self, max_turn: float = 0.5):
        super().__init__()
        self.max_angle = 2 * math.pi * max_turn

    def apply(self, x, d):
        if x.shape[1] != 3:
            raise FastmbrError(f"hue needs RGB images, got {x.shape[1]} channel(s)")
        m = torch.tensor(self._RGB2YIQ, dtype=x.dtype, device=x.device)
        yiq = torch.einsum("ij,bjhw->bihw", m, x)
        theta = d.reshape(-1) * self.max_angle
        cos, sin = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
        i, q = yiq[:, 1], yiq[:, 2]
        rotated = torch.stack((yiq[:, 0], i * cos - q * sin, i * sin + q * cos), dim=1)
        return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), rotated)


@register_variation("rotation")
class Rotation(_ScalarVariation):
    """G(x, δ) = R(δ)x (eq. 4.2): rotation by δ·max_degrees about the centre, zero padding."""

    def __init__(self, max_degrees: float = 180.0):
        super().__init__()
        self.max_rad = math.radians(max_degrees)

    def apply(self, x, d):
        theta = d.reshape(-1) * self.max_rad
        cos, sin, zero = torch.cos(theta), torch.sin(theta), torch.zeros_like(theta)
        affine = torch.stack((torch.stack((cos, -sin, zero), 1), torch.stack((sin, cos, zero), 1)), 1)
        grid = F.affine_grid(affine.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@register_variation("background-color")
class BackgroundColor(NaturalVariation):
    """Algorithm 1: keep a light digit, paint the background with the RGB colour c = (δ + 1) / 2.

    The digit's intensity m is read as the smallest channel (a coloured background has at least one dark
    channel, a white stroke has none); the output is m + (1 - m)·c. Grey inputs are treated as m directly.
    """

    def __init__(self):
        super().__init__(delta_dim=3)

    def forward(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        self.check_delta(delta, leading=1)
        if x.shape[1] not in (1, 3):
            raise FastmbrError(f"background-color needs 1 or 3 channels, got {x.shape[1]}")
        m = x.amin(dim=1, keepdim=True)
        colour = ((delta + 1.0) * 0.5).to(x.dtype).view(-1, 3, 1, 1)
        return (m + (1.0 - m) * colour).clamp(0.0, 1.0)
