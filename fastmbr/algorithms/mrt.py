from dataclasses import dataclass

from fastmbr.algorithms.base import Algorithm, register_algorithm, robust_loss
from fastmbr.algorithms.inner import SELECTIONS, worst_of_k_variations
from fastmbr.errors import FastmbrError


@register_algorithm("mrt")
@dataclass
class MRT(Algorithm):
    """Model-based Robust Training: the worst of k sampled δ for the robust loss.

    ``select="sample"`` (ours, the default) keeps each sample's worst draw, a stronger solution of the same inner max
    (problem 3.2). ``select="batch"`` is the paper's Algorithm 2 (lines 6-9) and the reference code: of the k draw
    sets, keep the one whose batch-summed loss is largest.
    """

    k: int = 10
    lam: float = 1.0
    select: str = "sample"
    uses_variation = True

    def __post_init__(self):
        super().__post_init__()
        if self.select not in SELECTIONS:
            raise FastmbrError(f"mrt: select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")

    def inner_max(self, model, G, x, y):
        delta = G.sample_delta(x.shape[0], self.k).to(x.device)
        return worst_of_k_variations(model, G, x, y, delta, self.select)[0]

    def loss(self, model, G, x, y):
        self.check_variation(G)
        delta = G.sample_delta(x.shape[0], self.k).to(x.device)
        _, x_adv = worst_of_k_variations(model, G, x, y, delta, self.select)
        out = robust_loss(model, x_adv, x, y, self.lam)
        return {**out, "loss": self.reduce(out["loss"], 1)}
