"""Pinhole camera rigs in the conventions of the official MVDiffusion code (demo.py ``get_K_R``).

Conventions, stated once for the whole package:

* Pixels: x to the right, y down; integer coordinates 0..W-1, 0..H-1 are pixel centres (no half-pixel shift).
* Intrinsics ``K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]`` with the horizontal field of view:
  ``f = 0.5 W / tan(fov / 2)``, ``cx = (W - 1) / 2``, ``cy = (H - 1) / 2``.
* Camera frame: x right, y down, z forward. ``R`` maps camera-frame directions to the world frame
  (``d_world = R @ d_cam``); the world frame is view 0's frame at yaw 0, pitch 0.
* ``R = R2 @ R1`` with ``R1 = Rodrigues(yaw * y)`` (positive yaw turns the view to the right) and
  ``R2 = Rodrigues(pitch * (R1 @ x))`` (positive pitch looks up, since y points down).
* Angles are in degrees at the API, like the official code.

The camera matrices here are float32 on the CPU, computed in the same order as the official code
(double-precision trigonometry, rounded to float32) so that the correspondences built from them are bit-identical
to the official ones; move the results to another device afterwards. See docs in ``geometry/correspondences.py``.
This module also holds what every geometry module shares: the integer pixel grid (:func:`pixel_grid`), the
projection of points onto an image (:func:`project_to_image`) and the validation of image sizes and of K/R camera
tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Rig", "intrinsics", "rotation", "rig_cameras", "pano_cameras", "pano_rig", "ring_neighbours", "pixel_grid",
           "project_to_image"]


# --- input validation, shared by the geometry modules -----------------------------------------------------------

def describe_shape(t) -> str:
    """How an argument reads in an error message: a tensor's shape, else its type name."""
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def check_size(what: str, height, width) -> None:
    """Raise ValueError unless ``height`` and ``width`` are positive integers (``what``: the image named)."""
    if isinstance(height, bool) or isinstance(width, bool) or int(height) != height or int(width) != width \
            or height < 1 or width < 1:
        raise ValueError(f"{what} size must be positive integers (height, width), got height={height}, width={width}")


def check_cameras(K: torch.Tensor, R: torch.Tensor, num_views: int | None = None) -> int:
    """Validate intrinsics K (m, 3, 3) and rotations R (m, 3, 3) of the same m views (and, if given,
    ``m == num_views``); returns m."""
    if not isinstance(K, torch.Tensor) or K.ndim != 3 or tuple(K.shape[1:]) != (3, 3):
        raise ValueError(f"K must be intrinsics of shape (m, 3, 3), got {describe_shape(K)}")
    if not isinstance(R, torch.Tensor) or R.ndim != 3 or tuple(R.shape[1:]) != (3, 3):
        raise ValueError(f"R must be rotations of shape (m, 3, 3), got {describe_shape(R)}")
    if K.shape[0] != R.shape[0]:
        raise ValueError(f"K and R must describe the same views: got {K.shape[0]} intrinsics and "
                         f"{R.shape[0]} rotations")
    if num_views is not None and K.shape[0] != num_views:
        raise ValueError(f"expected one camera per view: {num_views} views but {K.shape[0]} cameras (K, R)")
    return K.shape[0]


def _check_fov(fov_deg: float) -> None:
    if not (0.0 < float(fov_deg) < 180.0):
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")


# --- pixels, intrinsics, rotations ------------------------------------------------------------------------------

def project_to_image(xyz: torch.Tensor, height: int, width: int, border: float = 0.5, dim: int = -1):
    """Dehomogenise image points and tell which land on a ``height x width`` image.

    xyz: homogeneous pixel coordinates ``K @ d_cam`` with the 3 components along ``dim`` (e.g. (N, 3) or (3, N)).
    Returns ``(x, y, inside)`` with ``xyz``'s other dimensions: ``inside`` is True where the point lies in front
    of the camera (z > 0) and within ``[-border, W-1+border] x [-border, H-1+border]``. The default border 0.5
    is the image's pixel footprint (integer pixel centres); 0 keeps the points between the outer pixel centres.
    Points behind the camera get x, y from z = 1 (finite, meaningless; mask them with ``inside``).
    """
    u, v, z = xyz.unbind(dim)
    ahead = z > 0
    z = torch.where(ahead, z, torch.ones_like(z))
    x, y = u / z, v / z
    inside = ahead & (x >= -border) & (x <= width - 1 + border) & (y >= -border) & (y <= height - 1 + border)
    return x, y, inside


