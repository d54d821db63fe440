"""The overlap-PSNR consistency metric on the real panorama, its closed form, the paper's protocol, validation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from comfyui_mvdiffusion.geometry import pano_cameras, rotation
from comfyui_mvdiffusion.geometry.equirect import equirect_to_views
from comfyui_mvdiffusion.geometry.metrics import (PAPER_PSNR_GROUND_TRUTH, PAPER_PSNR_MVDIFFUSION,
                                                  PAPER_RATIO_MVDIFFUSION, PAPER_SIZE, overlap_psnr,
                                                  paper_overlap_psnr, psnr_ratio)

SIZE = 256  # views cut from the 1024 x 512 panorama: about as dense as the panorama, so no aliasing


@pytest.fixture(scope="module")
def ring(street):
    """The 8 official views (90°, yaw 45° i) cut from the real panorama, and their cameras."""
    K, R = pano_cameras(8, 90.0, SIZE, SIZE)
    pano = street(1024)
    return pano, K, R, equirect_to_views(pano, K, R, SIZE, SIZE)


def test_overlap_psnr_of_views_cut_from_the_real_panorama_is_above_30_db(ring):
    _, K, R, views = ring
    result = overlap_psnr(views, K, R)
    assert result.pairs == tuple((i, (i + 1) % 8) for i in range(8))
    assert result.per_pair.shape == (1, 8) and result.mean.shape == (1,)
    assert (result.per_pair >= 30.0).all() and result.mean.item() >= 30.0
    assert torch.allclose(result.overlap, torch.full((8,), result.overlap[0].item(), dtype=torch.float64))
    assert 0.4 < result.overlap[0] < 0.5  # a neighbour 45° away sees a little less than half of a 90° view


def test_replacing_one_view_by_a_view_of_another_yaw_drops_its_pairs_by_more_than_10_db(ring):
    pano, K, R, views = ring
    before = overlap_psnr(views, K, R).per_pair[0]
    replaced = views.clone()
    replaced[:, 3] = equirect_to_views(pano, K[:1], rotation(200.0)[None], SIZE, SIZE)[:, 0]
    after = overlap_psnr(replaced, K, R).per_pair[0]
    for p, (i, j) in enumerate((i, (i + 1) % 8) for i in range(8)):
        if 3 in (i, j):
            assert after[p] <= before[p] - 10.0, (i, j)
        else:
            assert after[p] == before[p]


def test_views_cut_at_yaw_45_i_agree_with_the_neighbour_warps_and_the_mirrored_yaw_does_not(ring):
    # the official tools' orientation: Equirec2Perspec's THETA = 45° i is our camera i (reference: 32-33 dB
    # with the official bicubic cutter; mirrored yaw about 14 dB)
    pano, K, R, views = ring
    mirrored = equirect_to_views(pano, K, torch.stack([rotation(-45.0 * i) for i in range(8)]), SIZE, SIZE)
    same = overlap_psnr(views, K, R).mean.item()
    other = overlap_psnr(mirrored, K, R).mean.item()
    assert same >= 30.0 and other <= 18.0 and same - other >= 15.0


def test_the_psnr_of_constant_views_is_the_closed_form_of_their_difference():
    K, R = pano_cameras(4, 120.0, 32, 32)
    values = torch.tensor([0.2, 0.5, 0.5, 0.9])
    views = values[:, None, None, None].expand(4, 3, 32, 32).clone()  # one scene given as (m, C, h, w)
    result = overlap_psnr(views, K, R, pairs=[(0, 1), (1, 2), (3, 0)], max_value=1.0)
    assert result.per_pair.shape == (3,) and result.mean.ndim == 0
    assert math.isclose(result.per_pair[0].item(), 10 * math.log10(1 / 0.3 ** 2), rel_tol=1e-5)
    assert result.per_pair[1].item() == math.inf  # identical overlaps
    assert math.isclose(result.per_pair[2].item(), 10 * math.log10(1 / 0.7 ** 2), rel_tol=1e-5)
    # 8-bit scale: the same numbers
    scaled = overlap_psnr(views * 255, K, R, pairs=[(0, 1)], max_value=255.0)
    assert math.isclose(scaled.per_pair[0].item(), result.per_pair[0].item(), rel_tol=1e-5)


def test_the_paper_protocol_resizes_to_1024_and_measures_the_ring(ring):
    _, _, _, views = ring
    assert PAPER_SIZE == 1024
    ours = paper_overlap_psnr(views[0])  # one scene (m, C, h, w)
    resized = F.interpolate(views[0], size=(1024, 1024), mode="bilinear", align_corners=False, antialias=True)
    K, R = pano_cameras(8, 90.0, 1024, 1024)
    direct = overlap_psnr(resized, K, R)
    assert torch.equal(ours.per_pair, direct.per_pair) and ours.mean.ndim == 0 and ours.mean >= 30.0


def test_the_psnr_ratio_is_one_for_ground_truth_and_below_one_for_inconsistent_views(ring):
    _, _, _, views = ring
    assert math.isclose(PAPER_PSNR_MVDIFFUSION / PAPER_PSNR_GROUND_TRUTH, PAPER_RATIO_MVDIFFUSION, abs_tol=0.005)
    assert psnr_ratio(views, views, size=SIZE).item() == pytest.approx(1.0)
    noisy = (views + 0.05 * torch.randn(views.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    ratio = psnr_ratio(torch.cat([noisy, noisy]), views, size=SIZE)  # different scene counts are fine
    assert ratio.ndim == 0 and 0.5 < ratio.item() < 0.95


@pytest.mark.parametrize("call, message", [
    (lambda v, K, R: overlap_psnr(v[0, 0], K, R),
     "views must have shape (B, m, C, h, w) or (m, C, h, w), got (3, 32, 32)"),
    (lambda v, K, R: overlap_psnr(v, K[:4], R[:4]), "expected one camera per view: 8 views but 4 cameras (K, R)"),
    (lambda v, K, R: overlap_psnr(v, K, R[:7]),
     "K and R must describe the same views: got 8 intrinsics and 7 rotations"),
    (lambda v, K, R: overlap_psnr(v, K, R, pairs=[(0, 8)]), "pair (0, 8) must name two different views among 0..7"),
    (lambda v, K, R: overlap_psnr(v, K, R, pairs=[(2, 2)]), "pair (2, 2) must name two different views"),
    (lambda v, K, R: overlap_psnr(v, K, R, pairs=[(0, 1, 2)]), "pairs must be (i, j) view index pairs"),
    (lambda v, K, R: overlap_psnr(v, K, R, pairs=[]), "pairs must list at least one (i, j) pair"),
    (lambda v, K, R: overlap_psnr(v, K, R, pairs=[(0, 4)]), "views 0 and 4 do not overlap"),
    (lambda v, K, R: overlap_psnr(v, K, R, max_value=0), "max_value must be positive, got 0"),
    (lambda v, K, R: overlap_psnr(v[:, :1], K[:1], R[:1]), "the overlap PSNR needs at least 2 views, got 1"),
    (lambda v, K, R: paper_overlap_psnr(v, size=0), "size must be an integer of at least 2 pixels, got 0"),
    (lambda v, K, R: psnr_ratio(v, v[:, :4]),
     "generated and ground_truth must have the same number of views, got 8 and 4"),
    (lambda v, K, R: psnr_ratio(v, v[0, 0]), "ground_truth must have shape (B, m, C, h, w) or (m, C, h, w)"),
])
def test_bad_metric_inputs_raise_value_errors_that_say_what_was_expected(call, message):
    K, R = pano_cameras(8, 90.0, 32, 32)
    with pytest.raises(ValueError) as err:
        call(torch.zeros(1, 8, 3, 32, 32), K, R)
    assert message in str(err.value)
