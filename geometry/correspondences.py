"""Pixel correspondences between the views of a rig (rotation-only cameras: homographies).

``H[i, j]`` maps homogeneous pixel coordinates of view i into view j:
``H_ij = K_j @ inv(R_j) @ R_i @ inv(K_i)`` (conventions in ``geometry/cameras.py``).

Float32 is part of the contract (see the reference notes): the correspondence-aware attention turns these
coordinates into positional encodings whose frequencies reach 2^79, so every bit counts (and matrix products
run in IEEE float32 even when the host selected TF32 / bf16 ones: ``geometry/precision.py``). The functions here
evaluate in float32 in the official operation order: ``torch.inverse`` of R and K, the four matrices multiplied
left to right, then ``H @ [x, y, 1]^T`` over the integer pixel grid and ``xy = xyz[:2] / xyz[2:]``. Compute them
on the CPU (bit-reproducible) and move the results; never recompute them in another precision.
"""
from __future__ import annotations

import torch

from .cameras import check_cameras, pixel_grid
from .precision import ieee_float32_matmul

__all__ = ["homographies", "apply_homography", "homogeneous_product", "dehomogenise", "pixel_correspondences", "overlap_fraction", "overlap_neighbours"]


def homographies(K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """All pairwise homographies (m, m, 3, 3): ``H[i, j] = K_j @ inv(R_j) @ R_i @ inv(K_i)``, in K's dtype."""
    m = check_cameras(K, R)
    with ieee_float32_matmul():
        K_inv, R_inv = torch.inverse(K), torch.inverse(R)
        Kj, Rj_inv = K[None, :].expand(m, m, 3, 3), R_inv[None, :].expand(m, m, 3, 3)
        Ri, Ki_inv = R[:, None].expand(m, m, 3, 3), K_inv[:, None].expand(m, m, 3, 3)
        return Kj @ Rj_inv @ Ri @ Ki_inv


def apply_homography(H: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map homogeneous points with homographies and dehomogenise.

    H: (..., 3, 3); points: (..., 3, N) homogeneous columns (batch dims broadcast) -> (..., N, 2).
    Evaluated as one matrix product ``H @ points`` (:func:`homogeneous_product`) then ``xyz[:2] / xyz[2:]``
    (:func:`dehomogenise`), as the official code does.
    """
    return dehomogenise(homogeneous_product(H, points))


def homogeneous_product(H: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``H @ points`` (..., 3, N) in IEEE float32 whatever the host's matmul precision; row 2 is the points'
    depth in the target camera (up to a positive factor)."""
    with ieee_float32_matmul():
        return H @ points


def dehomogenise(xyz: torch.Tensor) -> torch.Tensor:
    """Homogeneous columns (..., 3, N) -> (..., N, 2): ``xyz[:2] / xyz[2:]``, transposed."""
    return (xyz[..., :2, :] / xyz[..., 2:, :]).transpose(-1, -2)


def pixel_correspondences(K: torch.Tensor, R: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Where every pixel of view i lands in view j: (m, m, H, W, 2) float32 (x, y) image coordinates.

    Identical to the official ``get_correspondences`` (src/models/pano/utils.py). Points behind camera j come
    out mirrored (negative depth is not masked), as in the official code.
    """
    m = check_cameras(K, R)
    H = homographies(K.float(), R.float())
    grid = pixel_grid(height, width, device=K.device).reshape(-1, 3).T  # (3, H*W)
    xy = apply_homography(H.reshape(m * m, 3, 3), grid.expand(m * m, 3, height * width))
    return xy.reshape(m, m, height, width, 2)


def overlap_fraction(K: torch.Tensor, R: torch.Tensor, height: int, width: int, samples: int = 32) -> torch.Tensor:
    """``frac[i, j]``: the fraction of view i's image that view j also sees (m, m) float64; diagonal 1.

    Measured on a ``samples x samples`` grid of view i's pixels: a pixel counts when its ray has positive
    depth in view j and projects inside view j's image.
    """
    check_cameras(K, R)
    K64, R64 = K.double(), R.double()
    xs = torch.linspace(0, width - 1, samples, dtype=torch.float64)
    ys = torch.linspace(0, height - 1, samples, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pix = torch.stack([gx, gy, torch.ones_like(gx)]).reshape(3, -1)
    rays = R64 @ torch.inverse(K64) @ pix  # (m, 3, N) world directions of view i's pixels
    cam = torch.einsum("jab,ian->ijbn", R64, rays)  # R_j^T @ ray: (i, j, 3, N) in view j's camera frame
    uvw = torch.einsum("jab,ijbn->ijan", K64, cam)
    z = uvw[:, :, 2]
    u, v = uvw[:, :, 0] / z, uvw[:, :, 1] / z
    inside = (z > 0) & (u >= -0.5) & (u <= width - 0.5) & (v >= -0.5) & (v <= height - 0.5)
    return inside.double().mean(dim=-1)


def overlap_neighbours(K: torch.Tensor, R: torch.Tensor, height: int, width: int,
                       min_overlap: float = 0.1, max_neighbours: int | None = None) -> tuple[tuple[int, ...], ...]:
    """For general rigs: per view, the other views seeing more than ``min_overlap`` of its image.

    Sorted by decreasing overlap (ties by index), at most ``max_neighbours`` per view (None: all of them). The
    lists may differ in length (see :class:`geometry.cameras.Rig`).
    """
    if max_neighbours is not None and (isinstance(max_neighbours, bool) or int(max_neighbours) != max_neighbours
                                       or max_neighbours < 1):
        raise ValueError(f"max_neighbours must be a positive integer or None, got {max_neighbours}")
    frac = overlap_fraction(K, R, height, width)
    m = frac.shape[0]
    lists = []
    for i in range(m):
        cands = [j for j in range(m) if j != i and frac[i, j] > min_overlap]
        cands.sort(key=lambda j: (-round(float(frac[i, j]), 9), j))
        lists.append(cands)
    lonely = [i for i, c in enumerate(lists) if not c]
    if lonely:
        raise ValueError(f"views {lonely} overlap no other view by more than {min_overlap:.0%}: "
                         "add views, widen the field of view or pass neighbours explicitly")
    return tuple(tuple(c[:max_neighbours]) for c in lists)
