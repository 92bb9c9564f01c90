"""FLOPs of one call (PyTorch's FlopCounterMode: matmuls and convolutions, forward and backward) and the share of
the device's dense bf16 peak that a timed call reaches, where that peak is known."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

# dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched on torch.cuda.get_device_name
BF16_PEAK = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12))


def flops_of(fn: Callable[[], object]) -> int:
    """Floating-point operations of one ``fn()`` call (runs it once)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK if key in name), None)


def throughput(flops: int, seconds: float, device: torch.device, prefix: str) -> dict:
    """``{prefix} GFLOP/call``, achieved TFLOP/s and, on a GPU whose peak is known, the fraction of bf16 peak."""
    out = {f"{prefix} GFLOP/call": flops / 1e9, f"{prefix} TFLOP/s": flops / seconds / 1e12}
    peak = bf16_peak(device)
    if peak is not None:
        out[f"{prefix} fraction of bf16 peak"] = flops / seconds / peak
    return out
