"""Depth correspondences, overlaps, neighbours and key frames, checked on a room rendered in closed form here:
cameras inside an axis-aligned box, every pixel's depth (along the optical axis) is where its ray first hits a
wall, so the 3D point behind each pixel, and where it must appear in another camera, are known exactly."""
from __future__ import annotations

import math

import pytest
import torch

from comfyui_mvdiffusion.geometry import depth_correspondences as dc
from comfyui_mvdiffusion.geometry.depth_correspondences import (depth_correspondences, depth_neighbours,
                                                                depth_overlap, in_between_frames, overlap_ratios,
                                                                pair_correspondences, select_key_frames,
                                                                views_without_overlap)
from comfyui_mvdiffusion.geometry.scene import SceneCameras

H, W = 48, 64
K64 = torch.tensor([[32.0, 0.0, 31.5], [0.0, 32.0, 23.5], [0.0, 0.0, 1.0]], dtype=torch.float64)  # 90° wide
ROOM = (-2.0, -1.5, -3.0), (2.0, 1.5, 3.0)  # metres


def pose(yaw_deg: float, position) -> torch.Tensor:
    """Camera-to-world (4, 4) float64: turned by ``yaw_deg`` about the world's y axis, at ``position``."""
    a = math.radians(yaw_deg)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]],
                               dtype=torch.float64)
    c2w[:3, 3] = torch.tensor(position, dtype=torch.float64)
    return c2w


def render_depth(c2w: torch.Tensor, room=ROOM) -> torch.Tensor:
    """(H, W) float64 depth of the box's walls seen from inside: the ray of pixel (x, y) is
    ``R K^-1 [x, y, 1]`` (z component 1 in the camera, so the ray parameter at the first wall is the depth)."""
    lo, hi = (torch.tensor(v, dtype=torch.float64) for v in room)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    rays = torch.stack([(xs - K64[0, 2]) / K64[0, 0], (ys - K64[1, 2]) / K64[1, 1], torch.ones_like(xs)], dim=-1)
    rays = rays @ c2w[:3, :3].T
    origin = c2w[:3, 3]
    to_wall = torch.where(rays > 0, (hi - origin) / rays, (lo - origin) / rays)
    to_wall = torch.where(rays == 0, torch.full_like(to_wall, math.inf), to_wall)
    return to_wall.min(dim=-1).values


def scene(cameras, room=ROOM):
    """(depths (n, H, W) float32, SceneCameras, c2w float64) of cameras ``[(yaw, position), ...]``."""
    c2w = torch.stack([pose(yaw, pos) for yaw, pos in cameras])
    depths = torch.stack([render_depth(c, room) for c in c2w]).float()
    return depths, SceneCameras(K64.float().expand(len(cameras), 3, 3), c2w.float(), H, W), c2w


def closed_form_projection(depth: torch.Tensor, c2w_i: torch.Tensor, c2w_j: torch.Tensor):
    """The wall point behind each pixel of view i (float64), projected into view j: ((H, W, 2) pixels, (H, W)
    depth in view j)."""
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    cam = torch.stack([(xs - K64[0, 2]) / K64[0, 0], (ys - K64[1, 2]) / K64[1, 1], torch.ones_like(xs)], dim=-1)
    world = (cam * depth.double()[..., None]) @ c2w_i[:3, :3].T + c2w_i[:3, 3]
    in_j = (world - c2w_j[:3, 3]) @ c2w_j[:3, :3]  # R_j^T (P - t_j), row vectors
    pix = in_j @ K64.T
    return pix[..., :2] / pix[..., 2:], in_j[..., 2]


ROOM_CAMERAS = [(0.0, (0.0, 0.0, 0.0)), (20.0, (0.4, 0.2, 0.3)), (-35.0, (-0.5, -0.3, 0.6)), (100.0, (0.2, 0.0, -1.0))]


