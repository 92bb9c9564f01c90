"""MRT's per-sample selection: cross-entropy of each of k variations and the argmax over k.

``worst_of_k_reference`` is the plain PyTorch definition every fast path is tested against;
``worst_of_k_triton`` is the fused GPU kernel (one pass over the logits, no ``[k, B, C]`` intermediate).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from fastmbr.errors import require

MAX_BLOCK_C = 2048
"""Widest class block one program reads at a time; larger C is streamed through several blocks."""


def check_worst_of_k_inputs(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int, int]:
    """Validate shapes (always) and label range (only for CPU labels); return ``(k, B, C)``.

    The range check needs the label values on the host, which for CUDA labels would stall the stream every step;
    there the Triton kernel writes NaN losses for an out-of-range label instead of reading out of bounds.
    """
    require(logits.dim() == 3, f"worst_of_k: logits must be [k, B, C], got shape {tuple(logits.shape)}")
    k, b, c = logits.shape
    require(k >= 1 and c >= 1, f"worst_of_k: logits need k >= 1 and C >= 1, got shape {tuple(logits.shape)}")
    require(tuple(y.shape) == (b,), f"worst_of_k: labels must have shape [{b}], got {tuple(y.shape)}")
    require(not y.is_floating_point() and y.dtype != torch.bool, f"worst_of_k: labels must be integers, got {y.dtype}")
    require(y.device == logits.device, f"worst_of_k: labels on {y.device} but logits on {logits.device}")
    if b and not y.is_cuda:
        low, high = int(y.min()), int(y.max())
        require(low >= 0 and high < c, f"worst_of_k: label {low if low < 0 else high} out of range [0, {c})")
    return k, b, c


def worst_of_k_reference(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits ``[k, B, C]``, labels ``[B]`` → (fp32 loss ``[k, B]``, index ``[B]`` of the largest loss over k).

    Ties go to the smallest k index (torch.argmax's rule). Labels may be any integer dtype.
    """
    k, b, c = check_worst_of_k_inputs(logits, y)
    loss = F.cross_entropy(logits.float().reshape(k * b, c), y.long().repeat(k), reduction="none").reshape(k, b)
    return loss, loss.argmax(dim=0)


@functools.cache
def _worst_of_k_kernel():
    """Build the Triton kernel on first use, so importing this module never imports Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def worst_of_k_kernel(logits_ptr, y_ptr, loss_ptr, index_ptr, K, B, C, row_stride, BLOCK_C: tl.constexpr):
        """One program per sample b: for each variation, an online log-sum-exp over C, then a running argmax.

        The running max ``m`` and rescaled sum ``s`` make one pass over the row enough (no stored probabilities).
        A strict ``>`` keeps the first of equal losses; NaN wins over numbers, as in torch.argmax.
        """
        b = tl.program_id(0)
        label = tl.load(y_ptr + b)
        label_ok = (label >= 0) & (label < C)
        columns = tl.arange(0, BLOCK_C)
        row_ptr = logits_ptr + b.to(tl.int64) * C
        best_loss = float("-inf")
        best_index = 0
        for kk in range(0, K):
            m = float("-inf")
            s = 0.0
            for start in range(0, C, BLOCK_C):
                cols = start + columns
                x = tl.load(row_ptr + cols, mask=cols < C, other=float("-inf")).to(tl.float32)
                m_new = tl.maximum(m, tl.max(x, axis=0))
                s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
                m = m_new
            target = tl.load(row_ptr + label, mask=label_ok, other=float("nan")).to(tl.float32)
            loss = m + tl.log(s) - target
            tl.store(loss_ptr + kk * B + b, loss)
            better = (loss > best_loss) | ((loss != loss) & (best_loss == best_loss))
            best_loss = tl.where(better, loss, best_loss)
            best_index = tl.where(better, kk, best_index)
            row_ptr += row_stride
        tl.store(index_ptr + b, best_index.to(tl.int64))

    return worst_of_k_kernel


def worst_of_k_triton(
    logits: torch.Tensor, y: torch.Tensor, *, block_c: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same values as ``worst_of_k_reference``, fused into one kernel launch (fp32/bf16/fp16 logits, fp32 math).

    The loss carries no autograd graph: MRT only selects with it, under no_grad (the dispatch keeps the
    reference for logits that need gradients).

    ``block_c`` (a power of two) overrides the class block width, so tests can force the multi-block streaming path.
    """
    import triton

    k, b, c = check_worst_of_k_inputs(logits, y)
    block = block_c or min(triton.next_power_of_2(c), MAX_BLOCK_C)
    require(block & (block - 1) == 0, f"worst_of_k: block_c must be a power of two, got {block}")
    logits, y = logits.contiguous(), y.contiguous()
    loss = torch.empty((k, b), dtype=torch.float32, device=logits.device)
    index = torch.empty(b, dtype=torch.int64, device=logits.device)
    if b:
        num_warps = max(1, min(16, block // 256))
        _worst_of_k_kernel()[(b,)](logits, y, loss, index, k, b, c, b * c, BLOCK_C=block, num_warps=num_warps)
    return loss, index
