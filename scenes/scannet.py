"""ScanNet's exported scene folder (the layout the official ``src/dataset/Scannet.py`` reads):

* ``color/<id>.jpg``: colour (optional here; resized bilinearly to the depth size, as the official resizes both
  to one size and uses the depth intrinsics for both);
* ``depth/<id>.png``: uint16 depth in millimetres (``depth_scale`` 0.001 -> metres; 0 = no depth);
* ``pose/<id>.txt``: 4x4 camera-to-world in OpenCV axes, metres (frames without tracking hold ``-inf``);
* ``intrinsic/intrinsic_depth.txt``: 4x4, K = its top-left 3x3, for the depth images' size;
  ``intrinsic/intrinsic_color.txt`` (optional) is the colour camera's, for the colour images' size
  (:func:`read_scannet_intrinsics`), not used for the frames.

``<id>`` are integers; frames are sorted numerically (``2`` before ``10``), then selected with start, stride and
count.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .files import assemble_frames, read_colour, read_depth_png, read_matrix, require_file
from .frames import SceneFrames, select_frames

__all__ = ["scannet_frame_ids", "read_scannet_intrinsics", "load_scannet"]

POSE_FIX = "re-export the pose (4x4 camera-to-world) or leave the frame out (start/stride/count, skip_invalid_poses)"
INTRINSIC_FIX = "copy intrinsic/intrinsic_depth.txt from the ScanNet export (a 4x4 matrix, K in its top-left 3x3)"


def scannet_frame_ids(folder: str | Path) -> list[str]:
    """The frame ids of a ScanNet folder: the integer file names in ``color/``, ``depth/`` and ``pose/`` (their
    union, so that a frame missing one of its files is reported, not skipped), sorted numerically."""
    folder = Path(folder)
    ids = set()
    for sub, suffix in (("color", ".jpg"), ("depth", ".png"), ("pose", ".txt")):
        if (folder / sub).is_dir():
            ids.update(p.stem for p in (folder / sub).iterdir() if p.suffix.lower() == suffix and p.stem.isdigit())
    if not ids:
        raise ValueError(f"{folder} holds no ScanNet frames: expected depth/<id>.png and pose/<id>.txt "
                         f"(and color/<id>.jpg)")
    return sorted(ids, key=int)


def read_scannet_intrinsics(folder: str | Path, which: str = "depth") -> torch.Tensor:
    """K (3, 3) float64 of ``intrinsic/intrinsic_<which>.txt`` (``which``: "depth" or "color"): the top-left 3x3
    of its 4x4 (or its 3x3) matrix, in pixels of that sensor's images."""
    if which not in ("depth", "color"):
        raise ValueError(f"which must be 'depth' or 'color', got {which!r}")
    path = Path(folder) / "intrinsic" / f"intrinsic_{which}.txt"
    return read_matrix(path, None, "intrinsics", INTRINSIC_FIX, shapes=((4, 4), (3, 3)))[:3, :3]


def read_scannet_pose(folder: Path, frame_id: str) -> torch.Tensor:
    """c2w (4, 4) float64 of ``pose/<id>.txt`` (OpenCV axes, metres; may hold ``-inf`` for untracked frames)."""
    return read_matrix(folder / "pose" / f"{frame_id}.txt", frame_id, "pose", POSE_FIX)


def load_scannet(folder: str | Path, start: int = 0, stride: int = 1, count: int | None = None,
                 depth_scale: float = 0.001, load_colour: bool = True, skip_invalid_poses: bool = False,
                 check_units: bool = True) -> SceneFrames:
    """The frames of a ScanNet folder as SceneFrames at the depth images' size.

    ``start``, ``stride``, ``count``: which of the numerically sorted frames (``ids[start::stride][:count]``).
    ``depth_scale``: metres per depth PNG unit (0.001: millimetres). ``load_colour``: read ``color/<id>.jpg``
    when a ``color/`` folder exists (else ``images`` is None). ``skip_invalid_poses``: leave out frames whose
    pose holds non-finite values (ScanNet's mark of an untracked frame; the official dataset resamples
    those) instead of raising. ``check_units``: raise when the depths do not look like metres.
    Raises ValueError naming the frame and the fix for a missing or unreadable file, a non-invertible pose,
    intrinsics of another image size and millimetres read as metres."""
    folder = Path(folder)
    K = read_scannet_intrinsics(folder, "depth")
    names, poses = [], []
    for frame_id in select_frames(scannet_frame_ids(folder), start, stride, count):
        pose = read_scannet_pose(folder, frame_id)
        if skip_invalid_poses and not torch.isfinite(pose).all():
            continue
        names.append(frame_id)
        poses.append(pose)
    if not names:
        raise ValueError(f"{folder}: every selected frame has an invalid pose")
    depths = [read_depth_png(require_file(folder / "depth" / f"{i}.png", i, "depth image",
                                          "export its depth or leave the frame out (start/stride/count)"),
                             i, depth_scale) for i in names]
    images = None
    if load_colour and (folder / "color").is_dir():
        height, width = depths[0].shape
        images = [read_colour(require_file(folder / "color" / f"{i}.jpg", i, "colour image",
                                           "export it, or load without colour (load_colour=False)"),
                              i, height, width) for i in names]
    return assemble_frames(depths, K.expand(len(names), 3, 3), torch.stack(poses), names, POSE_FIX, depth_scale,
                           images, source="intrinsic/intrinsic_depth.txt", check_units=check_units)
