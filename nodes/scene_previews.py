"""Images that show a scene to the user: its depth maps, and the overlap matrix of its frames (which frame attends
to which), as ComfyUI IMAGEs."""
from __future__ import annotations

import numpy as np
import torch

MARGIN = 30  # pixels left of and above the matrix, for the frame indices and the marks
KEY_MARK = (255, 0, 0)  # key frames: a bar above their column and left of their row
LINK = (255, 255, 255)  # a neighbour link i -> j: a square in cell (row i, column j)
FALLBACK_LINK = (255, 150, 0)  # a fallback neighbour of a view that overlaps nothing
_VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64)


def depth_preview(depths: torch.Tensor) -> torch.Tensor:
    """Depth maps (n, H, W) metres -> IMAGE (n, H, W, 3): each frame divided by its largest depth (brighter =
    farther; black = no depth)."""
    peak = depths.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return (depths.float() / peak).clamp(0, 1)[..., None].expand(*depths.shape, 3).contiguous()


def cell_size(n: int) -> int:
    """Pixels per matrix cell for n frames (the matrix is at most ~512 pixels wide, cells 2 to 32)."""
    return int(min(32, max(2, 512 // max(1, n))))


def colour_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> (..., 3) uint8 on a viridis-like ramp."""
    t = np.clip(values, 0, 1) * (len(_VIRIDIS) - 1)
    lo = np.minimum(np.floor(t).astype(int), len(_VIRIDIS) - 2)
    frac = (t - lo)[..., None]
    return np.round(_VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac).astype(np.uint8)


def overlap_image(overlap: torch.Tensor, key_frames=(), neighbours=None, fallback=()) -> torch.Tensor:
    """IMAGE (1, S, S, 3) of an (n, n) overlap matrix in [0, 1]: row i, column j = overlap of frames i and j, the
    indices on both axes, key frames marked in red on both axes, and with ``neighbours`` (per row, the views it
    attends to) a square in each attended cell (orange for the fallback rows ``fallback``)."""
    from PIL import Image, ImageDraw

    n = overlap.shape[0]
    c = cell_size(n)
    side = MARGIN + n * c
    pixels = np.full((side, side, 3), 24, dtype=np.uint8)
    cells = colour_map(overlap.detach().cpu().double().numpy())
    pixels[MARGIN:, MARGIN:] = np.repeat(np.repeat(cells, c, axis=0), c, axis=1)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    step = max(1, -(-24 // c))
    for k in range(0, n, step):
        draw.text((MARGIN + k * c, 2), str(k), fill=(230, 230, 230))
        draw.text((2, MARGIN + k * c + max(0, c // 2 - 5)), str(k), fill=(230, 230, 230))
    for k in key_frames:
        draw.rectangle([MARGIN + k * c, MARGIN - 6, MARGIN + (k + 1) * c - 1, MARGIN - 2], fill=KEY_MARK)
        draw.rectangle([MARGIN - 6, MARGIN + k * c, MARGIN - 2, MARGIN + (k + 1) * c - 1], fill=KEY_MARK)
    for i, row in enumerate(neighbours or ()):
        colour = FALLBACK_LINK if i in fallback else LINK
        inset = c // 3 if c >= 6 else 0
        for j in row:
            x, y = MARGIN + j * c, MARGIN + i * c
            draw.rectangle([x + inset, y + inset, x + c - 1 - inset, y + c - 1 - inset], fill=colour)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
