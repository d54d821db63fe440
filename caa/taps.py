"""The bilinear tap tables of a level plan: each key's sample as 4 weighted rows of the flattened feature maps.

For the fast CAA paths (``caa/fast.py``, ``caa/depth_fast.py``): the same arithmetic as
``F.grid_sample(align_corners=True)`` with zero padding, from the plan's grid once per run (``caa/run_cache.py``).
Works for a :class:`geometry.LevelPlan` (9 keys per neighbour, displacements, 1-pixel-axis weights) and a
:class:`geometry.depth_plan.DepthLevelPlan` (1 key per neighbour).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TapPlan", "tap_plan", "DeviceTaps", "device_taps"]


@dataclass(frozen=True, eq=False)
class TapPlan:
    """Bilinear taps of every key of a level, for the flattened (view, y, x) query index q in [0, m h w).

    index: (m h w, K, 4) int64 rows of the flattened (view, y, x) feature maps of one group;
    weight: (m h w, K, 4) float32 (0 for taps outside the map, times the 1-pixel-axis factor);
    valid: (m h w, K) float32 (1 valid, 0 invalid); displacement: (m h w, K, 2) float32 (None for a depth plan);
    absent: (m h w, K) float32, -inf for the padding keys (``LevelPlan.present`` False), else 0; None without
    padding.
    """

    index: torch.Tensor
    weight: torch.Tensor
    valid: torch.Tensor
    displacement: torch.Tensor | None
    absent: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return self.index.shape[0]

    @property
    def num_keys(self) -> int:
        return self.index.shape[1]


def tap_plan(plan) -> TapPlan:
    """Taps for a :class:`geometry.LevelPlan` (9 keys per neighbour) or a :class:`geometry.depth_plan.DepthLevelPlan`
    (1 key per neighbour, no displacement); build them once per run (``caa/run_cache.py``)."""
    m, K, h, w = plan.valid.shape
    dev = plan.grid.device
    grid = plan.grid.float()
    # grid_sample(align_corners=True) un-normalisation, in its float32 order
    ix = ((grid[..., 0] + 1) / 2) * (w - 1)
    iy = ((grid[..., 1] + 1) / 2) * (h - 1)
    x0, y0 = torch.floor(ix), torch.floor(iy)
    x1, y1 = x0 + 1, y0 + 1
    taps = [(x0, y0, (x1 - ix) * (y1 - iy)), (x1, y0, (ix - x0) * (y1 - iy)),
            (x0, y1, (x1 - ix) * (iy - y0)), (x1, y1, (ix - x0) * (iy - y0))]
    src = plan.neighbours.to(dev).repeat_interleave(K // plan.neighbours.shape[1], dim=1)[:, :, None, None]
    index, weight = [], []
    for tx, ty, tw in taps:
        inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
        flat = src * (h * w) + ty.clamp(0, h - 1).long() * w + tx.clamp(0, w - 1).long()
        index.append(flat)
        weight.append(torch.where(inside, tw, torch.zeros_like(tw)))
    index = torch.stack(index, dim=-1)  # (m, K, h, w, 4)
    weight = torch.stack(weight, dim=-1)
    if getattr(plan, "sample_weight", None) is not None:
        weight = weight * plan.sample_weight.float()[..., None]

    def rows(t):  # (m, K, h, w, ...) -> (m h w, K, ...)
        return t.movedim(1, 3).reshape(m * h * w, K, *t.shape[4:]).contiguous()

    absent = None
    if plan.present is not None and not bool(plan.present.all()):
        bias = torch.zeros(plan.present.shape, device=dev).masked_fill_(~plan.present.to(dev), float("-inf"))
        absent = rows(bias[:, :, None, None].expand(m, K, h, w))
    displacement = getattr(plan, "displacement", None)
    return TapPlan(rows(index), rows(weight), rows(plan.valid.float()),
                   None if displacement is None else rows(displacement.float()), absent)


@dataclass(frozen=True, eq=False)
class DeviceTaps:
    """A :class:`TapPlan` on one device, in the layout :func:`fast_forward` uses."""

    index: torch.Tensor  # (m h w K, 4) int64
    weight: torch.Tensor  # (m h w K, 4) in the features' dtype
    valid: torch.Tensor  # (m h w, K) float32
    displacement: torch.Tensor | None  # (m h w, K, 2) float32 (None for a depth plan)
    absent: torch.Tensor | None = None  # (m h w, K) float32: -inf for padding keys, else 0; or None


def device_taps(taps: TapPlan, device: torch.device, dtype: torch.dtype) -> DeviceTaps:
    """``taps`` on ``device`` with the weights in ``dtype``."""
    return DeviceTaps(taps.index.reshape(-1, 4).to(device), taps.weight.reshape(-1, 4).to(device, dtype),
                       taps.valid.to(device), None if taps.displacement is None else taps.displacement.to(device),
                       None if taps.absent is None else taps.absent.to(device))
