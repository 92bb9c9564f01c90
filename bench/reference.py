"""The published reference code's costs, reproduced honestly so that speed-ups are measured against them.

What the reference does per training step, and this module repeats: for each of the k draws it re-encodes the
batch (content AND style encoder), decodes one draw at a time in a Python loop, runs the classifier once per draw,
in fp32 and eager mode; MRT keeps the draw with the largest *batch* loss (not per sample). The numbers it
computes are valid training losses; only the work done to get them differs from fastmbr's path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastmbr.variation.munit.networks import Generator


def style_dim(gen: Generator) -> int:
    """q: the width of the decoder MLP's input."""
    return gen.decoder.mlp[0].in_features


def reference_generate(gen: Generator, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """One draw as the reference does it: both encoders on x, then the decoder; pixels in [0, 1]."""
    content, _ = gen.encode(x * 2.0 - 1.0)
    return (gen.decode(content, style) + 1.0) * 0.5


def reference_mda_loss(model: nn.Module, gen: Generator, x, y, k: int, lam: float = 1.0) -> torch.Tensor:
    loss = lam * F.cross_entropy(model(x), y)
    for _ in range(k):
        with torch.no_grad():
            style = torch.randn(x.shape[0], style_dim(gen), device=x.device)
            varied = reference_generate(gen, x, style)
        loss = loss + F.cross_entropy(model(varied), y)
    return loss


def reference_mrt_loss(model: nn.Module, gen: Generator, x, y, k: int, lam: float = 1.0) -> torch.Tensor:
    worst, worst_loss = x, -1.0
    for _ in range(k):
        with torch.no_grad():
            style = torch.randn(x.shape[0], style_dim(gen), device=x.device)
            varied = reference_generate(gen, x, style)
            batch_loss = F.cross_entropy(model(varied), y).item()  # batch-level max, host sync per draw
        if batch_loss > worst_loss:
            worst, worst_loss = varied, batch_loss
    return F.cross_entropy(model(worst), y) + lam * F.cross_entropy(model(x), y)


REFERENCE_LOSSES = {"mda": reference_mda_loss, "mrt": reference_mrt_loss}
