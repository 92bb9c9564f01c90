"""MUNIT's upsampling layer — 2× nearest upsample, reflection pad, k×k conv — computed on the low-resolution grid.

After a nearest 2× upsample, each output phase (row parity a, column parity b) of a k×k convolution only ever
reads (p+1)×(p+1) distinct low-resolution pixels (k = 2p+1). Summing the kernel taps that land on the same pixel
gives four small "phase" kernels; one convolution with 4·C_out channels on the low-resolution input, then a pixel
shuffle, yields the same image with (p+1)²/(2p+1)² of the multiply-adds: 9/25 for MUNIT's 5×5 (0.36×), 4/9 for 3×3.

Exactness at the borders: the phase form implicitly pads the upsampled image by replication, while MUNIT pads
by reflection. On a 2× upsampled image the two paddings agree except at distance ≥ 2 from the edge, so for p = 1
nothing differs and for p ≥ 2 only the outermost p-1 output rows and columns receive a correction, computed from
the difference of the two paddings on thin edge strips. The result equals ``upsample_conv_reference`` to
floating-point rounding, values and gradients alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample_conv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The definition: nearest 2× upsample, reflection pad k//2, valid k×k convolution."""
    pad = weight.shape[-1] // 2
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    return F.conv2d(F.pad(up, (pad, pad, pad, pad), mode="reflect"), weight, bias)


def supports_subpixel(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Odd square kernel and an input large enough for the edge strips (else use the reference)."""
    k = weight.shape[-1]
    p = k // 2
    return weight.shape[-2] == k and k % 2 == 1 and min(x.shape[-2:]) >= p // 2 + 1 and 2 * min(x.shape[-2:]) > p


def _phase_start(a: int, p: int) -> int:
    """Offset, on the low-resolution grid, of the first pixel that output phase ``a`` reads."""
    return (a - p) // 2


def _phase_taps(k: int, a: int, device, dtype) -> torch.Tensor:
    """0/1 matrix [p+1, k]: which of the k kernel taps fall on each low-resolution pixel for phase ``a``."""
    p = k // 2
    start = _phase_start(a, p)
    taps = torch.zeros(p + 1, k, device=device, dtype=dtype)
    for u in range(k):
        taps[(a + u - p) // 2 - start, u] = 1.0
    return taps


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """[C_out, C_in, k, k] → [4·C_out, C_in, p+1, p+1], channel order (c, a, b) as pixel_shuffle expects."""
    k = weight.shape[-1]
    rows = [_phase_taps(k, a, weight.device, weight.dtype) for a in (0, 1)]
    per_phase = [[torch.einsum("ou,pv,cduv->cdop", rows[a], rows[b], weight) for b in (0, 1)] for a in (0, 1)]
    stacked = torch.stack([torch.stack(pair, dim=1) for pair in per_phase], dim=1)  # [C_out, 2, 2, C_in, T, T]
    return stacked.reshape(-1, *stacked.shape[3:])


def _phase_grid(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Upsample-conv with replication padding of the upsampled image, computed on the low-resolution grid."""
    k = weight.shape[-1]
    p = k // 2
    starts = [_phase_start(a, p) for a in (0, 1)]
    left, right = -starts[0], starts[1] + p
    padded = F.pad(x, (left, right, left, right), mode="replicate")
    bias4 = None if bias is None else bias.repeat_interleave(4)
    y = F.conv2d(padded, phase_kernels(weight), bias4)
    n, c4, h, w = y.shape
    if starts[0] == starts[1]:
        return F.pixel_shuffle(y, 2)
    y = y.view(n, c4 // 4, 2, 2, h, w)
    hh, ww = x.shape[-2:]
    shift = starts[1] - starts[0]
    rows = [torch.stack([y[:, :, a, b, a * shift: a * shift + hh, b * shift: b * shift + ww] for b in (0, 1)], -1)
            for a in (0, 1)]
    out = torch.stack(rows, dim=3)  # [N, C, H, 2(a), W, 2(b)]
    return out.reshape(n, c4 // 4, 2 * hh, 2 * ww)


def _top_correction(x: torch.Tensor, weight: torch.Tensor, other_axis_mode: str) -> torch.Tensor:
    """Convolution of (reflect − replicate) row padding of the upsampled x: the missing part of the top p-1 rows.

    Padding row r (r = -p..-2; rows -1 and 0 agree) of the upsampled image is low-resolution row (-r)//2 under
    reflection and row 0 under replication, so the difference is built from those rows alone, upsampled along
    the width only. The columns are padded with ``other_axis_mode``, so that the row and column corrections
    split P − Q = (P_r − Q_r)·P_c + Q_r·(P_c − Q_c) exactly, corners included.
    """
    p = weight.shape[-1] // 2
    rows = [(p - t) // 2 for t in range(p - 1)]  # low-resolution row of padding rows -p..-2, top to bottom
    diff = x[:, :, rows] - x[:, :, :1]
    diff = F.pad(diff.repeat_interleave(2, dim=-1), (p, p, 0, 0), mode=other_axis_mode)
    # output row r meets the differing rows through kernel rows 0..p-2-r
    strip = F.pad(diff, (0, 0, 0, p - 2))
    return F.conv2d(strip, weight[:, :, : p - 1])


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Same values as ``upsample_conv_reference`` at (p+1)²/(2p+1)² of its multiply-adds (odd k only)."""
    out = _phase_grid(x, weight, bias)
    p = weight.shape[-1] // 2
    if p < 2:
        return out
    e, rows = p - 1, p // 2 + 1  # corrected output rows per side; input rows each correction reads
    xt, wt = x.transpose(2, 3), weight.transpose(2, 3)
    # each side's strip is sliced before it is flipped: a flip copies, and only ``rows`` rows are read
    out[:, :, :e] += _top_correction(x[:, :, :rows], weight, "reflect")
    out[:, :, -e:] += _top_correction(x[:, :, -rows:].flip(2), weight.flip(2), "reflect").flip(2)
    out[:, :, :, :e] += _top_correction(xt[:, :, :rows], wt, "replicate").transpose(2, 3)
    out[:, :, :, -e:] += _top_correction(xt[:, :, -rows:].flip(2), wt.flip(2), "replicate").flip(2).transpose(2, 3)
    return out
