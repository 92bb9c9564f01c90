"""``fastmbr model score`` can fail: a G that outputs noise keeps no content, a G that returns x keeps all of it.

The embedded MNIST subset (always present) with its blue→red background shift stands in for the data; the helpers
are trained on 2,000 images for 2 epochs, enough for the oracle to be far above chance.
"""

from __future__ import annotations

import pytest
import torch

from fastmbr.pipelines.datasets import load_domains
from fastmbr.variation.base import NaturalVariation
from fastmbr.variation.munit.score import ScoreConfig, describe_g, score

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = ScoreConfig(epochs=2, max_train=2000, max_test=300, worst_k=4)


class Noise(NaturalVariation):
    """Uniform noise, whatever x and δ."""

    def __init__(self):
        super().__init__(2)

    def forward(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return torch.rand(x.shape, generator=torch.Generator().manual_seed(int(1000 * float(delta.sum()))))


class Identity(NaturalVariation):
    def __init__(self):
        super().__init__(2)

    def forward(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def domains():
    import os

    saved = os.environ.pop("FASTMBR_DATA", None)
    try:
        return load_domains("mnist", None, None)
    finally:
        if saved is not None:
            os.environ["FASTMBR_DATA"] = saved


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One helper cache for the module: the helpers are trained once."""
    return tmp_path_factory.mktemp("helpers")


def test_a_noise_g_scores_near_chance_and_an_identity_g_as_the_identity(domains, cache):
    noise = score(Noise(), domains, "cpu", cache, CFG)
    same = score(Identity(), domains, "cpu", cache, CFG)
    oracle = noise["helpers"]["oracle_top1"]
    assert oracle["real_a"] > 0.8 and oracle["real_b"] > 0.8  # the judge itself is good
    assert noise["content_kept"] < 0.25 and noise["content_kept_vs_identity"] < 0.3  # chance is 0.1
    assert noise["content_kept_worst_of_4"] < noise["content_kept"] + 1e-9
    assert same["content_kept"] == same["identity"]["content_kept"]
    assert same["content_kept_vs_identity"] == pytest.approx(1.0)
    assert same["content_kept_worst_of_4"] == pytest.approx(same["content_kept"])
    assert same["shift_achieved"] == same["identity"]["shift_achieved"] < 0.2  # x_A is not called B
    assert same["helpers"]["domain_top1"]["real_a"] == pytest.approx(1 - same["identity"]["shift_achieved"])


def test_helpers_are_cached_and_reported_with_their_settings(domains, cache, monkeypatch):
    import fastmbr.variation.munit.score as score_module

    first = score(Identity(), domains, "cpu", cache, CFG)
    cached = sorted(p.name for p in cache.glob("*.safetensors"))
    assert len(cached) == 2 and all("-e2-b64-" in name for name in cached)
    monkeypatch.setattr(score_module, "train_classifier", lambda *a, **k: pytest.fail("helpers retrained"))
    again = score(Identity(), domains, "cpu", cache, CFG, g_info={"preset": "none"})
    assert again["helpers"] == first["helpers"] and again["g"] == {"preset": "none"}
    assert first["helpers"]["epochs"] == 2 and first["helpers"]["max_train"] == 2000


def test_describe_g_reads_what_g_json_records():
    meta = {"size": "tiny", "prior": "uniform", "delta_box": [-1, 1], "image_size": 32,
            "training": {"iterations": 400, "batch_size": 16, "train_minutes": 2.5, "semantic": 1.0, "lr": 1e-3}}
    got = describe_g(meta)
    assert got["preset"] == "tiny" and got["iterations"] == 400 and got["train_minutes"] == 2.5
    assert got["semantic"] == 1.0 and got["delta_box"] == [-1, 1] and got["batch_size"] == 16
