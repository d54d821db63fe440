"""The paper's multi-view consistency metric: PSNR over the overlaps of neighbouring views.

MVDiffusion (arXiv 2307.01097, Sec. 4, panorama generation) measures pixel-level consistency by warping each
view onto its neighbour 45 deg away with the cameras' homography and computing the PSNR over the pixels the two
views share; since generated views never match exactly, it reports that PSNR relative to the same number for
ground-truth views. Its figures (Matterport3D test set): 25.4 dB for MVDiffusion, 37.7 dB for ground-truth
views (ratio 0.67). Views were resized to 1024 x 1024 before measuring.

Warping convention (``geometry.correspondences``): ``H[i, j]`` maps pixels of view i into view j, so the pair
(i, j) compares view i at its integer pixels p with view j sampled bilinearly at ``H_ij p``, over the pixels whose
ray has positive depth in view j and lands inside view j's pixel grid (``0 <= x <= w-1``, ``0 <= y <= h-1``).
The homographies are computed in float64 (this metric does not feed the positional encoding).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .cameras import check_cameras, describe_shape, pano_cameras, pixel_grid, project_to_image
from .correspondences import homographies
from .equirect import bilinear_sample, working_dtype

__all__ = ["OverlapPSNR", "overlap_psnr", "paper_overlap_psnr", "psnr_ratio", "PAPER_SIZE",
           "PAPER_PSNR_MVDIFFUSION", "PAPER_PSNR_GROUND_TRUTH", "PAPER_RATIO_MVDIFFUSION"]

PAPER_SIZE = 1024  # views are resized to PAPER_SIZE x PAPER_SIZE before measuring
PAPER_PSNR_MVDIFFUSION = 25.4  # dB, overlap PSNR of MVDiffusion's generated panoramas
PAPER_PSNR_GROUND_TRUTH = 37.7  # dB, overlap PSNR of the ground-truth views
PAPER_RATIO_MVDIFFUSION = 0.67  # 25.4 / 37.7


class OverlapPSNR(NamedTuple):
    """pairs: the (i, j) view pairs, in order. per_pair: (B, P) PSNR in dB (inf for identical overlaps).
    mean: (B,) mean of per_pair over the pairs. overlap: (P,) fraction of view i's pixels in each pair's overlap.
    For a single scene given as (m, C, h, w), per_pair is (P,) and mean is 0-d."""

    pairs: tuple[tuple[int, int], ...]
    per_pair: torch.Tensor
    mean: torch.Tensor
    overlap: torch.Tensor


def _as_batch(views: torch.Tensor, name: str = "views") -> tuple[torch.Tensor, bool]:
    if not isinstance(views, torch.Tensor) or views.ndim not in (4, 5):
        raise ValueError(f"{name} must have shape (B, m, C, h, w) or (m, C, h, w), got {describe_shape(views)}")
    single = views.ndim == 4
    views = views[None] if single else views
    if any(s < 1 for s in views.shape):
        raise ValueError(f"{name} must be non-empty, got shape {tuple(views.shape)}")
    return views, single


def _check_pairs(pairs, m: int) -> tuple[tuple[int, int], ...]:
    if pairs is None:
        if m < 2:
            raise ValueError(f"the overlap PSNR needs at least 2 views, got {m}")
        return tuple((i, (i + 1) % m) for i in range(m)) if m > 2 else ((0, 1),)
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"pairs must be (i, j) view index pairs, got {pair!r}")
        i, j = (int(k) for k in pair)
        if not (0 <= i < m and 0 <= j < m) or i == j:
            raise ValueError(f"pair {pair!r} must name two different views among 0..{m - 1}")
        out.append((i, j))
    if not out:
        raise ValueError("pairs must list at least one (i, j) pair")
    return tuple(out)


def overlap_psnr(views: torch.Tensor, K: torch.Tensor, R: torch.Tensor, pairs=None,
                 max_value: float = 1.0) -> OverlapPSNR:
    """Overlap PSNR of view pairs: view j warped into view i with ``H_ij``, compared on their valid overlap.

    views: (B, m, C, h, w) or (m, C, h, w), values in [0, max_value]; K (m, 3, 3) intrinsics for ``h x w``
    views and R (m, 3, 3) camera-to-world rotations (``geometry.cameras`` conventions).
    pairs: iterable of (i, j); default the ring neighbours ``(i, (i+1) % m)``.
    PSNR = ``10 log10(max_value^2 / MSE)``, the MSE taken over the overlap's pixels and all channels.
    Raises ValueError if a pair does not overlap at all.
    """
    views, single = _as_batch(views)
    b, m, c, h, w = views.shape
    check_cameras(K, R, num_views=m)
    pairs = _check_pairs(pairs, m)
    if not max_value > 0:
        raise ValueError(f"max_value must be positive, got {max_value}")
    device, wdtype = views.device, working_dtype(views.dtype)

    Hm = homographies(K.detach().cpu().double(), R.detach().cpu().double())
    pix = pixel_grid(h, w, device, wdtype).reshape(-1, 3).T  # (3, h*w)
    flat = views.reshape(b, m, c, h * w)
    psnrs, overlaps = [], []
    for i, j in pairs:
        x, y, valid = project_to_image(Hm[i, j].to(device, wdtype) @ pix, h, w, border=0.0, dim=0)
        idx = valid.nonzero().squeeze(1)
        if idx.numel() == 0:
            raise ValueError(f"views {i} and {j} do not overlap: no pixel of view {i} lands inside view {j}")
        warped = bilinear_sample(views[:, j], x[idx], y[idx], wrap_x=False)  # (B, C, n)
        ref = flat[:, i][:, :, idx].to(wdtype)
        mse = ((warped - ref) ** 2).mean(dim=(1, 2))  # (B,)
        psnrs.append(10 * torch.log10(max_value ** 2 / mse))
        overlaps.append(idx.numel() / (h * w))
    per_pair = torch.stack(psnrs, dim=1)  # (B, P)
    mean = per_pair.mean(dim=1)
    overlap = torch.tensor(overlaps, dtype=torch.float64)
    if single:
        per_pair, mean = per_pair[0], mean[0]
    return OverlapPSNR(pairs, per_pair, mean, overlap)


def paper_overlap_psnr(views: torch.Tensor, fov_deg: float = 90.0, size: int = PAPER_SIZE,
                       max_value: float = 1.0) -> OverlapPSNR:
    """The paper's protocol on a panorama ring: views (B, m, C, h, w) or (m, C, h, w) at yaw ``360/m * i``
    (pitch 0, horizontal fov ``fov_deg``; the official rig is m = 8, so neighbours are 45 deg apart) are resized
    to ``size x size`` (bilinear, antialiased; the paper uses 1024) and measured with :func:`overlap_psnr` on the
    ring pairs ``(i, (i+1) % m)``."""
    views, single = _as_batch(views)
    b, m, c, h, w = views.shape
    if int(size) != size or size < 2:
        raise ValueError(f"size must be an integer of at least 2 pixels, got {size}")
    size = int(size)
    if (h, w) != (size, size):
        flat = views.reshape(b * m, c, h, w).to(working_dtype(views.dtype))
        views = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True).reshape(b, m, c, size, size)
    K, R = pano_cameras(m, fov_deg, size, size)
    result = overlap_psnr(views, K, R, max_value=max_value)
    if single:
        result = OverlapPSNR(result.pairs, result.per_pair[0], result.mean[0], result.overlap)
    return result


def psnr_ratio(generated: torch.Tensor, ground_truth: torch.Tensor, fov_deg: float = 90.0,
               size: int = PAPER_SIZE, max_value: float = 1.0) -> torch.Tensor:
    """The paper's consistency score: the mean overlap PSNR of generated panorama rings divided by that of
    ground-truth rings, both measured with :func:`paper_overlap_psnr` (means over all scenes and pairs; the two
    sets may hold different numbers of scenes but must have the same number of views).

    generated, ground_truth: (B, m, C, h, w) or (m, C, h, w). Returns a 0-d tensor.
    The paper reports 25.4 dB / 37.7 dB = 0.67 for MVDiffusion on Matterport3D."""
    gen, _ = _as_batch(generated, "generated")
    gt, _ = _as_batch(ground_truth, "ground_truth")
    if gen.shape[1] != gt.shape[1]:
        raise ValueError(f"generated and ground_truth must have the same number of views, got "
                         f"{gen.shape[1]} and {gt.shape[1]}")
    num = paper_overlap_psnr(gen, fov_deg, size, max_value).per_pair.mean()
    den = paper_overlap_psnr(gt, fov_deg, size, max_value).per_pair.mean()
    return num / den