def pixel_grid(height: int, width: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Homogeneous integer pixel coordinates (H, W, 3): ``grid[y, x] = (x, y, 1)`` in ``dtype`` on ``device``.

    The default float32 grid is the one the correspondences are built on (bit-exact contract)."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype, device=device),
                            torch.arange(width, dtype=dtype, device=device), indexing="ij")
    return torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)


def intrinsics(fov_deg: float, height: int, width: int) -> torch.Tensor:
    """Intrinsic matrix (3, 3) float32 for a horizontal field of view in degrees."""
    _check_fov(fov_deg)
    check_size("image", height, width)
    # same expression and evaluation order as the official get_K_R, in double, then float32
    f = 0.5 * width * 1 / math.tan(0.5 * fov_deg / 180.0 * math.pi)
    cx = (width - 1) / 2.0
    cy = (height - 1) / 2.0
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)


def _rodrigues(rvec: torch.Tensor) -> torch.Tensor:
    """OpenCV's Rodrigues formula for a float32 rotation vector (3,), evaluated in double -> (3, 3) float32."""
    r = rvec.to(torch.float64)
    theta = torch.linalg.vector_norm(r).item()
    if theta < 2.220446049250313e-16:  # DBL_EPSILON, as in OpenCV
        return torch.eye(3, dtype=torch.float32)
    c, s = math.cos(theta), math.sin(theta)
    c1 = 1.0 - c
    x, y, z = (r * (1.0 / theta)).tolist()
    rrt = torch.tensor([[x * x, x * y, x * z], [x * y, y * y, y * z], [x * z, y * z, z * z]], dtype=torch.float64)
    r_x = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=torch.float64)
    return (c * torch.eye(3, dtype=torch.float64) + c1 * rrt + s * r_x).to(torch.float32)


def _radians_f32(deg: float) -> torch.Tensor:
    """``float32 * np.radians(deg)`` as the official code computes it: double multiply, then float32."""
    return torch.tensor(deg * (math.pi / 180.0), dtype=torch.float64).to(torch.float32)


def rotation(yaw_deg: float, pitch_deg: float = 0.0) -> torch.Tensor:
    """Camera-to-world rotation (3, 3) float32: yaw about +y, then pitch about the yawed x axis."""
    y_axis = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float32)
    x_axis = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float32)
    r1 = _rodrigues(y_axis * _radians_f32(yaw_deg))
    r2 = _rodrigues((r1 @ x_axis) * _radians_f32(pitch_deg))
    return _matmul_fma_f32(r2, r1)


def _matmul_fma_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float32 (3, 3) product as numpy/BLAS computes the official ``R2 @ R1``: a chain of fused multiply-adds
    over k = 0, 1, 2 (each rounded once to float32; emulated in double, where the products are exact)."""
    prod = a.double()[:, :, None] * b.double()[None, :, :]  # (row, k, col)
    acc = prod[:, 0].to(torch.float32)
    for k in (1, 2):
        acc = (prod[:, k] + acc.double()).to(torch.float32)
    return acc


@dataclass(frozen=True)
class Rig:
    """A rig of m pinhole views of one scene, all of the same image size.

    Hashable, so that everything derived from it (correspondences, sampling plans) can be cached per rig.
    ``neighbours[i]`` lists the views that view i attends to (the official ring: ``(i-1) % m, (i+1) % m``). The
    lists may differ in length (a pole view of a full-sphere rig sees the whole ring, a ring view two ring
    neighbours and the poles): the attention pads the shorter ones with absent keys that take no part in it
    (``geometry.sampling_plan.LevelPlan.present``), so view i attends to exactly its own list.
    """

    yaws_deg: tuple[float, ...]
    pitches_deg: tuple[float, ...]
    fovs_deg: tuple[float, ...]
    height: int
    width: int
    neighbours: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        m = len(self.yaws_deg)
        if m < 2:
            raise ValueError(f"a rig needs at least 2 views, got {m}")
        if not (len(self.pitches_deg) == len(self.fovs_deg) == m):
            raise ValueError(f"yaws, pitches and fovs must have one entry per view, got "
                             f"{m}, {len(self.pitches_deg)}, {len(self.fovs_deg)}")
        check_size("image", self.height, self.width)
        for fov in self.fovs_deg:
            _check_fov(fov)
        if len(self.neighbours) != m:
            raise ValueError(f"neighbours must list the neighbours of each of the {m} views, got {len(self.neighbours)}")
        for i, nbs in enumerate(self.neighbours):
            if not nbs:
                raise ValueError(f"view {i} has no neighbours: every view needs at least one")
            if len(set(nbs)) != len(nbs):
                raise ValueError(f"view {i} lists a neighbour twice: {tuple(nbs)}")
            for j in nbs:
                if not (0 <= j < m) or j == i:
                    raise ValueError(f"view {i} lists an invalid neighbour {j} (views are 0..{m - 1}, not itself)")

    @property
    def num_views(self) -> int:
        return len(self.yaws_deg)

    @property
    def max_neighbours(self) -> int:
        """The longest neighbour list: the attention's keys per query are ``9 * max_neighbours``."""
        return max(len(n) for n in self.neighbours)

    @property
    def K(self) -> torch.Tensor:
        """Intrinsics (m, 3, 3) float32 of the rig's views (``height x width``)."""
        return self.intrinsics_for_size(self.height, self.width)

    def intrinsics_for_size(self, height: int, width: int) -> torch.Tensor:
        """Intrinsics (m, 3, 3) float32 of views of ``height x width`` pixels with the rig's fields of view
        (e.g. views that were resized after generation); the rotations ``R`` do not depend on the size."""
        return torch.stack([intrinsics(f, height, width) for f in self.fovs_deg])

    @property
    def R(self) -> torch.Tensor:
        """Camera-to-world rotations (m, 3, 3) float32."""
        return torch.stack([rotation(y, p) for y, p in zip(self.yaws_deg, self.pitches_deg)])


