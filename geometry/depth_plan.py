"""The per-UNet-level plan of the depth correspondence-aware attention (official ``src/models/depth/utils.py``
``get_key_value``; the depth ``CPAttn`` in ``src/models/depth/modules.py``).

Unlike the panorama plan (``geometry/sampling_plan.py``) each query pixel has ONE key per neighbour: the
bilinear sample of the neighbour's feature map at the (unrounded) correspondence, whose validity and depth
difference come from the ROUNDED image pixel. This module only holds the plan's layout, shared by its builder
and the depth attention block, and its builder :func:`build_depth_level_plan`.

The builder reproduces ``get_key_value`` for kernel size 1 in float32 and in its operation order, for a level of
size (h, w) of views of ``H x W`` pixels (``s = H // h``; the official takes both the query and the key scale from
the heights, and the sizes must satisfy ``H = s h``, ``W = s w``):

1. the query cells are the image pixels ``(s//2 + s u, s//2 + s v)``; ``c = corr[i, j](cell) / s - 0.5`` in
   key-map pixels (correspondences of ``geometry/depth_correspondences.py``, -1e6 for depth-less pixels);
2. ``grid = (c_x / (w - 1) * 2 - 1, c_y / (h - 1) * 2 - 1)`` (``align_corners=True``);
3. the rounded image pixel ``r = round((c + 0.5) * s)`` (``torch.round``: half to even);
4. ``valid = 0 <= r_x < W and 0 <= r_y < H and depth_j(r) > 0 and depth_i(cell) > 0``;
5. ``depth_difference = |depth_i(cell) - D|`` with ``D = depth_j(r)`` where r is inside with depth > 0, else 1e6
   (the query's own depth is not part of that mask: a depth-less query cell still gets ``|0 - depth_j(r)|``).

Feature maps of one pixel along an axis make step 2 divide by zero (NaN in the official code) and are refused;
the official 192x256 views give levels 24x32, 12x16, 6x8 and 3x4 (``geometry.sampling_plan.unet_level_sizes``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["DepthLevelPlan", "MASKED_DEPTH", "build_depth_level_plan"]

MASKED_DEPTH = 1e6  # the neighbour depth of a rounded point outside the image or without depth


@dataclass(frozen=True, eq=False)
class DepthLevelPlan:
    """Plan of one level: m views, n = the longest neighbour list, (h, w) the level's feature-map size, views of
    ``image_height x image_width`` pixels.

    neighbours: (m, n) int64, the views each view attends to, in the official order (increasing index); a view
        with fewer neighbours is padded by repeating its first one.
    present: (m, n) bool, False for the padding slots (which take no part in the attention and none in the
        positional encoding's pairing of consecutive values).
    grid: (m, n, h, w, 2) float32 ``F.grid_sample`` coordinates (``align_corners=True``) of the correspondence of
        each query pixel in the neighbour's (h, w) map (0 on padding slots).
    valid: (m, n, h, w) bool: the rounded image pixel lies inside the neighbour's image, the neighbour's depth
        there is > 0 and the query pixel's depth is > 0 (False on padding slots).
    depth_difference: (m, n, h, w) float32 ``|depth_query - depth_neighbour(rounded pixel)|`` in metres, where the
        neighbour's depth is 1e6 when the rounded pixel is outside or has no depth (exactly as the official code:
        masked keys still feed the paired positional encoding of their neighbours in the flattened order).
        0 on padding slots.
    """

    neighbours: torch.Tensor
    present: torch.Tensor
    grid: torch.Tensor
    valid: torch.Tensor
    depth_difference: torch.Tensor
    height: int
    width: int
    image_height: int
    image_width: int

    @property
    def num_views(self) -> int:
        return self.neighbours.shape[0]

    @property
    def num_neighbours(self) -> torch.Tensor:
        """(m,) int64: each view's own neighbour count."""
        return self.present.sum(dim=1)

    def to(self, device=None) -> "DepthLevelPlan":
        return DepthLevelPlan(self.neighbours.to(device), self.present.to(device), self.grid.to(device),
                              self.valid.to(device), self.depth_difference.to(device), self.height, self.width,
                              self.image_height, self.image_width)


