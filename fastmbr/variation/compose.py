"""Composition G1(G2(x, δ2), δ1) with a separate δ for each member (never one shared δ)."""

from __future__ import annotations

import torch
from torch import nn

from fastmbr.errors import FastmbrError
from fastmbr.variation.base import NaturalVariation


class ComposedVariation(NaturalVariation):
    """``ComposedVariation([G1, G2])`` is G1(G2(x, δ2), δ1); its δ is the concatenation [δ1, δ2]."""

    def __init__(self, members: list[NaturalVariation]):
        if not members:
            raise FastmbrError("ComposedVariation needs at least one model of variation")
        low = torch.cat([m.delta_low for m in members])
        high = torch.cat([m.delta_high for m in members])
        super().__init__(delta_dim=int(low.numel()), low=low, high=high)
        self.members = nn.ModuleList(members)
        self.sizes = [m.delta_dim for m in members]

    @property
    def name(self) -> str:
        return "∘".join(m.name for m in self.members)

    def split(self, delta: torch.Tensor) -> list[torch.Tensor]:
        """δ [..., q] → one δ per member, in member order."""
        return list(torch.split(delta, self.sizes, dim=-1))

    def sample_delta(self, batch_size, k=1, generator=None):
        return torch.cat([m.sample_delta(batch_size, k, generator) for m in self.members], dim=-1)

    def project(self, delta):
        return torch.cat([m.project(d) for m, d in zip(self.members, self.split(delta))], dim=-1)

    def forward(self, x, delta):
        self.check_delta(delta, leading=1)
        for member, d in reversed(list(zip(self.members, self.split(delta)))):
            x = member(x, d)
        return x

    def expand(self, x, delta):
        """The innermost member expands (sharing its work over k); the outer ones see k·B images."""
        self.check_delta(delta, leading=2)
        k, b = delta.shape[:2]
        parts = self.split(delta)
        out = self.members[-1].expand(x, parts[-1]).reshape(k * b, *x.shape[1:])
        for member, d in reversed(list(zip(self.members[:-1], parts[:-1]))):
            out = member(out, d.reshape(k * b, -1))
        return out.reshape(k, b, *x.shape[1:])
