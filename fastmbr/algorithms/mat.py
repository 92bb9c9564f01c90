from dataclasses import dataclass

import torch

from fastmbr.algorithms.base import Algorithm, register_algorithm, robust_loss
from fastmbr.algorithms.inner import ascend, frozen, summed_ce
from fastmbr.errors import FastmbrError

MAT_INITS = ("sample", "zero")
MAT_STEPS = ("sign", "grad")


@register_algorithm("mat")
@dataclass
class MAT(Algorithm):
    """Model-based Adversarial Training (Algorithm 3): k steps of projected gradient ascent on δ.

    δ starts from a draw of G's prior (``init="sample"``, ours, the default) or from the projection of 0
    (``init="zero"``, as in Algorithm 3); each step is α·sign(∇δ) (``signed``, ours) or α·∇δ (Algorithm 3), followed
    by the projection onto Δ. G's δ-independent part (MUNIT's content code) is computed once per batch
    (``G.encode``); each ascent step only decodes (``G.decode``).
    """

    k: int = 10
    lam: float = 1.0
    alpha: float = 0.1
    signed: bool = True
    init: str = "sample"
    uses_variation = True

    def __post_init__(self):
        super().__post_init__()
        if self.init not in MAT_INITS:
            raise FastmbrError(f"mat: init must be 'sample' or 'zero', got {self.init!r}")
        if self.alpha <= 0:
            raise FastmbrError(f"mat: alpha must be > 0, got {self.alpha}")

    def initial_delta(self, G, batch_size, device):
        if self.init == "zero":
            return G.project(torch.zeros(batch_size, G.delta_dim, device=device))
        return G.sample_delta(batch_size, 1)[0].to(device)

    def ascend_from_code(self, model, G, code, y, batch_size, device):
        delta = self.initial_delta(G, batch_size, device)
        with frozen(model) as inner_model:
            return ascend(
                lambda d: summed_ce(inner_model, G.decode(code, d), y), delta, self.k, self.alpha,
                G.delta_low.to(device), G.delta_high.to(device), self.signed,
            )

    def inner_max(self, model, G, x, y):
        self.check_variation(G)
        with torch.no_grad():
            code = G.encode(x)
        return self.ascend_from_code(model, G, code, y, x.shape[0], x.device)

    def loss(self, model, G, x, y):
        self.check_variation(G)
        with torch.no_grad():
            code = G.encode(x)
        delta = self.ascend_from_code(model, G, code, y, x.shape[0], x.device)
        with torch.no_grad():
            x_adv = G.decode(code, delta)
        out = robust_loss(model, x_adv, x, y, self.lam)
        return {**out, "loss": self.reduce(out["loss"], 1)}
