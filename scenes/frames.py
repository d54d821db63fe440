"""Frames of a scanned scene (depth, cameras, optional colour) and the checks every reader applies to them.

Conventions (those of ``geometry/scene.py``, stated there once): OpenCV camera axes, camera-to-world poses in
metres, pixel intrinsics for the *depth* images' size with pixel centres at integer coordinates.

* ``depths`` (n, H, W) float32, metres; 0 marks a pixel without depth.
* ``images`` (n, H, W, 3) float32 in [0, 1] (ComfyUI's IMAGE layout), the same size as the depth, or None.

Resizing follows the official dataset (``src/dataset/Scannet.py``): depth with OpenCV's ``INTER_NEAREST``
(destination pixel ``x`` takes source pixel ``floor(x * src / dst)``: no averaging across depth edges, no new
depth values), colour with bilinear interpolation (half-pixel centres, as ``cv2.INTER_LINEAR``) or area
averaging, and K scaled per axis (:func:`~comfyui_mvdiffusion.geometry.scene.scale_intrinsics`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry.cameras import check_size, describe_shape
from ..geometry.scene import SceneCameras

__all__ = ["SceneFrames", "nearest_indices", "resize_depths", "resize_images", "make_cameras",
           "check_principal_point", "check_intrinsics_size", "check_depth_units", "frames_without_depth",
           "select_frames"]

COLOUR_MODES = ("bilinear", "area")


@dataclass(frozen=True, eq=False)
class SceneFrames:
    """n frames of one scene: ``depths`` (n, H, W) float32 metres (0 = no depth), ``cameras`` (SceneCameras for
    H x W images), ``images`` (n, H, W, 3) float32 in [0, 1] or None, ``names`` (frame ids; defaults to the
    cameras' frame names, else the indices). Construction checks that all of them describe the same frames and
    size, and that every depth is finite and >= 0 (naming the frame)."""

    depths: torch.Tensor
    cameras: SceneCameras
    images: torch.Tensor | None = None
    names: tuple[str, ...] = ()

    def __post_init__(self):
        depths, cams = self.depths, self.cameras
        if not isinstance(depths, torch.Tensor) or depths.ndim != 3:
            raise ValueError(f"depths must be (n, H, W) depth maps, got {describe_shape(depths)}")
        n, height, width = depths.shape
        if not isinstance(cams, SceneCameras) or cams.num_views != n:
            count = cams.num_views if isinstance(cams, SceneCameras) else describe_shape(cams)
            raise ValueError(f"{n} depth maps but cameras for {count} frames")
        names = tuple(str(s) for s in self.names) or cams.frame_names or tuple(str(i) for i in range(n))
        if len(names) != n:
            raise ValueError(f"{len(names)} frame names for {n} frames")
        object.__setattr__(self, "names", names)
        if (cams.height, cams.width) != (height, width):
            raise ValueError(f"the cameras are for {cams.height}x{cams.width} images but the depth maps are "
                             f"{height}x{width}: scale the intrinsics to the depth size (SceneCameras.resized)")
        object.__setattr__(self, "depths", depths.to(torch.float32))
        for i in range(n):
            d = self.depths[i]
            if not torch.isfinite(d).all() or (d < 0).any():
                raise ValueError(f"frame {names[i]}: its depth holds NaN, infinite or negative values "
                                 f"(use 0 for pixels without depth)")
        if self.images is not None:
            images = self.images
            if not isinstance(images, torch.Tensor) or tuple(images.shape) != (n, height, width, 3):
                raise ValueError(f"images must be (n, H, W, 3) = ({n}, {height}, {width}, 3) like the depth, "
                                 f"got {describe_shape(images)}")
            object.__setattr__(self, "images", images.to(torch.float32))

    @property
    def num_frames(self) -> int:
        return self.depths.shape[0]

    @property
    def height(self) -> int:
        return self.depths.shape[1]

    @property
    def width(self) -> int:
        return self.depths.shape[2]

    def select(self, indices) -> "SceneFrames":
        """The frames ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        images = None if self.images is None else self.images[idx]
        return SceneFrames(self.depths[idx], self.cameras.select(idx), images, tuple(self.names[i] for i in idx))

    def resize(self, height: int, width: int, colour_mode: str = "bilinear") -> "SceneFrames":
        """These frames at ``height x width``: depth by nearest neighbour (OpenCV's ``INTER_NEAREST``), colour by
        ``colour_mode`` ("bilinear" as the official ``cv2.resize``, or "area"), K scaled to the new size."""
        check_size("resized frames", height, width)
        height, width = int(height), int(width)
        depths = resize_depths(self.depths, height, width)
        images = None if self.images is None else resize_images(self.images, height, width, colour_mode)
        return SceneFrames(depths, self.cameras.resized(height, width), images, self.names)


def nearest_indices(src: int, dst: int) -> torch.Tensor:
    """Source indices (dst,) long that OpenCV's ``INTER_NEAREST`` picks when resizing ``src`` pixels to ``dst``:
    ``floor(x * (1 / (dst / src)))`` in double precision (OpenCV's own arithmetic), clamped to ``src - 1``."""
    inverse_scale = 1.0 / (dst / src)
    idx = np.floor(np.arange(dst, dtype=np.float64) * inverse_scale).astype(np.int64)
    return torch.from_numpy(np.minimum(idx, src - 1))


def resize_depths(depths: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Depth maps (n, H, W) resized to (n, height, width) by nearest neighbour (OpenCV's ``INTER_NEAREST``):
    every output value is one of the input values."""
    rows = nearest_indices(depths.shape[-2], height)
    cols = nearest_indices(depths.shape[-1], width)
    return depths[:, rows][:, :, cols].contiguous()


def resize_images(images: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Images (n, H, W, 3) in [0, 1] resized to (n, height, width, 3): ``mode`` "bilinear" (half-pixel centres,
    no antialiasing, as ``cv2.INTER_LINEAR``) or "area" (box average). Same size: returned unchanged."""
    if mode not in COLOUR_MODES:
        raise ValueError(f"colour resize mode must be one of {COLOUR_MODES}, got {mode!r}")
    if tuple(images.shape[1:3]) == (height, width):
        return images
    x = images.permute(0, 3, 1, 2).float()
    if mode == "bilinear":
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    else:
        x = F.interpolate(x, size=(height, width), mode="area")
    return x.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def make_cameras(K: torch.Tensor, c2w: torch.Tensor, height: int, width: int, names, fix: str) -> SceneCameras:
    """SceneCameras of K (n, 3, 3) and camera-to-world c2w (n, 4, 4) (OpenCV axes) for ``height x width``
    images; SceneCameras' own ValueError (naming the frame: NaN, infinite or non-invertible pose, focal length
    <= 0) is re-raised with ``fix``, the format's way to repair it, appended."""
    try:
        return SceneCameras(K, c2w, int(height), int(width), tuple(names))
    except ValueError as err:
        raise ValueError(f"{err}: {fix}") from None


def check_principal_point(K: torch.Tensor, height: int, width: int, names, source: str) -> None:
    """Raise ValueError naming the frame when a K (n, 3, 3) cannot be for ``height x width`` images: its principal
    point outside the middle half of the image (``cx`` outside [W/4, 3W/4] or ``cy`` outside [H/4, 3H/4]), as
    happens with the intrinsics of another resolution (e.g. ScanNet's colour intrinsics for its depth images).
    ``source``: where the intrinsics came from, for the message."""
    for i in range(K.shape[0]):
        cx, cy = float(K[i, 0, 2]), float(K[i, 1, 2])
        if not (width / 4 <= cx <= 3 * width / 4 and height / 4 <= cy <= 3 * height / 4):
            raise ValueError(
                f"frame {names[i]}: the intrinsics ({source}) have their principal point at ({cx:g}, {cy:g}), "
                f"outside the middle of the {height}x{width} depth image: they are for images of another size; "
                f"give the intrinsics of the depth images (or scale them with scale_intrinsics)")


def check_intrinsics_size(size: tuple[int, int], depth_size: tuple[int, int], name: str, source: str) -> None:
    """Raise ValueError naming frame ``name`` unless intrinsics stated for ``size`` (height, width) images (in
    ``source``) match its depth image's ``depth_size`` (height, width)."""
    if tuple(int(s) for s in size) != tuple(int(s) for s in depth_size):
        raise ValueError(
            f"frame {name}: the intrinsics ({source}) are for {size[0]}x{size[1]} images but its depth image is "
            f"{depth_size[0]}x{depth_size[1]}: give the intrinsics of the depth images or depth maps of the "
            f"images' size")


def check_depth_units(depths: torch.Tensor, names, depth_scale: float, low: float = 1e-3,
                      high: float = 100.0) -> None:
    """Raise ValueError naming the first frame whose depth (n, H, W), already multiplied by ``depth_scale``,
    cannot be in metres: a median of its valid (> 0) depths above ``high`` metres (millimetres read as metres:
    the message says which ``depth_scale`` to use) or below ``low``. Frames without valid depth are skipped."""
    for i in range(depths.shape[0]):
        valid = depths[i][depths[i] > 0]
        if valid.numel() == 0:
            continue
        median = float(valid.median())
        if median > high:
            raise ValueError(
                f"frame {names[i]}: its median depth is {median:g} m with depth_scale={depth_scale:g}: that looks "
                f"like millimetres: set depth_scale to {depth_scale * 1e-3:g}")
        if median < low:
            raise ValueError(
                f"frame {names[i]}: its median depth is {median:g} m with depth_scale={depth_scale:g}: that looks "
                f"scaled twice (metres taken for millimetres): set depth_scale to {depth_scale * 1e3:g}")


def frames_without_depth(frames: SceneFrames) -> list[str]:
    """Names of the frames without a single valid (> 0) depth pixel (allowed, but nothing can correspond to
    them)."""
    valid = (frames.depths > 0).flatten(1).any(dim=1)
    return [frames.names[i] for i in range(frames.num_frames) if not bool(valid[i])]


def select_frames(items: list, start: int = 0, stride: int = 1, count: int | None = None) -> list:
    """``items[start::stride]``, at most ``count`` of them (None: all); ValueError when nothing is left."""
    if int(start) < 0 or int(stride) < 1 or (count is not None and int(count) < 1):
        raise ValueError(f"frame selection needs start >= 0, stride >= 1 and count >= 1 (or None), got "
                         f"start={start}, stride={stride}, count={count}")
    chosen = items[int(start)::int(stride)]
    if count is not None:
        chosen = chosen[:int(count)]
    if not chosen:
        raise ValueError(f"no frame left: {len(items)} frames, start={start}, stride={stride}")
    return chosen
