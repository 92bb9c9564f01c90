"""One signature for every training algorithm, and the registry the CLI names them from.

``algo.loss(model, G, x, y) -> {"loss": scalar, "logits": clean logits [B, C]}``. Model-based algorithms also
expose ``inner_max(model, G, x, y)``: δ_adv ``[B, q]`` (MRT, MAT) or the k draws ``[k, B, q]`` (MDA). They draw
δ only through ``G.sample_delta`` and never let a gradient reach G.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fastmbr.errors import FastmbrError
from fastmbr.variation.base import NaturalVariation


REDUCTIONS = ("sum", "mean")


@dataclass
class Algorithm:
    """Base: k (draws or steps), λ (weight of the clean loss)."""

    k: int = 1
    lam: float = 1.0
    reduction: str = "sum"  # "mean": the loss over all copies divided by their number, as the reference code
    name = "base"
    uses_variation = False  # does the algorithm need a model of variation G?
    uses_target = False  # does it need unlabelled domain-B training images (attach_target)? (ADDA)
    needs_warmup = False  # does it start from an ERM warm-up (source training)? (ADDA)
    select_last = False  # report the last epoch instead of the best on A's validation split (ADDA)

    def __post_init__(self):
        if self.k < 1:
            raise FastmbrError(f"{self.name}: k must be >= 1, got {self.k}")
        if self.lam < 0:
            raise FastmbrError(f"{self.name}: lambda must be >= 0, got {self.lam}")
        if self.reduction not in REDUCTIONS:
            raise FastmbrError(f"{self.name}: loss reduction must be one of {', '.join(REDUCTIONS)}, got "
                               f"{self.reduction!r}")

    def reduce(self, loss: torch.Tensor, robust_copies: int) -> torch.Tensor:
        """``sum``: Σ over the robust copies + λ·clean, as is. ``mean``: that divided by the number of copies in the
        concatenated batch (robust copies, plus the clean one when λ > 0), as the reference code's mean over it."""
        if self.reduction == "sum":
            return loss
        return loss / (robust_copies + (1 if self.lam > 0 else 0))

    def loss(self, model: nn.Module, G: NaturalVariation | None, x: torch.Tensor, y: torch.Tensor) -> dict:
        raise NotImplementedError

    def own_optimizer(self, model: nn.Module, fused: bool) -> torch.optim.Optimizer | None:
        """The optimizer this algorithm's steps need instead of the run's (which the ERM warm-up keeps); None: the
        run's. ``fused``: as the run's (an optimizer that skips a non-finite step on the device). ADDA: the adversarial
        objective of Tzeng et al. with Adam, not the source training's Adadelta."""
        return None

    def state_dict(self) -> dict:
        """State the algorithm carries between steps (none for most), saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict, model: nn.Module, device: torch.device) -> None:
        """Restore what ``state_dict`` saved."""

    def check_variation(self, G: NaturalVariation | None) -> None:
        if self.uses_variation and G is None:
            raise FastmbrError(f"algorithm {self.name!r} needs a model of variation (--model)")


def robust_loss(model: nn.Module, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lam: float) -> dict:
    """mean_j [ℓ(x_adv_j) + λ·ℓ(x_j)] from ONE classifier forward over the concatenated batch."""
    b = x.shape[0]
    if lam == 0:
        logits_adv = model(x_adv)
        return {"loss": F.cross_entropy(logits_adv, y), "logits": logits_adv.detach()}
    logits = model(torch.cat([x_adv, x]))
    loss = F.cross_entropy(logits[:b], y) + lam * F.cross_entropy(logits[b:], y)
    return {"loss": loss, "logits": logits[b:].detach()}


AlgorithmFactory = Callable[..., Algorithm]
_REGISTRY: dict[str, type[Algorithm]] = {}


def register_algorithm(name: str):
    def decorate(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def algorithm_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def algorithm_class(name: str) -> type[Algorithm]:
    _load_builtin()
    if name not in _REGISTRY:
        raise FastmbrError(f"unknown algorithm {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_algorithm(name: str, k: int | None = None, lam: float | None = None, **options) -> Algorithm:
    """Build a registered algorithm; unset k / λ take the algorithm's own defaults (the paper's)."""
    cls = algorithm_class(name)
    kwargs = {key: value for key, value in (("k", k), ("lam", lam)) if value is not None}
    try:
        return cls(**kwargs, **options)
    except TypeError as exc:
        raise FastmbrError(f"algorithm {name!r}: {exc}") from None


def _load_builtin() -> None:
    from fastmbr.algorithms import adda, augmix, erm, mat, mda, mrt, pgd  # noqa: F401
