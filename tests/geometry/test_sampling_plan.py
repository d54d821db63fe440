"""The CAA sampling plan agrees with the pixel correspondences at every SD2 UNet level, in float32 bits."""
from __future__ import annotations

import pytest
import torch

from comfyui_mvdiffusion.geometry import (OFFSETS, build_level_plan, level_plan, pano_rig, pixel_correspondences,
                                          unet_level_sizes)

SD2_LEVELS_512 = [(64, 64), (32, 32), (16, 16), (8, 8)]
CENTRE = OFFSETS.index((0, 0))  # key 9 n + 4 is neighbour n's offset (0, 0)


@pytest.fixture(scope="module")
def rig():
    return pano_rig()  # official: 8 views, 90°, 512 px, ring neighbours


@pytest.fixture(scope="module")
def corr(rig):
    return pixel_correspondences(rig.K, rig.R, rig.height, rig.width)


@pytest.fixture(scope="module")
def plans(rig):
    return {size: build_level_plan(rig, *size) for size in SD2_LEVELS_512}


def query_pixels(s_q: int, h: int, w: int) -> torch.Tensor:
    """The strided query pixels ``(s_q//2 + s_q u, s_q//2 + s_q v)`` as (h, w, 2) float32 (x, y)."""
    ys = (s_q // 2 + s_q * torch.arange(h, dtype=torch.float32))[:, None].expand(h, w)
    xs = (s_q // 2 + s_q * torch.arange(w, dtype=torch.float32))[None, :].expand(h, w)
    return torch.stack([xs, ys], dim=-1)


def test_the_levels_of_an_sd2_unet_for_512_px_views_are_64_32_16_8():
    assert unet_level_sizes(512, 512) == SD2_LEVELS_512
    assert unet_level_sizes(64, 64) == [(8, 8), (4, 4), (2, 2), (1, 1)]


def test_keys_are_neighbour_major_then_dx_outer_dy_inner(plans):
    assert OFFSETS == ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1))
    plan = plans[(32, 32)]
    assert plan.num_views == 8 and plan.num_keys == 18 and plan.grid.shape == (8, 18, 32, 32, 2)
    assert plan.valid.shape == (8, 18, 32, 32) and plan.displacement.shape == (8, 18, 32, 32, 2)
    assert plan.sample_weight is None and plan.displacement.dtype == torch.float32
    assert plan.neighbours.tolist() == [[(i - 1) % 8, (i + 1) % 8] for i in range(8)]
    step = 2.0 / (32 - 1)  # one key-map pixel in grid_sample units
    for n in range(2):
        centre = plan.grid[:, 9 * n + CENTRE]
        for k, (dx, dy) in enumerate(OFFSETS):
            delta = plan.grid[:, 9 * n + k] - centre
            assert torch.allclose(delta[..., 0], torch.full_like(delta[..., 0], dx * step), atol=1e-4)
            assert torch.allclose(delta[..., 1], torch.full_like(delta[..., 1], dy * step), atol=1e-4)


