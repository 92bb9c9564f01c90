"""Label-preserving (semantic) loss for MUNIT: our extension beyond the paper, off by default.

On traffic signs colour is content: an unconstrained A→B translation may turn a red ring into a blue disc, and a
classifier trained on such G(x, δ) learns the wrong label. CyCADA (Hoffman et al., 2018) calls the fix *semantic
consistency*: a classifier f trained on the labelled domain A must give the translation G(x_A, δ) the label of
x_A. In the model-based setting domain A is labelled, so this uses no information the method lacks: f sees A's
labelled training split only (never A's validation split, never any label of B).

The loss is ``W · CE(f(G(x_A, δ)), y_A)``, with f frozen; its gradient reaches the content encoder of A and the
decoder of B. f is the paper's CNN, trained once before MUNIT and stored beside G (``semantic.safetensors``), so a
resumed training uses the very same f.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from fastmbr.errors import FastmbrError
from fastmbr.fileio import atomic_write
from fastmbr.models import build_classifier

SEMANTIC = "semantic.safetensors"


def semantic_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int, seed: int,
                        g_dir: Path, device: torch.device) -> nn.Module:
    """The frozen classifier f of domain A: loaded from ``g_dir/semantic.safetensors``, else trained and stored."""
    from fastmbr.variation.munit.score import ScoreConfig, train_classifier

    path = Path(g_dir) / SEMANTIC
    if path.is_file():
        model = build_classifier("cnn", num_classes, images.shape[1], images.shape[-1])
        try:
            model.load_state_dict(load_file(str(path)))
        except Exception as exc:  # foreign or truncated file
            raise FastmbrError(f"{path}: not the semantic classifier of this G ({type(exc).__name__}); "
                               f"move it away to train a new one") from None
    else:
        cfg = replace(ScoreConfig(), epochs=epochs, batch_size=32, seed=seed)  # ~1,000 Adadelta steps on GTSRB's A
        model = train_classifier(images, labels, num_classes, cfg, device).cpu()
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        atomic_write(path, lambda f: f.write(save(state)))
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


def semantic_loss(classifier: nn.Module, translated: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE of the frozen A-classifier on translations (pixels in [-1, 1], as inside MUNIT) against A's labels."""
    return F.cross_entropy(classifier((translated + 1.0) * 0.5), labels)


@torch.no_grad()
def accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 of f on uint8 images (its accuracy on its own training split, recorded in G.json)."""
    device = next(classifier.parameters()).device
    correct = sum(int((classifier(x.to(device).float() / 255).argmax(1) == y.to(device)).sum())
                  for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    return correct / max(len(images), 1)