def test_correspondences_are_the_wall_points_projected_into_the_other_camera():
    depths, cameras, c2w = scene(ROOM_CAMERAS)
    corr = depth_correspondences(depths, cameras)
    assert corr.shape == (4, 4, H, W, 2) and corr.dtype == torch.float32
    checked = 0
    for i in range(4):
        for j in range(4):
            expected, z = closed_form_projection(depths[i], c2w[i], c2w[j])
            # where the point is in front and lands within an image's size of view j (elsewhere the 1e-6 added
            # to z and float32 rounding scale with the huge coordinates of points near the camera plane)
            near = (expected[..., 0].abs() < 2 * W) & (expected[..., 1].abs() < 2 * H)
            front = (z > 0.5) & near
            err = (corr[i, j].double() - expected)[front].abs()
            # float32 depths (relative error 6e-8 at <= 6 m) and a float32 pipeline: far below a pixel
            assert err.numel() == 0 or err.max() < 1e-3, (i, j, float(err.max()))
            checked += int(front.sum())
    assert checked > 6 * H * W  # the pairs do see each other's walls


def test_a_shifted_pose_gives_correspondences_that_miss_the_wall_points():
    depths, cameras, c2w = scene(ROOM_CAMERAS[:2])
    moved = cameras.c2w.clone()
    moved[1, 0, 3] += 0.1  # camera 1 believed 10 cm to the right of where its depth was rendered
    wrong = depth_correspondences(depths, SceneCameras(cameras.K, moved, H, W))
    expected, z = closed_form_projection(depths[0], c2w[0], c2w[1])
    front = z > 0.1
    err = (wrong[0, 1].double() - expected)[front].abs().amax(dim=-1)
    assert (err > 0.5).float().mean() > 0.95  # 10 cm at <= 6 m with f = 32 px: about a pixel or more


def test_pixels_without_depth_land_at_minus_a_million_and_a_view_maps_onto_itself():
    depths, cameras, _ = scene(ROOM_CAMERAS[:2])
    depths[0, 5:9, 10:20] = 0
    corr = depth_correspondences(depths, cameras)
    assert (corr[0, :, 5:9, 10:20] == -1e6).all()
    assert (corr[0, :, :5] != -1e6).all()
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")
    assert torch.allclose(corr[1, 1], torch.stack([xs, ys], dim=-1), atol=1e-3)


def test_projecting_in_chunks_of_pairs_gives_the_same_bits_as_all_at_once(monkeypatch):
    depths, cameras, _ = scene(ROOM_CAMERAS)
    whole = depth_correspondences(depths, cameras)
    monkeypatch.setattr(dc, "_POINTS_PER_CHUNK", 3 * H * W)  # 3 pairs per chunk
    assert torch.equal(depth_correspondences(depths, cameras), whole)
    assert torch.equal(pair_correspondences(depths, cameras, [3, 0], [1, 2]), whole[[3, 0], [1, 2]])


def test_a_host_selected_reduced_matmul_precision_does_not_change_the_correspondences_and_is_restored():
    depths, cameras, _ = scene(ROOM_CAMERAS)
    exact = depth_correspondences(depths, cameras)
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # as the official train.py / test.py (bf16 inputs where supported)
    try:
        assert torch.equal(depth_correspondences(depths, cameras), exact)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(saved)


def test_cameras_looking_the_same_way_are_neighbours_and_one_across_the_room_facing_back_is_not():
    depths, cameras, _ = scene([(0.0, (0.0, 0.0, -2.0)), (15.0, (0.3, 0.0, -1.8)), (180.0, (0.0, 0.0, 2.0))])
    overlap = depth_overlap(depths, cameras)
    assert overlap[0, 1] > 0.3 and overlap[2, 0] < 0.3 and overlap[2, 1] < 0.3
    assert depth_neighbours(overlap) == ((1,), (0,), (1,))  # view 2 overlaps nothing: the fallback n-2
    assert views_without_overlap(overlap) == (2,)


def test_back_to_back_cameras_overlap_by_the_official_measure_as_points_behind_are_not_rejected():
    # no z > 0 test: camera 1, turned 180° about y at the same spot, sees view 0's points mirrored through its
    # centre, (X, Y, Z) -> (-X, Y, -Z): the same column, the row flipped about cy
    depths, cameras, _ = scene([(0.0, (0.0, 0.0, 0.0)), (180.0, (0.0, 0.0, 0.0))])
    corr = depth_correspondences(depths, cameras)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")
    assert torch.allclose(corr[0, 1], torch.stack([xs, 2 * 23.5 - ys], dim=-1), atol=1e-3)
    assert depth_neighbours(depth_overlap(depths, cameras)) == ((1,), (0,))


