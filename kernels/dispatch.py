"""The one place that picks a fast kernel or its PyTorch reference.

Triton kernels run on CUDA tensors when Triton imports (or on CPU tensors under ``TRITON_INTERPRET=1``, Triton's
interpreter, which is how the tests check the kernels without a GPU); everything else gets the reference.
``FASTMBR_KERNELS=reference`` forces the reference everywhere. Both return the same values, so callers never need
to know which one ran; ``kernel_backend`` says which one would, for the bench and the logs.
"""

from __future__ import annotations

import os

import torch

from fastmbr.errors import require
from fastmbr.kernels.pga import pga_step_reference, pga_step_triton
from fastmbr.kernels.worst_of_k import worst_of_k_reference, worst_of_k_triton

KERNEL_CHOICES = ("auto", "reference")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _triton_imports() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _use_triton(tensor: torch.Tensor) -> bool:
    """True when the Triton kernel can and should run on ``tensor``.

    The kernels have no backward, so a tensor that would record a graph keeps the reference.
    Cheap checks come first, so a plain CPU run never imports Triton.
    """
    choice = os.environ.get("FASTMBR_KERNELS", "auto") or "auto"
    require(choice in KERNEL_CHOICES, f"FASTMBR_KERNELS={choice!r} is not one of {', '.join(KERNEL_CHOICES)}")
    if choice == "reference" or tensor.dtype not in TRITON_DTYPES:
        return False
    if tensor.requires_grad and torch.is_grad_enabled():
        return False
    if not (tensor.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    return _triton_imports()


def kernel_backend(tensor: torch.Tensor) -> str:
    """``"triton"`` or ``"reference"``: the implementation ``worst_of_k``/``pga_step_`` would use for ``tensor``."""
    return "triton" if _use_triton(tensor) else "reference"


def worst_of_k(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy over k variations and the index of the worst one: ``([k, B], [B])``."""
    if _use_triton(logits):
        return worst_of_k_triton(logits, y)
    return worst_of_k_reference(logits, y)


def pga_step_(delta, grad, alpha, low, high, signed: bool = True) -> torch.Tensor:
    """δ ← Π_Δ(δ + α·sign(grad)) in place."""
    if _use_triton(delta):
        return pga_step_triton(delta, grad, alpha, low, high, signed)
    return pga_step_reference(delta, grad, alpha, low, high, signed)
