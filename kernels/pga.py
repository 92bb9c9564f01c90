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

    ``low``/``high`` broadcast against δ's last dimension (per-coordinate box) or are scalars.
    """
    step = grad.sign() if signed else grad
    delta.add_(step.to(delta.dtype), alpha=alpha)
    return torch.maximum(torch.minimum(delta, high.to(delta.dtype)), low.to(delta.dtype), out=delta)


def _flat_bound(bound, delta: torch.Tensor, name: str) -> torch.Tensor:
    """A box bound as a contiguous fp32 vector the kernel indexes by ``element % len``.

    Scalars and ``[q]`` vectors (the usual per-coordinate box) stay short; any other shape that broadcasts
    to δ is materialised at δ's full size, so the kernel matches the reference's broadcasting in every case.
    """
    bound = torch.as_tensor(bound, dtype=torch.float32, device=delta.device)
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
    def pga_kernel(delta_ptr, grad_ptr, low_ptr, high_ptr, alpha, n, q, SIGNED: tl.constexpr, BLOCK: tl.constexpr):
        """Elementwise step and clamp; bound index is ``element % q`` (q = bound length).

        Like the reference: the sign is taken before any rounding, a plain gradient is rounded to δ's dtype,
        and the sum is rounded once (add_ computes in fp32 for half types).
        sign keeps NaN (torch.sign does), so a NaN gradient poisons δ the same way in both paths.
        """
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        d = tl.load(delta_ptr + offsets, mask=mask).to(tl.float32)
        g = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
        if SIGNED:
            g = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, g))
        else:
            g = g.to(delta_ptr.dtype.element_ty).to(tl.float32)
        columns = offsets % q
        low = tl.load(low_ptr + columns, mask=mask)
        high = tl.load(high_ptr + columns, mask=mask)
        d = tl.maximum(tl.minimum(d + alpha * g, high), low)
        tl.store(delta_ptr + offsets, d.to(delta_ptr.dtype.element_ty), mask=mask)

    return pga_kernel


def pga_step_triton(
    delta: torch.Tensor, grad: torch.Tensor, alpha: float, low, high, signed: bool = True
) -> torch.Tensor:
    """Same contract and result as ``pga_step_reference`` (δ updated in place and returned)."""
    import triton

    low_flat, high_flat = _flat_bound(low, delta, "low"), _flat_bound(high, delta, "high")
    grad = grad.expand_as(delta).contiguous()
    work = delta if delta.is_contiguous() else delta.contiguous()
    n = work.numel()
    if n:
        grid = (triton.cdiv(n, PGA_BLOCK),)
        _pga_kernel()[grid](
            work, grad, low_flat, high_flat, float(alpha), n, low_flat.numel(), SIGNED=bool(signed), BLOCK=PGA_BLOCK
        )
    if work is not delta:
        delta.copy_(work)
    return delta
