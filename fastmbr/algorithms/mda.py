from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastmbr.algorithms.base import Algorithm, register_algorithm


@register_algorithm("mda")
@dataclass
class MDA(Algorithm):
    """Model-based Data Augmentation (Algorithm 4): loss = Σ_i ℓ(G(x, δ_i)) + λ·ℓ(x) over k random δ_i.

    That sum is (k + λ)× ERM's gradient scale; ``reduction="mean"`` divides it by the k + 1 copies of the
    concatenated batch, as the reference code's mean over it does (the scale SGD learning rates were set for).
    """

    k: int = 3
    lam: float = 1.0
    uses_variation = True

    def inner_max(self, model, G, x, y):
        return G.sample_delta(x.shape[0], self.k).to(x.device)

    def loss(self, model, G, x, y):
        self.check_variation(G)
        b = x.shape[0]
        with torch.no_grad():
            variations = G.expand(x, self.inner_max(model, G, x, y)).reshape(self.k * b, *x.shape[1:])
        logits = model(torch.cat([variations, x]))
        per_draw = F.cross_entropy(logits[: self.k * b], y.repeat(self.k), reduction="none").view(self.k, b)
        loss = self.reduce(per_draw.sum(0).mean() + self.lam * F.cross_entropy(logits[self.k * b :], y), self.k)
        return {"loss": loss, "logits": logits[self.k * b :].detach()}