def _neighbour_slots(neighbours: Sequence[Sequence[int]], m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, n) int64 neighbour indices padded by repeating the first one (0 for a view without any) and the
    (m, n) bool ``present`` of the real slots."""
    lists = [tuple(int(j) for j in l) for l in neighbours]
    if len(lists) != m:
        raise ValueError(f"{len(lists)} neighbour lists for {m} views")
    for i, l in enumerate(lists):
        if any(j < 0 or j >= m or j == i for j in l) or len(set(l)) != len(l):
            raise ValueError(f"view {i}: neighbours {list(l)} must be distinct other views among 0..{m - 1}")
    n = max((len(l) for l in lists), default=0)
    nb = torch.tensor([list(l) + [l[0] if l else 0] * (n - len(l)) for l in lists], dtype=torch.int64)
    present = torch.tensor([[k < len(l) for k in range(n)] for l in lists], dtype=torch.bool)
    return nb.reshape(m, n), present.reshape(m, n)


def build_depth_level_plan(correspondences: torch.Tensor, depths: torch.Tensor,
                           neighbours: Sequence[Sequence[int]], height: int, width: int) -> DepthLevelPlan:
    """The plan of a (height, width) level (module docstring) from the image-resolution correspondences
    (m, m, H, W, 2) float32 (``depth_correspondences``), the depths (m, H, W) float32 metres and each view's
    neighbour list (``depth_neighbours``). Built on the correspondences' device, no per-view loop."""
    if correspondences.ndim != 5 or correspondences.shape[-1] != 2 or depths.ndim != 3 \
            or tuple(correspondences.shape[:2]) != (depths.shape[0],) * 2 \
            or correspondences.shape[2:4] != depths.shape[1:]:
        raise ValueError(f"correspondences (m, m, H, W, 2) and depths (m, H, W) do not match: got "
                         f"{tuple(correspondences.shape)} and {tuple(depths.shape)}")
    m, H, W = depths.shape
    h, w = int(height), int(width)
    s = H // h if h >= 1 else 0
    if h < 2 or w < 2 or s * h != H or s * w != W:
        raise ValueError(f"a {h}x{w} feature map does not tile {H}x{W} views with one integer stride (needed: "
                         "H = s*h and W = s*w, h and w >= 2)")
    nb, present = _neighbour_slots(neighbours, m)
    nb, present = nb.to(depths.device), present.to(depths.device)
    n = nb.shape[1]
    src = torch.arange(m, device=depths.device)[:, None].expand(m, n)
    depths = depths.float()

    corr = correspondences.float()[:, :, s // 2::s, s // 2::s][src, nb]  # (m, n, h, w, 2)
    depth_query = depths[:, s // 2::s, s // 2::s][:, None].expand(m, n, h, w)
    c = corr / s - 0.5
    grid = torch.stack([c[..., 0] / (w - 1) * 2 - 1, c[..., 1] / (h - 1) * 2 - 1], dim=-1)
    rounded = ((c + 0.5) * s).round().long()
    rx, ry = rounded[..., 0], rounded[..., 1]
    inside = (rx >= 0) & (rx < W) & (ry >= 0) & (ry < H)
    depth_key = depths[nb[..., None, None].expand(m, n, h, w), ry.clamp(0, H - 1), rx.clamp(0, W - 1)]
    key_ok = inside & (depth_key > 0)
    depth_key = depth_key.masked_fill(~key_ok, MASKED_DEPTH)
    valid = key_ok & (depth_query > 0)
    difference = (depth_query - depth_key).abs()

    absent = ~present[..., None, None]
    return DepthLevelPlan(nb, present, grid.masked_fill(absent[..., None], 0), valid & ~absent,
                          difference.masked_fill(absent, 0), h, w, H, W)
