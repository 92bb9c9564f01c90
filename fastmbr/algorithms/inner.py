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


def pick_per_sample(stack: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``stack[index[j], j]`` for every sample j: ``[k, B, ...]`` × ``[B]`` → ``[B, ...]``."""
    return stack[index, torch.arange(stack.shape[1], device=stack.device)]


@torch.no_grad()
def worst_of_k_variations(model: nn.Module, G, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor):
    """Expand x into its k variations in one G call, score them without a graph, keep each sample's worst.

    Returns (δ_adv [B, q], x_adv [B, C, H, W]). x_adv is reused for the training forward: G is frozen, so
    recomputing G(x, δ_adv) would give the same pixels at the cost of another G call.
    """
    k, b = delta.shape[:2]
    variations = G.expand(x, delta)
    with frozen(model) as inner_model:
        logits = inner_model(variations.reshape(k * b, *x.shape[1:])).reshape(k, b, -1)
    _, index = worst_of_k(logits, y)
    return pick_per_sample(delta, index), pick_per_sample(variations, index)


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
