"""A COLMAP text model (``cameras.txt``, ``images.txt``) with per-image depth maps.

* ``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]``. Models read: ``PINHOLE`` (fx fy cx cy),
  ``SIMPLE_PINHOLE`` (f cx cy), ``OPENCV`` (fx fy cx cy k1 k2 p1 p2), ``SIMPLE_RADIAL`` (f cx cy k),
  ``RADIAL`` (f cx cy k1 k2). **Distortion is ignored** (a warning says so when it is not zero): the frames are
  pinhole; undistort first (``colmap image_undistorter`` writes PINHOLE cameras, and the dense depth maps are
  of the undistorted images). COLMAP puts the centre of the top-left pixel at (0.5, 0.5): cx, cy - 0.5 give
  our convention (pixel centres at integers).
* ``images.txt``: two lines per image: ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` (world-to-camera,
  OpenCV axes: :func:`~comfyui_mvdiffusion.geometry.scene.rotation_from_quaternion`, then
  :func:`~comfyui_mvdiffusion.geometry.scene.c2w_from_w2c`), then the image's 2D points (possibly empty; not
  read). Frames are sorted by NAME and named by it.
* Depth maps in ``depth_dir``: COLMAP's dense ``<NAME>.geometric.bin`` (or ``.photometric.bin``): an ASCII header
  ``width&height&channels&`` then float32 little-endian values, the array (width, height, channels) in
  column-major (Fortran) order, i.e. row after row of the image; or a float ``<NAME>.npy`` / ``<stem>.npy``.

COLMAP's units are the reconstruction's arbitrary scale: ``depth_scale`` (metres per COLMAP unit) multiplies
both the depths and the camera positions, so that depth and poses stay consistent.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..geometry.scene import c2w_from_w2c, rotation_from_quaternion
from .files import assemble_frames, from_corner_convention, read_colour, read_depth_npy
from .frames import SceneFrames, check_intrinsics_size, select_frames

__all__ = ["read_colmap_cameras", "read_colmap_images", "read_colmap_depth", "load_colmap"]

# model name -> (number of parameters, (fx, fy, cx, cy) indices into them); the rest is distortion
CAMERA_MODELS = {"SIMPLE_PINHOLE": (3, (0, 0, 1, 2)), "PINHOLE": (4, (0, 1, 2, 3)),
                 "SIMPLE_RADIAL": (4, (0, 0, 1, 2)), "RADIAL": (5, (0, 0, 1, 2)), "OPENCV": (8, (0, 1, 2, 3))}
POSE_FIX = "fix its line in images.txt (QW QX QY QZ TX TY TZ, a unit quaternion) or leave the image out"
TEXT_FIX = "convert a binary model with `colmap model_converter --output_type TXT`"


def model_lines(path: Path) -> list[str]:
    """The lines of a COLMAP text file without its ``#`` comment lines (empty lines kept: an image's 2D-points
    line may be empty)."""
    if not path.is_file():
        raise ValueError(f"{path} is missing: point to a COLMAP text model folder ({TEXT_FIX})")
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


def read_colmap_cameras(path: str | Path) -> dict[int, dict]:
    """``cameras.txt`` -> {camera_id: {"model", "width", "height", "K" (3, 3) float64 pixels (our pixel-centre
    convention), "distortion"}}."""
    path = Path(path)
    cameras = {}
    for line in model_lines(path):
        fields = line.split()
        if not fields:
            continue
        model = fields[1] if len(fields) > 1 else ""
        if model not in CAMERA_MODELS:
            raise ValueError(f"{path}: camera {fields[0]} has model {model!r}; supported: "
                             f"{', '.join(CAMERA_MODELS)} (undistort with colmap image_undistorter for PINHOLE)")
        count, (ifx, ify, icx, icy) = CAMERA_MODELS[model]
        try:
            camera_id, width, height = int(fields[0]), int(fields[2]), int(fields[3])
            params = [float(v) for v in fields[4:]]
        except (ValueError, IndexError):
            raise ValueError(f"{path}: cannot read the line {line!r}") from None
        if len(params) != count:
            raise ValueError(f"{path}: camera {camera_id} ({model}) has {len(params)} parameters, expected {count}")
        K = torch.tensor([[params[ifx], 0.0, params[icx]], [0.0, params[ify], params[icy]], [0.0, 0.0, 1.0]],
                         dtype=torch.float64)
        cameras[camera_id] = {"model": model, "width": width, "height": height,
                              "K": from_corner_convention(K), "distortion": params[max(ifx, ify, icx, icy) + 1:]}
    if not cameras:
        raise ValueError(f"{path} holds no camera")
    return cameras


def read_colmap_images(path: str | Path) -> list[dict]:
    """``images.txt`` -> [{"name", "camera_id", "w2c" (4, 4) float64 OpenCV axes}], sorted by name."""
    path = Path(path)
    lines = model_lines(path)
    images, i = [], 0
    while i < len(lines):
        fields = lines[i].split()
        if not fields:
            i += 1
            continue
        name = " ".join(fields[9:]) or (fields[0] if fields else "?")
        try:
            qvec = torch.tensor([float(v) for v in fields[1:5]], dtype=torch.float64)
            tvec = torch.tensor([float(v) for v in fields[5:8]], dtype=torch.float64)
            camera_id = int(fields[8])
        except (ValueError, IndexError):
            raise ValueError(f"frame {name}: cannot read its line in {path} ({lines[i]!r}): {POSE_FIX}") from None
        if len(fields) < 10 or not torch.isfinite(qvec).all() or float(qvec.norm()) < 1e-8:
            raise ValueError(f"frame {name}: its line in {path} needs IMAGE_ID, a non-zero quaternion, TX TY TZ, "
                             f"CAMERA_ID and NAME: {POSE_FIX}")
        w2c = torch.eye(4, dtype=torch.float64)
        w2c[:3, :3] = rotation_from_quaternion(qvec)
        w2c[:3, 3] = tvec
        images.append({"name": name, "camera_id": camera_id, "w2c": w2c})
        i += 2  # the image's 2D-points line follows (possibly empty)
    if not images:
        raise ValueError(f"{path} holds no image")
    return sorted(images, key=lambda image: image["name"])


def read_colmap_array(path: Path, name: str) -> np.ndarray:
    """A COLMAP dense array file (``.bin``: ``width&height&channels&`` + float32 little-endian, (width, height,
    channels) in Fortran order) as (height, width, channels) float32."""
    data = Path(path).read_bytes()
    header, position = [], 0
    while len(header) < 3:
        end = data.find(b"&", position)
        if end < 0:
            break
        header.append(data[position:end])
        position = end + 1
    try:
        width, height, channels = (int(v) for v in header)
    except ValueError:
        header = []
    if len(header) != 3 or width < 1 or height < 1 or channels < 1 \
            or len(data) - position != 4 * width * height * channels:
        raise ValueError(f"frame {name}: its depth map {path} is not a COLMAP dense array (header "
                         f"width&height&channels& then float32 values): re-run patch_match_stereo or give a .npy")
    values = np.frombuffer(data, dtype="<f4", offset=position)
    return values.reshape((width, height, channels), order="F").transpose(1, 0, 2).astype(np.float32)


def read_colmap_depth(depth_dir: str | Path, name: str, depth_scale: float = 1.0,
                      kind: str = "geometric") -> torch.Tensor:
    """The depth map (H, W) float32 of image ``name`` in ``depth_dir``, times ``depth_scale``: the first of
    ``<name>.<kind>.bin``, ``<name>.npy``, ``<stem>.npy`` that exists; non-finite or negative values -> 0."""
    depth_dir = Path(depth_dir)
    candidates = [depth_dir / f"{name}.{kind}.bin", depth_dir / f"{name}.npy",
                  depth_dir / f"{Path(name).stem}.npy"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise ValueError(f"frame {name}: its depth map is missing (looked for {', '.join(map(str, candidates))}): "
                         f"run colmap patch_match_stereo or save a float .npy per image")
    if path.suffix == ".bin":
        array = read_colmap_array(path, name)
        if array.shape[2] != 1:
            raise ValueError(f"frame {name}: {path} has {array.shape[2]} channels, a depth map has 1")
        depth = torch.from_numpy(array[..., 0].astype(np.float64) * float(depth_scale)).to(torch.float32)
    else:
        depth = read_depth_npy(path, name, depth_scale)
    return torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.zeros(()))


def warn_distortion(camera_id: int, camera: dict) -> None:
    """Say that a camera's non-zero distortion coefficients are ignored."""
    if any(abs(k) > 0 for k in camera["distortion"]):
        warnings.warn(f"COLMAP camera {camera_id} ({camera['model']}) has distortion {camera['distortion']}: "
                      f"ignored (read as a pinhole camera); undistort the images with colmap image_undistorter "
                      f"for exact geometry", stacklevel=3)


