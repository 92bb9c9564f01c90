"""Top-1 / top-5 accuracy per test domain."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def accuracy(model: nn.Module, loader, device: torch.device, autocast: bool = False) -> dict:
    """``{"top1": %, "top5": %, "n": N}`` over one pass of ``loader``; counts stay on the device until the end."""
    was_training = model.training
    model.eval()
    correct1 = torch.zeros((), dtype=torch.long, device=device)
    correct5 = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    for x, y in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == y.unsqueeze(1)
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=1).sum()
        n += y.shape[0]
    model.train(was_training)
    if n == 0:
        return {"top1": float("nan"), "top5": float("nan"), "n": 0}
    return {"top1": 100.0 * correct1.item() / n, "top5": 100.0 * correct5.item() / n, "n": n}


def shift_summary(results: dict[str, dict], dataset: str) -> dict:
    """Scores under several shifts with their summary: the mean over the shifted domains B and, for ImageNet
    scored on all 75 ImageNet-C folders, the benchmark's mCE (AlexNet-normalised; only defined there)."""
    from fastmbr.pipelines.corruptions import mean_corruption_error, parse_corruption
    from fastmbr.pipelines.shifts import parse_shift

    shifted = {shift: domains["B"] for shift, domains in results.items() if "B" in domains}
    mean = {k: sum(r[k] for r in shifted.values()) / len(shifted) for k in ("top1", "top5")} if shifted else {}
    summary = {"shifts": results, "mean_b": {**mean, "shifts": len(shifted)}}
    if dataset == "imagenet":
        specs = {shift: parse_shift(shift) for shift in shifted}
        top1 = {parse_corruption(spec.b): shifted[shift]["top1"] for shift, spec in specs.items()
                if spec.kind == "corruption"}
        if (mce := mean_corruption_error(top1)) is not None:
            summary["mce"] = mce
    return summary
