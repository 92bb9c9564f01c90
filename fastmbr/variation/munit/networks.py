"""MUNIT networks (Huang et al. 2018, Appendix B.2): content/style encoders, AdaIN decoder, multi-scale LSGAN critics.

Images inside these networks are in [-1, 1]. Two size presets: ``tiny`` for 28-32 px digits (few channels, one
downsampling, fast on a CPU) and ``base`` with MUNIT's own defaults for 64-256 px images.

AdaIN is the pure function :func:`adain` of (features, style parameters): the decoder threads the parameters
its MLP computes through its residual blocks as arguments, so no module state changes between calls and the
same decoder can be called on any batch of styles (and differentiated in them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from fastmbr.errors import FastmbrError
from fastmbr.variation.munit.upconv import supports_subpixel, upsample_conv, upsample_conv_reference


@dataclass(frozen=True)
class MunitArch:
    """Architecture of one MUNIT model (both domains share it)."""

    channels: int = 3
    style_dim: int = 8
    dim: int = 64  # channels after the first convolution; doubled by every downsampling
    n_downsample: int = 2
    n_res: int = 4
    mlp_dim: int = 256
    first_kernel: int = 7  # first conv of both encoders and last conv of the decoder
    up_kernel: int = 5  # convolution after each nearest-neighbour upsampling
    style_downsample: int = 4  # MUNIT's style encoder downsamples 4 times (2 doubling channels)
    dis_dim: int = 64
    dis_layers: int = 4
    dis_scales: int = 3

    def to_dict(self) -> dict:
        return asdict(self)

    def min_image_size(self) -> int:
        """Smallest side the discriminator accepts: its coarsest scale must still be >= 2 px at its last conv."""
        return 2 ** (self.dis_layers + self.dis_scales - 1)


SIZES = ("tiny", "mid", "base")


def arch_preset(size: str, channels: int = 3, style_dim: int = 8) -> MunitArch:
    """``tiny``: 28-32 px digits (dim 16, 1 downsampling, 2 res blocks, MLP 64); ``base``: MUNIT's own networks
    (paper Appendix A.4); ``mid`` between them: base's layout (7×7 first conv, 2 downsamplings, 5×5 upsampling convs,
    4-fold style encoder) at half its width, 3 residual blocks, MLP 128 (3.1 M generator parameters against 15 M)."""
    if size == "tiny":
        return MunitArch(channels, style_dim, dim=16, n_downsample=1, n_res=2, mlp_dim=64, first_kernel=3,
                         up_kernel=3, style_downsample=3, dis_dim=16, dis_layers=3, dis_scales=3)
    if size == "mid":
        return MunitArch(channels, style_dim, dim=32, n_downsample=2, n_res=3, mlp_dim=128, dis_dim=32)
    if size == "base":
        return MunitArch(channels, style_dim)
    raise FastmbrError(f"unknown MUNIT size {size!r}; known: {', '.join(SIZES)}")


def fit_critics(arch: MunitArch, image_size: int) -> MunitArch:
    """Drop critic layers, down to tiny's 3, until the coarsest of the critics' scales still sees >= 2 px: MUNIT's
    critics (4 layers, 3 scales) need 64 px, and GTSRB is 32 px. Generators are untouched."""
    layers = arch.dis_layers
    while layers > 3 and 2 ** (layers + arch.dis_scales - 1) > image_size:
        layers -= 1
    return replace(arch, dis_layers=layers)


def adain(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Adaptive instance norm: normalise each (sample, channel) plane, then scale by ``weight`` and shift by ``bias``.

    features ``[N, C, H, W]``; weight, bias ``[N, C]`` (one affine per sample, computed from its style code).
    ``F.instance_norm`` computes the same numbers as mean/var over (H, W) in one fused kernel: 2.6× faster on one
    CPU thread at [32, 128, 16, 16], a decoder residual block's shape, and it exports to ONNX with a dynamic batch.
    """
    return torch.addcmul(bias[:, :, None, None], F.instance_norm(features, eps=eps), weight[:, :, None, None])


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "in":
        return nn.InstanceNorm2d(channels)
    if kind == "ln":  # MUNIT's layer norm: per sample over (C, H, W), per-channel affine
        return nn.GroupNorm(1, channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Reflection pad → conv → norm (none | in | ln) → activation (relu | lrelu | tanh | none)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, pad: int, norm: str = "none",
                 act: str = "relu"):
        activations = {"relu": nn.ReLU(), "lrelu": nn.LeakyReLU(0.2), "tanh": nn.Tanh(), "none": nn.Identity()}
        super().__init__(nn.ReflectionPad2d(pad), nn.Conv2d(cin, cout, kernel, stride), _norm(norm, cout),
                         activations[act])


