"""The per-UNet-level sampling plan of correspondence-aware attention (CAA).

At a feature map of size (h, w) of views of size (H, W), the query pixel (u, v) of view i attends to 9 points
around its correspondence in each neighbour j. The plan holds, for every query pixel, neighbour and offset:

* where to sample view j's feature map (``grid``: ``F.grid_sample`` coordinates, ``align_corners=True``),
* whether the sample point lies strictly inside view j's image (``valid``),
* the sample point mapped back into view i, relative to the query pixel, in query-map pixels
  (``displacement``; it feeds the positional encoding).

It depends only on the rig and the sizes, so a sampling run builds it once (``caa/run_cache.py``), never per
step.
The construction reproduces the official ``get_key_value`` (src/models/pano/utils.py) in float32, in its order:

1. ``s_q = H // h`` (query scale), ``s_k = W // w`` (key scale; the official code uses ``W // h_key``, the same
   number for the square views it supports).
2. The correspondence i -> j at image pixels ``(s_q//2 + s_q*u, s_q//2 + s_q*v)``, divided by ``s_k``, minus 0.5.
3. Offsets (dx, dy), dx in (-1, 0, 1) outer loop, dy inner: point ``p = c + (dx, dy)`` in key-map pixels;
   ``grid = (p_x / (w-1) * 2 - 1, p_y / (h-1) * 2 - 1)``.
4. In image pixels the point is ``q = (p + 0.5) * s_k``; valid iff ``0 < q_x < W`` and ``0 < q_y < H``, and
   (beyond the official code, for general rigs) the query ray lies in front of view j (positive depth).
   For the official ring no query ray behind a neighbour lands inside its image, so this changes nothing there
   (the bit-exact tests hold); views 90° or more apart (a pole view and the ring) need it, or rays behind
   view j would take the mirrored points as correspondences.
5. ``displacement = (H_ji q - query pixel) / s_q`` (dehomogenised).

Keys are ordered neighbour-major, then offset (dx outer, dy inner): key ``k = 9 * n + 3 * (dx+1) + (dy+1)``.

Views with fewer neighbours than the longest list (``Rig.max_neighbours``) get padding slots: their keys are
absent (``present`` False; also invalid, with grid and displacement 0) and the attention leaves them out of
the softmax, so each view attends to exactly its own neighbours.

A 1-pixel-wide or -high map (64-px views at the deepest SD level) makes step 3 divide by zero; the official
forward returns NaN there. Here such an axis is sampled like bilinear interpolation with zero padding would do
on a one-pixel grid: the grid coordinate is 0 and the sample is multiplied by ``max(0, 1 - |p|)`` along that
axis (``sample_weight``). Maps of at least 2x2 reproduce the official numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .cameras import Rig, pixel_grid
from .correspondences import apply_homography, dehomogenise, homogeneous_product, homographies

__all__ = ["LevelPlan", "OFFSETS", "build_level_plan", "level_plan", "unet_level_sizes"]

# (dx, dy) in key order: dx outer loop, dy inner loop, as in the official code
OFFSETS = tuple((dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1))


@dataclass(frozen=True, eq=False)
class LevelPlan:
    """Sampling plan of one level. m views, n neighbours per view, K = 9 n keys per query pixel.

    neighbours: (m, n) int64, the views each view attends to.
    grid: (m, K, h, w, 2) sample coordinates in the neighbour's (h, w) map, normalised for ``F.grid_sample``
        with ``align_corners=True`` (dtype: the features' dtype).
    sample_weight: (m, K, h, w) float32 factor for 1-pixel axes, or None when h, w >= 2.
    valid: (m, K, h, w) bool.
    displacement: (m, K, h, w, 2) float32, always float32 (positional-encoding input).
    present: (m, K) bool, False for the padding keys of views with fewer neighbours, or None when every view
        has ``n`` neighbours (the official rigs).
    """

    neighbours: torch.Tensor
    grid: torch.Tensor
    sample_weight: torch.Tensor | None
    valid: torch.Tensor
    displacement: torch.Tensor
    height: int
    width: int
    image_height: int
    image_width: int
    present: torch.Tensor | None = None

    @property
    def num_views(self) -> int:
        return self.neighbours.shape[0]

    @property
    def num_keys(self) -> int:
        return self.grid.shape[1]

    def to(self, device=None, dtype=None) -> "LevelPlan":
        """Move to a device; ``dtype`` changes only the grid (the displacement stays float32)."""
        opt = lambda t: None if t is None else t.to(device)  # noqa: E731
        return LevelPlan(self.neighbours.to(device), self.grid.to(device=device, dtype=dtype or self.grid.dtype),
                         opt(self.sample_weight), self.valid.to(device), self.displacement.to(device),
                         self.height, self.width, self.image_height, self.image_width, opt(self.present))


def unet_level_sizes(image_height: int, image_width: int, levels: int = 4, vae_factor: int = 8) -> list[tuple[int, int]]:
    """Feature-map sizes (h, w) of an SD UNet's levels: the latent, then halved with ceil (stride-2 conv, pad 1)."""
    h, w = image_height // vae_factor, image_width // vae_factor
    sizes = []
    for _ in range(levels):
        sizes.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return sizes


def build_level_plan(rig: Rig, height: int, width: int) -> LevelPlan:
    """Build the plan for feature maps of size (height, width) on the CPU in float32 (uncached)."""
    H, W = rig.height, rig.width
    h, w = int(height), int(width)
    if h < 1 or w < 1 or h > H or w > W:
        raise ValueError(f"feature map {h}x{w} does not fit views of {H}x{W} pixels")
    s_q, s_k = H // h, W // w
    m, n = rig.num_views, rig.max_neighbours
    # (m, n) neighbour indices; a padding slot repeats the view's first neighbour (its keys are masked below)
    nb = torch.tensor([list(l) + [l[0]] * (n - len(l)) for l in rig.neighbours], dtype=torch.int64)
    slot_present = torch.tensor([[k < len(l) for k in range(n)] for l in rig.neighbours])  # (m, n)

    # query pixels in image coordinates: the strided subsample of the integer pixel grid
    q_grid = pixel_grid(H, W)[s_q // 2::s_q, s_q // 2::s_q]  # (h', w', 3)
    if q_grid.shape[:2] != (h, w):
        raise ValueError(f"views of {H}x{W} pixels give a {q_grid.shape[0]}x{q_grid.shape[1]} query grid at scale "
                         f"{s_q}, not {h}x{w}: use a view size that is a multiple of 8 * 2^(levels-1)")
    Hm = homographies(rig.K, rig.R)  # (m, m, 3, 3)
    src = torch.arange(m)[:, None].expand(m, n)
    H_fwd = Hm[src, nb].reshape(m * n, 3, 3)  # i -> j
    H_back = Hm[nb, src].reshape(m * n, 3, 3)  # j -> i

    # 2. correspondences of the query pixels, in key-map pixels
    pts = q_grid.reshape(-1, 3).T.expand(m * n, 3, h * w)
    xyz = homogeneous_product(H_fwd, pts)
    corr = dehomogenise(xyz).reshape(m * n, h, w, 2)
    corr = corr / s_k - 0.5
    ahead = (xyz[:, 2] > 0).reshape(m * n, 1, h, w)  # the query ray's depth in view j

    # 3.-4. the 9 offsets
    grids, img_pts, weights = [], [], []
    for dx, dy in OFFSETS:
        p = corr.clone()
        p[..., 0] = p[..., 0] + dx
        p[..., 1] = p[..., 1] + dy
        img_pts.append((p + 0.5) * s_k)
        g = torch.zeros_like(p)
        weight = torch.ones_like(p[..., 0])
        if w > 1:
            g[..., 0] = p[..., 0] / (w - 1) * 2 - 1
        else:
            weight = weight * (1 - p[..., 0].abs()).clamp(min=0)
        if h > 1:
            g[..., 1] = p[..., 1] / (h - 1) * 2 - 1
        else:
            weight = weight * (1 - p[..., 1].abs()).clamp(min=0)
        grids.append(g)
        weights.append(weight)
    img = torch.stack(img_pts, dim=1)  # (m*n, 9, h, w, 2)
    valid = (img[..., 0] > 0) * (img[..., 0] < W) * (img[..., 1] > 0) * (img[..., 1] < H) * ahead

    # 5. back into view i, relative to the query pixel, in query-map pixels
    homog = torch.cat([img, torch.ones_like(img[..., :1])], dim=-1)  # (m*n, 9, h, w, 3)
    back = apply_homography(H_back, homog.reshape(m * n, 9 * h * w, 3).transpose(1, 2))
    back = back.reshape(m * n, 9, h, w, 2)
    displacement = (back - q_grid[None, None, ..., :2]) / s_q

    def per_view(t: torch.Tensor) -> torch.Tensor:  # (m*n, 9, ...) -> (m, n*9, ...)
        return t.reshape(m, n * 9, *t.shape[2:])

    grid = torch.stack(grids, dim=1)
    sample_weight = torch.stack(weights, dim=1) if (h == 1 or w == 1) else None
    present = None
    if not bool(slot_present.all()):  # padding slots: absent, invalid, finite zeros
        absent = ~slot_present.reshape(m * n)
        for t in (grid, displacement) + ((sample_weight,) if sample_weight is not None else ()):
            t[absent] = 0
        valid[absent] = False
        present = slot_present.repeat_interleave(9, dim=1)  # (m, n*9)
    return LevelPlan(nb, per_view(grid), None if sample_weight is None else per_view(sample_weight),
                     per_view(valid), per_view(displacement), h, w, H, W, present)


def level_plan(rig: Rig, height: int, width: int, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> LevelPlan:
    """:func:`build_level_plan` (on the CPU, bit-reproducible float32), then moved to ``device`` with the grid
    in ``dtype``. Not cached: a sampling run keeps its plans for its own duration (``caa/run_cache.py``)."""
    plan = build_level_plan(rig, int(height), int(width))
    if device is None and dtype == torch.float32:
        return plan
    return plan.to(device=device, dtype=dtype)
