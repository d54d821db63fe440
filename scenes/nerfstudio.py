"""nerfstudio / Instant-NGP ``transforms.json`` with depth maps.

* ``frames[i].transform_matrix``: camera-to-world (4x4 or 3x4) in **OpenGL** camera axes (x right, y up,
  z backward), converted to OpenCV axes with :func:`~comfyui_mvdiffusion.geometry.scene.c2w_from_opengl`
  (``axes="opencv"`` for the files some exporters write in OpenCV axes already).
* Intrinsics in pixels, global or per frame (a frame's keys override the global ones): ``fl_x`` (``fl_y``
  defaults to ``fl_x``), or ``camera_angle_x`` (``fx = w / 2 / tan(angle / 2)``; Blender NeRF), ``cx``, ``cy``
  (default ``w / 2``, ``h / 2``), ``w``, ``h`` (the size they are for: must be the depth maps' size).
  nerfstudio and Instant-NGP put the centre of the top-left pixel at (0.5, 0.5) (rays through ``x + 0.5``):
  cx, cy - 0.5 give our convention (pixel centres at integers).
  Distortion coefficients (``k1``, ``k2``, ``p1``, ``p2``...) are ignored: the images are taken as pinhole.
* ``frames[i].depth_file_path``: a 16-bit PNG (nerfstudio's ``depth_unit_scale_factor`` = ``depth_scale``,
  default 0.001: millimetres) or a float ``.npy`` (default ``depth_scale`` 1: metres).
* ``frames[i].file_path``: the colour image (resized bilinearly to the depth size).

Paths are relative to the folder of ``transforms.json``; frames keep the file's order, then start, stride and
count select them. A frame is named by its ``file_path``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..geometry.scene import c2w_from_opengl
from .files import assemble_frames, from_corner_convention, read_colour, read_depth_file, require_file
from .frames import SceneFrames, check_intrinsics_size, select_frames

__all__ = ["read_transforms", "frame_intrinsics", "load_nerfstudio"]

AXES = ("opengl", "opencv")
POSE_FIX = "fix its transform_matrix in transforms.json (a 4x4 camera-to-world) or leave the frame out"
DEFAULT_DEPTH_SCALE = {".png": 0.001, ".npy": 1.0}


def read_transforms(path: str | Path) -> dict:
    """The parsed ``transforms.json`` (a path to the file or to its folder); ValueError when it is not JSON
    with a non-empty ``frames`` list."""
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing: point to a nerfstudio transforms.json or its folder")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise ValueError(f"{path} has no 'frames' list: not a nerfstudio / Instant-NGP transforms.json")
    meta["_path"] = path
    return meta


def frame_name(frame: dict, index: int) -> str:
    """A frame's name in messages: its ``file_path``, else its index in ``frames``."""
    return str(frame.get("file_path", index))


def frame_intrinsics(meta: dict, frame: dict, name: str, depth_size: tuple[int, int]) -> torch.Tensor:
    """K (3, 3) float64 of one frame from its keys and the global ones, in pixels of the depth image
    (``depth_size`` (height, width)), pixel centres at integers; ValueError naming the frame when there is no
    focal length or the stated ``w``, ``h`` are not the depth's size."""
    keys = {**meta, **frame}
    height, width = depth_size
    w, h = float(keys.get("w", width)), float(keys.get("h", height))
    check_intrinsics_size((int(h), int(w)), depth_size, name, "w, h in transforms.json")
    if "fl_x" in keys:
        fx = float(keys["fl_x"])
    elif "camera_angle_x" in keys:
        fx = 0.5 * w / math.tan(0.5 * float(keys["camera_angle_x"]))
    else:
        raise ValueError(f"frame {name}: transforms.json gives no focal length: add fl_x (pixels) or "
                         f"camera_angle_x (radians)")
    if "fl_y" in keys:
        fy = float(keys["fl_y"])
    elif "camera_angle_y" in keys:
        fy = 0.5 * h / math.tan(0.5 * float(keys["camera_angle_y"]))
    else:
        fy = fx
    cx, cy = float(keys.get("cx", w / 2)), float(keys.get("cy", h / 2))
    return from_corner_convention(torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]],
                                               dtype=torch.float64))


