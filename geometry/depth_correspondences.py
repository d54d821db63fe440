"""Depth correspondences between the frames of a scanned scene, their overlaps, neighbours and key frames.

Conventions are those of ``geometry/scene.py`` (OpenCV axes, camera-to-world poses in metres, pixel K with pixel
centres at integer coordinates). Depth maps are (n, H, W) float32 metres along the optical axis (z), 0 where there
is no measurement; they have the size of the images ``cameras`` describes.

The correspondence of pixel (x, y) of view i in view j reproduces the official ``get_correspondence``
(``src/models/depth/utils.py``, called by ``MVDepthModel.get_correspondence``) in float32 and in its operation
order, because the depth attention turns depths read at the rounded correspondence into positional encodings so
steep that one float32 ulp matters:

1. ``pose_rel = inverse(c2w_j) @ c2w_i`` (``torch.inverse`` in float32, then one 4x4 product);
2. back-projection with view i's K: ``X = d * (x - cx) / fx``, ``Y = d * (y - cy) / fy``, ``Z = d``;
3. ``R_rel @ [X, Y, Z] + t_rel``, then ``K_j @`` that (two batched matrix products);
4. ``xy = uvw[:2] / (uvw[2] + 1e-6)``; pixels with depth 0 get (-1e6, -1e6). No ``z > 0`` test: a point behind
   camera j lands at its mirror image, as in the official code.

The matrix products run in IEEE float32 whatever the process-wide matmul precision says (the official
``train.py`` / ``test.py`` set ``torch.set_float32_matmul_precision('medium')``, which on GPUs with TF32 and on
CPUs with bf16 support, this one included, rounds the products' inputs and moves most coordinates; exact float32
is the reference here). Compute on the CPU for bit-reproducible results.

The official code has one K for all views; here back-projection uses view i's K and projection view j's K (the
same numbers when the views share K).

Overlap ratio ``r_ij``: the fraction of ALL of view i's pixels (depth-less ones included, they never land
inside) whose correspondence lies in ``[0, W) x [0, H)`` of view j; the official symmetrises it with
``min(r_ij, r_ji)`` and attends from i to every j != i whose symmetric overlap exceeds 0.3 (``overlap_filter`` of
``configs/depth_generation_*.yaml``), falling back to i-1 / i+1 when there is none.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .precision import ieee_float32_matmul
from .scene import SceneCameras

__all__ = ["NO_DEPTH", "NEIGHBOUR_OVERLAP", "KEY_FRAME_OVERLAP", "pair_correspondences",
           "depth_correspondences", "overlap_ratios", "symmetric_overlap", "depth_overlap", "pair_overlap",
           "depth_neighbours", "views_without_overlap", "select_key_frames", "in_between_frames"]

NO_DEPTH = -1e6  # the correspondence of a pixel without depth (both coordinates)
NEIGHBOUR_OVERLAP = 0.3  # the official ``overlap_filter``
KEY_FRAME_OVERLAP = 0.6  # the official ``key_frame_0.6.txt``
_POINTS_PER_CHUNK = 1 << 22  # pairs are projected in chunks of about this many pixels (bounded memory)


def _check_depths(depths: torch.Tensor, cameras: SceneCameras) -> None:
    if not isinstance(depths, torch.Tensor) or depths.ndim != 3:
        raise ValueError(f"depths must be depth maps of shape (n, H, W), got "
                         f"{tuple(depths.shape) if isinstance(depths, torch.Tensor) else type(depths).__name__}")
    if depths.shape[0] != cameras.num_views or tuple(depths.shape[1:]) != (cameras.height, cameras.width):
        raise ValueError(f"depths of shape {tuple(depths.shape)} do not match {cameras.num_views} cameras of "
                         f"{cameras.height}x{cameras.width} images")


def _project(depth: torch.Tensor, K_src: torch.Tensor, K_dst: torch.Tensor, pose_rel: torch.Tensor) -> torch.Tensor:
    """depth (p, H, W), K_src / K_dst (p, 3, 3), pose_rel (p, 4, 4), all float32 -> (p, H, W, 2) pixel coordinates
    of the source pixels in the destination view (module docstring, steps 2-4)."""
    p, H, W = depth.shape
    ys = torch.arange(H, dtype=torch.float32, device=depth.device)[:, None].expand(H, W)
    xs = torch.arange(W, dtype=torch.float32, device=depth.device)[None, :].expand(H, W)
    fx, fy = K_src[:, 0:1, 0:1], K_src[:, 1:2, 1:2]
    cx, cy = K_src[:, 0:1, 2:3], K_src[:, 1:2, 2:3]
    points = torch.stack([depth * (xs - cx) / fx, depth * (ys - cy) / fy, depth], dim=-1)  # (p, H, W, 3)
    points = points.reshape(p, H * W, 3).transpose(1, 2)  # (p, 3, H*W), a view as the official rearrange
    points = pose_rel[:, :3, :3] @ points + pose_rel[:, :3, 3][:, :, None]
    uvw = (K_dst @ points).transpose(1, 2).reshape(p, H, W, 3)
    xy = uvw[..., :2] / (uvw[..., 2:3] + 1e-6)
    return xy.masked_fill((depth == 0)[..., None], NO_DEPTH)


def pair_correspondences(depths: torch.Tensor, cameras: SceneCameras, sources: Sequence[int],
                         targets: Sequence[int]) -> torch.Tensor:
    """Where every pixel of view ``sources[k]`` lands in view ``targets[k]``: (p, H, W, 2) float32 (x, y) pixel
    coordinates (module docstring), for p pairs. depths: (n, H, W) float32 metres."""
    _check_depths(depths, cameras)
    src = torch.as_tensor(list(sources), dtype=torch.long)
    dst = torch.as_tensor(list(targets), dtype=torch.long)
    if src.shape != dst.shape or src.ndim != 1:
        raise ValueError(f"sources and targets must be two index lists of one length, got {len(src)} and {len(dst)}")
    depths = depths.float()
    H, W = depths.shape[1:]
    inv_c2w = torch.inverse(cameras.c2w)  # (n, 4, 4): each view's inverse once
    out = torch.empty(len(src), H, W, 2, dtype=torch.float32, device=depths.device)
    chunk = max(1, _POINTS_PER_CHUNK // (H * W))
    with ieee_float32_matmul():
        for start in range(0, len(src), chunk):
            s, d = src[start:start + chunk], dst[start:start + chunk]
            pose_rel = (inv_c2w[d] @ cameras.c2w[s]).to(depths.device)
            out[start:start + chunk] = _project(depths[s.to(depths.device)], cameras.K[s].to(depths.device),
                                                cameras.K[d].to(depths.device), pose_rel)
    return out


def depth_correspondences(depths: torch.Tensor, cameras: SceneCameras) -> torch.Tensor:
    """All ordered pairs: (n, n, H, W, 2) float32, ``[i, j]`` = where each pixel of view i lands in view j
    (the official ``cp_package['correspondence']``; ``[i, i]`` is each pixel itself up to rounding)."""
    n = cameras.num_views
    idx = torch.arange(n)
    corr = pair_correspondences(depths, cameras, idx.repeat_interleave(n).tolist(), idx.repeat(n).tolist())
    return corr.reshape(n, n, *corr.shape[1:])


def overlap_ratios(correspondences: torch.Tensor) -> torch.Tensor:
    """correspondences (..., H, W, 2) -> (...) float32: the fraction of the H*W source pixels landing in
    ``[0, W) x [0, H)`` (raw, not symmetrised; the official ``mask.float().mean``)."""
    H, W = correspondences.shape[-3:-1]
    x, y = correspondences[..., 0], correspondences[..., 1]
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    return inside.flatten(-2).float().mean(dim=-1)


def symmetric_overlap(ratios: torch.Tensor) -> torch.Tensor:
    """(n, n) raw ratios -> ``min(r_ij, r_ji)`` (the diagonal stays ``r_ii``), as the official symmetrises them."""
    return torch.minimum(ratios, ratios.transpose(0, 1))


def depth_overlap(depths: torch.Tensor, cameras: SceneCameras) -> torch.Tensor:
    """(n, n) float32 symmetric overlap of every pair of views (the official ``overlap_ratios`` after the min)."""
    return symmetric_overlap(overlap_ratios(depth_correspondences(depths, cameras)))


def pair_overlap(depths: torch.Tensor, cameras: SceneCameras, first: Sequence[int],
                 second: Sequence[int]) -> torch.Tensor:
    """(p,) float32 symmetric overlap ``min(r_ab, r_ba)`` of the pairs ``(first[k], second[k])`` only."""
    first, second = list(first), list(second)
    ratios = overlap_ratios(pair_correspondences(depths, cameras, first + second, second + first))
    return torch.minimum(ratios[:len(first)], ratios[len(first):])


def _check_overlap(overlap: torch.Tensor) -> int:
    if not isinstance(overlap, torch.Tensor) or overlap.ndim != 2 or overlap.shape[0] != overlap.shape[1]:
        raise ValueError("overlap must be a square (n, n) tensor of overlap ratios")
    return overlap.shape[0]


def views_without_overlap(overlap: torch.Tensor, threshold: float = NEIGHBOUR_OVERLAP) -> tuple[int, ...]:
    """The views that overlap no other view by more than ``threshold``: :func:`depth_neighbours` gives them the
    official fallback (the previous / next view), which a node should report."""
    n = _check_overlap(overlap)
    above = (overlap > threshold) & ~torch.eye(n, dtype=torch.bool, device=overlap.device)
    return tuple(i for i in range(n) if not bool(above[i].any()))


def depth_neighbours(overlap: torch.Tensor, threshold: float = NEIGHBOUR_OVERLAP) -> tuple[tuple[int, ...], ...]:
    """Per view i, the views it attends to: every j != i with ``overlap[i, j] > threshold`` (compared in the
    overlap's dtype, as the official), in increasing order; when there is none, the official fallback
    ``[1]`` for the first view, ``[n-2]`` for the last, ``[i-1, i+1]`` otherwise. One view alone has none."""
    n = _check_overlap(overlap)
    above = (overlap > threshold) & ~torch.eye(n, dtype=torch.bool, device=overlap.device)
    lists = []
    for i in range(n):
        chosen = tuple(int(j) for j in torch.nonzero(above[i]).flatten().tolist())
        if not chosen and n > 1:
            chosen = (1,) if i == 0 else (n - 2,) if i == n - 1 else (i - 1, i + 1)
        lists.append(chosen)
    return tuple(lists)


def select_key_frames(depths: torch.Tensor, cameras: SceneCameras, threshold: float = KEY_FRAME_OVERLAP,
                      include_last: bool = False, chunk: int = 16) -> tuple[int, ...]:
    """Key frames of a sequence (frames in capture order): frame 0, then each frame whose symmetric overlap
    (:func:`pair_overlap`) with the last key frame is below ``threshold``.

    The official dataset reads the key frames from ``key_frame_0.6.txt`` files shipped with its ScanNet labels;
    the script that wrote them is not in the repository, whose author describes them as chosen by overlap ratio
    (issue #23). This is that documented rule ("a new key frame when the overlap with the last key frame drops
    below 0.6"), with the official overlap measure. ``include_last`` also makes the final frame a key frame, so
    that :func:`in_between_frames` covers the whole sequence. Overlaps are measured ``chunk`` frames at a time.
    """
    _check_depths(depths, cameras)
    n = cameras.num_views
    keys = [0]
    t = 1
    while t < n:
        candidates = list(range(t, min(n, t + max(1, int(chunk)))))
        overlaps = pair_overlap(depths, cameras, [keys[-1]] * len(candidates), candidates)
        below = torch.nonzero(overlaps < threshold).flatten()
        if len(below) == 0:
            t = candidates[-1] + 1
            continue
        keys.append(candidates[int(below[0])])
        t = keys[-1] + 1
    if include_last and keys[-1] != n - 1:
        keys.append(n - 1)
    return tuple(keys)


def in_between_frames(key_frames: Sequence[int], num_frames: int, max_between: int = 10,
                      interval: int = 1) -> tuple[tuple[int, ...], ...]:
    """The stage-2 groups of the two-stage mode: for each pair of consecutive key frames (a, b), the group
    ``(a, *between, b)`` where ``between = a + interval, a + 2 interval, ... < b``; pairs with nothing between them
    give no group (``DepthGenerator.get_inp_image`` skips them). A group is generated with its two key frames as
    the condition (first and last, mask 1) and the in-betweens from noise.

    The official test path (the first ``Scannetdataset._get_consecutive_kfs_inp``, the one matching
    ``test_step``) uses ``interval = 20`` frame ids and no cap; the name is redefined further down by a training
    sampler, which is what actually runs: key frames 0 and 2 of the scene, up to ``num_views - 2 = 10`` valid frames
    drawn at random (unsorted) from ``range(id0 + 1, id2 - 1)``, so a test run yields that one group per scene
    (what issue #23 reports: "only the results between the first two key frames").
    Here the groups follow the test path, and in-betweens beyond ``max_between`` (the 10 of the 12-view model)
    are split into near-equal consecutive groups sharing the same two key frames, so every frame is covered.
    Frames before the first or after the last key frame belong to no group.
    """
    num_frames, max_between, interval = int(num_frames), int(max_between), int(interval)
    if max_between < 1 or interval < 1:
        raise ValueError(f"max_between and interval must be positive, got {max_between} and {interval}")
    keys = [int(k) for k in key_frames]
    if any(k < 0 or k >= num_frames for k in keys) or any(a >= b for a, b in zip(keys, keys[1:])):
        raise ValueError(f"key frames must increase strictly within 0..{num_frames - 1}, got {keys}")
    groups = []
    for a, b in zip(keys, keys[1:]):
        between = list(range(a + interval, b, interval))
        if not between:
            continue
        parts = math.ceil(len(between) / max_between)
        bounds = [round(k * len(between) / parts) for k in range(parts + 1)]
        groups += [(a, *between[lo:hi], b) for lo, hi in zip(bounds, bounds[1:])]
    return tuple(groups)