def ring_neighbours(num_views: int) -> tuple[tuple[int, ...], ...]:
    """The official pano neighbour ring: view i attends to ``(i-1) % m`` then ``(i+1) % m``."""
    return tuple(((i - 1) % num_views, (i + 1) % num_views) for i in range(num_views))


def rig_cameras(yaws_deg, pitches_deg, fovs_deg, height: int, width: int, neighbours=None,
                min_overlap: float = 0.1, max_neighbours: int | None = None) -> Rig:
    """A general rig from per-view yaw, pitch and horizontal fov lists (degrees).

    ``neighbours``: per-view tuples of neighbour indices. Default: the views whose frusta overlap view i's
    image on more than ``min_overlap`` of its area, at most ``max_neighbours`` of them (the most overlapping;
    see :func:`geometry.correspondences.overlap_neighbours`).
    """
    yaws = tuple(float(y) for y in yaws_deg)
    pitches = tuple(float(p) for p in pitches_deg)
    fovs = tuple(float(f) for f in fovs_deg)
    if not (len(yaws) == len(pitches) == len(fovs)):
        raise ValueError(f"yaws, pitches and fovs must have one entry per view, got "
                         f"{len(yaws)}, {len(pitches)}, {len(fovs)}")
    if len(yaws) < 2:
        raise ValueError(f"a rig needs at least 2 views, got {len(yaws)}")
    check_size("image", height, width)
    if neighbours is None:
        from .correspondences import overlap_neighbours

        K = torch.stack([intrinsics(f, height, width) for f in fovs])
        R = torch.stack([rotation(y, p) for y, p in zip(yaws, pitches)])
        neighbours = overlap_neighbours(K, R, int(height), int(width), min_overlap, max_neighbours)
    return Rig(yaws, pitches, fovs, int(height), int(width), tuple(tuple(int(j) for j in n) for n in neighbours))


def pano_rig(num_views: int = 8, fov_deg: float = 90.0, height: int = 512, width: int = 512,
             pitch_deg: float = 0.0, yaw_offset_deg: float = 0.0) -> Rig:
    """The official panorama rig: m views at yaw ``offset + 360/m * i``, one pitch and fov, ring neighbours."""
    if int(num_views) != num_views or num_views < 2:
        raise ValueError(f"a panorama rig needs at least 2 views, got {num_views}")
    check_size("image", height, width)
    m = int(num_views)
    yaws = tuple((yaw_offset_deg + 360.0 * i / m) % 360.0 for i in range(m))
    return Rig(yaws, (float(pitch_deg),) * m, (float(fov_deg),) * m, int(height), int(width), ring_neighbours(m))


def pano_cameras(num_views: int = 8, fov_deg: float = 90.0, height: int = 512, width: int = 512,
                 pitch_deg: float = 0.0, yaw_offset_deg: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Intrinsics K (m, 3, 3) and rotations R (m, 3, 3), float32, of the official panorama rig."""
    rig = pano_rig(num_views, fov_deg, height, width, pitch_deg, yaw_offset_deg)
    return rig.K, rig.R
