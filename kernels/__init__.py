"""Fused kernels (Triton on CUDA) beside their PyTorch references; ``dispatch`` picks one."""

from fastmbr.kernels.dispatch import kernel_backend, pga_step_, worst_of_k

__all__ = ["worst_of_k", "pga_step_", "kernel_backend"]
