"""The tensor loader's batched random-resized crop against per-image references."""

import torch

from fastmbr.pipelines.loaders.tensor import random_resized_crop_flip


def test_full_area_square_crop_is_identity_or_mirror_per_image():
    x = torch.rand(8, 3, 10, 10)
    out = random_resized_crop_flip(x, 10, torch.Generator().manual_seed(3), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    for i in range(8):
        same, mirrored = torch.allclose(out[i], x[i], atol=1e-5), torch.allclose(out[i], x[i].flip(-1), atol=1e-5)
        assert same or mirrored
    flips = sum(torch.allclose(out[i], x[i].flip(-1), atol=1e-5) for i in range(8))
    assert 0 < flips < 8  # per-image coin, not one flip for the batch


def test_small_crops_zoom_in_on_a_region():
    """A linear ramp image: a crop of area 1/4 spans half the ramp's range, a full crop spans all of it."""
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(6, 3, 32, 32).contiguous()
    g = torch.Generator().manual_seed(1)
    small = random_resized_crop_flip(ramp, 16, g, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    full = random_resized_crop_flip(ramp, 16, g, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    span = lambda t: (t[:, 0, 0].amax(-1) - t[:, 0, 0].amin(-1))  # noqa: E731
    torch.testing.assert_close(span(small), torch.full((6,), 0.5), atol=0.05, rtol=0)
    torch.testing.assert_close(span(full), torch.full((6,), 1.0), atol=0.05, rtol=0)