class ResBlock(nn.Module):
    """Two 3×3 conv blocks with instance norm and a skip connection."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(ConvBlock(dim, dim, 3, 1, 1, "in"), ConvBlock(dim, dim, 3, 1, 1, "in", "none"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class AdaResBlock(nn.Module):
    """Residual block whose two normalisations are AdaIN with per-sample parameters passed in."""

    def __init__(self, dim: int):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv1 = nn.Conv2d(dim, dim, 3)
        self.conv2 = nn.Conv2d(dim, dim, 3)

    def forward(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        w1, b1, w2, b2 = params
        h = F.relu(adain(self.conv1(self.pad(x)), w1, b1))
        h = adain(self.conv2(self.pad(h)), w2, b2)
        return x + h


class ContentEncoder(nn.Module):
    def __init__(self, arch: MunitArch):
        super().__init__()
        d, k = arch.dim, arch.first_kernel
        layers: list[nn.Module] = [ConvBlock(arch.channels, d, k, 1, k // 2, "in")]
        for _ in range(arch.n_downsample):
            layers.append(ConvBlock(d, 2 * d, 4, 2, 1, "in"))
            d *= 2
        layers += [ResBlock(d) for _ in range(arch.n_res)]
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class StyleEncoder(nn.Module):
    """Convolutions without normalisation (it would erase style), global average pooling, 1×1 conv to q."""

    def __init__(self, arch: MunitArch):
        super().__init__()
        d, k = arch.dim, arch.first_kernel
        layers: list[nn.Module] = [ConvBlock(arch.channels, d, k, 1, k // 2)]
        for i in range(arch.style_downsample):
            grow = 2 if i < 2 else 1
            layers.append(ConvBlock(d, d * grow, 4, 2, 1))
            d *= grow
        layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(d, arch.style_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class Decoder(nn.Module):
    """Style MLP → AdaIN residual blocks on the content → (upsample, conv, layer norm)× → tanh."""

    def __init__(self, arch: MunitArch):
        super().__init__()
        d = arch.dim * 2**arch.n_downsample
        self.content_dim = d
        self.n_params = 4 * arch.n_res  # (weight, bias) for two AdaINs per block
        m = arch.mlp_dim
        self.mlp = nn.Sequential(nn.Linear(arch.style_dim, m), nn.ReLU(), nn.Linear(m, m), nn.ReLU(),
                                 nn.Linear(m, self.n_params * d))
        self.blocks = nn.ModuleList(AdaResBlock(d) for _ in range(arch.n_res))
        up: list[nn.Module] = []
        for _ in range(arch.n_downsample):
            up += [nn.Upsample(scale_factor=2, mode="nearest"),
                   ConvBlock(d, d // 2, arch.up_kernel, 1, arch.up_kernel // 2, "ln")]
            d //= 2
        k = arch.first_kernel
        up.append(ConvBlock(d, arch.channels, k, 1, k // 2, "none", "tanh"))
        self.up = nn.Sequential(*up)
        self.subpixel = True

    def adain_params(self, style: torch.Tensor) -> list[torch.Tensor]:
        """Style ``[N, q]`` → the AdaIN (weight, bias) list, each ``[N, C]``, in block order."""
        return list(self.mlp(style).chunk(self.n_params, dim=1))

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        params = self.adain_params(style)
        h = content
        for i, block in enumerate(self.blocks):
            h = block(h, params[4 * i: 4 * i + 4])
        return self.upsample(h)

    def upsample(self, h: torch.Tensor) -> torch.Tensor:
        """The (upsample, conv block)× stages; ``subpixel`` computes each on the low-resolution grid (upconv.py)."""
        layers = iter(self.up)
        for layer in layers:
            h = upsample_conv_block(h, next(layers), self.subpixel) if isinstance(layer, nn.Upsample) else layer(h)
        return h


def upsample_conv_block(h: torch.Tensor, block: ConvBlock, subpixel: bool) -> torch.Tensor:
    """nn.Upsample(2, nearest) followed by ``block``; the same values either way, fewer multiply-adds if subpixel."""
    _, conv, norm, act = block
    if subpixel and supports_subpixel(h, conv.weight):
        return act(norm(upsample_conv(h, conv.weight, conv.bias)))
    return act(norm(upsample_conv_reference(h, conv.weight, conv.bias)))


class Generator(nn.Module):
    """One domain's auto-encoder: (content, style) encoders and the decoder."""

    def __init__(self, arch: MunitArch):
        super().__init__()
        self.content = ContentEncoder(arch)
        self.style = StyleEncoder(arch)
        self.decoder = Decoder(arch)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.content(x), self.style(x)

    def decode(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.decoder(content, style)

    def decode_batched(self, contents: tuple[torch.Tensor, ...], styles: tuple[torch.Tensor, ...]):
        """``decode`` of each (content, style) pair, as one decoder call on the concatenated batches: every layer
        acts on each sample alone (instance/layer norm, per-sample AdaIN), so the values are the same."""
        out = self.decoder(torch.cat(contents), torch.cat(styles))
        return out.split([c.shape[0] for c in contents])


class MultiScaleDiscriminator(nn.Module):
    """LSGAN critics on the image and on 2×, 4×, ... average-pooled copies; one score map per scale."""

    def __init__(self, arch: MunitArch):
        super().__init__()
        self.scales = nn.ModuleList(self._one_scale(arch) for _ in range(arch.dis_scales))
        self.down = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    @staticmethod
    def _one_scale(arch: MunitArch) -> nn.Sequential:
        d = arch.dis_dim
        layers: list[nn.Module] = [ConvBlock(arch.channels, d, 4, 2, 1, act="lrelu")]
        for _ in range(arch.dis_layers - 1):
            layers.append(ConvBlock(d, 2 * d, 4, 2, 1, act="lrelu"))
            d *= 2
        layers.append(nn.Conv2d(d, 1, 1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, critic in enumerate(self.scales):
            if i:
                x = self.down(x)
            outs.append(critic(x))
        return outs

    def loss_critic(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """LSGAN critic loss: fake → 0, real → 1, summed over scales; fake and real in one call (the critics have
        no normalisation: each sample is scored alone)."""
        split = [o.split([fake.shape[0], real.shape[0]]) for o in self(torch.cat([fake, real]))]
        return sum(((f**2).mean() + ((r - 1) ** 2).mean() for f, r in split))

    def loss_generator(self, fake: torch.Tensor) -> torch.Tensor:
        """LSGAN generator loss: fake → 1, summed over scales."""
        return sum((((f - 1) ** 2).mean() for f in self(fake)))


def init_weights(module: nn.Module, kind: str) -> None:
    """MUNIT's initialisation: Kaiming for the generators, N(0, 0.02) for the discriminators."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if kind == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
