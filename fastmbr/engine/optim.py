"""Optimizer construction, and an Adadelta that skips a non-finite step on the device.

The trainer never reads the loss on the host inside a step: it hands the optimizer a ``found_inf`` tensor
(1.0 when some loss was not finite) and the optimizer leaves weights and state untouched when it is set.
PyTorch's fused SGD and Adam accept that flag; Adadelta (the paper's optimizer for the small-image CNNs,
Appendix A) has no fused kernel, so ``MaskedAdadelta`` below does the same with plain tensor ops.
"""

from __future__ import annotations

import torch
from torch.optim.optimizer import Optimizer

from fastmbr.config import RunConfig
from fastmbr.errors import FastmbrError

KNOWN_OPTIMIZERS = ("adadelta", "sgd", "adam")


class MaskedAdadelta(torch.optim.Adadelta):
    """``torch.optim.Adadelta`` whose step is skipped on the device when ``self.found_inf`` (set by the caller
    for one step, as for PyTorch's fused optimizers) is non-zero.

    The update is PyTorch's multi-tensor Adadelta, computed out of place; ``torch.where`` then keeps the old
    state and a zero parameter delta when found_inf is set. A selection, not a multiplication by a 0/1 mask,
    because the skipped step's values are usually NaN and NaN·0 is NaN. Nothing is read on the host.

    The state layout is Adadelta's own (``square_avg``, ``acc_delta``, ``step``), so checkpoints load in
    either direction; ``step`` is kept on the parameter's device, where the found_inf flag lives.
    """

    @torch.no_grad()
    def step(self, closure=None):
        found_inf = getattr(self, "found_inf", None)
        if found_inf is None:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, square_avgs, acc_deltas, steps = [], [], [], [], []
            if self._init_group(group, params, grads, square_avgs, acc_deltas, steps):
                raise TypeError("MaskedAdadelta does not support complex parameters")
            if params:
                self.keep_steps_on_param_device(params)
                steps = [self.state[p]["step"] for p in params]
                grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, square_avgs, acc_deltas, steps])
                for (device, _), (tensors, _) in grouped.items():
                    masked_adadelta(*tensors, found_inf=found_inf.to(device), group=group)
        return loss

    def keep_steps_on_param_device(self, params) -> None:
        """Adadelta creates ``step`` on the CPU (and a checkpoint of torch.optim.Adadelta holds it there); the
        masked increment adds a device tensor to it, so it lives beside its parameter. A no-op once moved."""
        for p in params:
            state = self.state[p]
            if state["step"].device != p.device:
                state["step"] = state["step"].to(p.device)


def masked_adadelta(params, grads, square_avgs, acc_deltas, steps, *, found_inf: torch.Tensor, group: dict) -> None:
    """One Adadelta step over tensors of one device and dtype, applied only where ``found_inf == 0``."""
    lr, rho, eps, weight_decay = group["lr"], group["rho"], group["eps"], group["weight_decay"]
    skip = found_inf != 0
    keep = torch.logical_not(skip).to(steps[0].dtype)
    torch._foreach_add_(steps, [keep] * len(steps))  # the list overload: the tensor-scalar one may read ``keep``
    if group["maximize"]:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    new_square_avgs = torch._foreach_mul(square_avgs, rho)
    torch._foreach_addcmul_(new_square_avgs, grads, grads, value=1 - rho)
    std = torch._foreach_add(new_square_avgs, eps)
    torch._foreach_sqrt_(std)
    deltas = torch._foreach_add(acc_deltas, eps)
    torch._foreach_sqrt_(deltas)
    torch._foreach_div_(deltas, std)
    torch._foreach_mul_(deltas, grads)
    new_acc_deltas = torch._foreach_mul(acc_deltas, rho)
    torch._foreach_addcmul_(new_acc_deltas, deltas, deltas, value=1 - rho)
    for square_avg, new, acc_delta, new_acc, delta in zip(square_avgs, new_square_avgs, acc_deltas,
                                                           new_acc_deltas, deltas):
        square_avg.copy_(torch.where(skip, square_avg, new))
        acc_delta.copy_(torch.where(skip, acc_delta, new_acc))
        delta.masked_fill_(skip, 0.0)
    torch._foreach_add_(params, deltas, alpha=-lr)


def build_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.optim``. With ``fused`` (the default) every one of them skips a non-finite step
    on the device: PyTorch's fused SGD/Adam kernels, and MaskedAdadelta for Adadelta."""
    o = cfg.optim
    if o.optimizer == "adadelta":
        adadelta = MaskedAdadelta if o.fused else torch.optim.Adadelta
        return adadelta(params, lr=o.lr, weight_decay=o.weight_decay)
    fused = {"fused": True} if o.fused else {}
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, **fused)
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, **fused)
    raise FastmbrError(f"unknown optimizer {o.optimizer!r}; known: {', '.join(KNOWN_OPTIMIZERS)}")


def skips_nonfinite_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` honours a ``found_inf`` tensor, so the trainer needs no host read per step."""
    return isinstance(optimizer, MaskedAdadelta) or bool(optimizer.defaults.get("fused"))
