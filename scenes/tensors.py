"""SceneFrames from tensors already in memory (a ComfyUI graph: depth from an estimator, poses from a tracker or
Depth Anything 3), in the conventions of ``geometry/scene.py``.

Pose kinds (each converted once, by the helpers of ``geometry/scene.py``):

* ``"c2w_opencv"``: camera-to-world, OpenCV axes (ScanNet);
* ``"c2w_opengl"``: camera-to-world, OpenGL axes (NeRF, nerfstudio): :func:`c2w_from_opengl`;
* ``"w2c_opencv"``: world-to-camera ``[R | t]``, OpenCV axes (COLMAP, Depth Anything 3): :func:`c2w_from_w2c`.

Estimated depth is often relative (arbitrary scale): ``depth_scale`` (metres per depth unit) multiplies the depth
only; the poses must already be in metres (or in the same unit as the scaled depth).
"""
from __future__ import annotations

import torch

from ..geometry.cameras import describe_shape
from ..geometry.scene import c2w_from_opengl, c2w_from_w2c
from .frames import SceneFrames, resize_images
from .files import assemble_frames

__all__ = ["POSE_KINDS", "c2w_from_pose_kind", "frames_from_tensors"]

POSE_KINDS = ("c2w_opencv", "c2w_opengl", "w2c_opencv")
POSE_FIX = "check the poses and pose_kind (c2w_opencv, c2w_opengl or w2c_opencv)"


def c2w_from_pose_kind(poses: torch.Tensor, pose_kind: str) -> torch.Tensor:
    """Poses (n, 4, 4) or (n, 3, 4) of ``pose_kind`` -> camera-to-world (n, 4, 4) float64, OpenCV axes."""
    if pose_kind not in POSE_KINDS:
        raise ValueError(f"pose_kind must be one of {POSE_KINDS}, got {pose_kind!r}")
    if not isinstance(poses, torch.Tensor) or poses.ndim != 3 or tuple(poses.shape[1:]) not in ((4, 4), (3, 4)):
        raise ValueError(f"poses must be (n, 4, 4) or (n, 3, 4), got {describe_shape(poses)}")
    full = torch.eye(4, dtype=torch.float64).repeat(poses.shape[0], 1, 1)
    full[:, :3] = poses[:, :3].double()
    if pose_kind == "c2w_opengl":
        return c2w_from_opengl(full)
    if pose_kind == "w2c_opencv":
        return c2w_from_w2c(full)
    return full


def frames_from_tensors(depths: torch.Tensor, K: torch.Tensor, poses: torch.Tensor, pose_kind: str = "c2w_opencv",
                        images: torch.Tensor | None = None, depth_scale: float = 1.0, names=None,
                        check_units: bool = False) -> SceneFrames:
    """SceneFrames of depth maps ``depths`` (n, H, W) (times ``depth_scale`` -> metres; 0 = no depth), intrinsics
    K (n, 3, 3) or (3, 3) in pixels of the H x W depth (pixel centres at integers), ``poses`` (n, 4, 4) or
    (n, 3, 4) of ``pose_kind``, optional ``images`` (n, h, w, 3) in [0, 1] (resized bilinearly to H x W),
    ``names`` (default "0".."n-1"). ``check_units``: raise when the scaled depths do not look like metres (off by
    default: estimated depth is relative). ValueError naming the frame for a bad pose or K of another size."""
    if not isinstance(depths, torch.Tensor) or depths.ndim != 3:
        raise ValueError(f"depths must be (n, H, W), got {describe_shape(depths)}")
    n, height, width = depths.shape
    if not isinstance(K, torch.Tensor) or tuple(K.shape[-2:]) != (3, 3) or K.ndim not in (2, 3):
        raise ValueError(f"K must be (3, 3) or (n, 3, 3), got {describe_shape(K)}")
    K = K.double().expand(n, 3, 3) if K.ndim == 2 else K.double()
    c2w = c2w_from_pose_kind(poses, pose_kind)
    if K.shape[0] != n or c2w.shape[0] != n:
        raise ValueError(f"{n} depth maps, {K.shape[0]} intrinsics and {c2w.shape[0]} poses: one of each per frame")
    names = tuple(str(s) for s in names) if names is not None else tuple(str(i) for i in range(n))
    scaled = [(d.double() * float(depth_scale)).to(torch.float32) for d in depths]
    colour = None
    if images is not None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != n or images.shape[3] != 3:
            raise ValueError(f"images must be (n, h, w, 3) with n = {n}, got {describe_shape(images)}")
        colour = list(resize_images(images.float(), height, width))
    return assemble_frames(scaled, K, c2w, names, POSE_FIX, depth_scale, colour, source="K",
                           check_units=check_units)
