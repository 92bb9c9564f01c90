"""MUNIT's training iteration as NVlabs' trainer (github.com/NVlabs/MUNIT, trainer.py) spends it, for the bench.

Reproduced costs, per iteration: a critic update (``dis_update``) that encodes both batches again (content AND
style encoder, with autograd recording the generators although their output is detached), decodes both
translations with fresh styles and scores fake and real in separate critic calls; then a generator update
(``gen_update``) with its own encode / decode / re-encode pass, the critics left trainable so that its backward
also computes their (unused) weight gradients. Every decoder call is separate, its upsampling is nearest 2× then a
full-resolution convolution, and AdaIN is NVlabs' batch norm over the batch viewed as one N·C-channel sample;
fp32, eager. The networks, weights, optimiser settings, style prior and loss weights are fastmbr's (MunitTrainer),
so both arms of the bench compute the same losses and only the work done for them differs.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from fastmbr.variation.munit.networks import Decoder, MultiScaleDiscriminator
from fastmbr.variation.munit.train import MunitTrainer, l1


def plain_adain(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """NVlabs' AdaIN: the batch reshaped to one sample of N·C channels, batch-norm statistics of each channel."""
    n, c = x.shape[:2]
    out = F.batch_norm(x.contiguous().view(1, n * c, *x.shape[2:]), None, None, weight.reshape(-1),
                       bias.reshape(-1), training=True, eps=eps)
    return out.view(x.shape)


def plain_decode(decoder: Decoder, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """The decoder's function, computed as NVlabs computes it: plain AdaIN, upsample then convolve."""
    params = decoder.adain_params(style)
    h = content
    for i, block in enumerate(decoder.blocks):
        w1, b1, w2, b2 = params[4 * i: 4 * i + 4]
        r = F.relu(plain_adain(block.conv1(block.pad(h)), w1, b1))
        h = h + plain_adain(block.conv2(block.pad(r)), w2, b2)
    for layer in decoder.up:  # nn.Upsample(2, nearest), then the conv block at full resolution
        h = layer(h)
    return h


def plain_critic_loss(dis: MultiScaleDiscriminator, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """NVlabs' ``calc_dis_loss`` (LSGAN): fake and real scored in separate critic calls."""
    return sum(((f**2).mean() + ((r - 1) ** 2).mean() for f, r in zip(dis(fake), dis(real))))


class ReferenceMunit:
    """A copy of ``trainer`` (weights, optimiser state and settings) stepped as NVlabs' trainer steps."""

    def __init__(self, trainer: MunitTrainer):
        self.t = copy.deepcopy(trainer)
        for p in self.t.dis_params:
            p.requires_grad_(True)

    def dis_update(self, xa: torch.Tensor, xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        t = self.t
        t.opt_dis.zero_grad()
        s_a, s_b = t.styles(xa.shape[0], generator), t.styles(xb.shape[0], generator)
        c_a, _ = t.gen_a.encode(xa)
        c_b, _ = t.gen_b.encode(xb)
        x_ba, x_ab = plain_decode(t.gen_a.decoder, c_b, s_a), plain_decode(t.gen_b.decoder, c_a, s_b)
        loss = t.cfg.gan * (plain_critic_loss(t.dis_a, x_ba.detach(), xa) + plain_critic_loss(t.dis_b, x_ab.detach(), xb))
        loss.backward()
        t.opt_dis.step()
        return loss

    def gen_update(self, xa: torch.Tensor, xb: torch.Tensor, generator: torch.Generator) -> dict:
        t, c = self.t, self.t.cfg
        t.opt_gen.zero_grad()
        s_a, s_b = t.styles(xa.shape[0], generator), t.styles(xb.shape[0], generator)
        c_a, s_a_own = t.gen_a.encode(xa)
        c_b, s_b_own = t.gen_b.encode(xb)
        xa_rec, xb_rec = plain_decode(t.gen_a.decoder, c_a, s_a_own), plain_decode(t.gen_b.decoder, c_b, s_b_own)
        x_ba, x_ab = plain_decode(t.gen_a.decoder, c_b, s_a), plain_decode(t.gen_b.decoder, c_a, s_b)
        c_b_rec, s_a_rec = t.gen_a.encode(x_ba)
        c_a_rec, s_b_rec = t.gen_b.encode(x_ab)
        losses = {"x": l1(xa_rec, xa) + l1(xb_rec, xb), "c": l1(c_a_rec, c_a) + l1(c_b_rec, c_b),
                  "s": l1(s_a_rec, s_a) + l1(s_b_rec, s_b),
                  "gan": t.dis_a.loss_generator(x_ba) + t.dis_b.loss_generator(x_ab)}
        total = c.recon_x * losses["x"] + c.recon_c * losses["c"] + c.recon_s * losses["s"] + c.gan * losses["gan"]
        if c.recon_x_cyc > 0:
            cyc = l1(plain_decode(t.gen_a.decoder, c_a_rec, s_a_own), xa) + \
                l1(plain_decode(t.gen_b.decoder, c_b_rec, s_b_own), xb)
            total = total + c.recon_x_cyc * cyc
        total.backward()
        t.opt_gen.step()
        return losses

    def step(self, xa: torch.Tensor, xb: torch.Tensor, generator: torch.Generator) -> None:
        """NVlabs' train.py order: the critic update, the generator update, then both schedules."""
        self.dis_update(xa, xb, generator)
        self.gen_update(xa, xb, generator)
        self.t.sched_dis.step()
        self.t.sched_gen.step()