@pytest.mark.parametrize("size", SD2_LEVELS_512)
def test_offset_zero_samples_the_pixel_correspondence_divided_by_s_k_minus_half_at_the_strided_query_pixels(
        rig, corr, plans, size):
    h, w = size
    plan = plans[size]
    s_q, s_k = 512 // h, 512 // w
    for i in range(8):
        for n, j in enumerate(plan.neighbours[i].tolist()):
            expected = corr[i, j][s_q // 2::s_q, s_q // 2::s_q] / s_k - 0.5  # (h, w, 2) key-map pixels
            grid = plan.grid[i, 9 * n + CENTRE]
            # the official normalisation, bit for bit
            assert torch.equal(grid[..., 0], expected[..., 0] / (w - 1) * 2 - 1)
            assert torch.equal(grid[..., 1], expected[..., 1] / (h - 1) * 2 - 1)
            # and, un-normalised, the same coordinate
            back = torch.stack([(grid[..., 0] + 1) / 2 * (w - 1), (grid[..., 1] + 1) / 2 * (h - 1)], dim=-1)
            assert torch.allclose(back, expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("size", SD2_LEVELS_512)
def test_the_displacement_is_the_back_mapped_sample_point_minus_the_query_pixel_in_official_float32_order(
        rig, corr, plans, size):
    h, w = size
    plan = plans[size]
    s_q, s_k = 512 // h, 512 // w
    K, R = rig.K, rig.R
    query = query_pixels(s_q, h, w)
    for i in range(8):
        for n, j in enumerate(plan.neighbours[i].tolist()):
            c = corr[i, j][s_q // 2::s_q, s_q // 2::s_q] / s_k - 0.5
            points = []
            for dx, dy in OFFSETS:
                p = c.clone()
                p[..., 0] = p[..., 0] + dx
                p[..., 1] = p[..., 1] + dy
                points.append((p + 0.5) * s_k)
            points = torch.stack(points)  # (9, h, w, 2) image pixels of view j
            homo_r = K[i:i + 1] @ torch.inverse(R[i:i + 1]) @ R[j:j + 1] @ torch.inverse(K[j:j + 1])  # j -> i
            xyz = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1).reshape(1, -1, 3).transpose(1, 2)
            xyz = homo_r @ xyz
            back = (xyz[:, :2] / xyz[:, 2:]).transpose(1, 2).reshape(9, h, w, 2)
            expected = (back - query) / s_q
            assert torch.equal(plan.displacement[i, 9 * n:9 * n + 9], expected), (i, j)
            inside = (points[..., 0] > 0) & (points[..., 0] < 512) & (points[..., 1] > 0) & (points[..., 1] < 512)
            assert torch.equal(plan.valid[i, 9 * n:9 * n + 9], inside)


@pytest.mark.parametrize("size", SD2_LEVELS_512)
def test_the_displacement_of_offset_zero_vanishes_and_the_others_follow_the_float64_closed_form(rig, plans, size):
    # Offset (0, 0) samples q' = ((H_ij q) / s_k - 0.5 + 0.5) * s_k = H_ij q (the -0.5/+0.5 only costs float32
    # rounding, and s_k is a power of two), and H_ji H_ij = I, so its displacement is exactly 0 up to rounding.
    # Offset (dx, dy) samples q' = H_ij q + s_k (dx, dy): its displacement is (H_ji q' - q) / s_q.
    h, w = size
    plan = plans[size]
    s_q, s_k = 512 // h, 512 // w
    K, R = rig.K.double(), rig.R.double()
    H = (K @ torch.inverse(R))[None] @ (R @ torch.inverse(K))[:, None]  # H[i, j] = K_j inv(R_j) R_i inv(K_i)
    query = query_pixels(s_q, h, w).double()
    q_h = torch.cat([query, torch.ones_like(query[..., :1])], dim=-1)  # (h, w, 3)
    for i in range(8):
        for n, j in enumerate(plan.neighbours[i].tolist()):
            xyz = q_h @ H[i, j].T
            c = xyz[..., :2] / xyz[..., 2:]
            for k, (dx, dy) in enumerate(OFFSETS):
                key = 9 * n + k
                valid = plan.valid[i, key]
                assert valid.any()
                qp = c + s_k * torch.tensor([dx, dy], dtype=torch.float64)
                back = torch.cat([qp, torch.ones_like(qp[..., :1])], dim=-1) @ H[j, i].T
                expected = (back[..., :2] / back[..., 2:] - query) / s_q
                got = plan.displacement[i, key].double()
                assert torch.allclose(got[valid], expected[valid], atol=2e-3, rtol=1e-4), (i, j, dx, dy)
                if (dx, dy) == (0, 0):
                    assert got[valid].abs().max() < 1e-4


def test_a_plan_in_another_dtype_keeps_its_displacements_exact_in_float32(rig):
    plan = level_plan(rig, 16, 16)
    half = level_plan(rig, 16, 16, "cpu", torch.float16)
    assert half.grid.dtype == torch.float16 and half.displacement.dtype == torch.float32
    assert torch.equal(half.displacement, plan.displacement)


@pytest.mark.parametrize("size, message", [
    ((1024, 1024), "feature map 1024x1024 does not fit views of 512x512 pixels"),
    ((0, 64), "feature map 0x64 does not fit"),
    ((60, 60), "views of 512x512 pixels give a 64x64 query grid at scale 8, not 60x60"),
])
def test_feature_map_sizes_that_do_not_divide_the_views_raise_value_errors(rig, size, message):
    with pytest.raises(ValueError) as err:
        build_level_plan(rig, *size)
    assert message in str(err.value)


def test_a_host_selected_reduced_matmul_precision_does_not_change_the_plan(rig):
    # the official scripts select "medium" (bf16 inputs on CPUs with oneDNN, TF32 on Ampere GPUs); the plan is
    # built from float32 homographies whose every bit reaches the positional encoding
    exact = build_level_plan(rig, 16, 16)
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        reduced = build_level_plan(rig, 16, 16)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(saved)
    for field in ("grid", "valid", "displacement"):
        assert torch.equal(getattr(reduced, field), getattr(exact, field)), field
