from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from fastmbr.algorithms.base import Algorithm, register_algorithm


def jensen_shannon(*logits: torch.Tensor) -> torch.Tensor:
    """JS divergence between the softmaxes of several logit sets (AugMix, Hendrycks et al. 2020, eq. 2)."""
    probs = [F.softmax(z, dim=1) for z in logits]
    log_mixture = torch.clamp(torch.stack(probs).mean(0), 1e-7, 1.0).log()
    return sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / len(probs)


@register_algorithm("augmix")
@dataclass
class AugMix(Algorithm):
    """AugMix with the Jensen-Shannon consistency loss: ℓ(x) + jsd_weight·JS(x, aug1, aug2).

    torchvision's AugMix draws one operation chain per call, so each image is augmixed on its own
    (per-sample chains, as in the original implementation). k and λ are unused.

    ``all_ops=False`` as the original (google-research/augmix) by default: its operations leave out brightness,
    contrast, colour and sharpness, the very shifts the paper tests on (T3, T6), so AugMix never trains on them.
    """

    jsd_weight: float = 12.0
    severity: int = 3
    all_ops: bool = False
    augmix: v2.AugMix = field(init=False, repr=False)

    def __post_init__(self):
        super().__post_init__()
        self.augmix = v2.AugMix(severity=self.severity, all_ops=self.all_ops)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        pixels = (x * 255.0).round().to(torch.uint8)
        return torch.stack([self.augmix(image) for image in pixels]).float().div_(255.0)

    def loss(self, model, G, x, y):
        b = x.shape[0]
        with torch.no_grad():
            views = torch.cat([x, self.augment(x), self.augment(x)])
        logits = model(views)
        clean, aug1, aug2 = logits[:b], logits[b : 2 * b], logits[2 * b :]
        loss = F.cross_entropy(clean, y) + self.jsd_weight * jensen_shannon(clean, aug1, aug2)
        return {"loss": loss, "logits": clean.detach()}
