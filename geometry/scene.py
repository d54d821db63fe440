"""Cameras of a scanned scene (depth + poses): one convention for every input format.

Conventions, stated once for the depth half of the package:

* Camera frame: OpenCV axes, x right, y down, z forward (ScanNet, COLMAP and the official code use them).
* ``c2w`` (n, 4, 4): camera-to-world rigid transforms (``X_world = c2w @ [X_cam, 1]``), in metres.
* ``K`` (n, 3, 3): pixel intrinsics for images of ``height x width`` pixels, pixel centres at integer
  coordinates (``x = fx X/Z + cx``), as ScanNet's ``intrinsic_depth.txt`` (rows 0-1 of a 4x4 taken as K).
* Stored in float32, the precision of the official pipeline (``src/dataset/Scannet.py`` casts poses and K to
  float32 before the correspondences are built); conversions are computed in float64 and rounded once.

Every format's conversion to this convention lives here, once:

* ScanNet ``pose/<id>.txt``: already camera-to-world in OpenCV axes.
* NeRF / nerfstudio / Instant-NGP ``transforms.json``: camera-to-world in OpenGL axes (y up, z backward):
  :func:`c2w_from_opengl` flips the camera's y and z axes (``c2w[:3, 1:3] *= -1``).
* COLMAP ``images.txt`` and Depth Anything 3: world-to-camera (``QW QX QY QZ TX TY TZ`` /
  a 3x4 ``[R | t]``) in OpenCV axes: :func:`rotation_from_quaternion`, :func:`c2w_from_w2c`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .cameras import check_size, describe_shape

__all__ = ["SceneCameras", "c2w_from_opengl", "c2w_from_w2c", "rotation_from_quaternion", "scale_intrinsics"]


@dataclass(frozen=True, eq=False)
class SceneCameras:
    """n pinhole cameras of one scene: K (n, 3, 3) and c2w (n, 4, 4) float32 (module conventions), images of
    ``height x width`` pixels. Construction validates shapes, finiteness and that every pose is invertible, and
    names the offending frame (``frame_names[i]`` when given, else its index)."""

    K: torch.Tensor
    c2w: torch.Tensor
    height: int
    width: int
    frame_names: tuple[str, ...] = ()

    def __post_init__(self):
        check_size("image", self.height, self.width)
        K, c2w = self.K, self.c2w
        if not isinstance(K, torch.Tensor) or K.ndim != 3 or tuple(K.shape[1:]) != (3, 3):
            raise ValueError(f"K must be intrinsics of shape (n, 3, 3), got {describe_shape(K)}")
        if not isinstance(c2w, torch.Tensor) or c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4):
            raise ValueError(f"c2w must be camera-to-world poses of shape (n, 4, 4), got {describe_shape(c2w)}")
        if K.shape[0] != c2w.shape[0] or K.shape[0] < 1:
            raise ValueError(f"K and c2w must describe the same frames: got {K.shape[0]} intrinsics and "
                             f"{c2w.shape[0]} poses")
        if self.frame_names and len(self.frame_names) != K.shape[0]:
            raise ValueError(f"{len(self.frame_names)} frame names for {K.shape[0]} frames")
        object.__setattr__(self, "K", K.to(torch.float32))
        object.__setattr__(self, "c2w", c2w.to(torch.float32))
        for i in range(K.shape[0]):
            name = self.frame_name(i)
            if not (torch.isfinite(self.K[i]).all() and torch.isfinite(self.c2w[i]).all()):
                raise ValueError(f"frame {name}: its pose or intrinsics hold NaN or infinite values")
            if not (self.K[i, 0, 0] > 0 and self.K[i, 1, 1] > 0):
                raise ValueError(f"frame {name}: intrinsics need positive focal lengths, got "
                                 f"fx={float(self.K[i, 0, 0]):g}, fy={float(self.K[i, 1, 1]):g}")
            if abs(float(torch.linalg.det(self.c2w[i, :3, :3].double()))) < 1e-6:
                raise ValueError(f"frame {name}: its pose is not invertible (the rotation part is singular)")

    @property
    def num_views(self) -> int:
        return self.K.shape[0]

    def frame_name(self, i: int) -> str:
        return self.frame_names[i] if self.frame_names else str(i)

    def select(self, indices) -> "SceneCameras":
        """The cameras of the frames ``indices`` (in that order)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        names = tuple(self.frame_names[i] for i in idx.tolist()) if self.frame_names else ()
        return SceneCameras(self.K[idx], self.c2w[idx], self.height, self.width, names)

    def resized(self, height: int, width: int) -> "SceneCameras":
        """The same cameras for images resized to ``height x width`` (see :func:`scale_intrinsics`)."""
        K = scale_intrinsics(self.K, self.height, self.width, height, width)
        return SceneCameras(K, self.c2w, int(height), int(width), self.frame_names)


def scale_intrinsics(K: torch.Tensor, height: int, width: int, new_height: int, new_width: int) -> torch.Tensor:
    """Intrinsics (..., 3, 3) of ``height x width`` images for images resized to ``new_height x new_width``.

    The official dataset scales rows 0 and 1 of K by ``new_height / height`` (one factor for both axes: ScanNet's
    4:3 depth images go to 4:3 192x256); here each axis gets its own factor, which is the same for a resize that
    keeps the aspect ratio."""
    check_size("image", height, width)
    check_size("image", new_height, new_width)
    scale = torch.tensor([new_width / width, new_height / height, 1.0], dtype=torch.float64)
    return (K.double() * scale[:, None]).to(K.dtype)


def c2w_from_opengl(c2w_gl: torch.Tensor) -> torch.Tensor:
    """OpenGL-axes camera-to-world (..., 4, 4) (NeRF, nerfstudio, Instant-NGP) -> OpenCV axes: the camera's y
    and z axes flip (``c2w[:3, 1:3] *= -1``)."""
    out = c2w_gl.clone()
    out[..., :3, 1:3] = -out[..., :3, 1:3]
    return out


def c2w_from_w2c(w2c: torch.Tensor) -> torch.Tensor:
    """World-to-camera (..., 3, 4) or (..., 4, 4) ``[R | t]`` (COLMAP, Depth Anything 3) -> camera-to-world
    (..., 4, 4) ``[R^T | -R^T t]``, computed in float64 and returned in w2c's dtype."""
    R, t = w2c[..., :3, :3].double(), w2c[..., :3, 3:].double()
    out = torch.zeros(*w2c.shape[:-2], 4, 4, dtype=torch.float64)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1.0
    return out.to(w2c.dtype)


def rotation_from_quaternion(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) float64 of quaternions (..., 4) in COLMAP's order ``(qw, qx, qy, qz)``
    (normalised first; Hamilton convention, as COLMAP's ``qvec2rotmat``)."""
    q = q.double()
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)
