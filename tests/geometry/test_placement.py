"""Placing known pixels: the official demo's crop, photos reprojected into the rig (checked on the real street
panorama and against the closed-form footprint), partial panoramas cut into views, and latent masks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comfyui_mvdiffusion.geometry import (direction_to_lonlat, equirect_to_views, fit_official, intrinsics,
                                          latent_mask, lonlat_to_equirect_pixel, panorama_to_views, pano_rig,
                                          photo_camera, pixel_grid, reproject_photo, rotation)

PHOTO_H, PHOTO_W, PHOTO_FOV = 384, 512, 60.0  # the photo of the main test: 4:3 landscape, 60° horizontally
VIEW = 256  # the rig's views: pano_rig(8, 90, 256, 256)


# --- fit_official -----------------------------------------------------------------------------------------------

def inter_linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of OpenCV's INTER_LINEAR along one axis, written from its definition: output pixel i
    reads the source at ``(i + 0.5) * n_in / n_out - 0.5`` (clamped to [0, n_in - 1]) from its two neighbours."""
    A = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        A[i, i0] += 1 - (src - i0)
        A[i, i1] += src - i0
    return A


@pytest.mark.parametrize("h, w, size, resized, rows, cols", [
    (37, 23, 16, (25, 16), slice(4, 20), slice(0, 16)),  # tall, shrunk: int(16 * 37 / 23) = 25, (25 - 16) // 2 = 4
    (5, 13, 16, (16, 41), slice(0, 16), slice(12, 28)),  # wide, enlarged: int(16 * 13 / 5) = 41, (41 - 16) // 2 = 12
    (20, 20, 16, (16, 16), slice(0, 16), slice(0, 16)),  # square: resized only
    (33, 32, 16, (16, 16), slice(0, 16), slice(0, 16)),  # int(16.5) = 16: nothing to crop (the official fails)
])
def test_fit_official_is_the_official_resize_then_centre_crop(h, w, size, resized, rows, cols):
    image = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * w), dtype=torch.float64)
    out = fit_official(image, size)
    assert out.shape == (2, 3, size, size) and out.dtype == torch.float64
    A_rows, A_cols = inter_linear_matrix(h, resized[0]), inter_linear_matrix(w, resized[1])
    full = np.einsum("yh,bchw,xw->bcyx", A_rows, image.numpy(), A_cols)
    assert np.allclose(out.numpy(), full[:, :, rows, cols], atol=1e-12)


def test_fit_official_keeps_the_dtype_and_rejects_bad_inputs():
    assert fit_official(torch.rand(1, 3, 30, 40).half(), 8).dtype == torch.float16
    with pytest.raises(ValueError, match=r"image must be a non-empty batch of images of shape \(B, C, H, W\)"):
        fit_official(torch.rand(3, 30, 40), 8)
    with pytest.raises(ValueError, match="output size must be positive integers"):
        fit_official(torch.rand(1, 3, 30, 40), 0)


# --- photo_camera -----------------------------------------------------------------------------------------------

def test_photo_camera_is_the_rigs_camera_for_a_horizontal_field_of_view():
    K, R = photo_camera(60, 30, -10, PHOTO_H, PHOTO_W)
    assert K.shape == R.shape == (3, 3) and K.dtype == R.dtype == torch.float32
    assert torch.equal(K, intrinsics(60.0, PHOTO_H, PHOTO_W)) and torch.equal(R, rotation(30.0, -10.0))
    assert math.isclose(K[0, 0].item(), 256 / math.tan(math.radians(30)), rel_tol=1e-6)
    assert photo_camera(1.001, 0, 0, 4, 4)[0].shape == photo_camera(178.9, 0, 0, 4, 4)[0].shape == (3, 3)


@pytest.mark.parametrize("fov", [1, 179, 0.5, 180, -60, float("nan"), "wide", True])
def test_photo_camera_rejects_a_field_of_view_outside_1_to_179_degrees(fov):
    with pytest.raises(ValueError, match="horizontal field of view must lie strictly between 1 and 179 degrees"):
        photo_camera(fov, 0, 0, PHOTO_H, PHOTO_W)


# --- reproject_photo --------------------------------------------------------------------------------------------

def cut_photo(pano: torch.Tensor, yaw: float, pitch: float = 0.0) -> torch.Tensor:
    """A (1, 3, 384, 512) 60° photo of the panorama looking at (yaw, pitch)."""
    K, R = intrinsics(PHOTO_FOV, PHOTO_H, PHOTO_W), rotation(yaw, pitch)
    return equirect_to_views(pano, K[None], R[None], PHOTO_H, PHOTO_W)[0]


