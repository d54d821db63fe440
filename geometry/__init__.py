"""Pure panorama geometry (torch only, no ComfyUI): camera rigs, correspondences, the CAA sampling plan,
equirectangular projection and stitching, the overlap-PSNR consistency metric, and the placement of known pixels
(photos, partial panoramas) in the views with their latent masks.

Conventions are stated once and used everywhere: pixels, axes and angles of the cameras in ``geometry/cameras.py``,
longitude/latitude and the equirectangular pixel grid in ``geometry/equirect.py``.
"""
from .cameras import (Rig, intrinsics, pano_cameras, pano_rig, pixel_grid, project_to_image, rig_cameras,
                      ring_neighbours, rotation)
from .compositing import feather_weight, paste_known
from .correspondences import (apply_homography, homographies, overlap_fraction, overlap_neighbours,
                              pixel_correspondences)
from .equirect import (BLENDS, blend_weight, direction_to_lonlat, equirect_grid, equirect_to_views,
                       lonlat_to_direction, lonlat_to_equirect_pixel, views_to_equirect)
from .metrics import OverlapPSNR, overlap_psnr, paper_overlap_psnr, psnr_ratio
from .placement import (PHOTO_FOV_RANGE, fit_official, latent_mask, panorama_to_views, photo_camera,
                        reproject_photo)
from .sampling_plan import OFFSETS, LevelPlan, build_level_plan, level_plan, unet_level_sizes

__all__ = [
    "Rig", "intrinsics", "rotation", "pano_cameras", "pano_rig", "rig_cameras", "ring_neighbours", "pixel_grid",
    "project_to_image",
    "homographies", "apply_homography", "pixel_correspondences", "overlap_fraction",
    "overlap_neighbours", "OFFSETS", "LevelPlan", "build_level_plan", "level_plan", "unet_level_sizes",
    "BLENDS", "equirect_grid", "lonlat_to_direction", "direction_to_lonlat", "lonlat_to_equirect_pixel",
    "equirect_to_views", "views_to_equirect", "blend_weight",
    "OverlapPSNR", "overlap_psnr", "paper_overlap_psnr", "psnr_ratio",
    "PHOTO_FOV_RANGE", "fit_official", "photo_camera", "reproject_photo", "panorama_to_views", "latent_mask",
    "feather_weight", "paste_known",
]
