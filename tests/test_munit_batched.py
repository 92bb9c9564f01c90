"""MUNIT training's batched calls (one decoder call per generator, one critic call for fake and real) give the
values and gradients of the plain separate calls, on fresh inputs."""

from dataclasses import replace

import torch

from fastmbr.variation.munit.networks import Generator, MultiScaleDiscriminator, arch_preset, init_weights

ARCH = replace(arch_preset("tiny"), dis_layers=2)


def _grads(module: torch.nn.Module, loss: torch.Tensor, *inputs: torch.Tensor) -> list[torch.Tensor]:
    return torch.autograd.grad(loss, [*module.parameters(), *inputs])


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5 * max(1.0, float(y.abs().max())))  # fp32 sums


def test_decode_batched_equals_separate_decodes_in_values_and_gradients():
    torch.manual_seed(0)
    gen = Generator(ARCH)
    init_weights(gen, "kaiming")
    d = gen.decoder.content_dim
    c1, c2 = torch.randn(2, d, 16, 16, requires_grad=True), torch.randn(3, d, 16, 16, requires_grad=True)
    s1, s2 = torch.randn(2, ARCH.style_dim, requires_grad=True), torch.randn(3, ARCH.style_dim, requires_grad=True)
    w1, w2 = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)  # a loss that weighs every output pixel

    def loss(y1, y2):
        return (y1 * w1).sum() + (y2 * w2).sum().abs()

    y1, y2 = gen.decode_batched((c1, c2), (s1, s2))
    p1, p2 = gen.decode(c1, s1), gen.decode(c2, s2)
    _close([y1, y2], [p1, p2])
    _close(_grads(gen.decoder, loss(y1, y2), c1, c2, s1, s2), _grads(gen.decoder, loss(p1, p2), c1, c2, s1, s2))


def test_critic_loss_in_one_call_equals_separate_fake_and_real_calls():
    torch.manual_seed(1)
    dis = MultiScaleDiscriminator(ARCH)
    init_weights(dis, "gaussian")
    fake, real = torch.randn(2, 3, 32, 32, requires_grad=True), torch.randn(3, 3, 32, 32)
    batched = dis.loss_critic(fake, real)
    plain = sum(((f**2).mean() + ((r - 1) ** 2).mean() for f, r in zip(dis(fake), dis(real))))
    torch.testing.assert_close(batched, plain, rtol=1e-5, atol=1e-6)
    _close(_grads(dis, batched, fake), _grads(dis, plain, fake))
