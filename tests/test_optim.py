"""MaskedAdadelta against torch.optim.Adadelta, its device-side skip, and the trainer's use of it."""

import io

import pytest
import torch

from fastmbr.config import preset_config
from fastmbr.engine import checkpoint as ckpt
from fastmbr.engine.optim import MaskedAdadelta, build_optimizer, skips_nonfinite_on_device

SHAPES = [(7, 3), (5,), (2, 3, 4, 4)]
STATE_KEYS = ("square_avg", "acc_delta", "step")


def twin_params(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(seed)
    ours = [torch.randn(s, requires_grad=True) for s in SHAPES]
    return ours, [p.detach().clone().requires_grad_() for p in ours]


def set_grads(params, grads) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()


def step_both(ours, theirs, opt_ours, opt_theirs, n: int, found: float = 0.0) -> None:
    """n steps of fresh random gradients, the same for both; ours is told ``found_inf = found``."""
    opt_ours.found_inf = torch.tensor(found)
    for _ in range(n):
        grads = [torch.randn(s) for s in SHAPES]
        set_grads(ours, grads)
        set_grads(theirs, grads)
        opt_ours.step()
        opt_theirs.step()


def saved_and_loaded(state: dict) -> dict:
    """Through torch.save/torch.load, as a checkpoint goes (a live state_dict shares the optimizer's tensors)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def assert_same_state(opt_a, params_a, opt_b, params_b, atol: float = 1e-6) -> None:
    for pa, pb in zip(params_a, params_b):
        torch.testing.assert_close(pa, pb, atol=atol, rtol=1e-6)
        for key in STATE_KEYS:
            torch.testing.assert_close(opt_a.state[pa][key].cpu(), opt_b.state[pb][key].cpu(), atol=atol, rtol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_masked_adadelta_matches_torch_adadelta_when_every_step_is_finite(weight_decay):
    ours, theirs = twin_params()
    opt_ours = MaskedAdadelta(ours, lr=1.0, rho=0.9, eps=1e-6, weight_decay=weight_decay)
    opt_theirs = torch.optim.Adadelta(theirs, lr=1.0, rho=0.9, eps=1e-6, weight_decay=weight_decay)
    step_both(ours, theirs, opt_ours, opt_theirs, n=25)
    assert_same_state(opt_ours, ours, opt_theirs, theirs)
    assert float(opt_ours.state[ours[0]]["step"]) == 25.0
    assert not torch.equal(ours[0], twin_params()[0][0])  # the steps moved the weights


def test_a_step_with_found_inf_leaves_params_and_state_bit_identical():
    ours, _ = twin_params()
    opt = MaskedAdadelta(ours, lr=1.0, weight_decay=0.01)
    opt.found_inf = torch.tensor(0.0)
    for _ in range(3):
        set_grads(ours, [torch.randn(s) for s in SHAPES])
        opt.step()
    before = [p.detach().clone() for p in ours]
    state_before = [{k: opt.state[p][k].clone() for k in STATE_KEYS} for p in ours]
    set_grads(ours, [torch.full(s, float("nan")) for s in SHAPES])
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    for p, old, old_state in zip(ours, before, state_before):
        assert torch.equal(p, old)
        for key in STATE_KEYS:
            assert torch.equal(opt.state[p][key], old_state[key]), key


def test_a_skipped_step_does_not_perturb_the_steps_after_it():
    ours, theirs = twin_params()
    opt_ours, opt_theirs = MaskedAdadelta(ours), torch.optim.Adadelta(theirs)
    step_both(ours, theirs, opt_ours, opt_theirs, n=3)
    set_grads(ours, [torch.full(s, float("inf")) for s in SHAPES])
    opt_ours.found_inf = torch.tensor(1.0)
    opt_ours.step()
    step_both(ours, theirs, opt_ours, opt_theirs, n=3)
    assert_same_state(opt_ours, ours, opt_theirs, theirs)


def test_state_dict_round_trips_with_torch_adadelta():
    """A checkpoint of torch.optim.Adadelta resumes in MaskedAdadelta, and the other way round."""
    ours, theirs = twin_params()
    opt_ours, opt_theirs = MaskedAdadelta(ours, weight_decay=0.01), torch.optim.Adadelta(theirs, weight_decay=0.01)
    step_both(ours, theirs, opt_ours, opt_theirs, n=4)
    saved_ours, saved_theirs = saved_and_loaded(opt_ours.state_dict()), saved_and_loaded(opt_theirs.state_dict())
    assert set(saved_ours["state"][0]) == set(saved_theirs["state"][0]) == set(STATE_KEYS)
    assert saved_ours["param_groups"][0].keys() == saved_theirs["param_groups"][0].keys()

    swapped_ours = [p.detach().clone().requires_grad_() for p in theirs]
    swapped_theirs = [p.detach().clone().requires_grad_() for p in ours]
    resumed_ours = MaskedAdadelta(swapped_ours, weight_decay=0.01)
    resumed_ours.load_state_dict(saved_theirs)
    resumed_theirs = torch.optim.Adadelta(swapped_theirs, weight_decay=0.01)
    resumed_theirs.load_state_dict(saved_ours)
    step_both(swapped_ours, theirs, resumed_ours, opt_theirs, n=4)
    step_both(ours, swapped_theirs, opt_ours, resumed_theirs, n=4)
    assert_same_state(resumed_ours, swapped_ours, opt_theirs, theirs)
    assert_same_state(opt_ours, ours, resumed_theirs, swapped_theirs)
    assert float(resumed_ours.state[swapped_ours[0]]["step"]) == 8.0


def test_masked_step_reads_no_value_on_the_host():
    """On meta tensors (shapes, no values) any ``.item()`` or Python ``if`` on a tensor raises: the step runs."""
    params = [torch.zeros(s, device="meta", requires_grad=True) for s in SHAPES]
    opt = MaskedAdadelta(params, weight_decay=0.01)
    set_grads(params, [torch.zeros(s, device="meta") for s in SHAPES])
    opt.found_inf = torch.zeros((), device="meta")
    opt.step()
    assert all(opt.state[p]["step"].device.type == "meta" for p in params)
    with pytest.raises(RuntimeError):
        bool(opt.found_inf)  # what a host read would hit


@pytest.mark.parametrize("name,fused,expected", [
    ("adadelta", True, MaskedAdadelta), ("adadelta", False, torch.optim.Adadelta),
    ("sgd", True, torch.optim.SGD), ("adam", False, torch.optim.Adam),
])
def test_build_optimizer_picks_the_device_side_skip_when_fused(name, fused, expected):
    cfg = preset_config("mnist", "erm", "background-color")
    cfg.optim.optimizer, cfg.optim.fused = name, fused
    opt = build_optimizer(cfg, [torch.zeros(3, requires_grad=True)])
    assert type(opt) is expected
    assert skips_nonfinite_on_device(opt) is fused


def small_adadelta_config(tmp_path, fused: bool):
    cfg = preset_config("mnist", "erm", "background-color")
    cfg.data.limit, cfg.data.batch_size = 192, 32
    cfg.optim.epochs, cfg.optim.optimizer, cfg.optim.lr, cfg.optim.fused = 1, "adadelta", 1.0, fused
    cfg.device, cfg.out = "cpu", str(tmp_path / "run")
    return cfg


def test_trainer_skips_a_nan_step_of_adadelta_on_the_device_like_the_host_path(tmp_path, monkeypatch):
    """A NaN loss at one step: MaskedAdadelta's device-side skip leaves the weights of torch.optim.Adadelta's
    host-side skip, both count one skipped step, and the device path never takes the per-step host read."""
    from fastmbr.algorithms.erm import ERM
    from fastmbr.engine import trainer

    plain_loss, host_any_rank = ERM.loss, trainer.any_rank
    calls = {"n": 0, "host_reads": 0}

    def nan_on_third_call(self, model, G, x, y):
        calls["n"] += 1
        out = plain_loss(self, model, G, x, y)
        return {**out, "loss": out["loss"] * float("nan")} if calls["n"] == 3 else out

    def counted_any_rank(flags, dist):
        calls["host_reads"] += 1
        return host_any_rank(flags, dist)

    monkeypatch.setattr(ERM, "loss", nan_on_third_call)
    monkeypatch.setattr(trainer, "any_rank", counted_any_rank)
    weights, skipped, host_reads = {}, {}, {}
    for fused in (True, False):
        calls.update(n=0, host_reads=0)
        metrics, run_dir = trainer.train(small_adadelta_config(tmp_path / str(fused), fused), progress=False)
        weights[fused] = ckpt.load_latest(run_dir)["model"]
        skipped[fused], host_reads[fused] = metrics["nonfinite_skipped"], calls["host_reads"]
    assert skipped == {True: 1, False: 1}
    assert host_reads[True] == 0 and host_reads[False] == 6  # 192 images / 32: one read per step on the host path
    for name, tensor in weights[True].items():
        assert torch.isfinite(tensor.float()).all(), name
        torch.testing.assert_close(tensor, weights[False][name], atol=1e-6, rtol=1e-5)
