"""Camera rigs: the official formulas, orientation, the general rig's neighbours, and input validation."""
from __future__ import annotations

import math

import pytest
import torch

from comfyui_mvdiffusion.geometry import (intrinsics, pano_cameras, pano_rig, pixel_grid, project_to_image,
                                          rig_cameras, ring_neighbours, rotation)
from comfyui_mvdiffusion.geometry.cameras import Rig
from comfyui_mvdiffusion.geometry.equirect import direction_to_lonlat


def test_intrinsics_follow_the_official_formula():
    K = intrinsics(90.0, 512, 512)
    assert K.dtype == torch.float32 and K.shape == (3, 3)
    assert K[0, 0] == K[1, 1] == torch.tensor(0.5 * 512 / math.tan(math.radians(45.0)), dtype=torch.float32)
    assert K[0, 2] == 255.5 and K[1, 2] == 255.5 and K[2, 2] == 1 and K[0, 1] == 0
    K = intrinsics(60.0, 192, 256)  # the horizontal fov sets f; cx, cy are the centres of the pixel grid
    assert torch.allclose(K[0, 0], torch.tensor(128 / math.tan(math.radians(30.0))))
    assert (K[0, 2], K[1, 2]) == (127.5, 95.5)


def test_the_pixel_grid_holds_x_y_1_at_every_pixel_in_the_requested_dtype():
    for dtype in (torch.float32, torch.float64):
        grid = pixel_grid(3, 4, dtype=dtype)
        assert grid.shape == (3, 4, 3) and grid.dtype == dtype
        for y in range(3):
            for x in range(4):
                assert grid[y, x].tolist() == [x, y, 1]


