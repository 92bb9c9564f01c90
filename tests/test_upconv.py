"""The sub-pixel form of MUNIT's upsampling layer against its definition (nearest 2×, reflection pad, conv)."""

from __future__ import annotations

import pytest
import torch

from fastmbr.variation.munit import arch_preset
from fastmbr.variation.munit.networks import Decoder
from fastmbr.variation.munit.upconv import phase_kernels, supports_subpixel, upsample_conv, upsample_conv_reference

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


def _inputs(kernel: int, height: int, width: int, dtype: torch.dtype):
    x = torch.randn(2, 3, height, width, dtype=dtype, requires_grad=True)
    weight = torch.randn(5, 3, kernel, kernel, dtype=dtype, requires_grad=True)
    bias = torch.randn(5, dtype=dtype, requires_grad=True)
    return x, weight, bias


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("size", [(8, 8), (5, 7), (4, 3)])
def test_subpixel_upsample_conv_equals_the_definition_in_values_and_gradients(dtype, kernel, size):
    x, weight, bias = _inputs(kernel, *size, dtype)
    assert supports_subpixel(x, weight)
    reference = upsample_conv_reference(x, weight, bias)
    fast = upsample_conv(x, weight, bias)
    assert fast.shape == reference.shape == (2, 5, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(fast, reference, atol=TOLERANCE[dtype], rtol=0)
    upstream = torch.randn_like(reference)
    grads_ref = torch.autograd.grad((reference * upstream).sum(), (x, weight, bias))
    grads_fast = torch.autograd.grad((fast * upstream).sum(), (x, weight, bias))
    for got, want in zip(grads_fast, grads_ref):
        torch.testing.assert_close(got, want, atol=TOLERANCE[dtype] * 10, rtol=0)


def test_without_the_edge_correction_a_5x5_kernel_differs_only_on_the_outer_ring():
    """The replication-padded phase grid alone is wrong exactly where reflection and replication differ."""
    from fastmbr.variation.munit.upconv import _phase_grid

    x, weight, bias = _inputs(5, 6, 6, torch.float64)
    error = (_phase_grid(x, weight, bias) - upsample_conv_reference(x, weight, bias)).abs().detach()
    assert error[..., 1:-1, 1:-1].max() < 1e-10
    assert error.max() > 1e-3


def test_phase_kernels_keep_the_sum_of_taps():
    """Each phase kernel redistributes all k×k taps of the original: the sums per output channel match."""
    weight = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    phases = phase_kernels(weight).view(4, 2, 2, 2, 3, 3)
    torch.testing.assert_close(phases.sum(dim=(4, 5)), weight.sum(dim=(2, 3))[:, None, None].expand(4, 2, 2, 2))


@pytest.mark.parametrize("up_kernel", [3, 5])
def test_decoder_gives_the_same_images_with_and_without_subpixel(up_kernel):
    arch = arch_preset("tiny").__class__(**{**arch_preset("tiny").to_dict(), "up_kernel": up_kernel})
    decoder = Decoder(arch).double().eval()
    content = torch.randn(3, decoder.content_dim, 8, 8, dtype=torch.float64)
    style = torch.randn(3, arch.style_dim, dtype=torch.float64)
    decoder.subpixel = False
    reference = decoder(content, style)
    decoder.subpixel = True
    torch.testing.assert_close(decoder(content, style), reference, atol=1e-10, rtol=0)
