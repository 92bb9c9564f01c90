"""Composition G1(G2(x, δ2), δ1): a separate δ for each member (ours, the default) or one shared δ (Eq. 6.1).

The first member (the first ``--model``) is the outermost, applied last. The reference code applies its first model
first: to reproduce its order, give the ``--model`` flags in reverse (docs/design.md).
"""

from __future__ import annotations

import torch
from torch import nn

from fastmbr.errors import FastmbrError
from fastmbr.variation.base import NaturalVariation


def check_shared_box(members: list[NaturalVariation]) -> None:
    """One δ for all members needs one δ space: the same dimension and the same box Δ."""
    first = members[0]
    for m in members[1:]:
        same = m.delta_dim == first.delta_dim and torch.equal(m.delta_low, first.delta_low) \
            and torch.equal(m.delta_high, first.delta_high)
        if not same:
            raise FastmbrError(
                f"--shared-delta: {first.name} and {m.name} have different δ spaces (q={first.delta_dim}, "
                f"[{first.delta_low.tolist()}, {first.delta_high.tolist()}] vs q={m.delta_dim}, "
                f"[{m.delta_low.tolist()}, {m.delta_high.tolist()}]); one δ needs the same dimension and box")


class ComposedVariation(NaturalVariation):
    """``ComposedVariation([G1, G2])`` is G1(G2(x, δ2), δ1); its δ is the concatenation [δ1, δ2].

    ``shared=True``: G1(G2(x, δ), δ) with one δ (the paper's Eq. 6.1), drawn from G1's prior; the members' δ
    spaces must agree.
    """

    def __init__(self, members: list[NaturalVariation], shared: bool = False):
        if not members:
            raise FastmbrError("ComposedVariation needs at least one model of variation")
        if shared:
            check_shared_box(members)
        used = members[:1] if shared else members
        low = torch.cat([m.delta_low for m in used])
        high = torch.cat([m.delta_high for m in used])
        super().__init__(delta_dim=int(low.numel()), low=low, high=high)
        self.members = nn.ModuleList(members)
        self.shared = shared
        self.sizes = [m.delta_dim for m in used]

    @property
    def name(self) -> str:
        return "∘".join(m.name for m in self.members) + (" (shared δ)" if self.shared else "")

    def split(self, delta: torch.Tensor) -> list[torch.Tensor]:
        """δ [..., q] → one δ per member, in member order (the same δ for each when shared)."""
        if self.shared:
            return [delta] * len(self.members)
        return list(torch.split(delta, self.sizes, dim=-1))

    def sample_delta(self, batch_size, k=1, generator=None):
        if self.shared:
            return self.members[0].sample_delta(batch_size, k, generator)
        return torch.cat([m.sample_delta(batch_size, k, generator) for m in self.members], dim=-1)

    def project(self, delta):
        if self.shared:
            return self.members[0].project(delta)
        return torch.cat([m.project(d) for m, d in zip(self.members, self.split(delta))], dim=-1)

    def forward(self, x, delta):
        self.check_delta(delta, leading=1)
        return self.decode(self.encode(x), delta)

    def encode(self, x):
        """The innermost member's δ-independent part."""
        return self.members[-1].encode(x)

    def decode(self, code, delta):
        parts = self.split(delta)
        x = self.members[-1].decode(code, parts[-1])
        for member, d in reversed(list(zip(self.members[:-1], parts[:-1]))):
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
