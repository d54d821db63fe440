"""Equirectangular cutting and stitching: conventions, round trips on the real panorama, seams, blending."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comfyui_mvdiffusion.geometry import intrinsics, pano_cameras, rotation
from comfyui_mvdiffusion.geometry.equirect import (blend_weight, direction_to_lonlat, equirect_grid,
                                                   equirect_to_views, lonlat_to_direction, lonlat_to_equirect_pixel,
                                                   views_to_equirect)


def official_formula_view(pano: torch.Tensor, fov: float, theta: float, phi: float, size: int) -> torch.Tensor:
    """A view cut with the formulas of the official ``Equirec2Perspec.GetPerspective`` (square view), written
    independently in numpy, with bilinear instead of bicubic sampling: view column c has the tangent
    ``linspace(-t, t, size)[c]`` to the right, row r ``linspace(t, -t, size)[r]`` up; pitch PHI (up) in the view's
    own frame, then yaw THETA (right); panorama column ``lon / 180 * cx + cx``, row ``-lat / 90 * cy + cy`` with
    ``cx = (W - 1) / 2``, ``cy = (H - 1) / 2``, wrapping horizontally. pano: (1, C, H, W) -> (C, size, size)."""
    img = pano[0].numpy().astype(np.float64)
    _, H, W = img.shape
    t = math.tan(math.radians(fov / 2))
    right, up = np.meshgrid(np.linspace(-t, t, size), np.linspace(t, -t, size))
    fwd = np.ones_like(right)
    norm = np.sqrt(fwd ** 2 + right ** 2 + up ** 2)
    fwd, right, up = fwd / norm, right / norm, up / norm
    p, y = math.radians(phi), math.radians(theta)
    fwd, up = fwd * math.cos(p) - up * math.sin(p), fwd * math.sin(p) + up * math.cos(p)
    fwd, right = fwd * math.cos(y) - right * math.sin(y), fwd * math.sin(y) + right * math.cos(y)
    lon, lat = np.degrees(np.arctan2(right, fwd)), np.degrees(np.arcsin(np.clip(up, -1, 1)))
    cx, cy = (W - 1) / 2, (H - 1) / 2
    col, row = lon / 180 * cx + cx, np.clip(-lat / 90 * cy + cy, 0, H - 1)
    c0, r0 = np.floor(col).astype(int), np.floor(row).astype(int)
    fc, fr = col - c0, row - r0
    r1 = np.minimum(r0 + 1, H - 1)
    c1 = (c0 + 1) % W
    c0 = c0 % W
    out = (img[:, r0, c0] * (1 - fc) + img[:, r0, c1] * fc) * (1 - fr) + \
        (img[:, r1, c0] * (1 - fc) + img[:, r1, c1] * fc) * fr
    return torch.from_numpy(out).float()


def ring_of_constant_views(values, size: int = 64) -> torch.Tensor:
    """(1, m, 1, size, size) views, view i filled with values[i]."""
    return torch.tensor(values, dtype=torch.float32)[None, :, None, None, None].expand(1, len(values), 1, size,
                                                                                       size).clone()


# --- conventions ------------------------------------------------------------------------------------------------

def test_longitude_zero_is_the_centre_of_the_image_and_the_grid_is_periodic():
    lon, lat = equirect_grid(4, 8, dtype=torch.float64)
    assert torch.allclose(torch.rad2deg(lon), torch.tensor([-157.5, -112.5, -67.5, -22.5, 22.5, 67.5, 112.5, 157.5],
                                                           dtype=torch.float64))
    assert torch.allclose(torch.rad2deg(lat), torch.tensor([67.5, 22.5, -22.5, -67.5], dtype=torch.float64))
    # the step across the seam (last column -> first column + 360°) equals every other step
    assert math.isclose(lon[0].item() + 2 * math.pi - lon[-1].item(), (lon[1] - lon[0]).item())
    u, v = lonlat_to_equirect_pixel(lon[:, None], lat[None, :], 4, 8)
    assert torch.allclose(u, torch.arange(8, dtype=torch.float64)[:, None].expand(8, 4))
    assert torch.allclose(v, torch.arange(4, dtype=torch.float64)[None, :].expand(8, 4))


def test_directions_and_longitude_latitude_are_inverse_and_oriented_right_and_up():
    lon = torch.linspace(-3.1, 3.1, 13, dtype=torch.float64)
    lat = torch.linspace(-1.5, 1.5, 7, dtype=torch.float64)[:, None]
    d = lonlat_to_direction(lon, lat)
    assert torch.allclose(d.norm(dim=-1), torch.ones(7, 13, dtype=torch.float64))
    lon2, lat2 = direction_to_lonlat(d)
    assert torch.allclose(lon2, lon.expand(7, 13)) and torch.allclose(lat2, lat.expand(7, 13))
    right, up = lonlat_to_direction(torch.tensor(math.pi / 2), torch.tensor(0.0)), \
        lonlat_to_direction(torch.tensor(0.0), torch.tensor(math.pi / 2))
    assert torch.allclose(right, torch.tensor([1.0, 0.0, 0.0]), atol=1e-7)  # camera x: right
    assert torch.allclose(up, torch.tensor([0.0, -1.0, 0.0]), atol=1e-7)  # camera y points down


@pytest.mark.parametrize("theta, phi", [(45.0, 0.0), (-100.0, 0.0), (180.0, 0.0), (90.0, 30.0), (270.0, -35.0)])
def test_views_are_oriented_like_the_official_equirec2perspec(street, psnr, theta, phi):
    pano = street(512)
    ours = equirect_to_views(pano, intrinsics(90.0, 128, 128)[None], rotation(theta, phi)[None], 128, 128)[0, 0]
    official = official_formula_view(pano, 90.0, theta, phi, 128)
    mirrored_yaw = official_formula_view(pano, 90.0, -theta, phi, 128)
    mirrored_pitch = official_formula_view(pano, 90.0, theta, -phi, 128)
    assert psnr(ours, official) > 28.0  # the same view up to the official half-pixel conventions
    if theta % 180:
        assert psnr(ours, mirrored_yaw) < psnr(ours, official) - 10
    if phi:
        assert psnr(ours, mirrored_pitch) < psnr(ours, official) - 10


# --- cutting ----------------------------------------------------------------------------------------------------

def test_cutting_wraps_across_the_seam_exactly_like_inside_the_image(street):
    pano = street(512)
    K, R = intrinsics(90.0, 96, 96)[None], rotation(180.0)[None]  # this view straddles the +-180° seam
    across_seam = equirect_to_views(pano, K, R, 96, 96)
    rolled = torch.roll(pano, 256, dims=-1)  # now the same content lies around longitude 0
    inside = equirect_to_views(rolled, K, rotation(0.0)[None], 96, 96)
    assert torch.allclose(across_seam, inside, atol=1e-4)
    assert (across_seam[..., :, 47] - across_seam[..., :, 48]).abs().mean() < 0.1  # no hole or jump in the middle


def test_views_of_a_latitude_ramp_clamp_at_the_poles():
    lat_image = equirect_grid(64, 128)[1][None, None, :, None].expand(1, 1, 64, 128)  # pixel value = latitude
    up = equirect_to_views(lat_image, intrinsics(120.0, 32, 32)[None], rotation(0.0, 89.0)[None], 32, 32)
    top_row_lat = equirect_grid(64, 128)[1][0]
    assert up.max() <= top_row_lat + 1e-6 and up.min() > 0.2  # nothing is read beyond the first row


# --- stitching --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("blend", ["ramp", "feather"])
def test_eight_views_cut_from_the_real_panorama_stitch_back_to_it_above_35_db(street, psnr, blend):
    pano = street(512)  # 512 x 256: the 384 px views sample it at least as densely as the panorama itself
    K, R = pano_cameras(8, 90.0, 384, 384)
    views = equirect_to_views(pano, K, R, 384, 384)
    assert views.shape == (1, 8, 3, 384, 384)
    stitched, coverage = views_to_equirect(views, K, R, 256, 512, blend=blend)
    assert stitched.shape == pano.shape and coverage.shape == (1, 1, 256, 512) and coverage.dtype == torch.bool
    assert coverage[..., 124:132, :].all()  # the horizon band is covered all around
    assert 0.45 < coverage.float().mean() < 0.55
    assert psnr(stitched, pano, coverage) >= 35.0


def test_the_stitch_shows_no_discontinuity_at_the_longitude_seam(street, psnr):
    pano = street(512)
    K, R = pano_cameras(8, 90.0, 384, 384)
    stitched, coverage = views_to_equirect(equirect_to_views(pano, K, R, 384, 384), K, R, 256, 512)
    rows = coverage[0, 0].all(dim=1)  # rows covered all around
    band = stitched[0][:, rows]  # (3, rows, 512)
    steps = (band[..., 1:] - band[..., :-1]).abs().mean(dim=(0, 1))  # mean change between adjacent columns
    seam = (band[..., 0] - band[..., -1]).abs().mean()
    original_seam = (pano[0][:, rows, 0] - pano[0][:, rows, -1]).abs().mean()
    assert seam <= torch.quantile(steps, 0.9)
    assert seam <= 1.5 * original_seam + 0.01
    # and the error at the seam columns is no larger than elsewhere
    seam_cols = [0, 1, 510, 511]
    assert psnr(stitched[..., seam_cols][:, :, rows], pano[..., seam_cols][:, :, rows]) >= 35.0


def test_rolling_the_panorama_by_half_its_width_rolls_the_stitch(street):
    pano = street(512)
    K, R = pano_cameras(8, 90.0, 128, 128)
    stitched, coverage = views_to_equirect(equirect_to_views(pano, K, R, 128, 128), K, R, 256, 512)
    rolled = torch.roll(pano, 256, dims=-1)
    stitched_rolled, coverage_rolled = views_to_equirect(equirect_to_views(rolled, K, R, 128, 128), K, R, 256, 512)
    assert torch.allclose(stitched_rolled, torch.roll(stitched, 256, dims=-1), atol=1e-4)
    assert torch.equal(coverage_rolled, torch.roll(coverage, 256, dims=-1))


def test_the_ramp_weight_is_the_official_per_column_ramp():
    cols = torch.arange(512, dtype=torch.float64)
    w = blend_weight(cols, torch.zeros_like(cols), 512, 512, "ramp")
    ramp_up = torch.linspace(0, 1, 256, dtype=torch.float64)  # official: linspace(0, 1, W//2), linspace(1, 0, W//2)
    official = torch.cat([ramp_up, ramp_up.flip(0)])
    assert torch.allclose(w, official, atol=1e-12)
    assert blend_weight(torch.tensor(255.5), torch.tensor(0.0), 512, 512, "ramp") == 1  # flat between 255 and 256
    assert blend_weight(torch.tensor(-0.3), torch.tensor(0.0), 512, 512, "ramp") == 0
    assert torch.equal(blend_weight(cols, torch.full_like(cols, 3.0), 512, 512, "ramp"), w)  # independent of y


def test_the_feather_weight_falls_to_zero_at_every_edge():
    x = torch.tensor([-0.5, 31.5, 31.5, 31.5, 63.5, 10.0])
    y = torch.tensor([31.5, -0.5, 31.5, 63.5, 31.5, 31.5])
    w = blend_weight(x, y, 64, 64, "feather")
    assert torch.allclose(w, torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 10.5 / 32]))


def test_the_ramp_stitch_of_constant_views_is_the_closed_form_weighted_average_along_the_horizon():
    values = [0.1 * (i + 1) for i in range(8)]
    size, K, R = 64, *pano_cameras(8, 90.0, 64, 64)
    stitched, coverage = views_to_equirect(ring_of_constant_views(values, size), K, R, 128, 256)
    lon = equirect_grid(128, 256, dtype=torch.float64)[0]
    f, cx = 32.0, 31.5
    num = torch.zeros(256, dtype=torch.float64)
    den = torch.zeros(256, dtype=torch.float64)
    for i, v in enumerate(values):
        rel = (lon - math.radians(45 * i) + math.pi) % (2 * math.pi) - math.pi
        u = cx + f * torch.tan(rel)
        weight = torch.where(rel.abs() < math.pi / 2, (torch.minimum(u, 63 - u) / 31).clamp(0, 1), 0)
        num += weight * v
        den += weight
    for row in (63, 64):  # the two rows next to the horizon (the ramp does not depend on latitude)
        assert torch.allclose(stitched[0, 0, row].double(), num / den, atol=1e-5)
    halfway = [int(round((45 * i + 22.5) / 360 * 256 + 127.5)) % 256 for i in range(8)]
    for i, col in enumerate(halfway):  # halfway between two views: their mean
        assert abs(stitched[0, 0, 64, col].item() - (values[i] + values[(i + 1) % 8]) / 2) < 0.01


def max_jump_between_covered_pixels(values, blend: str, width: int, margin_deg: float = 2.0) -> float:
    """Largest change between adjacent panorama pixels at least ``margin_deg`` inside the covered band."""
    K, R = pano_cameras(8, 90.0, 64, 64)
    stitched, coverage = views_to_equirect(ring_of_constant_views(values), K, R, width // 2, width, blend=blend)
    s = stitched[0, 0]
    r = round(margin_deg / 360 * width)
    inner = -F.max_pool2d(-coverage[:, :1].float(), 2 * r + 1, stride=1, padding=r)[0, 0] > 0.5  # eroded
    horizontal = (s[:, 1:] - s[:, :-1]).abs() * (inner[:, 1:] & inner[:, :-1])
    vertical = (s[1:] - s[:-1]).abs() * (inner[1:] & inner[:-1])
    return max(horizontal.max().item(), vertical.max().item())


def test_feather_blending_is_continuous_where_a_view_ends_and_the_official_ramp_is_not():
    # Alternating black and white views. Where a view's top edge crosses its neighbour's image, the ramp (weight
    # independent of y) cuts off a positive weight: a jump that stays as large when the panorama is refined.
    # The feather weight vanishes at that edge: the largest step between pixels shrinks with the pixel size.
    values = [float(i % 2) for i in range(8)]
    ramp = [max_jump_between_covered_pixels(values, "ramp", w) for w in (512, 1024)]
    feather = [max_jump_between_covered_pixels(values, "feather", w) for w in (512, 1024)]
    assert ramp[1] > 0.3 and ramp[1] > 0.9 * ramp[0]
    assert feather[1] < 0.15 and feather[1] < 0.7 * feather[0]


def test_pixels_no_view_covers_are_white_and_the_covered_band_is_the_views_frusta():
    K, R = pano_cameras(8, 90.0, 64, 64)
    stitched, coverage = views_to_equirect(ring_of_constant_views([0.5] * 8), K, R, 128, 256)
    assert torch.equal(stitched[~coverage.expand_as(stitched)], torch.ones(int((~coverage).sum())))
    assert torch.allclose(stitched[coverage.expand_as(stitched)], torch.tensor(0.5))
    assert not coverage[..., 0, :].any() and not coverage[..., -1, :].any()  # the poles stay empty
    # covered iff some view's frustum holds the direction: tan(lat) <= max_i cos(lon - 45° i) (90°, square views)
    lon, lat = equirect_grid(128, 256, dtype=torch.float64)
    rel = lon[None, :] - torch.deg2rad(torch.arange(8, dtype=torch.float64) * 45)[:, None]
    expected = torch.tan(lat.abs())[:, None] <= torch.cos(rel).max(dim=0).values[None, :]
    mismatch = (coverage[0, 0] != expected).float().mean().item()
    assert mismatch < 0.005  # only pixels on the frustum boundary may differ


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_results_keep_the_input_dtype_and_device(street, psnr, dtype):
    pano = street(256).to(dtype)
    K, R = pano_cameras(8, 90.0, 32, 32)
    views = equirect_to_views(pano, K, R, 32, 32)
    assert views.dtype == dtype and views.device == pano.device and views.shape == (1, 8, 3, 32, 32)
    stitched, coverage = views_to_equirect(views, K.double(), R.double(), 64, 128, blend="feather")
    assert stitched.dtype == dtype and stitched.device == views.device and coverage.device == views.device
    assert psnr(stitched.float(), street(256).float()[..., ::2, ::2], coverage) > 20


@pytest.mark.parametrize("call, message", [
    (lambda p, K, R: equirect_to_views(p[0], K, R, 32, 32),
     "pano must be a batch of panoramas of shape (B, C, H, W), got (3, 64, 128)"),
    (lambda p, K, R: equirect_to_views(p, K, R[:7], 32, 32),
     "K and R must describe the same views: got 8 intrinsics and 7 rotations"),
    (lambda p, K, R: equirect_to_views(p, K[..., :2], R, 32, 32),
     "K must be intrinsics of shape (m, 3, 3), got (8, 3, 2)"),
    (lambda p, K, R: equirect_to_views(p, K, R[0], 32, 32), "R must be rotations of shape (m, 3, 3), got (3, 3)"),
    (lambda p, K, R: equirect_to_views(p, K, R, 0, 32), "view size must be positive integers"),
    (lambda p, K, R: views_to_equirect(torch.zeros(8, 3, 32, 32), K, R, 64, 128),
     "views must have shape (B, m, C, h, w), got (8, 3, 32, 32)"),
    (lambda p, K, R: views_to_equirect(torch.zeros(1, 8, 3, 32, 32), K[:4], R[:4], 64, 128),
     "expected one camera per view: 8 views but 4 cameras (K, R)"),
    (lambda p, K, R: views_to_equirect(torch.zeros(1, 8, 3, 32, 32), K, R, 64, 0),
     "output panorama size must be positive integers (height, width), got height=64, width=0"),
    (lambda p, K, R: views_to_equirect(torch.zeros(1, 8, 3, 32, 32), K, R, -2, 128),
     "output panorama size must be positive integers"),
    (lambda p, K, R: views_to_equirect(torch.zeros(1, 8, 3, 32, 32), K, R, 64, 128, blend="linear"),
     "blend must be one of 'ramp', 'feather', got 'linear'"),
])
def test_bad_equirect_inputs_raise_value_errors_that_say_what_was_expected(call, message):
    K, R = pano_cameras(8, 90.0, 32, 32)
    with pytest.raises(ValueError) as err:
        call(torch.zeros(1, 3, 64, 128), K, R)
    assert message in str(err.value)
