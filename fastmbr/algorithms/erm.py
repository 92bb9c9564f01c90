import torch.nn.functional as F

from fastmbr.algorithms.base import Algorithm, register_algorithm


@register_algorithm("erm")
class ERM(Algorithm):
    """Empirical risk minimisation: ℓ(x) on the training domain only."""

    def loss(self, model, G, x, y):
        logits = model(x)
        return {"loss": F.cross_entropy(logits, y), "logits": logits.detach()}
