"""Kernel micro-benchmarks: the eager PyTorch reference against the dispatched kernel, same process, same inputs.

Each function returns a plain dict (no printing) for ``fastmbr bench``. On CPU without ``TRITON_INTERPRET=1`` the
dispatch picks the reference too, so the ratio is ~1; ``backend`` says which implementation was timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from fastmbr.kernels import kernel_backend, pga_step_, worst_of_k
from fastmbr.kernels.pga import pga_step_reference
from fastmbr.kernels.worst_of_k import worst_of_k_reference


def seconds_per_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Mean wall time of ``fn()``; CUDA events bracket the whole loop so launches queue as in training.

    The warm-up calls absorb Triton's JIT compilation and the caching allocator's first allocations.
    """
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0 / repeats
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - began) / repeats


def _side_by_side(reference: Callable[[], object], dispatched: Callable[[], object], device, repeats: int) -> dict:
    reference_s = seconds_per_call(reference, device, repeats)
    dispatched_s = seconds_per_call(dispatched, device, repeats)
    return {
        "reference_ms": reference_s * 1e3,
        "dispatched_ms": dispatched_s * 1e3,
        "reference_calls_per_s": 1.0 / reference_s,
        "dispatched_calls_per_s": 1.0 / dispatched_s,
        "speedup": reference_s / dispatched_s,
    }


def bench_worst_of_k(
    device="cuda", k: int = 10, batch: int = 256, classes: int = 1000, repeats: int = 50, dtype=torch.bfloat16
) -> dict:
    """MRT's selection on ``[k, batch, classes]`` logits; images/s counts all k·batch scored images."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(k, batch, classes, device=device, generator=generator).to(dtype)
    y = torch.randint(0, classes, (batch,), device=device, generator=generator)
    timing = _side_by_side(lambda: worst_of_k_reference(logits, y), lambda: worst_of_k(logits, y), device, repeats)
    return {
        "kernel": "worst_of_k",
        "device": str(device),
        "backend": kernel_backend(logits),
        "dtype": str(dtype).removeprefix("torch."),
        "shape": [k, batch, classes],
        **timing,
        "reference_images_per_s": k * batch * timing["reference_calls_per_s"],
        "dispatched_images_per_s": k * batch * timing["dispatched_calls_per_s"],
    }


def bench_pga(
    device="cuda",
    batch: int = 256,
    shape: tuple[int, ...] = (3, 32, 32),
    repeats: int = 50,
    dtype=torch.float32,
    signed: bool = True,
) -> dict:
    """One PGA step on a ``[batch, *shape]`` δ with a per-coordinate box over the last dimension.

    Both paths update δ in place on every call; the box keeps it bounded, so repeated calls stay representative.
    """
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    full_shape = (batch, *shape)
    delta = torch.zeros(full_shape, device=device, dtype=dtype)
    grad = torch.randn(full_shape, device=device, generator=generator).to(dtype)
    low = -torch.linspace(0.01, 0.1, shape[-1], device=device)
    high = torch.linspace(0.01, 0.1, shape[-1], device=device)

    def reference():
        return pga_step_reference(delta, grad, 2 / 255, low, high, signed)

    def dispatched():
        return pga_step_(delta, grad, 2 / 255, low, high, signed)

    timing = _side_by_side(reference, dispatched, device, repeats)
    return {
        "kernel": "pga_step",
        "device": str(device),
        "backend": kernel_backend(delta),
        "dtype": str(dtype).removeprefix("torch."),
        "shape": list(full_shape),
        "signed": signed,
        **timing,
        "reference_elements_per_s": delta.numel() * timing["reference_calls_per_s"],
        "dispatched_elements_per_s": delta.numel() * timing["dispatched_calls_per_s"],
    }
