"""``--model`` specs → one model of variation: ``known:NAME`` or a learned G folder; several compose."""

from __future__ import annotations

from pathlib import Path

import torch

from fastmbr.errors import FastmbrError
from fastmbr.variation.base import NaturalVariation, build_variation
from fastmbr.variation.compose import ComposedVariation


def variation_from_spec(spec: str) -> NaturalVariation:
    if spec.startswith("known:"):
        return build_variation(spec[len("known:"):])
    path = Path(spec)
    if not path.exists():
        raise FastmbrError(f"--model {spec}: neither known:NAME nor an existing G folder")
    from fastmbr.variation.munit import load_variation

    return load_variation(path)


def variation_from_specs(specs: list[str], shared_delta: bool = False) -> NaturalVariation | None:
    """None for no spec; one model; or ``ComposedVariation`` (first spec outermost: G1(G2(x, δ2), δ1); with
    ``shared_delta`` one δ for all, G1(G2(x, δ), δ))."""
    if shared_delta and len(specs) < 2:
        raise FastmbrError("--shared-delta composes several models of variation: give --model at least twice")
    models = [variation_from_spec(s) for s in specs]
    if not models:
        return None
    return models[0] if len(models) == 1 else ComposedVariation(models, shared=shared_delta)


def freeze(G: NaturalVariation) -> NaturalVariation:
    """G is fixed while classifiers train: eval mode, no parameter gradients (still differentiable in δ)."""
    G.eval()
    G.requires_grad_(False)
    return G


def compile_variation(G: NaturalVariation, mode: str = "default") -> NaturalVariation:
    """torch.compile the heavy parts of learned models (encoder, decoder); known models are cheap elementwise ops."""
    for module in G.modules():
        for part in ("content_encoder", "decoder"):
            inner = getattr(module, part, None)
            if isinstance(inner, torch.nn.Module) and not hasattr(inner, "_orig_mod"):
                setattr(module, part, torch.compile(inner, mode=mode))
    return G