def load_colmap(model_dir: str | Path, depth_dir: str | Path, image_dir: str | Path | None = None,
                start: int = 0, stride: int = 1, count: int | None = None, depth_scale: float = 1.0,
                depth_kind: str = "geometric", check_units: bool = False) -> SceneFrames:
    """The images of a COLMAP text model with their depth maps as SceneFrames at the depth maps' size.

    ``model_dir``: holds ``cameras.txt`` and ``images.txt``. ``depth_dir``: e.g. ``dense/stereo/depth_maps``.
    ``image_dir``: the colour images (``<image_dir>/<NAME>``, resized to the depth size), or None.
    ``depth_scale``: metres per COLMAP unit, applied to the depths and to the camera positions.
    ``depth_kind``: "geometric" or "photometric" dense maps. ``check_units``: raise when the scaled depths do
    not look like metres (off by default: COLMAP's scale is arbitrary). Raises ValueError naming the frame and
    the fix (missing depth, unreadable or non-invertible pose, camera size other than the depth's)."""
    model_dir = Path(model_dir)
    if not (model_dir / "cameras.txt").is_file() and (model_dir / "cameras.bin").is_file():
        raise ValueError(f"{model_dir} holds a binary COLMAP model: {TEXT_FIX}")
    cameras = read_colmap_cameras(model_dir / "cameras.txt")
    chosen = select_frames(read_colmap_images(model_dir / "images.txt"), start, stride, count)
    names, depths, Ks, poses, images = [], [], [], [], []
    for image in chosen:
        name, camera = image["name"], cameras.get(image["camera_id"])
        if camera is None:
            raise ValueError(f"frame {name}: its camera {image['camera_id']} is not in cameras.txt: {POSE_FIX}")
        warn_distortion(image["camera_id"], camera)
        depth = read_colmap_depth(depth_dir, name, depth_scale, depth_kind)
        check_intrinsics_size((camera["height"], camera["width"]), tuple(depth.shape), name,
                              f"camera {image['camera_id']} in cameras.txt")
        c2w = c2w_from_w2c(image["w2c"])
        c2w[:3, 3] *= float(depth_scale)
        names.append(name)
        depths.append(depth)
        Ks.append(camera["K"])
        poses.append(c2w)
        if image_dir is not None:
            images.append(read_colour(Path(image_dir) / name, name, *depth.shape))
    return assemble_frames(depths, torch.stack(Ks), torch.stack(poses), names, POSE_FIX, depth_scale,
                           images if image_dir is not None else None, source="cameras.txt", check_units=check_units)
