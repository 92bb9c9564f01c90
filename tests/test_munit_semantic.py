"""Our extensions to MUNIT training: the label-preserving (semantic) loss, snapshots, critics fitted to 32 px, and
the training minutes recorded in G.json."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from fastmbr.errors import FastmbrError
from fastmbr.variation.munit import load_variation
from fastmbr.variation.munit.networks import arch_preset, fit_critics
from fastmbr.variation.munit.semantic import SEMANTIC, semantic_loss
from fastmbr.variation.munit.train import MunitTrainConfig, MunitTrainer, snapshot_dir, to_signed, train_munit

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 16


def _labelled_domains(n: int, seed: int):
    """A: a bright square on dark, its label the square's quadrant (0-3); B: the same on a light background."""
    gen = torch.Generator().manual_seed(seed)
    canvas = torch.zeros(2, n, 3, SIZE, SIZE)
    canvas[1] += 0.7
    labels = torch.randint(0, 4, (n,), generator=gen)
    for i, y in enumerate(labels.tolist()):
        r, c = 2 + 8 * (y // 2), 2 + 8 * (y % 2)
        canvas[:, i, :, r:r + 5, c:c + 5] = 1.0
    u8 = (canvas * 255).round().to(torch.uint8)
    return u8[0], u8[1], labels


def _cfg(**kw) -> MunitTrainConfig:
    base = MunitTrainConfig(batch_size=4, lr=1e-3, arch_overrides={"dis_layers": 2}, semantic_epochs=2,
                            checkpoint_every=100)
    return replace(base, **kw)


def test_semantic_term_needs_labels_and_enters_the_losses(tmp_path):
    a, b, y = _labelled_domains(12, 0)
    with pytest.raises(FastmbrError, match="--semantic"):
        train_munit(a, b, _cfg(iters=1, semantic=1.0), tmp_path / "G", progress=False)
    train_munit(a, b, _cfg(iters=2, semantic=1.0), tmp_path / "G", progress=False, labels_a=y, num_classes=4)
    meta = json.loads((tmp_path / "G" / "G.json").read_text())
    assert "sem" in meta["training"]["final_losses"] and meta["training"]["semantic"] == 1.0
    assert 0.0 <= meta["training"]["semantic_train_top1"] <= 1.0
    assert (tmp_path / "G" / SEMANTIC).is_file()
    train_munit(a, b, _cfg(iters=2), tmp_path / "plain", progress=False)
    plain = json.loads((tmp_path / "plain" / "G.json").read_text())["training"]
    assert "sem" not in plain["final_losses"] and not (tmp_path / "plain" / SEMANTIC).exists()


def test_semantic_gradient_reaches_the_generator_and_not_the_frozen_classifier():
    from fastmbr.models import build_classifier

    a, b, y = _labelled_domains(8, 1)
    classifier = build_classifier("cnn", 4, 3, SIZE).eval().requires_grad_(False)
    cfg = _cfg(semantic=1.0, iters=1).resolved()
    torch.manual_seed(0)
    trainer = MunitTrainer(cfg.arch(3, SIZE), cfg, classifier)
    losses, x_ab, _ = trainer.generator_losses(to_signed(a), to_signed(b), torch.Generator().manual_seed(2), y)
    losses["sem"].backward()
    assert float(losses["sem"].detach()) == pytest.approx(float(semantic_loss(classifier, x_ab.detach(), y)), rel=1e-5)
    assert trainer.gen_b.decoder.parameters().__next__().grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.gen_a.content.parameters())
    assert all(p.grad is None for p in classifier.parameters())
    assert not any(k.startswith("semantic") for k in trainer.state_dict())  # never checkpointed as ours


def test_resume_reuses_the_stored_semantic_classifier(tmp_path, monkeypatch):
    import fastmbr.variation.munit.score as score_module

    a, b, y = _labelled_domains(12, 3)
    train_munit(a, b, _cfg(iters=2, semantic=1.0, checkpoint_every=1), tmp_path, progress=False, labels_a=y,
                num_classes=4)
    before = (tmp_path / SEMANTIC).read_bytes()
    monkeypatch.setattr(score_module, "train_classifier", lambda *a, **k: pytest.fail("retrained f on resume"))
    train_munit(a, b, _cfg(iters=3, semantic=1.0, checkpoint_every=1), tmp_path, progress=False, resume=True,
                labels_a=y, num_classes=4)
    assert (tmp_path / SEMANTIC).read_bytes() == before


def test_snapshots_are_loadable_g_dirs_and_minutes_accumulate(tmp_path):
    a, b, _ = _labelled_domains(8, 4)
    train_munit(a, b, _cfg(iters=4, snapshots=(3, 1), checkpoint_every=2), tmp_path, progress=False)
    for it in (1, 3):
        meta = json.loads((snapshot_dir(tmp_path, it) / "G.json").read_text())
        assert meta["training"]["iterations"] == it == meta["training"]["planned_iterations"]
        assert (snapshot_dir(tmp_path, it) / "samples.png").is_file()
        load_variation(snapshot_dir(tmp_path, it))
    def seconds() -> float:
        return float(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["seconds"])

    first = seconds()
    assert first > 0 and json.loads((tmp_path / "G.json").read_text())["training"]["train_minutes"] >= 0
    train_munit(a, b, _cfg(iters=6, checkpoint_every=2), tmp_path, progress=False, resume=True)
    assert seconds() > first  # the resumed training adds to the minutes already spent
    with pytest.raises(FastmbrError, match="--snapshots"):
        _cfg(iters=4, snapshots=(5,)).resolved()


@pytest.mark.parametrize("kw, message", [({"semantic": float("nan")}, "--semantic"), ({"bound": 0.0}, "--bound"),
                                         ({"prior": "cauchy"}, "--prior"), ({"semantic_epochs": 0}, "--semantic")])
def test_bad_settings_are_one_line_errors(kw, message):
    with pytest.raises(FastmbrError, match=message):
        _cfg(**kw).resolved()


def test_critics_are_fitted_to_32_px_and_generators_untouched():
    base = arch_preset("base")
    fitted = fit_critics(base, 32)
    assert fitted.min_image_size() <= 32 and fitted.dis_layers == 3 and fitted.dis_scales == base.dis_scales
    assert replace(fitted, dis_layers=base.dis_layers) == base  # nothing else changed
    assert fit_critics(base, 64) == base and fit_critics(arch_preset("tiny"), 32) == arch_preset("tiny")
    mid = arch_preset("mid")
    assert (mid.dim, mid.n_downsample, mid.n_res, mid.mlp_dim) == (32, 2, 3, 128)
