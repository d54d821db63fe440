"""The per-UNet-level plan of the depth correspondence-aware attention (official ``src/models/depth/utils.py``
``get_key_value``; the depth ``CPAttn`` in ``src/models/depth/modules.py``).

Unlike the panorama plan (``geometry/sampling_plan.py``) each query pixel has ONE key per neighbour: the
bilinear sample of the neighbour's feature map at the (unrounded) correspondence, whose validity and depth
difference come from the ROUNDED image pixel. This module only holds the plan's layout, shared by its builder
and the depth attention block; see the builder for how each field is computed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DepthLevelPlan"]


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
