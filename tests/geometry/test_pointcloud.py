"""Back-projection of depth maps into world points against the closed form, and the binary .ply layout."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from comfyui_mvdiffusion.geometry.pointcloud import backproject, ply_bytes, y_up

K = torch.tensor([[20.0, 0.0, 7.5], [0.0, 24.0, 5.5], [0.0, 0.0, 1.0]])


def read_ply(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(points (p, 3) float32, colours (p, 3) uint8) of a binary little-endian x y z float + rgb uchar .ply."""
    header, body = data.split(b"end_header\n", 1)
    lines = header.decode("ascii").splitlines()
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    count = int(next(line.split()[2] for line in lines if line.startswith("element vertex")))
    assert [line.split()[1:] for line in lines if line.startswith("property")] == [
        ["float", "x"], ["float", "y"], ["float", "z"], ["uchar", "red"], ["uchar", "green"], ["uchar", "blue"]]
    vertex = np.frombuffer(body, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"),
                                        ("b", "u1")], count=count)
    assert len(body) == count * 15
    return (np.stack([vertex["x"], vertex["y"], vertex["z"]], -1),
            np.stack([vertex["r"], vertex["g"], vertex["b"]], -1))


def test_a_flat_wall_seen_by_an_identity_camera_lands_at_its_depth_with_the_pinhole_x_and_y():
    depth = torch.full((1, 12, 16), 2.5)
    points = backproject(depth, K[None], torch.eye(4)[None])
    assert points.shape == (1, 12, 16, 3)
    assert torch.all(points[..., 2] == 2.5)
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(16.0), indexing="ij")
    assert torch.allclose(points[0, ..., 0], 2.5 * (xs - 7.5) / 20.0)
    assert torch.allclose(points[0, ..., 1], 2.5 * (ys - 5.5) / 24.0)


def test_points_are_moved_by_the_camera_to_world_pose_and_strided_from_pixel_0():
    angle = 0.4
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0],
                                [-math.sin(angle), 0, math.cos(angle)]])
    c2w[:3, 3] = torch.tensor([1.0, -2.0, 0.5])
    depth = torch.rand(1, 12, 16, dtype=torch.float64) + 0.5
    points = backproject(depth, K[None], c2w[None], every=3)
    assert points.shape == (1, 4, 6, 3)
    for y, x in [(0, 0), (3, 9), (9, 15)]:
        d = float(depth[0, y, x])
        camera = torch.tensor([d * (x - 7.5) / 20, d * (y - 5.5) / 24, d, 1.0], dtype=torch.float64)
        assert torch.allclose(points[0, y // 3, x // 3].double(), (c2w @ camera)[:3], atol=1e-6)


def test_y_up_is_a_half_turn_about_x():
    p = torch.tensor([[1.0, 2.0, 3.0]])
    assert y_up(p).tolist() == [[1.0, -2.0, -3.0]]


def test_the_ply_holds_the_points_and_the_rounded_colours_in_order():
    points = torch.tensor([[0.5, -1.25, 3.0], [1e-3, 2.0, -4.5]])
    colours = torch.tensor([[0.0, 0.5, 1.0], [0.2, 1.2, -0.1]])
    xyz, rgb = read_ply(ply_bytes(points, colours))
    assert np.array_equal(xyz, points.numpy())
    assert rgb.tolist() == [[0, 128, 255], [51, 255, 0]]


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        backproject(torch.ones(2, 4, 4), K[None], torch.eye(4)[None])
    with pytest.raises(ValueError, match="every must be >= 1"):
        backproject(torch.ones(1, 4, 4), K[None], torch.eye(4)[None], every=0)
    with pytest.raises(ValueError, match=r"\(p, 3\)"):
        ply_bytes(torch.zeros(2, 3), torch.zeros(3, 3))
