"""The one interface for models of natural variation G(x, δ), and their registry.

Pixels are float in [0, 1], NCHW. δ lives in a box Δ = [delta_low, delta_high]^q. ``expand`` produces the
k variations of a batch in ONE call: subclasses that can share work across the k draws (MUNIT encodes the
content once) override it; the default folds k into the batch dimension and calls ``forward`` once.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fastmbr.errors import FastmbrError


class NaturalVariation(nn.Module):
    """G(x, δ): a differentiable map from an image batch and a nuisance parameter to varied images."""

    def __init__(self, delta_dim: int, low: float | torch.Tensor = -1.0, high: float | torch.Tensor = 1.0):
        super().__init__()
        if delta_dim < 1:
            raise FastmbrError(f"delta_dim must be >= 1, got {delta_dim}")
        low_t = torch.as_tensor(low, dtype=torch.float32).expand(delta_dim).clone()
        high_t = torch.as_tensor(high, dtype=torch.float32).expand(delta_dim).clone()
        if bool((low_t > high_t).any()):
            raise FastmbrError(f"the box Δ is empty: low {low_t.tolist()} > high {high_t.tolist()}")
        self.delta_dim = int(delta_dim)
        self.register_buffer("delta_low", low_t, persistent=False)
        self.register_buffer("delta_high", high_t, persistent=False)

    @property
    def name(self) -> str:
        return type(self).__name__

    def sample_delta(self, batch_size: int, k: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """k independent draws per sample from the prior (uniform on Δ by default): ``[k, B, q]``."""
        u = torch.rand(k, batch_size, self.delta_dim, generator=generator, device=self._rng_device(generator))
        u = u.to(self.delta_low.device)
        return self.delta_low + (self.delta_high - self.delta_low) * u

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        """Euclidean projection onto the box Δ."""
        return torch.maximum(torch.minimum(delta, self.delta_high.to(delta.dtype)), self.delta_low.to(delta.dtype))

    def contains(self, delta: torch.Tensor, atol: float = 1e-6) -> bool:
        return bool(((delta >= self.delta_low - atol) & (delta <= self.delta_high + atol)).all())

    def check_delta(self, delta: torch.Tensor, leading: int) -> None:
        """One-line error when δ has the wrong rank or dimension."""
        if delta.dim() != leading + 1 or delta.shape[-1] != self.delta_dim:
            want = "[k, B, q]" if leading == 2 else "[B, q]"
            raise FastmbrError(
                f"{self.name}: δ must have shape {want} with q={self.delta_dim}, got {tuple(delta.shape)}"
            )

    def forward(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, x: torch.Tensor):
        """The part of G(x, δ) that does not depend on δ, computed once for many δ (MAT's ascent steps): x itself by
        default; MUNIT: the content code. ``decode(encode(x), δ) == G(x, δ)``."""
        return x

    def decode(self, code, delta: torch.Tensor) -> torch.Tensor:
        """G(x, δ) from ``encode(x)``; differentiable in δ."""
        return self(code, delta)

    def expand(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """All k variations of x in one call: δ ``[k, B, q]`` → ``[k, B, C, H, W]``."""
        self.check_delta(delta, leading=2)
        k, b = delta.shape[:2]
        if b != x.shape[0]:
            raise FastmbrError(f"{self.name}: δ has batch {b} but x has batch {x.shape[0]}")
        xk = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        return self(xk, delta.reshape(k * b, -1)).reshape(k, b, *x.shape[1:])

    def _rng_device(self, generator: torch.Generator | None) -> torch.device:
        return generator.device if generator is not None else self.delta_low.device

    def extra_repr(self) -> str:
        return f"delta_dim={self.delta_dim}"


VariationFactory = Callable[..., NaturalVariation]
_REGISTRY: dict[str, VariationFactory] = {}


def register_variation(name: str) -> Callable[[VariationFactory], VariationFactory]:
    def decorate(factory: VariationFactory) -> VariationFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def variation_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def build_variation(name: str, **options) -> NaturalVariation:
    """Build a registered model of natural variation by name (``fastmbr.variation.variation_names()``)."""
    _load_builtin()
    if name not in _REGISTRY:
        raise FastmbrError(f"unknown model of variation {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    try:
        return _REGISTRY[name](**options)
    except TypeError as exc:
        raise FastmbrError(f"model of variation {name!r}: {exc}") from None


def _load_builtin() -> None:
    from fastmbr.variation import known  # noqa: F401  (registers the known models)
