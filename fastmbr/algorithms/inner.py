"""Pieces shared by the inner maximisations: a frozen classifier, per-sample worst-of-k, projected ascent."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from fastmbr.kernels import pga_step_, worst_of_k


@contextmanager
def frozen(model: nn.Module):
    """Eval mode for the inner max: BatchNorm statistics stay frozen and dropout is off; restored on exit.

    Yields the module to call: a DistributedDataParallel wrapper is unwrapped, so that forwards which build
    no parameter gradients never touch its gradient reducer.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield getattr(model, "module", model)
    finally:
        for m, mode in modes:
            m.train(mode)


SELECTIONS = ("sample", "batch")


def pick_per_sample(stack: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``stack[index[j], j]`` for every sample j: ``[k, B, ...]`` × ``[B]`` → ``[B, ...]``."""
    return stack[index, torch.arange(stack.shape[1], device=stack.device)]


@torch.no_grad()
def worst_of_k_variations(model: nn.Module, G, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor,
                          select: str = "sample"):
    """Expand x into its k variations in one G call, score them without a graph, keep the worst: each sample's
    (``select="sample"``) or the draw set with the largest batch-summed loss (``"batch"``, Algorithm 2).

    Returns (δ_adv [B, q], x_adv [B, C, H, W]). x_adv is reused for the training forward: G is frozen, so
    recomputing G(x, δ_adv) would give the same pixels at the cost of another G call.
    """
    k, b = delta.shape[:2]
    variations = G.expand(x, delta)
    with frozen(model) as inner_model:
        logits = inner_model(variations.reshape(k * b, *x.shape[1:])).reshape(k, b, -1)
    index = worst_of_k(logits, y)[1] if select == "sample" else worst_draw_set(logits, y)
    return pick_per_sample(delta, index), pick_per_sample(variations, index)


def worst_draw_set(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Algorithm 2's choice: the index i of the draw set whose loss Σ_j ℓ(x_ij) over the batch is largest, for
    every sample: ``[k, B, C]`` → ``[B]`` (all equal)."""
    k, b = logits.shape[:2]
    losses = F.cross_entropy(logits.float().reshape(k * b, -1), y.repeat(k), reduction="none").view(k, b)
    return losses.sum(1).argmax().expand(b)


def ascend(
    loss_of_delta, delta: torch.Tensor, steps: int, alpha: float, low: torch.Tensor, high: torch.Tensor, signed: bool
) -> torch.Tensor:
    """k steps of projected gradient ascent on δ alone: ``torch.autograd.grad`` w.r.t. δ, never a parameter."""
    delta = delta.detach().clone()
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of_delta(delta), delta)
        delta = delta.detach()
        pga_step_(delta, grad, alpha, low, high, signed)
    return delta


def summed_ce(model: nn.Module, images: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), y, reduction="sum")
