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
