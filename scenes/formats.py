"""Which reader a path needs, and one entry point over all of them (the "Load Scene Frames" node).

* ``scannet``: a folder with ``depth/``, ``pose/`` and ``intrinsic/`` (``scenes/scannet.py``);
* ``nerfstudio``: a ``*.json`` file, or a folder holding ``transforms.json`` (``scenes/nerfstudio.py``);
* ``colmap``: a text model folder (``cameras.txt`` + ``images.txt``), or a workspace holding it in ``sparse/`` or
  ``sparse/0/`` (``scenes/colmap.py``). Without a depth folder, the workspace's ``stereo/depth_maps`` (next to the
  model or one level up, as COLMAP's ``dense/`` layout) is used, and its ``images/`` for colour when present.

Poses given as text for :func:`~comfyui_mvdiffusion.scenes.tensors.frames_from_tensors`: :func:`parse_poses`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .colmap import load_colmap
from .frames import SceneFrames
from .nerfstudio import load_nerfstudio
from .scannet import load_scannet

__all__ = ["SCENE_FORMATS", "DEFAULT_DEPTH_SCALE", "detect_scene_format", "colmap_model_dir", "load_scene_frames",
           "parse_poses"]

SCENE_FORMATS = ("auto", "scannet", "nerfstudio", "colmap")
# metres per depth unit when the user gives none (None: nerfstudio's per file type: 0.001 for PNG, 1 for .npy)
DEFAULT_DEPTH_SCALE = {"scannet": 0.001, "nerfstudio": None, "colmap": 1.0}


def colmap_model_dir(path: Path) -> Path | None:
    """The folder holding ``cameras.txt`` and ``images.txt``: ``path`` itself, ``path/sparse`` or
    ``path/sparse/0``; None when there is none."""
    for candidate in (path, path / "sparse", path / "sparse" / "0"):
        if (candidate / "cameras.txt").is_file() and (candidate / "images.txt").is_file():
            return candidate
    return None


def detect_scene_format(path: str | Path) -> str:
    """"scannet", "nerfstudio" or "colmap" for the layout at ``path`` (module docstring); ValueError saying what
    was expected when it is none of them."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "nerfstudio"
        raise ValueError(f"{path} is a file but not a transforms.json: give a ScanNet folder, a transforms.json or "
                         f"a COLMAP model folder")
    if (path / "transforms.json").is_file():
        return "nerfstudio"
    if (path / "depth").is_dir() and (path / "pose").is_dir():
        return "scannet"
    if colmap_model_dir(path) is not None:
        return "colmap"
    if any((path / s / "cameras.bin").is_file() for s in (".", "sparse", "sparse/0")):
        return "colmap"  # the reader explains how to convert a binary model
    raise ValueError(f"{path} is not a scene folder: expected depth/ and pose/ (ScanNet), transforms.json "
                     f"(nerfstudio / Instant-NGP) or cameras.txt + images.txt (COLMAP text model)")


def colmap_folders(path: Path, depth_path: str | Path | None) -> tuple[Path, Path, Path | None]:
    """(model folder, depth folder, colour folder or None) of a COLMAP path (module docstring)."""
    model = colmap_model_dir(path) or path
    roots = [model, model.parent, model.parent.parent, path]
    if depth_path:
        depth = Path(depth_path)
    else:
        depth = next((r / "stereo" / "depth_maps" for r in roots if (r / "stereo" / "depth_maps").is_dir()), None)
        if depth is None:
            raise ValueError(f"{path}: no depth folder given and no stereo/depth_maps next to the COLMAP model: "
                             f"give the folder of the dense depth maps (depth_path)")
    images = next((r / "images" for r in roots if (r / "images").is_dir()), None)
    return model, depth, images


def load_scene_frames(path: str | Path, scene_format: str = "auto", depth_scale: float | None = None,
                      start: int = 0, stride: int = 1, count: int | None = None,
                      depth_path: str | Path | None = None) -> SceneFrames:
    """The frames at ``path`` read by the reader of ``scene_format`` ("auto": :func:`detect_scene_format`) with
    each reader's defaults (colour when present, units checked for ScanNet and nerfstudio); ``depth_scale`` None:
    the format's default (:data:`DEFAULT_DEPTH_SCALE`). ``depth_path``: COLMAP's depth folder."""
    if scene_format not in SCENE_FORMATS:
        raise ValueError(f"format must be one of {SCENE_FORMATS}, got {scene_format!r}")
    path = Path(path)
    fmt = detect_scene_format(path) if scene_format == "auto" else scene_format
    scale = DEFAULT_DEPTH_SCALE[fmt] if depth_scale is None else float(depth_scale)
    select = dict(start=start, stride=stride, count=count)
    if fmt == "scannet":
        return load_scannet(path, depth_scale=scale, **select)
    if fmt == "nerfstudio":
        return load_nerfstudio(path, depth_scale=scale, **select)
    model, depth, images = colmap_folders(path, depth_path)
    return load_colmap(model, depth, images, depth_scale=scale, **select)


def parse_poses(text: str, base: Path | None = None) -> torch.Tensor:
    """Poses (n, 4, 4) or (n, 3, 4) float64 from ``text``: a JSON list of 4x4 or 3x4 matrices, or the path of a
    ``.json`` file holding one (a list, or an object with a "poses" list) or of a ``.npy`` array (n, 4, 4) /
    (n, 3, 4). Relative paths are tried against ``base`` too. ValueError saying what is wrong."""
    text = text.strip()
    if not text:
        raise ValueError("no poses given: a JSON list of 4x4 (or 3x4) matrices, or a .json / .npy file")
    if text.startswith(("[", "{")):
        source, values = "the poses text", _json(text, "the poses text")
    else:
        path = Path(text)
        if not path.is_absolute() and base is not None and not path.exists():
            path = Path(base) / path
        if not path.is_file():
            raise ValueError(f"poses: {text} is neither a JSON list of matrices nor an existing file")
        source = str(path)
        if path.suffix.lower() == ".npy":
            try:
                values = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise ValueError(f"poses: {path} cannot be read ({err})") from None
        else:
            values = _json(path.read_text(), str(path))
    if isinstance(values, dict):
        values = values.get("poses")
    try:
        poses = torch.as_tensor(np.asarray(values, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"{source} is not a list of 4x4 or 3x4 matrices of numbers") from None
    if poses.ndim == 2:
        poses = poses[None]
    if poses.ndim != 3 or tuple(poses.shape[1:]) not in ((4, 4), (3, 4)):
        raise ValueError(f"{source} holds an array of shape {tuple(poses.shape)}: expected (n, 4, 4) or (n, 3, 4)")
    return poses


def _json(text: str, source: str):
    try:
        return json.loads(text)
    except ValueError as err:
        raise ValueError(f"{source} is not valid JSON ({err})") from None
