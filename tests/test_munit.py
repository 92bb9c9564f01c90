"""MUNIT as a learned model of natural variation: networks, G's interface, io, training, composition."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from fastmbr.errors import FastmbrError
from fastmbr.variation import ComposedVariation, build_variation
from fastmbr.variation.munit import (MunitTrainConfig, MunitVariation, adain, arch_preset, load_variation,
                                     sample_prior, save_variation, train_munit)
from fastmbr.variation.munit.io import CHECKPOINT, META, WEIGHTS
from fastmbr.variation.munit.train import MunitTrainer, to_signed

SIZE = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_g(prior: str = "gaussian", decode_chunk: int | None = None, seed: int = 0) -> MunitVariation:
    torch.manual_seed(seed)
    return MunitVariation(arch_preset("tiny"), SIZE, prior=prior, decode_chunk=decode_chunk).freeze()


def images(n: int, seed: int, size: int = SIZE) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_range():
    g = tiny_g()
    x = images(5, 1)
    delta = g.sample_delta(5, 3, torch.Generator().manual_seed(2))
    assert delta.shape == (3, 5, 8)
    y = g(x, delta[0])
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert g.expand(x, delta).shape == (3, 5, 3, SIZE, SIZE)
    assert g.content_encoder(x).shape == (5, 32, SIZE // 2, SIZE // 2)


@pytest.mark.parametrize("prior", ["gaussian", "uniform"])
def test_prior_draws_stay_inside_the_box(prior):
    g = tiny_g(prior)
    d = g.sample_delta(4000, 10, torch.Generator().manual_seed(3))
    assert g.contains(d, atol=0.0)
    assert torch.equal(g.project(d), d)
    # truncated N(0, 1) on [-2, 2] has std 0.8796; uniform on [-2, 2] has std 1.1547
    want = 0.8796 if prior == "gaussian" else 1.1547
    assert abs(float(d.std()) - want) < 0.01
    assert abs(float(d.mean())) < 0.01


def test_gaussian_prior_on_an_asymmetric_box_matches_rejection_sampling():
    low, high = torch.tensor([-0.5, 0.0]), torch.tensor([1.5, 3.0])
    d = sample_prior("gaussian", low, high, (50_000,), torch.Generator().manual_seed(4))
    z = torch.randn(400_000, 2, generator=torch.Generator().manual_seed(5))
    kept = z[((z >= low) & (z <= high)).all(1)]
    assert torch.allclose(d.mean(0), kept.mean(0), atol=0.02)
    assert torch.allclose(d.std(0), kept.std(0), atol=0.02)


def test_project_clamps_to_the_box():
    g = tiny_g()
    d = torch.tensor([[-5.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 9.0]])
    assert torch.equal(g.project(d), torch.tensor([[-2.0, -2.0, -1.0, 0.0, 1.0, 2.0, 2.0, 2.0]]))


def test_adain_matches_the_instance_norm_formula():
    gen = torch.Generator().manual_seed(11)
    for shape in [(2, 3, 5, 7), (4, 16, 8, 8), (1, 1, 3, 3)]:
        x = torch.randn(*shape, generator=gen) * 3 + 1
        w = torch.randn(shape[0], shape[1], generator=gen)
        b = torch.randn(shape[0], shape[1], generator=gen)
        flat = x.flatten(2)
        mu = flat.mean(-1)[..., None, None]
        sigma = ((flat - flat.mean(-1, keepdim=True)) ** 2).mean(-1).add(1e-5).sqrt()[..., None, None]
        reference = (x - mu) / sigma * w[..., None, None] + b[..., None, None]
        assert torch.allclose(adain(x, w, b), reference, atol=1e-5)
        assert torch.allclose(adain(x, w, b), F.instance_norm(x, eps=1e-5) * w[..., None, None] + b[..., None, None],
                              atol=1e-5)
        assert torch.allclose(adain(x.contiguous(memory_format=torch.channels_last), w, b), reference, atol=1e-5)


def test_adain_gradients_match_the_formula():
    """MAT ascends δ through the decoder: the gradients reaching the features and the style affine must be exact."""
    gen = torch.Generator().manual_seed(12)
    x, w, b = torch.randn(3, 8, 6, 5, generator=gen), torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen)
    upstream = torch.randn(3, 8, 6, 5, generator=gen)

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
        (fn(*leaves) * upstream).sum().backward()
        return [t.grad for t in leaves]

    def formula(x, w, b):
        mean, var = x.mean(dim=(2, 3), keepdim=True), x.var(dim=(2, 3), keepdim=True, unbiased=False)
        return (x - mean) * torch.rsqrt(var + 1e-5) * w[..., None, None] + b[..., None, None]

    for ours, theirs in zip(grads(adain), grads(formula)):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_decoder_holds_no_style_state_between_calls():
    g = tiny_g()
    x = images(2, 6)
    d1, d2 = g.sample_delta(2, 2, torch.Generator().manual_seed(7))
    first = g(x, d1)
    g(x, d2)
    assert torch.equal(g(x, d1), first)


def test_save_load_round_trip_with_checksum(tmp_path):
    g = tiny_g(seed=3)
    save_variation(g, tmp_path, "tiny", {"dataset": "synthetic", "iterations": 0})
    meta = json.loads((tmp_path / META).read_text())
    assert meta["delta_box"] == [-2.0, 2.0] and meta["prior"] == "gaussian" and meta["delta_dim"] == 8
    assert meta["image_size"] == SIZE and meta["channels"] == 3 and len(meta["sha256"]) == 64
    loaded = load_variation(tmp_path, decode_chunk=3)
    assert loaded.decode_chunk == 3 and not any(p.requires_grad for p in loaded.parameters())
    x, d = images(4, 8), g.sample_delta(4, 1, torch.Generator().manual_seed(9))[0]
    assert torch.allclose(loaded(x, d), g(x, d), atol=1e-6)


def test_load_refuses_corrupt_or_missing_files(tmp_path):
    save_variation(tiny_g(), tmp_path, "tiny")
    weights = tmp_path / WEIGHTS
    blob = bytearray(weights.read_bytes())
    blob[-10] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(FastmbrError, match="sha256"):
        load_variation(tmp_path)
    weights.unlink()
    with pytest.raises(FastmbrError, match="missing"):
        load_variation(tmp_path)
    with pytest.raises(FastmbrError, match="G.json is missing"):
        load_variation(tmp_path / "nowhere")


@pytest.mark.parametrize("decode_chunk", [None, 7])
def test_expand_equals_a_loop_of_forward_calls(decode_chunk):
    g = tiny_g(decode_chunk=decode_chunk)
    x = images(3, 12)
    delta = g.sample_delta(3, 10, torch.Generator().manual_seed(13))
    looped = torch.stack([g(x, delta[j]) for j in range(10)])
    assert torch.allclose(g.expand(x, delta), looped, atol=1e-5)


def test_expand_encodes_content_once():
    g = tiny_g(decode_chunk=4)
    calls = []
    g.content_encoder.register_forward_hook(lambda *_: calls.append(1))
    g.expand(images(3, 14), g.sample_delta(3, 10))
    assert len(calls) == 1
    assert not any("style" in name for name, _ in g.named_modules())  # G has no style encoder to run


def test_frozen_g_is_differentiable_in_delta_only():
    g = tiny_g()
    x = images(3, 15).requires_grad_(True)
    delta = g.sample_delta(3, 1)[0].requires_grad_(True)
    g(x, delta).square().sum().backward()
    assert delta.grad is not None and torch.isfinite(delta.grad).all() and delta.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in g.parameters())


def test_bad_delta_or_images_raise_one_line_errors():
    g = tiny_g()
    x = images(2, 16)
    with pytest.raises(FastmbrError, match="q=8"):
        g(x, torch.zeros(2, 3))
    with pytest.raises(FastmbrError, match="q=8"):
        g.expand(x, torch.zeros(2, 8))
    with pytest.raises(FastmbrError, match="batch"):
        g(x, torch.zeros(3, 8))
    with pytest.raises(FastmbrError, match=r"\(3, 16, 16\)"):
        g(images(2, 17, size=24), torch.zeros(2, 8))
    with pytest.raises(FastmbrError, match=r"\(3, 16, 16\)"):
        g(torch.rand(2, 1, SIZE, SIZE), torch.zeros(2, 8))
    with pytest.raises(FastmbrError) as info:
        g(torch.rand(2, 1, SIZE, SIZE), torch.zeros(2, 8))
    assert "\n" not in str(info.value)


def _domains(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two synthetic domains: bright squares on dark (A) and on light (B) backgrounds."""
    gen = torch.Generator().manual_seed(seed)
    canvas = torch.zeros(2, n, 3, SIZE, SIZE)
    canvas[1] += 0.8
    for i in range(n):
        r, c = torch.randint(0, SIZE - 6, (2,), generator=gen).tolist()
        canvas[:, i, :, r:r + 6, c:c + 6] = torch.rand(3, 1, 1, generator=gen)
    u8 = (canvas * 255).round().to(torch.uint8)
    return u8[0], u8[1]


