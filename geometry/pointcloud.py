"""A scanned scene's depth maps back-projected into one world point cloud, and its .ply serialisation.

Conventions are those of ``geometry/scene.py``: OpenCV camera axes (x right, y down, z forward), camera-to-world
poses, pixel K with pixel centres at integer coordinates, depth in metres along the optical axis (z), 0 = no
depth. Pixel (x, y) of depth d is the camera point ``(d (x - cx) / fx, d (y - cy) / fy, d)`` and the world point
``c2w @ [X, Y, Z, 1]``. The points stay in the scene's world coordinates; :func:`y_up` turns OpenCV-style world
axes (y down, z forward, as a world defined by a first camera at the identity) into the y-up axes of 3D viewers.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["backproject", "y_up", "ply_bytes"]


def backproject(depths: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, every: int = 1) -> torch.Tensor:
    """World points (n, h, w, 3) float32 of depth maps (n, H, W) metres with intrinsics K (n, 3, 3) and poses c2w
    (n, 4, 4), every ``every``-th pixel along each axis starting at pixel 0 (``h = ceil(H / every)``). Computed in
    float64; pixels without depth (0) give the camera's position (mask them with ``depths[:, ::every, ::every] >
    0``)."""
    if depths.ndim != 3 or K.shape != (depths.shape[0], 3, 3) or c2w.shape != (depths.shape[0], 4, 4):
        raise ValueError(f"depths (n, H, W), K (n, 3, 3) and c2w (n, 4, 4) do not match: got {tuple(depths.shape)}, "
                         f"{tuple(K.shape)} and {tuple(c2w.shape)}")
    if int(every) < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    step = int(every)
    d = depths[:, ::step, ::step].double()
    H, W = depths.shape[1:]
    ys = torch.arange(0, H, step, dtype=torch.float64)[:, None]
    xs = torch.arange(0, W, step, dtype=torch.float64)[None, :]
    K, c2w = K.double()[:, None, None], c2w.double()[:, None, None]
    fx, fy, cx, cy = K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]
    camera = torch.stack([d * (xs - cx) / fx, d * (ys - cy) / fy, d], dim=-1)  # (n, h, w, 3)
    world = (c2w[..., :3, :3] @ camera[..., None])[..., 0] + c2w[..., :3, 3]
    return world.to(torch.float32)


def y_up(points: torch.Tensor) -> torch.Tensor:
    """Points (..., 3) with y and z negated: OpenCV-style axes (y down, z forward) -> y up, z backward (OpenGL,
    three.js), a rotation by 180 degrees about x."""
    return points * points.new_tensor([1.0, -1.0, -1.0])


def ply_bytes(points: torch.Tensor, colours: torch.Tensor) -> bytes:
    """A binary little-endian .ply of points (p, 3) (x y z float32) and colours (p, 3) in [0, 1] (red green blue
    uchar, rounded)."""
    if points.ndim != 2 or points.shape[1] != 3 or tuple(colours.shape) != tuple(points.shape):
        raise ValueError(f"points and colours must both be (p, 3), got {tuple(points.shape)} and "
                         f"{tuple(colours.shape)}")
    vertex = np.empty(points.shape[0], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                              ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    xyz = points.detach().cpu().to(torch.float32).numpy()
    rgb = (colours.detach().cpu().double().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for k, axis in enumerate("xyz"):
        vertex[axis] = xyz[:, k]
    for k, channel in enumerate(("red", "green", "blue")):
        vertex[channel] = rgb[:, k]
    header = ("ply\nformat binary_little_endian 1.0\ncomment comfyui-mvdiffusion scene point cloud\n"
              f"element vertex {points.shape[0]}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    return header.encode("ascii") + vertex.tobytes()
