"""The paper's algorithm variants and ours, by name: MRT selection, MAT start and step, loss reduction, shared δ."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmbr.algorithms import build_algorithm
from fastmbr.algorithms.options import algorithm_options
from fastmbr.config import AlgoConfig
from fastmbr.errors import FastmbrError
from fastmbr.repro import EXPERIMENTS, load_recipe, run_config
from fastmbr.variation import ComposedVariation, NaturalVariation, build_variation
from fastmbr.variation.munit import MunitVariation, arch_preset
from fastmbr.variation.resolve import variation_from_specs


class FixedDraws(NaturalVariation):
    """Brightness-like model whose sample_delta returns known draws."""

    def __init__(self, draws: torch.Tensor):
        super().__init__(delta_dim=draws.shape[-1])
        self.draws = draws

    def sample_delta(self, batch_size, k=1, generator=None):
        return self.draws.clone()

    def forward(self, x, delta):
        return (x * torch.exp(delta.view(-1, 1, 1, 1))).clamp(0, 1)


def linear_model(classes=5, channels=3, size=8):
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, classes))


def batch(b=16, classes=5, size=8):
    g = torch.Generator().manual_seed(3)
    return torch.rand(b, 3, size, size, generator=g), torch.randint(0, classes, (b,), generator=g)


def test_mrt_batch_select_keeps_the_draw_set_with_the_largest_summed_loss():
    k, b = 6, 16
    draws = torch.rand(k, b, 1, generator=torch.Generator().manual_seed(0)) * 2 - 1
    G, model = FixedDraws(draws), linear_model()
    x, y = batch(b)
    delta = build_algorithm("mrt", k=k, select="batch").inner_max(model, G, x, y)
    with torch.no_grad():
        summed = [F.cross_entropy(model(G(x, draws[i])), y, reduction="sum") for i in range(k)]
    best = max(range(k), key=lambda i: summed[i])
    torch.testing.assert_close(delta, draws[best])
    per_sample = build_algorithm("mrt", k=k).inner_max(model, G, x, y)
    assert not torch.equal(per_sample, delta)  # the default (ours) differs: per sample, not one set


def test_mrt_select_default_is_per_sample_and_bad_value_is_an_error():
    assert build_algorithm("mrt").select == "sample"
    with pytest.raises(FastmbrError, match="select must be one of sample, batch"):
        build_algorithm("mrt", select="worst")


@pytest.mark.parametrize("name, copies", [("mda", 4), ("mrt", 2), ("mat", 2), ("pgd", 2)])
def test_mean_reduction_divides_the_sum_by_the_copies(name, copies):
    k = 3
    draws = torch.rand(k, 8, 1, generator=torch.Generator().manual_seed(0)) * 2 - 1
    G, model = FixedDraws(draws), linear_model()
    x, y = batch(8)
    losses = {}
    for reduction in ("sum", "mean"):
        torch.manual_seed(5)  # the same draws (MAT's prior start, PGD's random start) for both
        losses[reduction] = build_algorithm(name, k=k, lam=1.0, reduction=reduction).loss(model, G, x, y)["loss"]
    torch.testing.assert_close(losses["mean"], losses["sum"] / copies)


def test_mean_reduction_without_the_clean_copy_and_mda_matches_the_concatenated_mean():
    k = 3
    draws = torch.rand(k, 8, 1, generator=torch.Generator().manual_seed(0)) * 2 - 1
    G, model = FixedDraws(draws), linear_model()
    x, y = batch(8)
    mean = build_algorithm("mda", k=k, lam=1.0, reduction="mean").loss(model, G, x, y)["loss"]
    views = torch.cat([G(x, draws[i]) for i in range(k)] + [x])  # the reference code: one mean over k + 1 copies
    torch.testing.assert_close(mean, F.cross_entropy(model(views), y.repeat(k + 1)))
    sum0 = build_algorithm("mrt", k=k, lam=0.0).loss(model, G, x, y)["loss"]
    mean0 = build_algorithm("mrt", k=k, lam=0.0, reduction="mean").loss(model, G, x, y)["loss"]
    torch.testing.assert_close(sum0, mean0)  # λ = 0: one copy, nothing to divide
    with pytest.raises(FastmbrError, match="loss reduction"):
        build_algorithm("mda", reduction="avg")


class CountingMunit(MunitVariation):
    encodes = 0

    def encode(self, x):
        self.encodes += 1
        return super().encode(x)


def tiny_munit(size=16) -> CountingMunit:
    torch.manual_seed(0)
    return CountingMunit(arch_preset("tiny"), size).freeze()


@pytest.mark.parametrize("init, signed", [("zero", False), ("sample", True)])
def test_mat_encodes_content_once_and_matches_plain_ascent(init, signed):
    G, model = tiny_munit(), linear_model(size=16)
    x, y = batch(4, size=16)
    torch.manual_seed(7)
    delta = build_algorithm("mat", k=3, alpha=0.2, init=init, signed=signed).inner_max(model, G, x, y)
    assert G.encodes == 1  # three ascent steps, one content encoding
    torch.manual_seed(7)
    ref = torch.zeros(4, G.delta_dim) if init == "zero" else G.sample_delta(4, 1)[0]
    for _ in range(3):  # plain Algorithm 3 loop over the full G(x, δ)
        ref.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(G(x, ref)), y, reduction="sum"), ref)
        ref = (ref.detach() + 0.2 * (g.sign() if signed else g)).clamp(-2, 2)
    torch.testing.assert_close(delta, ref, atol=1e-5, rtol=1e-5)
    G.encodes = 0
    build_algorithm("mat", k=3).loss(model, G, x, y)["loss"].backward()
    assert G.encodes == 1  # the training forward decodes the same content code


def test_options_map_the_config_names_and_refuse_the_wrong_algorithm():
    cfg = AlgoConfig(name="mat", mat_init="zero", mat_step="grad", loss_reduction="mean", alpha=0.5)
    assert algorithm_options(cfg) == {"alpha": 0.5, "init": "zero", "reduction": "mean", "signed": False}
    algo = build_algorithm("mat", **algorithm_options(cfg))
    assert (algo.init, algo.signed, algo.reduction) == ("zero", False, "mean")
    assert algorithm_options(AlgoConfig(name="mrt", select="batch")) == {"select": "batch"}
    assert algorithm_options(AlgoConfig(name="mat")) == {}
    for bad, match in [(AlgoConfig(name="mat", select="batch"), "--select applies to mrt"),
                       (AlgoConfig(name="mrt", mat_step="grad"), "--mat-step applies to mat"),
                       (AlgoConfig(name="mat", mat_step="adam"), "--mat-step must be one of sign | grad"),
                       (AlgoConfig(name="erm", loss_reduction="mean"), "--loss-reduction applies to"),
                       (AlgoConfig(name="mda", shared_delta=True, models=["known:brightness"]), "at least twice")]:
        with pytest.raises(FastmbrError, match=match):
            algorithm_options(bad)


def test_shared_delta_applies_one_delta_to_every_member_first_outermost():
    bright, contrast = build_variation("brightness"), build_variation("contrast")
    G = ComposedVariation([bright, contrast], shared=True)
    assert G.delta_dim == 1
    x = torch.rand(5, 3, 8, 8)
    d = G.sample_delta(5, 2)
    assert d.shape == (2, 5, 1) and G.contains(d)
    torch.testing.assert_close(G(x, d[0]), bright(contrast(x, d[0]), d[0]))
    torch.testing.assert_close(G.expand(x, d)[1], bright(contrast(x, d[1]), d[1]))
    own = ComposedVariation([bright, contrast])  # ours: one δ each, concatenated [δ1, δ2]
    assert own.delta_dim == 2
    torch.testing.assert_close(own(x, torch.cat([d[0], -d[0]], -1)), bright(contrast(x, -d[0]), d[0]))


def test_shared_delta_refuses_members_whose_delta_spaces_differ():
    with pytest.raises(FastmbrError, match="different δ spaces"):
        ComposedVariation([build_variation("brightness"), build_variation("background-color")], shared=True)
    with pytest.raises(FastmbrError, match="at least twice"):
        variation_from_specs(["known:brightness"], shared_delta=True)
    assert variation_from_specs(["known:brightness", "known:contrast"], shared_delta=True).shared


def test_recipe_runs_carry_the_variants_into_the_config(tmp_path):
    recipe = {"name": "r", "dataset": "gtsrb", "shift": "brightness", "runs": {
        "mrt-batch": {"algo": "mrt", "select": "batch", "model": ["known:brightness"]},
        "mat-paper": {"algo": "mat", "mat_init": "zero", "mat_step": "grad", "loss_reduction": "mean",
                      "model": ["known:brightness"]},
        "mda-shared": {"algo": "mda", "shared_delta": True, "model": ["known:brightness", "known:contrast"]}}}
    cfgs = {run: run_config(recipe, run, 0, False, None, "cpu", tmp_path) for run in recipe["runs"]}
    assert cfgs["mrt-batch"].algo.select == "batch"
    assert (cfgs["mat-paper"].algo.mat_init, cfgs["mat-paper"].algo.mat_step) == ("zero", "grad")
    assert cfgs["mat-paper"].algo.loss_reduction == "mean" and cfgs["mda-shared"].algo.shared_delta
    for cfg in cfgs.values():
        algorithm_options(cfg.algo)  # each one valid for its algorithm


def test_every_shipped_recipe_run_names_valid_variants():
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        recipe = load_recipe(path.stem)
        for run in recipe["runs"]:
            algorithm_options(run_config(recipe, run, 0, False, None, "cpu", EXPERIMENTS).algo)


@pytest.mark.parametrize("args, culprit", [
    (["--algo", "mat", "--select", "batch"], "--select applies to mrt"),
    (["--algo", "mrt", "--select", "worst"], "--select must be one of sample | batch"),
    (["--algo", "mda", "--shared-delta"], "at least twice"),
])
def test_cli_variant_flags_refuse_the_wrong_algorithm_in_one_line(args, culprit, capsys, tmp_path):
    from fastmbr.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "mnist", *args, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and culprit in err[0], err
    assert not (tmp_path / "r").exists()


def test_augmix_leaves_out_the_ops_that_are_the_test_shifts():
    from torchvision.transforms import v2

    algo = build_algorithm("augmix")
    assert algo.all_ops is False and algo.augmix.all_ops is False
    ops = set(v2.AugMix._PARTIAL_AUGMENTATION_SPACE)
    assert not ops & {"Brightness", "Contrast", "Color", "Sharpness"}


def test_training_builds_the_named_variants_and_records_them(tmp_path, monkeypatch):
    import json

    from fastmbr.config import preset_config
    from fastmbr.engine import trainer, trainer_setup

    built = []
    real_build = trainer_setup.build_algorithm
    monkeypatch.setattr(trainer_setup, "build_algorithm",
                        lambda *a, **kw: built.append(real_build(*a, **kw)) or built[-1])
    cfg = preset_config("mnist", "mat", "background-color")
    cfg.data.limit, cfg.data.batch_size, cfg.optim.epochs = 64, 32, 1
    cfg.device, cfg.out = "cpu", str(tmp_path / "run")
    cfg.algo.k, cfg.algo.mat_init, cfg.algo.mat_step, cfg.algo.loss_reduction = 2, "zero", "grad", "mean"
    cfg.algo.models, cfg.algo.shared_delta = ["known:background-color", "known:background-color"], True
    _, run_dir = trainer.train(cfg, progress=False)
    mat = built[0]
    assert (mat.name, mat.init, mat.signed, mat.reduction) == ("mat", "zero", False, "mean")
    saved = json.loads((run_dir / "config.json").read_text())["algo"]
    assert (saved["mat_init"], saved["mat_step"], saved["loss_reduction"], saved["shared_delta"]) == \
        ("zero", "grad", "mean", True)