def _small_cfg(**kw) -> MunitTrainConfig:
    return replace(MunitTrainConfig(batch_size=4, lr=1e-3, arch_overrides={"dis_layers": 2}), **kw)


def test_a_few_training_iterations_lower_the_reconstruction_loss():
    domain_a, domain_b = _domains(32, 18)
    cfg = _small_cfg(iters=20).resolved()
    torch.manual_seed(0)
    trainer = MunitTrainer(cfg.arch(3), cfg)
    xa, xb = to_signed(domain_a[:8]), to_signed(domain_b[:8])

    def recon() -> float:
        with torch.no_grad():
            ca, sa = trainer.gen_a.encode(xa)
            cb, sb = trainer.gen_b.encode(xb)
            rec_a, rec_b = trainer.gen_a.decode(ca, sa), trainer.gen_b.decode(cb, sb)
            return float((rec_a - xa).abs().mean() + (rec_b - xb).abs().mean())

    before = recon()
    rng = torch.Generator().manual_seed(1)
    for i in range(cfg.iters):
        idx = torch.randint(0, 32, (4,), generator=rng)
        trainer.step(to_signed(domain_a[idx]), to_signed(domain_b[idx]), rng)
    assert recon() < 0.7 * before


def test_cycle_term_is_the_round_trip_distance_and_off_by_default():
    """x_A → (content, a B style) → x_AB → re-encoded content + x_A's own style → x_ABA: L1 to x_A, both ways."""
    domain_a, domain_b = _domains(8, 21)
    xa, xb = to_signed(domain_a[:4]), to_signed(domain_b[:4])
    cfg = _small_cfg(recon_x_cyc=10.0).resolved()
    torch.manual_seed(0)
    trainer = MunitTrainer(cfg.arch(3), cfg)
    losses, _, _ = trainer.generator_losses(xa, xb, torch.Generator().manual_seed(5))
    with torch.no_grad():
        rng = torch.Generator().manual_seed(5)
        s_a, s_b = trainer.styles(4, rng), trainer.styles(4, rng)
        (c_a, own_a), (c_b, own_b) = trainer.gen_a.encode(xa), trainer.gen_b.encode(xb)
        c_b_rec, c_a_rec = trainer.gen_a.encode(trainer.gen_a.decode(c_b, s_a))[0], \
            trainer.gen_b.encode(trainer.gen_b.decode(c_a, s_b))[0]
        expected = (trainer.gen_a.decode(c_a_rec, own_a) - xa).abs().mean() + \
            (trainer.gen_b.decode(c_b_rec, own_b) - xb).abs().mean()
    torch.testing.assert_close(losses["cyc"].detach(), expected)
    trainer.cfg = _small_cfg().resolved()
    assert "cyc" not in trainer.generator_losses(xa, xb, torch.Generator().manual_seed(5))[0]


