from dataclasses import dataclass

import torch

from fastmbr.algorithms.base import Algorithm, register_algorithm, robust_loss
from fastmbr.algorithms.inner import ascend, frozen, summed_ce
from fastmbr.variation.known import Additive


@register_algorithm("pgd")
@dataclass
class PGD(Algorithm):
    """Madry et al.'s ℓ∞ PGD adversarial training (A.1: ε = 8/255, α = 0.01, 20 steps), random start.

    It is MAT with the known model G(x, δ) = x + δ; k is the number of steps. λ = 0 trains on x_adv alone.
    """

    k: int = 20
    lam: float = 0.0
    eps: float = 8 / 255
    alpha: float = 0.01

    def perturbation_model(self, x: torch.Tensor) -> Additive:
        return Additive(tuple(x.shape[1:]), self.eps).to(x.device)

    def inner_max(self, model, G, x, y):
        additive = self.perturbation_model(x)
        delta = additive.sample_delta(x.shape[0], 1)[0]
        with frozen(model) as inner_model:
            return ascend(
                lambda d: summed_ce(inner_model, additive(x, d), y), delta, self.k, self.alpha,
                additive.delta_low, additive.delta_high, signed=True,
            )

    def loss(self, model, G, x, y):
        delta = self.inner_max(model, G, x, y)
        with torch.no_grad():
            x_adv = self.perturbation_model(x)(x, delta)
        out = robust_loss(model, x_adv, x, y, self.lam)
        return {**out, "loss": self.reduce(out["loss"], 1)}
