"""ADDA: the critic learns to separate domains, the encoder learns to fool it, the source head never moves."""

import copy

import pytest
import torch

from fastmbr.algorithms import build_algorithm
from fastmbr.algorithms.adda import classifier_head, logits_and_features
from fastmbr.errors import FastmbrError
from fastmbr.models import build_classifier


def _setup(seed=0):
    torch.manual_seed(seed)
    model = build_classifier("cnn", 4, image_size=16)
    algo = build_algorithm("adda")
    target = (torch.rand(64, 3, 16, 16) * 0.3 + 0.7).mul(255).to(torch.uint8)  # bright B, dark A below
    algo.attach_target(target, seed=seed)
    return model, algo


def _steps(model, algo, n, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for i in range(n):
        g = torch.Generator().manual_seed(100 + i)
        x, y = torch.rand(16, 3, 16, 16, generator=g) * 0.3, torch.randint(0, 4, (16,), generator=g)
        opt.zero_grad(set_to_none=True)
        out = algo.loss(model, None, x, y)
        out["loss"].backward()
        opt.step()
    return out


def test_features_are_the_heads_input():
    model = build_classifier("cnn", 4, image_size=16)
    x = torch.rand(3, 3, 16, 16)
    logits, features = logits_and_features(model, x)
    torch.testing.assert_close(classifier_head(model)(features), logits)


def test_head_and_source_stay_fixed_while_the_encoder_and_critic_learn():
    model, algo = _setup()
    head_before = copy.deepcopy(classifier_head(model).state_dict())
    encoder_before = [p.detach().clone() for p in model.parameters()]
    _steps(model, algo, 1)
    source_before = copy.deepcopy(algo.source.state_dict())
    critic_before = copy.deepcopy(algo.critic.state_dict())
    _steps(model, algo, 3)
    for name, value in classifier_head(model).state_dict().items():
        assert torch.equal(value, head_before[name]), name
    for name, value in algo.source.state_dict().items():
        assert torch.equal(value, source_before[name]), name
    assert any(not torch.equal(a, b) for a, b in zip(critic_before.values(), algo.critic.state_dict().values()))
    changed = [not torch.equal(a, p) for a, p in zip(encoder_before, model.parameters())]
    assert any(changed)


def test_state_dict_round_trip_continues_identically():
    model, algo = _setup()
    _steps(model, algo, 2)
    twin_model, twin = copy.deepcopy(model), build_algorithm("adda")
    twin.attach_target(algo.target, seed=0)
    twin.load_state_dict(copy.deepcopy(algo.state_dict()), twin_model, torch.device("cpu"))
    torch.manual_seed(7)  # the same dropout masks for both
    a = _steps(model, algo, 2)["loss"]
    torch.manual_seed(7)
    b = _steps(twin_model, twin, 2)["loss"]
    assert torch.equal(a, b)


def test_without_target_images_is_a_one_line_error():
    with pytest.raises(FastmbrError, match="no target images"):
        build_algorithm("adda").loss(build_classifier("cnn", 4, image_size=16), None, torch.rand(2, 3, 16, 16),
                                     torch.zeros(2, dtype=torch.long))
    with pytest.raises(FastmbrError, match="unlabelled domain-B"):
        build_algorithm("adda").attach_target(torch.zeros(0, 3, 16, 16, dtype=torch.uint8), seed=0)


def test_target_features_see_no_dropout_and_the_mode_is_restored():
    from fastmbr.algorithms.adda import dropout_off

    model = build_classifier("cnn", 4, image_size=16).train()
    x = torch.rand(5, 3, 16, 16)
    with dropout_off(model):
        first, second = logits_and_features(model, x)[1], logits_and_features(model, x)[1]
    torch.testing.assert_close(first, second)
    assert all(m.training for m in model.modules())
    noisy = [logits_and_features(model, x)[1] for _ in range(2)]
    assert not torch.equal(noisy[0], noisy[1])