def frame_pose(frame: dict, name: str, axes: str) -> torch.Tensor:
    """c2w (4, 4) float64 in OpenCV axes of a frame's ``transform_matrix`` (4x4 or 3x4, in ``axes``)."""
    try:
        matrix = torch.tensor(frame["transform_matrix"], dtype=torch.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"frame {name}: its transform_matrix is missing or not a matrix of numbers ({err}): "
                         f"{POSE_FIX}") from None
    if tuple(matrix.shape) not in ((4, 4), (3, 4)):
        raise ValueError(f"frame {name}: its transform_matrix has shape {tuple(matrix.shape)}, expected 4x4 or "
                         f"3x4: {POSE_FIX}")
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3] = matrix[:3]
    return c2w_from_opengl(c2w) if axes == "opengl" else c2w


def frame_file(root: Path, frame: dict, key: str, name: str, what: str, fix: str) -> Path:
    """The existing file named by ``frame[key]`` relative to ``root`` (trying ``.png`` for a path without a
    suffix, as Blender NeRF writes); ValueError naming the frame and ``fix`` otherwise."""
    if key not in frame:
        raise ValueError(f"frame {name}: it has no {key} in transforms.json: {fix}")
    path = root / str(frame[key])
    if not path.suffix and not path.is_file() and path.with_suffix(".png").is_file():
        path = path.with_suffix(".png")
    return require_file(path, name, what, fix)


def load_nerfstudio(path: str | Path, start: int = 0, stride: int = 1, count: int | None = None,
                    depth_scale: float | None = None, load_colour: bool = True, axes: str = "opengl",
                    check_units: bool = True) -> SceneFrames:
    """The frames of a ``transforms.json`` (the file or its folder) as SceneFrames at the depth maps' size.

    ``depth_scale``: metres per depth unit; None: 0.001 for 16-bit PNGs (millimetres), 1 for ``.npy``.
    ``axes``: the camera axes of ``transform_matrix``, "opengl" (nerfstudio, Instant-NGP, NeRF) or "opencv".
    ``load_colour``: also read ``file_path`` (resized to the depth size). ``check_units``: raise when the depths
    do not look like metres. Raises ValueError naming the frame and the fix for a frame without depth, an
    unreadable or non-invertible pose, intrinsics for another size than the depth, millimetres read as metres."""
    if axes not in AXES:
        raise ValueError(f"axes must be one of {AXES}, got {axes!r}")
    meta = read_transforms(path)
    root = meta["_path"].parent
    chosen = select_frames(list(enumerate(meta["frames"])), start, stride, count)
    names, depths, Ks, poses, images = [], [], [], [], []
    scales = set()
    for index, frame in chosen:
        name = frame_name(frame, index)
        depth_path = frame_file(root, frame, "depth_file_path", name, "depth map",
                                "add depth_file_path (a 16-bit PNG in millimetres or a float .npy) to the frame")
        scale = DEFAULT_DEPTH_SCALE.get(depth_path.suffix.lower(), 1.0) if depth_scale is None else depth_scale
        scales.add(scale)
        depth = read_depth_file(depth_path, name, scale)
        names.append(name)
        depths.append(depth)
        Ks.append(frame_intrinsics(meta, frame, name, tuple(depth.shape)))
        poses.append(frame_pose(frame, name, axes))
        if load_colour:
            colour = frame_file(root, frame, "file_path", name, "colour image",
                                "fix file_path, or load without colour (load_colour=False)")
            images.append(read_colour(colour, name, *depth.shape))
    return assemble_frames(depths, torch.stack(Ks), torch.stack(poses), names, POSE_FIX,
                           scales.pop() if len(scales) == 1 else 1.0, images if load_colour else None,
                           source="transforms.json", check_units=check_units)
