"""Putting known pixels back into generated images ("paste"), with a feathered edge.

Masks here are KNOWN masks: 1 where the pixel is known (given by the user), 0 where it was generated. ComfyUI's
MASK polarity (1 = generate) is converted at the nodes. Distances are chessboard distances in pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .cameras import describe_shape

__all__ = ["feather_weight", "paste_known"]


def feather_weight(known: torch.Tensor, feather: int) -> torch.Tensor:
    """Weight of the known pixels: (..., H, W) {0, 1} -> (..., H, W) float in [0, 1].

    A known pixel at chessboard distance d >= 1 from the nearest unknown pixel gets ``min(d, feather) / feather``;
    unknown pixels get 0. ``feather`` = 0 gives the known mask itself (a hard paste). The image border is not an
    edge (a view whose pixels are all known keeps weight 1 everywhere).
    """
    if feather < 0:
        raise ValueError(f"feather must be >= 0 pixels, got {feather}")
    if known.ndim < 2:
        raise ValueError(f"known must be a mask (..., H, W), got {describe_shape(known)}")
    known = (known > 0.5).float()
    if feather == 0:
        return known
    shape = known.shape
    unknown = 1.0 - known.reshape(-1, 1, *shape[-2:])
    total = torch.zeros_like(unknown)
    for _ in range(feather):  # step k: the pixels farther than k from every unknown pixel
        total += 1.0 - unknown
        unknown = F.max_pool2d(unknown, 3, stride=1, padding=1)
    return (total / feather).reshape(shape)


def paste_known(generated: torch.Tensor, known_images: torch.Tensor, known: torch.Tensor,
                feather: int = 0) -> torch.Tensor:
    """Composite known pixels over generated images: (B, H, W, C) images (ComfyUI layout) and known (B, H, W).

    ``out = w * known_images + (1 - w) * generated`` with ``w = feather_weight(known, feather)``: with feather 0
    the known pixels are returned exactly; with feather f the last f pixels towards the unknown region blend.
    """
    if generated.shape != known_images.shape:
        raise ValueError(f"the generated images are {describe_shape(generated)} but the known images are "
                         f"{describe_shape(known_images)}")
    if known.shape != generated.shape[:-1]:
        raise ValueError(f"the known mask is {describe_shape(known)}, the images {describe_shape(generated)}")
    w = feather_weight(known.to(generated.device), feather)[..., None].to(generated.dtype)
    known_images = known_images.to(generated)
    return torch.where(w >= 1, known_images, torch.lerp(generated, known_images, w))  # exact where w is 1