def place(photos, cameras):
    """reproject_photo of photos (B, 3, Hp, Wp) taken with cameras [(fov, yaw, pitch), ...] into the 8-view rig."""
    h, w = photos.shape[-2:]
    Ks, Rs = zip(*(photo_camera(fov, yaw, pitch, h, w) for fov, yaw, pitch in cameras))
    rig = pano_rig(8, 90.0, VIEW, VIEW)
    return reproject_photo(photos, torch.stack(Ks), torch.stack(Rs), rig.K, rig.R, VIEW, VIEW)


def rig_views(pano: torch.Tensor) -> torch.Tensor:
    """The 8 rig views (8, 3, 256, 256) cut straight from the panorama: what the placed photo must reproduce."""
    rig = pano_rig(8, 90.0, VIEW, VIEW)
    return equirect_to_views(pano, rig.K, rig.R, VIEW, VIEW)[0]


def closed_form_footprint(photo_yaw: float, hfov: float, hp: int, wp: int):
    """Which pixels of the views of pano_rig(8, 90, 256, 256) a photo at (photo_yaw, pitch 0) covers, from the
    [-0.5, Wp-0.5] x [-0.5, Hp-0.5] rule in closed form (float64 numpy): view i's pixel (x, y) has the camera ray
    (a, b, 1), a = (x - c) / f, b = (y - c) / f (c = 127.5, f = 128 for 90°); turned by d = 45° i - photo_yaw
    about the vertical axis it is (a cos d + sin d, b, -a sin d + cos d) = (X, Y, Z) in the photo's frame. With
    f_p = 0.5 Wp / tan(hfov / 2) and c_x = (Wp - 1) / 2, u = f_p X / Z + c_x lies in [-0.5, Wp - 0.5] iff
    |X / Z| <= tan(hfov / 2); likewise |Y / Z| <= tan(hfov / 2) Hp / Wp. Returns (inside, margin), each
    (8, 1, 256, 256): margin is the distance to the nearer bound, in tangent units."""
    c, f = (VIEW - 1) / 2, VIEW / 2
    b, a = np.meshgrid((np.arange(VIEW) - c) / f, (np.arange(VIEW) - c) / f, indexing="ij")
    d = np.radians(45.0 * np.arange(8) - photo_yaw)[:, None, None]
    X, Y, Z = a * np.cos(d) + np.sin(d), np.broadcast_to(b, (8, VIEW, VIEW)), -a * np.sin(d) + np.cos(d)
    t = math.tan(math.radians(hfov / 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.minimum(t - np.abs(X / Z), t * hp / wp - np.abs(Y / Z))
    inside = (Z > 0) & (margin >= 0)
    margin = np.where(Z > 0, np.abs(margin), np.inf)
    return torch.from_numpy(inside[:, None]), torch.from_numpy(margin[:, None])


def test_a_photo_cut_from_the_street_panorama_and_placed_by_its_camera_reproduces_the_rig_views(street, psnr):
    pano = street(2048)
    views, known = place(cut_photo(pano, 30.0), [(PHOTO_FOV, 30.0, 0.0)])
    assert views.shape == (8, 3, VIEW, VIEW) and known.shape == (8, 1, VIEW, VIEW) and known.dtype == torch.float32
    assert set(known.unique().tolist()) == {0.0, 1.0}
    assert known[:3].flatten(1).any(1).all() and not known[3:].any()  # 0° to 60°: views 0, 1, 2 (-45° to 135°)
    # measured 42.9 dB on every known pixel (no erosion needed: the photo's border half pixel repeats its border)
    assert psnr(views, rig_views(pano), known.bool()) >= 30.0
    assert torch.equal(views[~known.bool().expand_as(views)], torch.zeros(int(3 * (known == 0).sum())))


def test_the_known_mask_is_the_closed_form_footprint_of_the_photo():
    photo = torch.rand(1, 3, PHOTO_H, PHOTO_W)
    expected, margin = closed_form_footprint(30.0, PHOTO_FOV, PHOTO_H, PHOTO_W)
    known = place(photo, [(PHOTO_FOV, 30.0, 0.0)])[1].bool()
    # float32 per pixel may decide either way within 1e-5 (tangent units, ~0.005 photo pixels) of the border
    clear = margin > 1e-5
    assert torch.equal(known[clear], expected[clear])
    assert (~clear).sum() <= 4 and expected.sum() > 0.05 * expected.numel()


@pytest.mark.parametrize("placed_yaw, mirrored", [(40.0, False), (30.0, True)])
def test_a_photo_placed_10_degrees_off_or_mirrored_fails_the_30_db_bar(street, psnr, placed_yaw, mirrored):
    pano = street(2048)
    photo = cut_photo(pano, 30.0)
    views, known = place(photo.flip(-1) if mirrored else photo, [(PHOTO_FOV, placed_yaw, 0.0)])
    assert known.mean() > 0.07  # the bar is applied to as many pixels as in the positive test
    assert psnr(views, rig_views(pano), known.bool()) < 20.0  # measured 14.0 dB (10° off) and 12.8 dB (mirrored)


def test_a_photo_pitched_20_degrees_up_reproduces_the_rig_views(street, psnr):
    pano = street(2048)
    views, known = place(cut_photo(pano, 30.0, 20.0), [(PHOTO_FOV, 30.0, 20.0)])
    assert known[0].any() and known[1].any()
    assert psnr(views, rig_views(pano), known.bool()) >= 30.0  # measured 43.3 dB
    upper = known[:, :, :VIEW // 2].sum()
    assert upper > 2 * known[:, :, VIEW // 2:].sum()  # the photo lies above the horizon: in the views' upper half


def test_a_front_and_a_back_photo_fill_both_sides_of_the_rig(street, psnr):
    pano = street(2048)
    photos = torch.cat([cut_photo(pano, 0.0), cut_photo(pano, 180.0)])
    views, known = place(photos, [(PHOTO_FOV, 0.0, 0.0), (PHOTO_FOV, 180.0, 0.0)])
    front, _ = closed_form_footprint(0.0, PHOTO_FOV, PHOTO_H, PHOTO_W)
    back, _ = closed_form_footprint(180.0, PHOTO_FOV, PHOTO_H, PHOTO_W)
    assert known[0].all(dim=0)[VIEW // 2].any() and known[4].all(dim=0)[VIEW // 2].any()
    assert not known[2].any() and not known[6].any()  # 90° and 270° lie outside both photos
    assert torch.equal(known.bool(), front | back)
    assert psnr(views, rig_views(pano), known.bool()) >= 30.0


def test_where_two_photos_overlap_the_later_one_wins():
    red, blue = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    photos = torch.stack([red, blue])[:, :, None, None].expand(2, 3, PHOTO_H, PHOTO_W)
    first, m0 = closed_form_footprint(0.0, PHOTO_FOV, PHOTO_H, PHOTO_W)
    second, m1 = closed_form_footprint(20.0, PHOTO_FOV, PHOTO_H, PHOTO_W)
    clear = ((m0 > 1e-5) & (m1 > 1e-5)).expand(8, 3, VIEW, VIEW)
    assert (first & second).sum() > 1000  # the two photos share a wide band
    for order in ((0, 1), (1, 0)):
        cams = [(PHOTO_FOV, (0.0, 20.0)[k], 0.0) for k in order]
        views, known = place(photos[list(order)], cams)
        later = (first, second)[order[1]]
        expected = torch.where(later, photos[order[1], :, :1, :1], torch.where(first | second,
                                                                               photos[order[0], :, :1, :1], 0.0))
        assert torch.equal(known.bool(), first | second)
        assert torch.equal(views[clear], expected.expand(8, 3, VIEW, VIEW)[clear])


def test_reprojection_keeps_the_photos_dtype_and_rejects_mismatched_cameras():
    photo = torch.rand(2, 3, 24, 32, dtype=torch.float64)
    K, R = photo_camera(60, 0, 0, 24, 32)
    rig = pano_rig(8, 90.0, 16, 16)
    views, known = reproject_photo(photo, torch.stack([K, K]), torch.stack([R, R]), rig.K, rig.R, 16, 16)
    assert views.dtype == torch.float64 and known.dtype == torch.float32 and views.shape == (8, 3, 16, 16)
    with pytest.raises(ValueError, match=r"expected one camera per view: 2 views but 1 cameras"):
        reproject_photo(photo, K[None], R[None], rig.K, rig.R, 16, 16)
    with pytest.raises(ValueError, match=r"photo must be a non-empty batch of images of shape \(B, C, Hp, Wp\)"):
        reproject_photo(photo[0], K[None], R[None], rig.K, rig.R, 16, 16)


# --- panorama_to_views ------------------------------------------------------------------------------------------

def taps_touching(rows: slice, cols: slice, hp: int, wp: int, min_weight: float) -> torch.Tensor:
    """(8, 1, 32, 32) bool: view pixels of pano_rig(8, 90, 32, 32) whose bilinear taps (weight > min_weight) touch
    the panorama rectangle [rows, cols], from the ray's longitude/latitude in float64 (rectangle away from the
    seam and the poles, so no wrapping or clamping)."""
    rig = pano_rig(8, 90.0, 32, 32)
    dirs = (rig.R.double() @ torch.linalg.inv(rig.K.double()) @ pixel_grid(32, 32, dtype=torch.float64)
            .reshape(-1, 3).T).transpose(1, 2)
    u, v = lonlat_to_equirect_pixel(*direction_to_lonlat(dirs), hp, wp)
    hit = torch.zeros(u.shape, dtype=torch.bool)
    for du in (0, 1):
        for dv in (0, 1):
            col, row = torch.floor(u) + du, torch.floor(v) + dv
            weight = (1 - (u - col).abs()) * (1 - (v - row).abs())
            inside = (row >= rows.start) & (row < rows.stop) & (col >= cols.start) & (col < cols.stop)
            hit |= inside & (weight > min_weight)
    return hit.reshape(8, 1, 32, 32)


def test_views_of_a_panorama_are_known_exactly_where_no_tap_reads_a_missing_pixel(street):
    pano = street(512)
    rows, cols = slice(100, 140), slice(280, 340)  # a rectangle seen by views 0 and 1 (longitude 17° to 59°)
    missing = torch.zeros(1, 1, 256, 512)
    missing[..., rows, cols] = 1.0
    rig = pano_rig(8, 90.0, 32, 32)
    views, known = panorama_to_views(pano, missing, rig.K, rig.R, 32, 32)
    assert views.shape == (1, 8, 3, 32, 32) and known.shape == (1, 8, 1, 32, 32) and known.dtype == torch.float32
    assert torch.equal(views, equirect_to_views(pano, rig.K, rig.R, 32, 32))
    reads_missing = taps_touching(rows, cols, 256, 512, 1e-4)
    reads_nothing_missing = ~taps_touching(rows, cols, 256, 512, 0.0)
    assert reads_missing.sum() > 50 and (reads_missing | reads_nothing_missing).float().mean() > 0.99
    assert torch.equal(known[0][reads_missing], torch.zeros(int(reads_missing.sum())))
    assert torch.equal(known[0][reads_nothing_missing], torch.ones(int(reads_nothing_missing.sum())))


def test_one_panorama_broadcasts_against_several_missing_masks():
    pano = torch.rand(1, 3, 64, 128)
    missing = torch.zeros(2, 1, 64, 128)
    missing[1] = 1.0
    rig = pano_rig(8, 90.0, 16, 16)
    views, known = panorama_to_views(pano, missing, rig.K, rig.R, 16, 16)
    assert views.shape == (2, 8, 3, 16, 16) and torch.equal(views[0], views[1])
    assert known[0].eq(1).all() and known[1].eq(0).all()
    with pytest.raises(ValueError, match=r"missing must be a mask \(B, 1, Hp, Wp\) of the panorama's size"):
        panorama_to_views(pano, missing[..., :32, :], rig.K, rig.R, 16, 16)
    with pytest.raises(ValueError, match="the same number of panoramas"):
        panorama_to_views(pano.expand(3, 3, 64, 128), missing, rig.K, rig.R, 16, 16)


# --- latent_mask ------------------------------------------------------------------------------------------------

def test_a_latent_mask_of_masks_constant_per_view_is_the_official_nearest_resize():
    known = torch.tensor([1.0, 0.0, 0.0, 1.0])[:, None, None, None].expand(4, 1, 64, 96)
    generate = latent_mask(known)
    assert generate.shape == (4, 1, 8, 12)
    assert torch.equal(generate, F.interpolate(1 - known, size=(8, 12), mode="nearest"))


def test_one_unknown_pixel_marks_exactly_its_latent_cell():
    known = torch.ones(2, 8, 1, 64, 64)
    known[1, 3, 0, 17, 42] = 0.0
    generate = latent_mask(known)
    assert generate.shape == (2, 8, 1, 8, 8) and generate.sum() == 1 and generate[1, 3, 0, 2, 5] == 1


def test_a_latent_cell_is_generated_iff_any_of_its_pixels_is_unknown():
    known = (torch.rand(3, 1, 32, 48, generator=torch.Generator().manual_seed(0)) > 0.01).float()
    generate = latent_mask(known, factor=4)
    for cell_y in range(8):
        for cell_x in range(12):
            pixels = known[:, 0, 4 * cell_y:4 * cell_y + 4, 4 * cell_x:4 * cell_x + 4]
            assert torch.equal(generate[:, 0, cell_y, cell_x], (pixels == 0).flatten(1).any(dim=1).float())
    assert 0 < generate.mean() < 1


@pytest.mark.parametrize("shape, factor, message", [
    ((1, 1, 60, 64), 8, "the mask's size must be a positive multiple of 8 (the latent factor), got 60 x 64"),
    ((1, 1, 64, 12), 8, "got 64 x 12"),
    ((1, 3, 64, 64), 8, "known must be a mask of shape (..., 1, h, w), got (1, 3, 64, 64)"),
    ((64, 64), 8, "known must be a mask of shape (..., 1, h, w), got (64, 64)"),
    ((1, 1, 64, 64), 0, "factor must be a positive integer, got 0"),
])
def test_latent_mask_rejects_sizes_that_are_not_multiples_of_the_factor(shape, factor, message):
    with pytest.raises(ValueError) as err:
        latent_mask(torch.ones(shape), factor)
    assert message in str(err.value)
