"""A small synthetic scanned scene with known cameras, and writers of it in each format the readers take.

Three frames of 24x32 depth. A known world point ``POINT`` is seen by frame i at the integer pixel
``PIXELS[i]`` at depth ``DEPTHS[i]`` metres: each c2w is built from that (OpenCV axes, x = fx X/Z + cx), and
the depth map holds that depth at that pixel. Rotations are axis-angle (Rodrigues) and their quaternions are
written from the axis and angle directly, independently of the code under test.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 24, 32
FX, FY, CX, CY = 30.0, 28.0, 15.5, 11.5  # pixel centres at integers (ScanNet's convention)
POINT = np.array([0.3, -0.2, 2.0])
PIXELS = [(10, 7), (20, 15), (5, 18)]  # (x, y) of POINT in each frame
DEPTHS = [2.345, 3.1, 1.872]  # metres, whole millimetres
AXIS_ANGLES = [((0.0, 1.0, 0.0), 0.3), ((1.0, 0.0, 0.0), -0.2), ((0.6, 0.0, 0.8), 0.5)]


@dataclass
class Scene:
    K: np.ndarray  # (3, 3)
    c2w: np.ndarray  # (n, 4, 4) OpenCV axes, metres
    depths: np.ndarray  # (n, H, W) metres, whole millimetres, 0 = none
    colours: np.ndarray  # (n, H, W, 3) uint8


def rodrigues(axis, angle: float) -> np.ndarray:
    """Rotation matrix (3, 3) of ``angle`` radians about the unit vector ``axis``."""
    a = np.asarray(axis, dtype=np.float64)
    cross = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def quaternion_wxyz(axis, angle: float) -> list[float]:
    """The unit quaternion (w, x, y, z) of ``angle`` radians about ``axis`` (Hamilton)."""
    s = math.sin(angle / 2)
    return [math.cos(angle / 2), s * axis[0], s * axis[1], s * axis[2]]


def make_scene(seed: int = 0) -> Scene:
    """The scene: c2w of frame i puts POINT at PIXELS[i] at DEPTHS[i]; background depths 0.5-4 m, the first row
    without depth."""
    rng = np.random.default_rng(seed)
    K = np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1.0]])
    poses, depths = [], []
    for (x, y), z, (axis, angle) in zip(PIXELS, DEPTHS, AXIS_ANGLES):
        R = rodrigues(axis, angle)
        in_camera = z * np.linalg.inv(K) @ np.array([x, y, 1.0])
        c2w = np.eye(4)
        c2w[:3, :3] = R
        c2w[:3, 3] = POINT - R @ in_camera
        poses.append(c2w)
        depth = np.round(rng.uniform(0.5, 4.0, size=(H, W)), 3)
        depth[0] = 0
        depth[y, x] = z
        depths.append(depth)
    yy, xx = np.mgrid[0:H, 0:W]
    colours = np.stack([np.stack([xx * 255 / W, yy * 255 / H, np.full((H, W), 60.0 * (i + 1))], -1)
                        for i in range(len(PIXELS))]).round().astype(np.uint8)  # smooth: JPEG keeps it
    return Scene(K, np.stack(poses), np.stack(depths), colours)


def millimetres(depth: np.ndarray) -> np.ndarray:
    return np.round(depth * 1000).astype(np.uint16)


def write_png16(path: Path, depth: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(millimetres(depth)).save(path)


def write_colour(path: Path, colour: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(colour).save(path)


def write_scannet(root: Path, scene: Scene, ids=(0, 2, 10)) -> Path:
    """ScanNet layout: color/<id>.jpg, depth/<id>.png (mm), pose/<id>.txt, intrinsic/intrinsic_depth.txt."""
    (root / "pose").mkdir(parents=True)
    (root / "intrinsic").mkdir()
    K4 = np.eye(4)
    K4[:3, :3] = scene.K
    np.savetxt(root / "intrinsic" / "intrinsic_depth.txt", K4)
    np.savetxt(root / "intrinsic" / "intrinsic_color.txt", K4 * np.array([2, 2, 1, 1])[:, None])
    for i, frame_id in enumerate(ids):
        write_colour(root / "color" / f"{frame_id}.jpg", scene.colours[i])
        write_png16(root / "depth" / f"{frame_id}.png", scene.depths[i])
        np.savetxt(root / "pose" / f"{frame_id}.txt", scene.c2w[i])
    return root


def opengl(c2w: np.ndarray) -> np.ndarray:
    """OpenCV-axes camera-to-world -> OpenGL axes (the camera's y and z negated), written independently."""
    return c2w @ np.diag([1.0, -1.0, -1.0, 1.0])


def write_nerfstudio(root: Path, scene: Scene, npy: bool = False, per_frame: bool = False) -> Path:
    """transforms.json (OpenGL c2w; nerfstudio's corner pixel convention: cx + 0.5) with depth PNGs in mm, or
    .npy in metres; intrinsics global, or per frame."""
    intrinsics = {"fl_x": FX, "fl_y": FY, "cx": CX + 0.5, "cy": CY + 0.5, "w": W, "h": H}
    frames = []
    for i in range(len(PIXELS)):
        frame = {"file_path": f"images/frame_{i:04d}.png", "transform_matrix": opengl(scene.c2w[i]).tolist()}
        write_colour(root / frame["file_path"], scene.colours[i])
        if npy:
            frame["depth_file_path"] = f"depths/frame_{i:04d}.npy"
            (root / "depths").mkdir(parents=True, exist_ok=True)
            np.save(root / frame["depth_file_path"], scene.depths[i].astype(np.float32))
        else:
            frame["depth_file_path"] = f"depths/frame_{i:04d}.png"
            write_png16(root / frame["depth_file_path"], scene.depths[i])
        if per_frame:
            frame.update(intrinsics)
        frames.append(frame)
    meta = {"camera_model": "OPENCV", "frames": frames, **({} if per_frame else intrinsics)}
    (root / "transforms.json").write_text(json.dumps(meta, indent=1))
    return root


COLMAP_NAMES = ["b.jpg", "a.jpg", "c.jpg"]  # image ids 1, 2, 3; sorted by name: a, b, c


def write_colmap_bin(path: Path, depth: np.ndarray) -> None:
    """COLMAP's dense array format as its scripts/python/read_write_dense.py writes it: header
    ``width&height&channels&``, then the (width, height) transpose flattened in Fortran order, float32 LE."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = depth.shape
    data = np.transpose(depth.astype(np.float32), (1, 0)).reshape(-1, order="F")
    path.write_bytes(f"{width}&{height}&1&".encode() + data.astype("<f4").tobytes())


def write_colmap(root: Path, scene: Scene, npy: bool = False, unit: float = 1.0) -> Path:
    """sparse/cameras.txt (PINHOLE, corner convention), sparse/images.txt (w2c quaternion + t, then a 2D-points
    line, one of them empty), stereo/depth_maps/<NAME>.geometric.bin (or <NAME>.npy), images/<NAME>; lengths in
    units of ``unit`` metres (COLMAP's arbitrary scale)."""
    sparse = root / "sparse"
    sparse.mkdir(parents=True)
    (sparse / "cameras.txt").write_text(
        "# Camera list with one line of data per camera:\n"
        f"1 PINHOLE {W} {H} {FX} {FY} {CX + 0.5} {CY + 0.5}\n")
    lines = ["# Image list with two lines of data per image:", "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, "
             "CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
    for i, name in enumerate(COLMAP_NAMES):
        axis, angle = AXIS_ANGLES[i]
        qvec = quaternion_wxyz(axis, -angle)  # world-to-camera rotation = R^T
        tvec = -scene.c2w[i, :3, :3].T @ scene.c2w[i, :3, 3] / unit
        lines.append(" ".join(str(v) for v in [i + 1, *qvec, *tvec, 1, name]))
        lines.append("" if i == 1 else "12.5 3.5 -1 20.0 7.0 4")
        depth_dir = root / "stereo" / "depth_maps"
        if npy:
            depth_dir.mkdir(parents=True, exist_ok=True)
            np.save(depth_dir / f"{name}.npy", (scene.depths[i] / unit).astype(np.float32))
        else:
            write_colmap_bin(depth_dir / f"{name}.geometric.bin", scene.depths[i] / unit)
        write_colour(root / "images" / name, scene.colours[i])
    (sparse / "images.txt").write_text("\n".join(lines) + "\n")
    return root
