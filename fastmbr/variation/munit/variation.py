"""G(x, δ) = Dec_B(Enc^c_A(x), δ): the A→B half of a trained MUNIT as a model of natural variation.

δ is domain B's style code. MUNIT trains with styles drawn from N(0, I); a robust trainer needs a bounded box, so
Δ = [-bound, bound]^q (bound 2 by default) and the prior is N(0, I) *truncated* to Δ (resampled by the inverse
CDF, never clamped, so no mass piles up on the faces of the box). Training draws its styles from the same prior,
so the decoder has seen every δ the robust trainer will draw. ``prior="uniform"`` (uniform on Δ) is also kept.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fastmbr.errors import FastmbrError
from fastmbr.variation.base import NaturalVariation
from fastmbr.variation.munit.networks import ContentEncoder, Decoder, MunitArch

PRIORS = ("gaussian", "uniform")
# Images per decoder call on a CPU. `fastmbr bench` (case "decode chunk", k=10, B=32, tiny, 32 px, 2 cores, idle)
# measured 1,935 images/s at 32, 1,584 at 64, 1,180 at 128 and 1,138 at 320: caches, not batch size, win here.
CPU_DECODE_CHUNK = 32


def sample_prior(prior: str, low: torch.Tensor, high: torch.Tensor, shape: tuple[int, ...],
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Draws of shape ``[*shape, q]`` from the prior on the box [low, high] (both ``[q]``), always inside it."""
    device = generator.device if generator is not None else low.device
    u = torch.rand(*shape, low.numel(), generator=generator, device=device).to(low.device)
    if prior == "uniform":
        return low + (high - low) * u
    if prior == "gaussian":
        cdf_low, cdf_high = _normal_cdf(low), _normal_cdf(high)
        z = torch.special.ndtri(cdf_low + (cdf_high - cdf_low) * u)
        return torch.minimum(torch.maximum(z, low), high)  # guards against last-ulp round-off only
    raise FastmbrError(f"unknown style prior {prior!r}; known: {', '.join(PRIORS)}")


def _normal_cdf(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(t / math.sqrt(2.0)))


class MunitVariation(NaturalVariation):
    """A→B MUNIT translation: content encoder of A, decoder of B; pixels in [0, 1] in and out."""

    def __init__(self, arch: MunitArch, image_size: int, prior: str = "gaussian", bound: float = 2.0,
                 decode_chunk: int | None = None):
        if prior not in PRIORS:
            raise FastmbrError(f"unknown style prior {prior!r}; known: {', '.join(PRIORS)}")
        if not bound > 0:
            raise FastmbrError(f"the style box bound must be > 0, got {bound}")
        super().__init__(arch.style_dim, low=-bound, high=bound)
        self.arch = arch
        self.image_size = int(image_size)
        self.prior = prior
        self.bound = float(bound)
        self.decode_chunk = decode_chunk
        self.content_encoder = ContentEncoder(arch)
        self.decoder = Decoder(arch)

    @property
    def name(self) -> str:
        return "munit"

    def freeze(self) -> "MunitVariation":
        """For classifier training: no parameter gradients, eval mode; still differentiable in x and δ."""
        self.requires_grad_(False)
        return self.eval()

    def sample_delta(self, batch_size: int, k: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """k draws per sample from the recorded prior restricted to Δ: ``[k, B, q]``."""
        return sample_prior(self.prior, self.delta_low, self.delta_high, (k, batch_size), generator)

    def check_images(self, x: torch.Tensor) -> None:
        want = (self.arch.channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise FastmbrError(f"munit: G was trained on images {want} (C, H, W), got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Content code of [0, 1] images (computed once per image, whatever the number of δ draws)."""
        self.check_images(x)
        return self.content_encoder(x * 2.0 - 1.0)

    def decode(self, content: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Dec_B(content, δ) in [0, 1], in chunks of ``decode_chunk`` images (None: CPU_DECODE_CHUNK on a CPU,
        all at once on an accelerator)."""
        delta = delta.to(content.dtype)
        chunk = self.decode_chunk or (CPU_DECODE_CHUNK if content.device.type == "cpu" else content.shape[0])
        if chunk >= content.shape[0]:
            out = self.decoder(content, delta)
        else:
            out = torch.cat([self.decoder(c, d) for c, d in zip(content.split(chunk), delta.split(chunk))])
        return (out + 1.0) * 0.5

    def forward(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        self.check_delta(delta, leading=1)
        if delta.shape[0] != x.shape[0]:
            raise FastmbrError(f"munit: δ has batch {delta.shape[0]} but x has batch {x.shape[0]}")
        return self.decode(self.encode(x), delta)

    def expand(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """δ ``[k, B, q]`` → ``[k, B, C, H, W]``: content encoded once, the k·B styles decoded in batched chunks."""
        self.check_delta(delta, leading=2)
        k, b = delta.shape[:2]
        if b != x.shape[0]:
            raise FastmbrError(f"munit: δ has batch {b} but x has batch {x.shape[0]}")
        content = self.encode(x)
        content_k = content.unsqueeze(0).expand(k, *content.shape).reshape(k * b, *content.shape[1:])
        return self.decode(content_k, delta.reshape(k * b, -1)).reshape(k, b, *x.shape[1:])

    def extra_repr(self) -> str:
        return (f"delta_dim={self.delta_dim}, prior={self.prior}, Δ=[-{self.bound}, {self.bound}]^q, "
                f"image={self.arch.channels}×{self.image_size}×{self.image_size}, decode_chunk={self.decode_chunk}")


def inference_modules(g: MunitVariation) -> dict[str, nn.Module]:
    """The parts stored in G.safetensors, by prefix."""
    return {"content_encoder": g.content_encoder, "decoder": g.decoder}
