"""The published reference code's costs, reproduced honestly so that speed-ups are measured against them.

What the reference does per training step, and this module repeats: for each of the k draws it re-encodes the
batch (content AND style encoder) and decodes one draw at a time in a Python loop, in eager mode. MDA then runs
ONE classifier forward over the concatenation of the clean batch and its k variations (its loss: the mean over
those k + 1 copies); MRT scores each draw with its own forward, keeps the draw with the largest *batch* loss (a
host sync per draw), and trains on the concatenation of the clean batch and that draw. Its precision is the
caller's: fp32, or the shipped scripts' ``--half-prec`` (apex O1 on the classifier: ``autocast`` here; G cast to
half precision: ``reference_half``). The numbers it computes are valid training losses; only the work done to get
them differs from fastmbr's path.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fastmbr.variation.munit.networks import Generator


def style_dim(gen: Generator) -> int:
    """q: the width of the decoder MLP's input."""
    return gen.decoder.mlp[0].in_features


def half_dtype(device: torch.device) -> torch.dtype:
    """The reference's half precision on this device: fp16 on CUDA (as its scripts), bf16 on a CPU."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def reference_half(gen: Generator, device: torch.device) -> Generator:
    """A copy of G cast to half precision, as the reference code's ``--half-prec`` casts its generator."""
    return copy.deepcopy(gen).to(half_dtype(device))


def gen_dtype(gen: Generator) -> torch.dtype:
    return next(gen.parameters()).dtype


def reference_generate(gen: Generator, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """One draw as the reference does it: both encoders on x, then the decoder; pixels in [0, 1] in x's dtype."""
    dtype = gen_dtype(gen)
    content, _ = gen.encode(x.to(dtype) * 2.0 - 1.0)
    return ((gen.decode(content, style.to(dtype)) + 1.0) * 0.5).to(x.dtype)


def draw(gen: Generator, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        style = torch.randn(x.shape[0], style_dim(gen), device=x.device)
        return reference_generate(gen, x, style)


def reference_mda_loss(model: nn.Module, gen: Generator, x, y, k: int, lam: float = 1.0) -> torch.Tensor:
    """k draws, then one classifier forward over [x, G(x, δ_1), ..., G(x, δ_k)]: the mean over the k + 1 copies
    (the reference code weighs the clean copy like the others: λ = 1)."""
    batch = torch.cat([x] + [draw(gen, x) for _ in range(k)])
    return F.cross_entropy(model(batch).float(), y.repeat(k + 1))


def reference_mrt_loss(model: nn.Module, gen: Generator, x, y, k: int, lam: float = 1.0) -> torch.Tensor:
    """k draws, each scored by its own forward; the draw with the largest batch loss joins x in one forward."""
    worst, worst_loss = x, -1.0
    for _ in range(k):
        varied = draw(gen, x)
        with torch.no_grad():
            batch_loss = F.cross_entropy(model(varied).float(), y).item()  # batch-level max, host sync per draw
        if batch_loss > worst_loss:
            worst, worst_loss = varied, batch_loss
    return F.cross_entropy(model(torch.cat([x, worst])).float(), y.repeat(2))


REFERENCE_LOSSES = {"mda": reference_mda_loss, "mrt": reference_mrt_loss}
