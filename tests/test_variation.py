"""Contract tests over the registry of models of natural variation, and composition."""

import pytest
import torch

from fastmbr.errors import FastmbrError
from fastmbr.variation import ComposedVariation, build_variation, variation_names

SHAPE = (3, 12, 12)


def make(name):
    return build_variation(name, shape=SHAPE) if name == "additive" else build_variation(name)


@pytest.fixture(params=variation_names())
def G(request):
    return make(request.param)


def test_registry_holds_the_known_models():
    assert {"additive", "brightness", "contrast", "gamma", "hue", "saturation", "background-color",
            "rotation"} <= set(variation_names())


def test_sample_delta_shape_and_inside_box(G):
    delta = G.sample_delta(5, 4)
    assert delta.shape == (4, 5, G.delta_dim)
    assert G.contains(delta)
    assert delta.std() > 0  # not a constant draw


def test_project_lands_in_box_and_is_idempotent(G):
    delta = 3 * torch.randn(7, G.delta_dim)
    p = G.project(delta)
    assert G.contains(p)
    torch.testing.assert_close(G.project(p), p)
    inside = G.sample_delta(7, 1)[0]
    torch.testing.assert_close(G.project(inside), inside)


def test_forward_keeps_shape_and_pixel_range(G):
    x = torch.rand(6, *SHAPE)
    out = G(x, G.sample_delta(6, 1)[0])
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1


def test_expand_equals_loop_of_forward(G):
    x = torch.rand(3, *SHAPE)
    delta = G.sample_delta(3, 5)
    expanded = G.expand(x, delta)
    looped = torch.stack([G(x, delta[i]) for i in range(5)])
    torch.testing.assert_close(expanded, looped, atol=1e-6, rtol=1e-5)


def test_differentiable_in_delta(G):
    x = torch.rand(4, *SHAPE)
    delta = (0.5 * G.sample_delta(4, 1)[0]).requires_grad_(True)
    (grad,) = torch.autograd.grad(G(x, delta).square().sum(), delta)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_wrong_delta_dimension_is_one_line_error(G):
    with pytest.raises(FastmbrError, match="δ must have shape"):
        G(torch.rand(2, *SHAPE), torch.zeros(2, G.delta_dim + 1))
    with pytest.raises(FastmbrError):
        G.expand(torch.rand(2, *SHAPE), torch.zeros(2, G.delta_dim))


def test_identity_at_zero_for_scalar_models():
    x = torch.rand(4, *SHAPE) * 0.8 + 0.1
    for name in ("brightness", "contrast", "gamma", "saturation", "hue", "rotation"):
        G = make(name)
        out = G(x, torch.zeros(4, 1))
        atol = 0.1 if name == "rotation" else 1e-5  # bilinear resampling at the border
        assert (out - x).abs().mean() < atol, name


def test_background_color_paints_background_and_keeps_digit():
    gray = torch.zeros(2, 1, 8, 8)
    gray[:, :, 2:6, 3:5] = 1.0
    G = build_variation("background-color")
    delta = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])  # red, blue
    out = G(gray.expand(-1, 3, -1, -1), delta)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(out[1, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(out[:, :, 3, 3], torch.ones(2, 3))
    # recolouring an already-coloured image keeps the digit: red → blue
    repainted = G(out[:1], delta[1:])
    torch.testing.assert_close(repainted, out[1:], atol=1e-6, rtol=0)


def test_composition_uses_a_separate_delta_per_member():
    bright, rot = build_variation("brightness"), build_variation("rotation")
    G = ComposedVariation([bright, rot])
    assert G.delta_dim == 2
    x = torch.rand(3, *SHAPE)
    delta = G.sample_delta(3, 4)
    assert G.contains(delta)
    d0 = delta[0]
    torch.testing.assert_close(G(x, d0), bright(rot(x, d0[:, 1:]), d0[:, :1]))
    torch.testing.assert_close(G.expand(x, delta), torch.stack([G(x, delta[i]) for i in range(4)]))
    # the two halves of δ are independent draws, not one shared δ
    assert not torch.allclose(delta[..., 0], delta[..., 1])


def test_unknown_model_is_one_line_error():
    with pytest.raises(FastmbrError, match="unknown model of variation 'fog'"):
        build_variation("fog")
