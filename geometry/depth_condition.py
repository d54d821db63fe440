"""The depth UNet's 5th input channel: per-view normalised inverse depth at the latent size (official
``src/dataset/Scannet.py`` ``load_seq`` and ``__getitem__``).

Per view, in float64 as the dataset code computes it: ``inv = 1 / (depth + 1e-6)``; over the valid pixels
(depth > 0) its minimum and maximum; ``(inv - min) / (max - min + 1e-6) * 2 - 1`` in [-1, 1]; invalid pixels
-2; rounded to float32; then resized to the latent size with OpenCV's nearest rule, which for a factor-8
downscale takes pixel ``(8 y, 8 x)`` (not the cell centre the attention reads depths at). A view without any
valid depth has no min/max (the official code fails there): it gets -2 everywhere and is reported by
:func:`views_without_depth`.
"""
from __future__ import annotations

import torch

__all__ = ["inverse_depth_condition", "views_without_depth"]


def inverse_depth_condition(depths: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """depths (n, H, W) metres (0 = no depth) -> (n, H // factor, W // factor) float32 condition in [-1, 1] with
    -2 where the picked pixel has no depth. H and W must be multiples of ``factor``."""
    if not isinstance(depths, torch.Tensor) or depths.ndim != 3:
        raise ValueError(f"depths must be (n, H, W) depth maps, got {getattr(depths, 'shape', type(depths))}")
    n, H, W = depths.shape
    if H % factor or W % factor:
        raise ValueError(f"depth maps of {W}x{H} are not a multiple of {factor} (the latent factor)")
    d = depths.detach().to("cpu", torch.float64)
    valid = d > 0
    inv = 1.0 / (d + 1e-6)
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    lo = torch.where(valid, inv, inf).amin(dim=(1, 2), keepdim=True)
    hi = torch.where(valid, inv, -inf).amax(dim=(1, 2), keepdim=True)
    norm = (inv - lo) / (hi - lo + 1e-6) * 2 - 1
    full = torch.where(valid, norm, torch.full_like(norm, -2.0)).to(torch.float32)
    return full[:, ::factor, ::factor].contiguous().to(depths.device)


def views_without_depth(depths: torch.Tensor) -> tuple[int, ...]:
    """Indices of the views (n, H, W) with no pixel of positive depth."""
    return tuple(int(i) for i in (~(depths > 0).flatten(1).any(dim=1)).nonzero().flatten())
