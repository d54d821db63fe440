"""Homographies and pixel correspondences: closed forms, the float32 contract, overlaps, validation."""
from __future__ import annotations

import pytest
import torch

from comfyui_mvdiffusion.geometry import (apply_homography, homographies, overlap_fraction, pano_cameras,
                                          pixel_correspondences, pixel_grid)

@pytest.fixture(scope="module")
def official_512():
    """The official rig (8 views, 90°, 512 px) and its full correspondences (8, 8, 512, 512, 2)."""
    K, R = pano_cameras(8, 90.0, 512, 512)
    return K, R, pixel_correspondences(K, R, 512, 512)


def official_order_correspondence(K: torch.Tensor, R: torch.Tensor, i: int, j: int, size: int) -> torch.Tensor:
    """Independent float32 evaluation of one pair in the official order (get_correspondences with a batch of 1):
    ``(K_j @ inv(R_j) @ R_i @ inv(K_i)) @ [x, y, 1]`` over the integer grid, then ``xyz[:2] / xyz[2:]``."""
    homo = K[j:j + 1] @ torch.inverse(R[j:j + 1]) @ R[i:i + 1] @ torch.inverse(K[i:i + 1])  # (1, 3, 3)
    xs = torch.arange(size, dtype=torch.float32)[None, :].expand(size, size)
    ys = torch.arange(size, dtype=torch.float32)[:, None].expand(size, size)
    xyz = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(-1, 3).T[None]  # (1, 3, size*size)
    xyz = homo @ xyz
    return (xyz[:, :2] / xyz[:, 2:]).permute(0, 2, 1).reshape(size, size, 2)


def test_h_ji_times_h_ij_is_the_identity():
    K, R = pano_cameras(8, 90.0, 512, 512)
    H = homographies(K.double(), R.double())
    eye = torch.eye(3, dtype=torch.float64)
    for i in range(8):
        assert torch.allclose(H[i, i], eye, atol=1e-12)
        for j in range(8):
            assert torch.allclose(H[j, i] @ H[i, j], eye, atol=1e-9)
    H32 = homographies(K, R)
    assert H32.dtype == torch.float32 and H32.shape == (8, 8, 3, 3)
    assert torch.allclose(H32[1, 0] @ H32[0, 1], torch.eye(3), atol=1e-4)


def test_the_homography_is_k_j_inv_r_j_r_i_inv_k_i():
    K, R = pano_cameras(4, 100.0, 64, 96)
    H = homographies(K, R)
    for i, j in [(0, 1), (2, 1), (3, 0)]:
        expected = K[j] @ torch.inverse(R[j]) @ R[i] @ torch.inverse(K[i])
        assert torch.allclose(H[i, j], expected, rtol=1e-6, atol=1e-5)


def test_pixel_correspondences_are_bit_identical_to_an_independent_float32_computation_in_official_order(
        official_512):
    K, R, corr = official_512
    assert corr.dtype == torch.float32 and corr.shape == (8, 8, 512, 512, 2)
    for i, j in [(0, 1), (1, 0), (3, 2), (7, 0), (0, 7), (5, 5), (2, 6)]:  # neighbours, itself, opposite
        assert torch.equal(corr[i, j], official_order_correspondence(K, R, i, j, 512)), (i, j)
    K, R = pano_cameras(8, 90.0, 96, 96)  # every pair, on a smaller rig
    small = pixel_correspondences(K, R, 96, 96)
    for i in range(8):
        for j in range(8):
            assert torch.equal(small[i, j], official_order_correspondence(K, R, i, j, 96)), (i, j)


def test_a_float64_computation_of_the_correspondences_differs_in_bits(official_512):
    K, R, corr = official_512
    differing = 0
    grid64 = pixel_grid(512, 512, dtype=torch.float64).reshape(-1, 3).T
    for i, j in [(0, 1), (1, 0), (3, 4)]:
        H = K[j].double() @ torch.inverse(R[j].double()) @ R[i].double() @ torch.inverse(K[i].double())
        xy = apply_homography(H, grid64).reshape(512, 512, 2).float()
        assert torch.allclose(xy, corr[i, j], rtol=1e-4, atol=1e-2)  # the same geometry...
        differing += int((xy != corr[i, j]).sum())
    assert differing > 0.3 * 3 * 512 * 512 * 2  # ...but not the same bits, and the positional encoding sees bits


@pytest.mark.parametrize("row", [255, 256])
def test_each_view_of_the_8_x_90_ring_overlaps_each_neighbour_on_exactly_half_its_width_at_the_horizon(
        official_512, row):
    K, R, corr = official_512
    cols = torch.arange(512)
    for i in range(8):
        right, left = (i + 1) % 8, (i - 1) % 8
        for j, expected in [(right, cols >= 256), (left, cols <= 255)]:
            xy = corr[i, j, row]
            inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= 511.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= 511.5)
            assert torch.equal(inside, expected), (i, j)
            assert int(inside.sum()) == 256


def test_overlap_fraction_is_one_on_the_diagonal_and_symmetric_for_the_ring():
    K, R = pano_cameras(8, 90.0, 64, 64)
    frac = overlap_fraction(K, R, 64, 64)
    assert torch.equal(torch.diagonal(frac), torch.ones(8, dtype=torch.float64))
    assert torch.allclose(frac, frac.T)
    for i in range(8):
        assert 0.4 < frac[i, (i + 1) % 8] < 0.5 and frac[i, (i + 4) % 8] == 0


@pytest.mark.parametrize("pitch", [30.0, 60.0])
def test_neighbours_of_a_pitched_ring_overlap_more_than_on_the_horizon(pitch):
    # views that look up converge towards the zenith, so neighbours share more of their images; the Panorama
    # Cameras node refuses a rig whose overlap_fraction[0, 1] is 0
    K, R = pano_cameras(8, 90.0, 64, 64, pitch_deg=pitch)
    frac = overlap_fraction(K, R, 64, 64)
    assert frac[0, 1] > overlap_fraction(*pano_cameras(8, 90.0, 64, 64), 64, 64)[0, 1]


def test_overlap_fraction_of_view_0_with_its_neighbours_is_about_half():
    K, R = pano_cameras(8, 90.0, 64, 64)
    frac = overlap_fraction(K, R, 64, 64)
    assert frac[0, 0] == 1 and 0.4 < frac[0, 1] < 0.5 and 0.4 < frac[0, 7] < 0.5 and frac[0, 4] == 0


@pytest.mark.parametrize("K, R, message", [
    (torch.eye(3).expand(8, 3, 3), torch.eye(3).expand(7, 3, 3),
     "K and R must describe the same views: got 8 intrinsics and 7 rotations"),
    (torch.zeros(8, 3, 4), torch.eye(3).expand(8, 3, 3), "K must be intrinsics of shape (m, 3, 3), got (8, 3, 4)"),
    (torch.eye(3), torch.eye(3), "K must be intrinsics of shape (m, 3, 3), got (3, 3)"),
    (torch.eye(3).expand(2, 3, 3), torch.zeros(2, 2, 3), "R must be rotations of shape (m, 3, 3), got (2, 2, 3)"),
])
def test_malformed_or_mismatched_cameras_raise_value_errors_that_say_what_was_expected(K, R, message):
    for call in (lambda: homographies(K, R), lambda: pixel_correspondences(K, R, 8, 8),
                 lambda: overlap_fraction(K, R, 8, 8)):
        with pytest.raises(ValueError) as err:
            call()
        assert message in str(err.value)
