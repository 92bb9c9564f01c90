from dataclasses import dataclass

from fastmbr.algorithms.base import Algorithm, register_algorithm, robust_loss
from fastmbr.algorithms.inner import worst_of_k_variations


@register_algorithm("mrt")
@dataclass
class MRT(Algorithm):
    """Model-based Robust Training (Algorithm 2): the worst of k sampled δ, chosen PER SAMPLE."""

    k: int = 10
    lam: float = 1.0
    uses_variation = True

    def inner_max(self, model, G, x, y):
        delta = G.sample_delta(x.shape[0], self.k).to(x.device)
        return worst_of_k_variations(model, G, x, y, delta)[0]

    def loss(self, model, G, x, y):
        self.check_variation(G)
        delta = G.sample_delta(x.shape[0], self.k).to(x.device)
        _, x_adv = worst_of_k_variations(model, G, x, y, delta)
        return robust_loss(model, x_adv, x, y, self.lam)
