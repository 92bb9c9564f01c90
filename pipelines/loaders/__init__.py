"""Loaders: one module per backend behind ``build_loader(data, cfg)``."""

from __future__ import annotations

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.loaders.config import LoaderConfig
from fastmbr.pipelines.types import ImageFiles, LabeledImages

BACKENDS = ("auto", "tensor", "torch", "dali", "ffcv")


def build_loader(data: LabeledImages | ImageFiles, cfg: LoaderConfig):
    """The loader for ``data`` under ``cfg.backend`` (``auto``: tensor for in-memory sets)."""
    if cfg.backend not in BACKENDS:
        raise FastmbrError(f"unknown loader {cfg.backend!r}; known: {', '.join(BACKENDS)}")
    if isinstance(data, LabeledImages) and cfg.backend in ("auto", "tensor"):
        from fastmbr.pipelines.loaders.tensor import TensorLoader

        return TensorLoader(data, cfg)
    raise FastmbrError(f"loader {cfg.backend!r} is not available for {type(data).__name__}")


__all__ = ["LoaderConfig", "build_loader", "BACKENDS"]
