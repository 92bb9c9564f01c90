"""Loaders: one module per backend behind ``build_loader(data, cfg)``.

Every backend keeps the LoaderConfig contract (float32 ``[B, C, H, W]`` in [0, 1] on ``cfg.device``, int64
labels, an order that is a function of ``(seed, epoch)``, sharding by ``num_shards``/``shard_id``, exact resume
via ``set_epoch(epoch, start_batch)``). ``auto`` picks tensor for in-memory data, DALI for image files on
CUDA when it imports, and torch otherwise; ``nvjpeg`` (torchvision's batched GPU decode, for machines without
DALI) is asked for by name until a GPU run has measured it.

The backend module ``torch.py`` becomes this package's attribute ``torch`` once imported, so this file never
binds the name ``torch`` itself.
"""

from __future__ import annotations

from torch import cuda
from torch import device as torch_device

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.loaders.config import AUGMENTS, LoaderConfig
from fastmbr.pipelines.prepare import check_max_resolution
from fastmbr.pipelines.types import ImageFiles, LabeledImages

BACKENDS = ("auto", "tensor", "torch", "dali", "ffcv", "nvjpeg")


def check_device(device) -> torch_device:
    try:
        device = torch_device(device)
    except (RuntimeError, TypeError) as exc:
        raise FastmbrError(f"unknown device {device!r} ({exc})") from None
    if device.type == "cuda" and not cuda.is_available():
        raise FastmbrError(f"device {str(device)!r} asked for, but this machine has no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= cuda.device_count():
        raise FastmbrError(f"device {str(device)!r}: only {cuda.device_count()} CUDA device(s) here")
    return device


def check_config(cfg: LoaderConfig) -> None:
    if cfg.backend not in BACKENDS:
        raise FastmbrError(f"unknown loader {cfg.backend!r}; known: {', '.join(BACKENDS)}")
    if cfg.augment not in AUGMENTS:
        raise FastmbrError(f"unknown augment {cfg.augment!r}; known: {', '.join(AUGMENTS)}")
    if cfg.batch_size < 1:
        raise FastmbrError(f"batch size must be at least 1, not {cfg.batch_size}")
    if cfg.max_resolution is not None and cfg.backend != "ffcv":
        raise FastmbrError(f"--max-resolution sizes the files an FFCV .beton stores: it needs --loader ffcv, "
                           f"not {cfg.backend!r}")
    check_max_resolution(cfg.max_resolution)
    if not 0 < cfg.center_crop <= 1:
        raise FastmbrError(f"centre crop {cfg.center_crop}: the crop's side is a fraction (0, 1] of the shorter side")
    if not 0 <= cfg.shard_id < cfg.num_shards:
        raise FastmbrError(f"shard id {cfg.shard_id} outside 0..{cfg.num_shards - 1}")
    check_device(cfg.device)


def resolve_backend(data: LabeledImages | ImageFiles, cfg: LoaderConfig) -> str:
    """The backend ``auto`` stands for, given the data and the device."""
    if cfg.backend != "auto":
        return cfg.backend
    if isinstance(data, LabeledImages):
        return "tensor"
    if torch_device(cfg.device).type == "cuda":
        from fastmbr.pipelines.loaders.dali import dali_available

        if dali_available():
            return "dali"
    return "torch"


def build_loader(data: LabeledImages | ImageFiles, cfg: LoaderConfig):
    """The loader for ``data`` under ``cfg.backend``."""
    check_config(cfg)
    backend = resolve_backend(data, cfg)
    if backend == "tensor":
        if not isinstance(data, LabeledImages):
            raise FastmbrError("loader 'tensor' needs in-memory images; use --loader torch or dali for image files")
        from fastmbr.pipelines.loaders.tensor import TensorLoader

        return TensorLoader(data, cfg)
    if backend == "torch":
        from fastmbr.pipelines.loaders.torch import TorchLoader

        return TorchLoader(data, cfg)
    if backend == "dali":
        from fastmbr.pipelines.loaders.dali import DaliLoader

        return DaliLoader(data, cfg)
    if backend == "nvjpeg":
        from fastmbr.pipelines.loaders.nvjpeg import NvjpegLoader

        return NvjpegLoader(data, cfg)
    from fastmbr.pipelines.loaders.ffcv import FfcvLoader

    return FfcvLoader(data, cfg)


__all__ = ["LoaderConfig", "build_loader", "BACKENDS", "resolve_backend"]
