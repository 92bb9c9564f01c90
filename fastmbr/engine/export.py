"""ONNX export of a trained classifier (a run folder's best.pt); the input is pixels in [0, 1]."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from fastmbr.config import RunConfig
from fastmbr.engine import checkpoint as ckpt
from fastmbr.engine.rundir import read_run_config
from fastmbr.errors import FastmbrError
from fastmbr.models import build_classifier
from fastmbr.pipelines.datasets import dataset_info


def load_run_classifier(run_dir: Path) -> tuple[torch.nn.Module, int]:
    """The run's best weights in a freshly built classifier, and its input size."""
    if not (run_dir / "config.json").exists() or not (run_dir / "best.pt").exists():
        raise FastmbrError(f"{run_dir}: not a finished run folder (needs config.json and best.pt)")
    cfg = RunConfig.from_dict(read_run_config(run_dir / "config.json"))
    weights = ckpt.load_weights(run_dir / "best.pt")
    classes = next(v for k, v in reversed(list(weights.items())) if k.endswith("weight")).shape[0]
    size = cfg.data.image_size or dataset_info(cfg.data.dataset).image_size
    channels = weights["0.mean"].shape[1]
    model = build_classifier(cfg.arch, classes, channels, size)
    model.load_state_dict(weights)
    return model.eval(), size


def export_classifier(run_dir: Path, onnx: Path, opset: int = 17) -> Path:
    model, size = load_run_classifier(run_dir)
    x = torch.rand(2, model[0].mean.shape[1], size, size)
    onnx.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(onnx), dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return onnx
