"""ADDA (Tzeng et al. 2017), the unsupervised domain adaptation baseline of the paper's Table 6.

Stage 1, source training, is the trainer's ERM warm-up on labelled A (``--warmup-epochs``, required). At the first
ADDA step a frozen copy of that classifier becomes the source model. Stage 2 then trains the classifier's feature
extractor (the target encoder, initialised from the source) against a critic that tells source features of A
images from target features of unlabelled B images; the classification head stays the source's. The critic is
an MLP (500, 500, 1) with its own Adam, stepped inside ``loss``; the target encoder has its own Adam too
(``own_optimizer``), which the trainer steps once the warm-up ends; its state and the source copy are part of the
algorithm's ``state_dict`` so a resumed run continues exactly. The reported model is the last epoch's, as in
Tzeng et al.'s fixed schedule: A's validation split (the only labelled data) would pick the unadapted source.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fastmbr.algorithms.base import Algorithm, register_algorithm
from fastmbr.algorithms.inner import frozen
from fastmbr.errors import FastmbrError


def classifier_head(model: nn.Module) -> nn.Linear:
    """The last linear layer: the head that maps features to class logits."""
    linears = [m for m in getattr(model, "module", model).modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise FastmbrError("adda needs a classifier whose last layer is nn.Linear")
    return linears[-1]


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward; the head's input (the features) is caught by a hook on the head."""
    caught = {}
    handle = classifier_head(model).register_forward_pre_hook(lambda _, args: caught.update(features=args[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, caught["features"]


@contextmanager
def dropout_off(model: nn.Module):
    """Dropout layers in eval mode (the rest untouched): target features as clean as the frozen source's, so the
    critic cannot tell the domains apart by dropout noise alone."""
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
    for m in dropouts:
        m.eval()
    try:
        yield model
    finally:
        for m in dropouts:
            m.train()


def make_critic(width: int, hidden: int = 500) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


@register_algorithm("adda")
@dataclass
class ADDA(Algorithm):
    """Adversarial discriminative domain adaptation; ``k`` and ``lam`` are unused (kept for the one signature)."""

    critic_lr: float = 2e-4
    encoder_lr: float = 2e-4
    uses_target = True
    needs_warmup = True
    select_last = True  # adaptation trades A accuracy for B: selecting on A's validation would undo it
    target: torch.Tensor | None = field(default=None, repr=False)
    source: nn.Module | None = field(default=None, repr=False)
    critic: nn.Module | None = field(default=None, repr=False)
    critic_opt: torch.optim.Optimizer | None = field(default=None, repr=False)
    generator: torch.Generator | None = field(default=None, repr=False)

    def attach_target(self, images: torch.Tensor, seed: int) -> None:
        """Unlabelled domain-B training images (uint8 ``[N, C, H, W]`` or float in [0, 1]), kept on the device."""
        if images is None or len(images) == 0:
            raise FastmbrError("adda needs unlabelled domain-B training images; this dataset/shift has none")
        self.target = images
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def own_optimizer(self, model: nn.Module, fused: bool) -> torch.optim.Optimizer:
        """Adam over the target encoder (every parameter but the source head), as Tzeng et al.: an adaptive
        optimizer at unit scale (the paper CNN's Adadelta, lr 1.0) moves the features off the head within a few
        hundred steps and the adapted classifier collapses to a few classes."""
        head = {id(p) for p in classifier_head(model).parameters()}
        encoder = [p for p in model.parameters() if id(p) not in head]
        return torch.optim.Adam(encoder, lr=self.encoder_lr, betas=(0.5, 0.999),
                                **({"fused": True} if fused else {}))

    def target_batch(self, size: int, like: torch.Tensor) -> torch.Tensor:
        """A random batch of B images shaped like the training batch (size, memory layout)."""
        index = torch.randint(len(self.target), (size,), generator=self.generator)
        batch = self.target[index.to(self.target.device)].to(like.device, non_blocking=True)
        batch = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
        if batch.shape[-2:] != like.shape[-2:]:
            batch = F.interpolate(batch, size=like.shape[-2:], mode="bilinear", antialias=True).clamp_(0, 1)
        if like.is_contiguous(memory_format=torch.channels_last):
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def start(self, model: nn.Module, features: int, device: torch.device) -> None:
        """Freeze the source classifier (the warm-up's result) and build the critic."""
        self.source = copy.deepcopy(getattr(model, "module", model)).eval().requires_grad_(False)
        self.critic = make_critic(features).to(device)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.critic_lr, betas=(0.5, 0.999))

    def critic_step(self, source_features: torch.Tensor, target_features: torch.Tensor) -> None:
        real = self.critic(source_features)
        fake = self.critic(target_features.detach())
        loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + \
            F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()

    def loss(self, model, G, x, y):
        if self.target is None:
            raise FastmbrError("adda: no target images attached (the trainer attaches domain B's training pool)")
        with dropout_off(model):
            _, target_features = logits_and_features(model, self.target_batch(x.shape[0], x))
        if self.source is None:
            self.start(model, target_features.shape[1], x.device)
        with torch.no_grad(), frozen(model) as inner_model:
            _, source_features = logits_and_features(self.source, x)
            logits_a = inner_model(x)
        self.critic_step(source_features.float(), target_features.float())
        self.critic.requires_grad_(False)  # the encoder's loss must not build gradients for the critic
        try:
            fooled = self.critic(target_features.float())
        finally:
            self.critic.requires_grad_(True)
        return {"loss": F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled)), "logits": logits_a}

    def state_dict(self) -> dict:
        if self.source is None:
            return {"generator": self.generator.get_state()}
        return {"source": self.source.state_dict(), "critic": self.critic.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict, model: nn.Module, device: torch.device) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        if not state.get("source"):
            return
        self.start(model, next(iter(state["critic"].values())).shape[1], device)
        self.source.load_state_dict(state["source"])
        self.critic.load_state_dict(state["critic"])
        self.critic_opt.load_state_dict(state["critic_opt"])
