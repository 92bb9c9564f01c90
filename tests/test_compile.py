"""torch.compile'd learned model of variation equals the eager one (CPU inductor)."""

import torch

from fastmbr.variation.munit import MunitVariation, arch_preset
from fastmbr.variation.resolve import compile_variation


def test_compiled_munit_expand_matches_eager():
    torch.manual_seed(0)
    G = MunitVariation(arch_preset("tiny"), image_size=32).freeze()
    x = torch.rand(2, 3, 32, 32)
    delta = G.sample_delta(2, 3)
    eager = G.expand(x, delta)
    compiled = compile_variation(G)
    assert hasattr(compiled.decoder, "_orig_mod") and hasattr(compiled.content_encoder, "_orig_mod")
    torch.testing.assert_close(compiled.expand(x, delta), eager, atol=1e-4, rtol=1e-4)