def test_overlap_is_the_symmetric_minimum_of_the_fractions_of_pixels_landing_inside():
    depths, cameras, _ = scene(ROOM_CAMERAS)
    corr = depth_correspondences(depths, cameras)
    raw = overlap_ratios(corr)
    x, y = corr[..., 0], corr[..., 1]
    counted = ((x >= 0) & (x < W) & (y >= 0) & (y < H)).sum(dim=(-1, -2)).double() / (H * W)
    assert torch.allclose(raw.double(), counted)
    sym = depth_overlap(depths, cameras)
    assert torch.equal(sym, sym.T)
    for i in range(4):
        for j in range(4):
            assert sym[i, j] == min(raw[i, j], raw[j, i])
    assert not torch.equal(raw, raw.T)  # the cameras differ: the raw ratios are not symmetric


def test_neighbours_are_every_other_view_strictly_above_the_threshold_in_index_order():
    overlap = torch.tensor([[1.0, 0.3, 0.8, 0.31],
                            [0.3, 1.0, 0.1, 0.0],
                            [0.8, 0.1, 1.0, 0.5],
                            [0.31, 0.0, 0.5, 1.0]])
    assert depth_neighbours(overlap) == ((2, 3), (0, 2), (0, 3), (0, 2))  # view 1: the fallback i-1, i+1
    assert views_without_overlap(overlap) == (1,)
    assert depth_neighbours(overlap, threshold=0.05) == ((1, 2, 3), (0, 2), (0, 1, 3), (0, 2))


def test_the_fallback_is_the_next_view_for_the_first_and_the_previous_for_the_last():
    alone = torch.eye(4)
    assert depth_neighbours(alone) == ((1,), (0, 2), (1, 3), (2,))
    assert views_without_overlap(alone) == (0, 1, 2, 3)
    assert depth_neighbours(torch.eye(1)) == ((),)  # one view: nothing to attend to


WALL = (-50.0, -50.0, -3.0), (50.0, 50.0, 3.0)  # a wall at z = 3 filling the whole view


def test_key_frames_of_a_camera_sliding_along_a_wall_follow_the_hand_computed_overlap():
    # facing the wall 2 m away, each frame 9/32 m to the right: the image moves 32 * (9/32) / 2 = 4.5 px per frame.
    # Frame k vs frame 0: the columns x >= 4.5 k stay inside, overlap = (64 - ceil(4.5 k)) / 64: 41/64 = 0.64 at
    # k = 5, 37/64 = 0.58 < 0.6 at k = 6 -> a key frame every 6 frames.
    frames = [(0.0, (9 / 32 * k, 0.0, 1.0)) for k in range(20)]
    depths, cameras, _ = scene(frames, WALL)
    assert (depths == 2).all()
    for k in (1, 5, 6):
        expected = (64 - math.ceil(4.5 * k)) / 64
        assert float(depth_overlap(depths[[0, k]], cameras.select([0, k]))[0, 1]) == pytest.approx(expected)
    assert select_key_frames(depths, cameras) == (0, 6, 12, 18)
    assert select_key_frames(depths, cameras, chunk=4) == (0, 6, 12, 18)  # chunking changes nothing
    assert select_key_frames(depths, cameras, include_last=True) == (0, 6, 12, 18, 19)
    assert select_key_frames(depths, cameras, threshold=0.8) == (0, 3, 6, 9, 12, 15, 18)  # ceil(13.5) = 14 > 12.8


def test_in_between_groups_hold_the_frames_between_consecutive_key_frames_split_to_at_most_ten():
    groups = in_between_frames((0, 6, 7, 30), 31)
    assert groups[0] == (0, 1, 2, 3, 4, 5, 6)  # key frames 6 and 7 are adjacent: no group
    rest = groups[1:]
    assert all(g[0] == 7 and g[-1] == 30 and len(g) - 2 <= 10 for g in rest)
    assert [f for g in rest for f in g[1:-1]] == list(range(8, 30))  # 22 frames in 3 groups, in order
    assert sorted(len(g) - 2 for g in rest) == [7, 7, 8]
    # the official test path: every 20th frame id after the first key frame (45 -> 65 is past 60: no group)
    assert in_between_frames((0, 45, 60), 61, interval=20) == ((0, 20, 40, 45),)
    with pytest.raises(ValueError, match="increase strictly"):
        in_between_frames((0, 6, 6), 10)
    with pytest.raises(ValueError, match="increase strictly"):
        in_between_frames((0, 12), 10)
