"""Reading one frame's files (depth maps, colour images, matrices) and assembling frames into SceneFrames.

Every reader of ``scenes/`` goes through these, so that a missing or unreadable file gives the same kind of
ValueError everywhere: it names the frame, the file and the way to fix it.

* Depth PNG: 16-bit unsigned integers (ScanNet, nerfstudio: millimetres), times ``depth_scale`` -> metres.
* Depth ``.npy``: a (H, W) (or (H, W, 1)) floating-point array, times ``depth_scale`` -> metres.
* Colour: any image Pillow reads, as (H, W, 3) float32 in [0, 1], resized (bilinear) to the depth size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .frames import SceneFrames, check_depth_units, check_principal_point, make_cameras, resize_images

__all__ = ["require_file", "read_depth_png", "read_depth_npy", "read_depth_file", "read_colour", "read_matrix",
           "stack_depths", "assemble_frames", "from_corner_convention"]

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def owner(name: str | None) -> str:
    """How a message names whose file it is: "frame <name>: its", or "the scene's" for a scene-wide file."""
    return "the scene's" if name is None else f"frame {name}: its"


def require_file(path: Path, name: str | None, what: str, fix: str) -> Path:
    """``path`` if it is a file, else ValueError: frame ``name``'s (None: the scene's) ``what`` is missing, and
    ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{owner(name)} {what} {path} is missing: {fix}")
    return path


def read_depth_png(path: Path, name: str, depth_scale: float) -> torch.Tensor:
    """A 16-bit depth PNG as (H, W) float32 metres: its integers times ``depth_scale`` (0.001 for millimetres);
    0 stays 0 (no depth). ValueError naming the frame if the file is not a 16-bit single-channel image."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            values = np.array(image)
    except (OSError, ValueError) as err:
        raise ValueError(f"frame {name}: its depth image {path} cannot be read ({err}): re-export it as a 16-bit "
                         f"PNG") from None
    if mode not in SIXTEEN_BIT_MODES or values.ndim != 2:
        raise ValueError(f"frame {name}: its depth image {path} is a {mode} image: depth PNGs must be 16-bit "
                         f"single-channel (millimetres with depth_scale 0.001)")
    return torch.from_numpy(values.astype(np.float64) * float(depth_scale)).to(torch.float32)


def read_depth_npy(path: Path, name: str, depth_scale: float) -> torch.Tensor:
    """A ``.npy`` depth map (H, W) or (H, W, 1) of floats as (H, W) float32: its values times ``depth_scale``."""
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"frame {name}: its depth map {path} cannot be read ({err}): save it with numpy.save") \
            from None
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"frame {name}: its depth map {path} holds a {values.dtype} array of shape "
                         f"{values.shape}: expected (H, W) numbers")
    return torch.from_numpy(values.astype(np.float64) * float(depth_scale)).to(torch.float32)


def read_depth_file(path: Path, name: str, depth_scale: float) -> torch.Tensor:
    """A depth map by extension: ``.png`` (16-bit) or ``.npy`` (floats), as (H, W) float32 times
    ``depth_scale``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return read_depth_png(path, name, depth_scale)
    if suffix == ".npy":
        return read_depth_npy(path, name, depth_scale)
    raise ValueError(f"frame {name}: its depth file {path} is neither a 16-bit .png nor a float .npy: convert it")


def read_colour(path: Path, name: str, height: int, width: int) -> torch.Tensor:
    """A colour image as (height, width, 3) float32 in [0, 1] (RGB; resized bilinearly when its size differs:
    the frames' size is the depth's)."""
    try:
        with Image.open(path) as image:
            values = np.array(image.convert("RGB"))
    except (OSError, ValueError) as err:
        raise ValueError(f"frame {name}: its colour image {path} cannot be read ({err})") from None
    image = torch.from_numpy(values).to(torch.float32)[None] / 255.0
    return resize_images(image, int(height), int(width))[0]


def read_matrix(path: Path, name: str | None, what: str, fix: str, shapes=((4, 4),)) -> torch.Tensor:
    """A whitespace-separated text matrix as float64 (rows, cols), one of ``shapes``; ValueError naming the frame
    (None: a scene-wide file), the file and ``fix`` if it is missing, not numbers, or of another shape."""
    require_file(path, name, what, fix)
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ValueError(f"{owner(name)} {what} {path} is not a matrix of numbers ({err}): {fix}") from None
    if tuple(values.shape) not in [tuple(s) for s in shapes]:
        raise ValueError(f"{owner(name)} {what} {path} is a {values.shape[0]}x{values.shape[1]} matrix, "
                         f"expected {' or '.join(f'{r}x{c}' for r, c in shapes)}: {fix}")
    return torch.from_numpy(values)


def from_corner_convention(K: torch.Tensor) -> torch.Tensor:
    """K (..., 3, 3) whose principal point counts from the image's corner (the centre of the top-left pixel at
    (0.5, 0.5): COLMAP, nerfstudio, Instant-NGP) -> our convention (pixel centres at integers): cx, cy - 0.5."""
    out = K.clone()
    out[..., 0, 2] -= 0.5
    out[..., 1, 2] -= 0.5
    return out


def stack_depths(depths: list[torch.Tensor], names) -> torch.Tensor:
    """Depth maps (H, W) of the same size stacked to (n, H, W); ValueError naming the first frame of another
    size."""
    size = tuple(depths[0].shape)
    for depth, name in zip(depths, names):
        if tuple(depth.shape) != size:
            raise ValueError(f"frame {name}: its depth is {depth.shape[0]}x{depth.shape[1]} but frame {names[0]}'s "
                             f"is {size[0]}x{size[1]}: all frames of a scene need depth of one size")
    return torch.stack(depths)


def assemble_frames(depths: list[torch.Tensor], K: torch.Tensor, c2w: torch.Tensor, names, pose_fix: str,
                    depth_scale: float, images: list[torch.Tensor] | None = None, source: str = "K",
                    check_units: bool = True) -> SceneFrames:
    """SceneFrames of per-frame depth maps (H, W) float32 metres, K (n, 3, 3) for the depth size, c2w (n, 4, 4)
    OpenCV axes, optional colour (H, W, 3): checks the principal point against the depth size, the poses
    (``pose_fix`` appended to their errors) and, with ``check_units``, that depths look like metres."""
    names = tuple(names)
    depth = stack_depths(depths, names)
    height, width = depth.shape[1:]
    check_principal_point(K, height, width, names, source)
    if check_units:
        check_depth_units(depth, names, depth_scale)
    cameras = make_cameras(K, c2w, height, width, names, pose_fix)
    return SceneFrames(depth, cameras, None if images is None else torch.stack(images), names)
