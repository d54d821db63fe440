"""Everything the depth correspondence-aware attention needs for one set of frames, built once per run (issue 11,
"Depth Correspondences"): the symmetric overlap of every pair, each view's neighbours (overlap above the
official 0.3, with the official fallback for views that overlap nothing) and the per-UNet-level plans
(``geometry/depth_plan.py``) at the frames' size, which must be a multiple of 8.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..geometry.depth_correspondences import (NEIGHBOUR_OVERLAP, depth_correspondences, depth_neighbours,
                                              overlap_ratios, symmetric_overlap, views_without_overlap)
from ..geometry.depth_plan import DepthLevelPlan, build_depth_level_plan
from ..geometry.sampling_plan import unet_level_sizes
from .frames import SceneFrames, frames_without_depth

__all__ = ["SceneCorrespondences", "scene_correspondences"]


@dataclass(frozen=True, eq=False)
class SceneCorrespondences:
    """The frames, their (n, n) float32 symmetric ``overlap``, the ``neighbours`` lists (depth_neighbours at
    ``threshold``), the views that overlap nothing (given the fallback neighbours), the frames without any depth,
    and ``plans``: one DepthLevelPlan per UNet level size (h, w) of the frames' size, largest first."""

    frames: SceneFrames
    overlap: torch.Tensor
    neighbours: tuple[tuple[int, ...], ...]
    threshold: float
    without_overlap: tuple[int, ...]
    without_depth: tuple[str, ...]
    plans: dict[tuple[int, int], DepthLevelPlan]

    @property
    def num_views(self) -> int:
        return self.frames.num_frames

    @property
    def height(self) -> int:
        return self.frames.height

    @property
    def width(self) -> int:
        return self.frames.width

    @property
    def max_neighbours(self) -> int:
        """The longest neighbour list (the depth attention's keys per query pixel)."""
        return max((len(nb) for nb in self.neighbours), default=0)

    def report(self) -> str:
        """A few lines for the user: neighbours per view, the fallbacks used, frames without depth."""
        names = self.frames.names
        lines = [f"{self.num_views} views of {self.frames.width}x{self.frames.height}, neighbours = overlap > "
                 f"{self.threshold:g}; levels " + ", ".join(f"{w}x{h}" for h, w in self.plans)]
        for i, nb in enumerate(self.neighbours):
            fallback = " (overlaps nothing: fallback neighbours)" if i in self.without_overlap else ""
            lines.append(f"view {i} ({names[i]}): " + (", ".join(str(j) for j in nb) or "none") + fallback)
        if self.without_overlap:
            lines.append("overlapping no other view: " + ", ".join(names[i] for i in self.without_overlap))
        if self.without_depth:
            lines.append("without any valid depth: " + ", ".join(self.without_depth))
        return "\n".join(lines)


def scene_correspondences(frames: SceneFrames, threshold: float = NEIGHBOUR_OVERLAP) -> SceneCorrespondences:
    """Overlap, neighbours and the level plans of ``frames`` (module docstring). ValueError when the size is not a
    multiple of 8 or a level does not tile the views (the plan builder's message)."""
    H, W = frames.height, frames.width
    if H % 8 or W % 8:
        raise ValueError(f"the frames are {W}x{H}: width and height must be multiples of 8 (the VAE's factor)")
    corr = depth_correspondences(frames.depths, frames.cameras)
    overlap = symmetric_overlap(overlap_ratios(corr))
    neighbours = depth_neighbours(overlap, threshold)
    plans = {(h, w): build_depth_level_plan(corr, frames.depths, neighbours, h, w) for h, w in unet_level_sizes(H, W)}
    return SceneCorrespondences(frames, overlap, neighbours, float(threshold),
                                views_without_overlap(overlap, threshold), tuple(frames_without_depth(frames)),
                                plans)