def test_projected_points_are_inside_on_the_pixel_footprint_and_only_in_front_of_the_camera():
    # (x, y) = (u / z, v / z) of a 4 x 6 image: the footprint is [-0.5, 5.5] x [-0.5, 3.5]
    xyz = torch.tensor([[-1.0, -1.0, 2.0], [11.0, 7.0, 2.0], [-1.2, 0.0, 2.0], [11.2, 0.0, 2.0], [0.0, 7.2, 2.0],
                        [1.0, 1.0, -2.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    x, y, inside = project_to_image(xyz, 4, 6)
    assert torch.equal(x[:5], torch.tensor([-0.5, 5.5, -0.6, 5.6, 0.0], dtype=torch.float64))
    assert torch.equal(y[:5], torch.tensor([-0.5, 3.5, 0.0, 0.0, 3.6], dtype=torch.float64))
    assert inside.tolist() == [True, True, False, False, False, False, False]
    x, y, inside = project_to_image(xyz.T, 4, 6, border=0.0, dim=0)  # columns; between the outer pixel centres
    assert inside.tolist() == [False] * 7
    assert project_to_image(torch.tensor([[0.0, 0.0, 1.0], [10.0, 6.0, 2.0]]), 4, 6, border=0.0)[2].all()


def test_a_rigs_intrinsics_for_another_size_keep_its_fields_of_view():
    rig = rig_cameras([0.0, 120.0, 240.0], [0.0] * 3, [90.0, 100.0, 110.0], 64, 64, neighbours=[(1,), (2,), (0,)])
    K = rig.intrinsics_for_size(48, 96)
    assert K.shape == (3, 3, 3)
    for i, fov in enumerate(rig.fovs_deg):
        assert torch.equal(K[i], intrinsics(fov, 48, 96))
    assert torch.equal(rig.intrinsics_for_size(64, 64), rig.K)


def test_rotations_are_proper_and_map_camera_directions_to_the_world():
    for yaw, pitch in [(0, 0), (45, 0), (137.5, -20), (315, 60)]:
        R = rotation(yaw, pitch).double()
        assert torch.allclose(R.T @ R, torch.eye(3, dtype=torch.float64), atol=1e-6)
        assert abs(torch.linalg.det(R).item() - 1) < 1e-6
    assert torch.equal(rotation(0.0, 0.0), torch.eye(3))


@pytest.mark.parametrize("i", range(8))
def test_the_centre_pixel_of_view_i_looks_at_yaw_45_i(i):
    K, R = pano_cameras(8, 90.0, 512, 512)
    centre = torch.tensor([K[i, 0, 2], K[i, 1, 2], 1.0], dtype=torch.float64)
    ray = R[i].double() @ torch.inverse(K[i].double()) @ centre
    lon, lat = direction_to_lonlat(ray)
    assert abs((math.degrees(lon.item()) - 45.0 * i + 180.0) % 360.0 - 180.0) < 1e-4
    assert abs(math.degrees(lat.item())) < 1e-4


def test_positive_yaw_turns_right_and_positive_pitch_looks_up():
    K = intrinsics(90.0, 64, 64).double()
    for yaw, pitch in [(30.0, 0.0), (0.0, 25.0), (-70.0, -40.0)]:
        R = rotation(yaw, pitch).double()
        lon, lat = direction_to_lonlat(R @ torch.inverse(K) @ torch.tensor([31.5, 31.5, 1.0], dtype=torch.float64))
        assert math.isclose(math.degrees(lon.item()), yaw, abs_tol=1e-4)
        assert math.isclose(math.degrees(lat.item()), pitch, abs_tol=1e-4)
    # in view 0, pixels to the right have positive longitude and the top row positive latitude
    R0 = rotation(0.0).double()
    right = direction_to_lonlat(R0 @ torch.inverse(K) @ torch.tensor([63.0, 31.5, 1.0], dtype=torch.float64))
    top = direction_to_lonlat(R0 @ torch.inverse(K) @ torch.tensor([31.5, 0.0, 1.0], dtype=torch.float64))
    assert right[0] > 0.7 and top[1] > 0.7


def test_the_pano_rig_is_the_official_ring_and_its_neighbours_are_i_minus_1_and_i_plus_1():
    rig = pano_rig()
    assert rig.yaws_deg == tuple(45.0 * i for i in range(8)) and set(rig.pitches_deg) == {0.0}
    assert set(rig.fovs_deg) == {90.0} and (rig.height, rig.width) == (512, 512)
    assert rig.neighbours == tuple(((i - 1) % 8, (i + 1) % 8) for i in range(8)) == ring_neighbours(8)
    K, R = pano_cameras()
    assert torch.equal(K, rig.K) and torch.equal(R, rig.R) and K.shape == R.shape == (8, 3, 3)
    assert hash(rig) == hash(pano_rig()) and rig == pano_rig()  # hashable: plans are cached per rig


# rig_cameras' default neighbours come from correspondences.overlap_fraction, which takes view i's world rays into
# view j's camera frame with R_j^T (einsum "jab,ian->ijbn" sums over R[j, a, b]'s first index a): the tests below
# check those neighbours for views other than view 0, where R_j and R_j^T differ.
def test_the_general_rig_of_the_pano_ring_finds_the_ring_neighbours():
    rig = rig_cameras([45.0 * i for i in range(8)], [0.0] * 8, [90.0] * 8, 64, 64)
    assert [set(n) for n in rig.neighbours] == [{(i - 1) % 8, (i + 1) % 8} for i in range(8)]


def test_a_row_of_views_above_the_horizon_gets_the_views_around_and_below_it_as_neighbours():
    # 8 views on the horizon (yaw 45 i) and 4 views at pitch 50 (yaw 90 k), all 90° fov
    yaws = [45.0 * i for i in range(8)] + [90.0 * k for k in range(4)]
    rig = rig_cameras(yaws, [0.0] * 8 + [50.0] * 4, [90.0] * 12, 64, 64)
    for i in range(8):  # the horizon views keep their ring neighbours, most overlapping first
        assert set(rig.neighbours[i][:2]) == {(i - 1) % 8, (i + 1) % 8}
    for k in range(4):  # an upper view sees the horizon view below it and the upper views beside it most
        assert set(rig.neighbours[8 + k][:3]) == {2 * k, 8 + (k - 1) % 4, 8 + (k + 1) % 4}
    axes = rig.R[:, :, 2]  # optical axes in the world frame
    for i, nbs in enumerate(rig.neighbours):  # nobody attends to a view that looks the other way
        for j in nbs:
            assert float(axes[i] @ axes[j]) > 0.0, (i, j)
    # the lists differ in length (the attention pads them) and are capped on request
    assert len({len(n) for n in rig.neighbours}) > 1 and rig.max_neighbours == 6
    capped = rig_cameras(yaws, [0.0] * 8 + [50.0] * 4, [90.0] * 12, 64, 64, max_neighbours=3)
    assert capped.neighbours == tuple(n[:3] for n in rig.neighbours)


def test_explicit_neighbours_are_kept_as_given():
    rig = rig_cameras([0, 90, 180, 270], [0] * 4, [120] * 4, 64, 64, neighbours=[(1, 3), (2, 0), (3, 1), (0, 2)])
    assert rig.neighbours == ((1, 3), (2, 0), (3, 1), (0, 2)) and rig.num_views == 4


@pytest.mark.parametrize("call, message", [
    (lambda: intrinsics(0.0, 64, 64), "field of view must be in (0, 180) degrees, got 0.0"),
    (lambda: intrinsics(180.0, 64, 64), "field of view must be in (0, 180) degrees, got 180.0"),
    (lambda: rig_cameras([0, 90], [0, 0], [90, -5], 64, 64), "field of view must be in (0, 180) degrees, got -5"),
    (lambda: pano_rig(8, 180.0), "field of view must be in (0, 180)"),
    (lambda: pano_rig(1), "a panorama rig needs at least 2 views, got 1"),
    (lambda: rig_cameras([0], [0], [90], 64, 64), "a rig needs at least 2 views, got 1"),
    (lambda: rig_cameras([0, 90, 180], [0, 0], [90, 90, 90], 64, 64),
     "yaws, pitches and fovs must have one entry per view, got 3, 2, 3"),
    (lambda: intrinsics(90.0, 0, 64), "image size must be positive integers"),
    (lambda: rig_cameras([0, 90], [0, 0], [90, 90], 64, 64.5), "image size must be positive integers"),
    (lambda: Rig((0.0, 90.0), (0.0, 0.0), (90.0, 90.0), 64, 64, ((1,), (1,))),
     "view 1 lists an invalid neighbour 1"),
    (lambda: Rig((0.0, 90.0), (0.0, 0.0), (90.0, 90.0), 64, 64, ((1,),)),
     "neighbours must list the neighbours of each of the 2 views, got 1"),
    (lambda: rig_cameras([0, 180], [0, 0], [60, 60], 64, 64), "overlap no other view"),
])
def test_bad_camera_inputs_raise_value_errors_that_say_what_was_expected(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value)