def test_train_writes_g_checkpoints_and_grids_and_resumes(tmp_path):
    domain_a, domain_b = _domains(8, 19)
    g = train_munit(domain_a, domain_b, _small_cfg(iters=2, checkpoint_every=1, source={"dataset": "toy"}),
                    tmp_path, progress=False)
    assert isinstance(g, MunitVariation)
    for name in (WEIGHTS, META, CHECKPOINT, "samples/iter_0000001.png", "samples/iter_0000002.png"):
        assert (tmp_path / name).is_file(), name
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(FastmbrError, match="--resume"):
        train_munit(domain_a, domain_b, _small_cfg(iters=3), tmp_path, progress=False)
    train_munit(domain_a, domain_b, _small_cfg(iters=3, checkpoint_every=5), tmp_path, progress=False, resume=True)
    meta = json.loads((tmp_path / META).read_text())
    assert meta["training"]["iterations"] == 3 and meta["training"]["dataset"] == "toy"
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["iteration"] == 3
    load_variation(tmp_path)


def test_a_g_written_by_an_interrupted_training_is_not_taken_as_finished(tmp_path, monkeypatch):
    from fastmbr.variation.munit.io import training_finished

    domain_a, domain_b = _domains(8, 20)
    real_step, calls = MunitTrainer.step, []

    def step_then_die(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(self, *args)

    monkeypatch.setattr(MunitTrainer, "step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_munit(domain_a, domain_b, _small_cfg(iters=4, checkpoint_every=2), tmp_path, progress=False)
    assert (tmp_path / META).is_file() and not training_finished(tmp_path)
    monkeypatch.setattr(MunitTrainer, "step", real_step)
    train_munit(domain_a, domain_b, _small_cfg(iters=4, checkpoint_every=2), tmp_path, progress=False, resume=True)
    assert training_finished(tmp_path) and not training_finished(tmp_path / "missing")


def test_training_refuses_mismatched_or_tiny_domains():
    a, b = _domains(4, 20)
    with pytest.raises(FastmbrError, match="differ"):
        train_munit(a, b[:, :, :8, :8], _small_cfg(iters=1), "/nonexistent-never-written", progress=False)
    with pytest.raises(FastmbrError, match="too small"):
        train_munit(a[:, :, :8, :8], b[:, :, :8, :8], _small_cfg(iters=1), "/nonexistent-never-written",
                    progress=False)


def test_composes_with_a_known_model_with_split_deltas():
    g = tiny_g()
    bright = build_variation("brightness")
    both = ComposedVariation([bright, g])
    assert both.delta_dim == 9
    x = images(3, 21)
    delta = both.sample_delta(3, 4, torch.Generator().manual_seed(22))
    assert both.contains(delta)
    d_bright, d_g = both.split(delta[0])
    assert torch.allclose(both(x, delta[0]), bright(g(x, d_g), d_bright), atol=1e-6)
    looped = torch.stack([both(x, delta[j]) for j in range(4)])
    assert torch.allclose(both.expand(x, delta), looped, atol=1e-5)
