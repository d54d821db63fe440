"""Scanned scenes (depth + poses + optional colour) read into one convention, for the depth model (issue 11,
"Load Scene Frames"). Pure Python (torch, numpy, Pillow), no ComfyUI.

Conventions are those of ``geometry/scene.py`` (OpenCV camera axes, camera-to-world poses in metres, pixel
intrinsics of the depth images' size, pixel centres at integers); ``scenes/frames.py`` holds the frames and
their checks, one file per input format reads it: ScanNet (``scannet.py``), nerfstudio / Instant-NGP
``transforms.json`` (``nerfstudio.py``), COLMAP text models with dense depth (``colmap.py``), and tensors in
memory (``tensors.py``).
"""
from .correspondences import SceneCorrespondences, scene_correspondences
from .formats import DEFAULT_DEPTH_SCALE, SCENE_FORMATS, detect_scene_format, load_scene_frames, parse_poses
from .colmap import load_colmap, read_colmap_cameras, read_colmap_depth, read_colmap_images
from .frames import (SceneFrames, check_depth_units, check_intrinsics_size, check_principal_point,
                     frames_without_depth, nearest_indices, resize_depths, resize_images)
from .nerfstudio import load_nerfstudio, read_transforms
from .scannet import load_scannet, read_scannet_intrinsics, scannet_frame_ids
from .tensors import POSE_KINDS, c2w_from_pose_kind, frames_from_tensors

__all__ = [
    "SceneFrames", "nearest_indices", "resize_depths", "resize_images", "check_principal_point",
    "check_intrinsics_size", "check_depth_units", "frames_without_depth",
    "load_scannet", "read_scannet_intrinsics", "scannet_frame_ids",
    "load_nerfstudio", "read_transforms",
    "load_colmap", "read_colmap_cameras", "read_colmap_images", "read_colmap_depth",
    "POSE_KINDS", "c2w_from_pose_kind", "frames_from_tensors",
    "SCENE_FORMATS", "DEFAULT_DEPTH_SCALE", "detect_scene_format", "load_scene_frames", "parse_poses",
    "SceneCorrespondences", "scene_correspondences",
]
