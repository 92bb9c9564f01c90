"""Contract tests over the algorithm registry, and each inner maximisation against a brute-force reference."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmbr.algorithms import algorithm_names, build_algorithm
from fastmbr.algorithms.augmix import jensen_shannon
from fastmbr.errors import FastmbrError
from fastmbr.models import build_classifier
from fastmbr.variation import NaturalVariation, build_variation


class FixedDraws(NaturalVariation):
    """Brightness-like model whose sample_delta returns known draws (to check selection against brute force)."""

    def __init__(self, draws: torch.Tensor):
        super().__init__(delta_dim=draws.shape[-1])
        self.draws = draws

    def sample_delta(self, batch_size, k=1, generator=None):
        assert self.draws.shape[:2] == (k, batch_size)
        return self.draws.clone()

    def forward(self, x, delta):
        return (x * torch.exp(delta.view(-1, 1, 1, 1))).clamp(0, 1)


class LearnedToy(NaturalVariation):
    """A variation with parameters, to check that no gradient ever reaches G."""

    def __init__(self):
        super().__init__(delta_dim=2)
        self.mix = nn.Linear(2, 3)

    def forward(self, x, delta):
        return (x + 0.1 * self.mix(delta).view(-1, 3, 1, 1)).clamp(0, 1)


def linear_model(classes=5):
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, classes))


@pytest.fixture(params=algorithm_names())
def algo_name(request):
    return request.param


def test_contract_loss_is_scalar_and_trains_the_classifier(algo_name):
    model = build_classifier("cnn", 4, image_size=16)
    G = build_variation("brightness")
    x, y = torch.rand(6, 3, 16, 16), torch.randint(0, 4, (6,))
    algo = build_algorithm(algo_name, k=2)
    if algo.uses_target:
        algo.attach_target(torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8), seed=0)
    out = algo.loss(model, G, x, y)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert out["logits"].shape == (6, 4) and not out["logits"].requires_grad
    out["loss"].backward()
    own = algo.own_optimizer(model, fused=False)  # ADDA: the target encoder's Adam, which leaves the head alone
    params = [p for group in own.param_groups for p in group["params"]] if own else list(model.parameters())
    stepped = {id(p) for p in params}
    grads = [p.grad for p in model.parameters() if id(p) in stepped]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in model.parameters() if id(p) not in stepped)


@pytest.mark.parametrize("bad", [{"k": 0}, {"lam": -0.5}])
def test_bad_k_or_lambda_is_one_line_error(algo_name, bad):
    with pytest.raises(FastmbrError, match="must be"):
        build_algorithm(algo_name, **bad)


def test_unknown_algorithm_names_the_known_ones():
    with pytest.raises(FastmbrError, match="unknown algorithm 'trades'.*mrt"):
        build_algorithm("trades")


@pytest.mark.parametrize("name", ["mrt", "mat", "mda"])
def test_model_based_algorithms_need_a_model(name):
    with pytest.raises(FastmbrError, match="needs a model of variation"):
        build_algorithm(name).loss(linear_model(), None, torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))


def test_mrt_picks_the_worst_draw_per_sample_like_brute_force():
    k, b = 6, 16
    draws = torch.rand(k, b, 1) * 2 - 1
    G, model = FixedDraws(draws), linear_model()
    x, y = torch.rand(b, 3, 8, 8), torch.randint(0, 5, (b,))
    delta_adv = build_algorithm("mrt", k=k).inner_max(model, G, x, y)
    with torch.no_grad():
        brute = torch.stack([
            draws[max(range(k), key=lambda i: F.cross_entropy(model(G(x[j:j + 1], draws[i, j:j + 1])), y[j:j + 1])), j]
            for j in range(b)
        ])
    torch.testing.assert_close(delta_adv, brute)
    chosen = torch.stack([(draws[:, j] == delta_adv[j]).nonzero()[0, 0] for j in range(b)])
    assert chosen.unique().numel() > 1  # per sample, not one draw for the whole batch


def test_mrt_trains_on_the_selected_variations():
    k, b = 4, 8
    draws = torch.rand(k, b, 1) * 2 - 1
    G, model = FixedDraws(draws), linear_model()
    x, y = torch.rand(b, 3, 8, 8), torch.randint(0, 5, (b,))
    algo = build_algorithm("mrt", k=k, lam=0.5)
    delta_adv = algo.inner_max(model, G, x, y)
    expected = F.cross_entropy(model(G(x, delta_adv)), y) + 0.5 * F.cross_entropy(model(x), y)
    torch.testing.assert_close(algo.loss(model, G, x, y)["loss"], expected)


def test_mat_matches_plain_projected_gradient_ascent():
    G, model = LearnedToy(), linear_model()
    G.requires_grad_(False)
    x, y = torch.rand(5, 3, 8, 8), torch.randint(0, 5, (5,))
    algo = build_algorithm("mat", k=4, alpha=0.3, init="zero")
    delta = algo.inner_max(model, G, x, y)
    ref = torch.zeros(5, 2)
    for _ in range(4):
        ref.requires_grad_(True)
        loss = F.cross_entropy(model(G(x, ref)), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, ref)
        ref = (ref.detach() + 0.3 * g.sign()).clamp(-1, 1)
    torch.testing.assert_close(delta, ref)
    assert G.contains(delta)


def test_mat_leaves_every_gradient_and_batchnorm_statistic_untouched():
    G = LearnedToy()  # deliberately NOT frozen: the ascent must still not write any .grad
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    model.train()
    stats = model[1].running_mean.clone()
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 5, (6,))
    delta = build_algorithm("mat", k=5, alpha=0.5).inner_max(model, G, x, y)
    assert all(p.grad is None for p in list(model.parameters()) + list(G.parameters()))
    torch.testing.assert_close(model[1].running_mean, stats)
    assert model.training and model[1].training  # training mode restored
    assert G.contains(delta)


def test_mda_loss_is_sum_over_draws_plus_lambda_clean():
    k, b = 3, 4
    draws = torch.rand(k, b, 1) * 2 - 1
    G, model = FixedDraws(draws), linear_model()
    x, y = torch.rand(b, 3, 8, 8), torch.randint(0, 5, (b,))
    loss = build_algorithm("mda", k=k, lam=0.7).loss(model, G, x, y)["loss"]
    per_sample = sum(F.cross_entropy(model(G(x, draws[i])), y, reduction="none") for i in range(k))
    expected = per_sample.mean() + 0.7 * F.cross_entropy(model(x), y)
    torch.testing.assert_close(loss, expected)


def test_pgd_stays_in_the_eps_ball_and_pixel_range():
    model = linear_model()
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 5, (4,))
    algo = build_algorithm("pgd")
    assert (algo.k, algo.eps, algo.alpha) == (20, 8 / 255, 0.01)
    delta = algo.inner_max(model, None, x, y)
    assert delta.abs().max() <= 8 / 255 + 1e-7
    clean = F.cross_entropy(model(x), y)
    adv = F.cross_entropy(model((x + delta.view_as(x)).clamp(0, 1)), y)
    assert adv > clean  # a linear model: signed ascent must raise the loss


def test_jensen_shannon_matches_formula_and_is_zero_for_equal_inputs():
    a, b, c = torch.randn(3, 7, 5).unbind(0)
    p = [F.softmax(z, 1) for z in (a, b, c)]
    m = sum(p) / 3
    ref = sum((q * (q.log() - m.log())).sum(1).mean() for q in p) / 3
    torch.testing.assert_close(jensen_shannon(a, b, c), ref, atol=1e-5, rtol=1e-4)
    assert jensen_shannon(a, a, a).abs() < 1e-6
