"""Pure panorama geometry (torch only, no ComfyUI): camera rigs, correspondences, the CAA sampling plan,
equirectangular projection and stitching, and the overlap-PSNR consistency metric.

Conventions (pixels, axes, angles) are stated once in ``geometry/cameras.py`` and used everywhere.
"""
from .cameras import Rig, intrinsics, pano_cameras, pano_rig, rig_cameras, ring_neighbours, rotation
from .correspondences import (apply_homography, homographies, overlap_fraction, overlap_neighbours,
                              pixel_correspondences, pixel_grid)
from .sampling_plan import OFFSETS, LevelPlan, build_level_plan, level_plan, unet_level_sizes

__all__ = [
    "Rig", "intrinsics", "rotation", "pano_cameras", "pano_rig", "rig_cameras", "ring_neighbours",
    "homographies", "pixel_grid", "apply_homography", "pixel_correspondences", "overlap_fraction",
    "overlap_neighbours", "OFFSETS", "LevelPlan", "build_level_plan", "level_plan", "unet_level_sizes",
]
