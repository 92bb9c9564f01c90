"""Projected gradient ascent step on δ for MAT and PGD: δ ← Π_[low, high](δ + α·step(grad)), in place.

``pga_step_reference`` is the PyTorch definition; ``pga_step_triton`` does the same in one elementwise kernel
(one read of δ and grad, one write of δ, instead of the reference's four passes).
"""

from __future__ import annotations

import functools

import torch

from fastmbr.errors import FastmbrError

PGA_BLOCK = 1024
"""Elements of δ per Triton program."""


def pga_step_reference(
    delta: torch.Tensor, grad: torch.Tensor, alpha: float, low: torch.Tensor, high: torch.Tensor, signed: bool = True
) -> torch.Tensor:
    """In-place ascent step (sign of the gradient when ``signed``) and projection onto the box; returns δ.

    ``low``/``high`` broadcast against δ's last dimension (per-coordinate box) or are scalars (tensors or Python
    numbers). A NaN gradient, on both paths: a signed step leaves that coordinate of δ where it was (torch.sign(NaN)
    is 0); a raw step makes it NaN (the clamp propagates NaN), so the trainer sees a non-finite loss and skips the
    step, instead of training on a δ silently set to a bound.
    """
    step = grad.sign() if signed else grad
    delta.add_(step.to(delta.dtype), alpha=step_size_in(alpha, delta.dtype))
    high_d, low_d = _bound_like(high, delta), _bound_like(low, delta)
    return torch.maximum(torch.minimum(delta, high_d), low_d, out=delta)


def _bound_like(bound, delta: torch.Tensor) -> torch.Tensor:
    """A bound (tensor or Python number) on δ's device, rounded to δ's dtype."""
    return torch.as_tensor(bound, device=delta.device).to(delta.dtype)


def step_size_in(alpha, dtype: torch.dtype) -> float:
    """α rounded to δ's dtype, as a Python float.

    CPU ``add_`` rounds ``alpha`` to a bf16/fp16 tensor's dtype while CUDA keeps it in fp32; rounding it up front
    makes the step the same on every device and in the Triton kernel (a no-op for fp32 δ).
    """
    if dtype in (torch.bfloat16, torch.float16):
        return float(torch.tensor(float(alpha), dtype=dtype))
    return float(alpha)


def _flat_bound(bound, delta: torch.Tensor, name: str) -> torch.Tensor:
    """A box bound as the contiguous fp32 vector the kernel indexes by ``element % len``.

    The bound is first rounded to δ's dtype, as the reference does, so a clamped element is exactly the bound.
    Scalars and ``[q]`` vectors (the usual per-coordinate box) stay short; any other shape that broadcasts to δ
    is materialised at δ's full size, so the kernel matches the reference's broadcasting in every case.
    """
    bound = torch.as_tensor(bound, device=delta.device).to(delta.dtype).float()
    q = delta.shape[-1] if delta.dim() else 1
    if bound.dim() == 0:
        return bound.expand(q).contiguous()
    if bound.dim() == 1 and bound.shape[0] == q:
        return bound.contiguous()
    try:
        return bound.expand(delta.shape).contiguous().reshape(-1)
    except RuntimeError:
        raise FastmbrError(
            f"pga_step: box bound {name} of shape {tuple(bound.shape)} does not broadcast to δ {tuple(delta.shape)}"
        ) from None


@functools.cache
def _pga_kernel():
    """Build the Triton kernel on first use, so importing this module never imports Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def pga_kernel(
        delta_ptr, grad_ptr, low_ptr, high_ptr, alpha, n, low_len, high_len, SIGNED: tl.constexpr, BLOCK: tl.constexpr
    ):
        """Elementwise step and clamp; a bound of length L is read at ``element % L``.

        Like the reference: the sign is taken before any rounding and the sum is rounded to δ's dtype once
        (``add_`` computes in fp32 for half types). The sign of NaN is 0, as torch.sign's; the clamp keeps NaN, as
        torch.minimum/maximum do.
        """
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        d = tl.load(delta_ptr + offsets, mask=mask).to(tl.float32)
        g = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
        if SIGNED:
            g = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))
        low = tl.load(low_ptr + offsets % low_len, mask=mask)
        high = tl.load(high_ptr + offsets % high_len, mask=mask)
        # as torch.minimum/maximum: a NaN step stays NaN, never becomes a bound
        d = tl.minimum(d + alpha * g, high, propagate_nan=tl.PropagateNan.ALL)
        d = tl.maximum(d, low, propagate_nan=tl.PropagateNan.ALL)
        tl.store(delta_ptr + offsets, d.to(delta_ptr.dtype.element_ty), mask=mask)

    return pga_kernel


def pga_step_triton(
    delta: torch.Tensor, grad: torch.Tensor, alpha: float, low, high, signed: bool = True
) -> torch.Tensor:
    """Same contract and result as ``pga_step_reference`` (δ updated in place and returned)."""
    import triton

    low_flat, high_flat = _flat_bound(low, delta, "low"), _flat_bound(high, delta, "high")
    grad = grad.expand_as(delta) if signed else grad.to(delta.dtype).expand_as(delta)
    grad = grad.contiguous()
    work = delta if delta.is_contiguous() else delta.contiguous()
    n = work.numel()
    if n:
        alpha_d = step_size_in(alpha, delta.dtype)
        grid = (triton.cdiv(n, PGA_BLOCK),)
        lengths = low_flat.numel(), high_flat.numel()
        _pga_kernel()[grid](work, grad, low_flat, high_flat, alpha_d, n, *lengths, SIGNED=bool(signed), BLOCK=PGA_BLOCK)
    if work is not delta:
        delta.copy_(work)
    return delta
