"""Full-sphere rigs: the closed-form coverage, 100 % coverage of the feathered stitch, seam-free weights at the pole
views' borders, overlap-based neighbours, and the rows syntax."""
from __future__ import annotations

import math

import pytest
import torch

from comfyui_mvdiffusion.geometry import pano_rig, views_to_equirect
from comfyui_mvdiffusion.geometry.correspondences import overlap_fraction
from comfyui_mvdiffusion.geometry.equirect import equirect_grid, lonlat_to_direction
from comfyui_mvdiffusion.geometry.sphere import (covered, parse_rows, pole_fov_for_full_sphere, pole_reach,
                                                 ring_top_latitude, sphere_rig)


def _stitched_coverage(rig, pano_height=256):
    views = torch.ones(1, rig.num_views, 1, rig.height, rig.width)
    return views_to_equirect(views, rig.K, rig.R, pano_height, 2 * pano_height, blend="feather")


def _pixel_directions(pano_height=256):
    lon, lat = equirect_grid(pano_height, 2 * pano_height, dtype=torch.float64)
    return lonlat_to_direction(lon[None, :], lat[:, None])


def test_the_ring_and_pole_bounds_have_their_closed_forms():
    # 8 square 90° views: halfway between two views (22.5°) the ring reaches atan(cos 22.5°)
    assert ring_top_latitude(8, 90.0, 512, 512) == pytest.approx(math.degrees(math.atan(math.cos(math.pi / 8))))
    assert pole_reach(120.0, 512, 512) == pytest.approx(30.0)  # the middle of a border is 60° from the axis
    assert pole_reach(120.0, 256, 512) == pytest.approx(90.0 - math.degrees(math.atan(math.tan(math.pi / 3) / 2)))
    need = pole_fov_for_full_sphere(8, 90.0, 512, 512)
    assert pole_reach(need, 512, 512) == pytest.approx(ring_top_latitude(8, 90.0, 512, 512))
    assert pole_fov_for_full_sphere(4, 80.0, 512, 512) == math.inf  # 4 views of 80° leave gaps on the horizon


@pytest.mark.parametrize("pole_fov", [80.0, 90.0, 120.0])
def test_the_feathered_stitch_covers_exactly_the_directions_inside_some_view(pole_fov):
    rig = sphere_rig(height=64, width=64, pole_fov_deg=pole_fov, min_overlap=0.0)
    _, coverage = _stitched_coverage(rig)
    expected = covered(rig, _pixel_directions())
    assert torch.equal(coverage[0, 0], expected)
    if pole_fov < 90.0:  # a negative control: the pole views are too narrow, holes around the poles
        lon, lat = equirect_grid(256, 512)
        holes = ~coverage[0, 0]
        assert holes.any() and (lat[holes.nonzero()[:, 0]].abs() > math.radians(ring_top_latitude(8, 90, 64, 64)) - 1e-6).all()


def test_the_default_sphere_rig_covers_every_pixel_of_a_2_to_1_panorama():
    rig = sphere_rig(height=64, width=64)
    assert pole_fov_for_full_sphere(8, 90.0, 64, 64) < 120.0  # so the closed form guarantees it
    pano, coverage = _stitched_coverage(rig, 512)
    assert bool(coverage.all()) and torch.allclose(pano, torch.ones_like(pano))


@pytest.mark.parametrize("ring, poles", [(0.0, 1.0), ("alternating", 0.5)])
def test_a_sphere_stitch_has_no_seam_at_the_pole_view_borders_or_the_wrap(ring, poles):
    # views of flat, different colours: a seam is a step between neighbouring panorama pixels as big as a good
    # part of the colour difference (a weight that is not 0 where a view ends). The feathered weights fall to 0
    # at every view border, so the colours blend over the overlap; the ring's ramp (0 only at the left and right
    # borders) is the negative control.
    rig = sphere_rig(height=64, width=64)
    ring_colours = [float(i % 2) for i in range(8)] if ring == "alternating" else [ring] * 8
    colours = torch.tensor(ring_colours + [poles, poles])
    views = colours[None, :, None, None, None].expand(1, rig.num_views, 1, 64, 64).contiguous()

    def largest_steps(blend):
        p = views_to_equirect(views, rig.K, rig.R, 256, 512, blend=blend)[0][0, 0]
        return float((p[1:] - p[:-1]).abs().max()), float((p.roll(-1, dims=1) - p).abs().max())  # wrap included

    assert max(largest_steps("feather")) < 0.12
    assert max(largest_steps("ramp")) > 0.3


def test_the_sphere_rig_puts_the_ring_first_then_the_poles():
    rig = sphere_rig(8, 90.0, 64, 64)
    ring = pano_rig(8, 90.0, 64, 64)
    assert rig.num_views == 10 and torch.equal(rig.R[:8], ring.R) and torch.equal(rig.K[:8], ring.K)
    up, down = rig.R[8] @ torch.tensor([0.0, 0.0, 1.0]), rig.R[9] @ torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(up, torch.tensor([0.0, -1.0, 0.0]), atol=1e-6)  # y points down: -y is up
    assert torch.allclose(down, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


def test_pole_views_attend_to_every_ring_view_they_overlap_and_ring_views_to_the_poles():
    rig = sphere_rig(8, 90.0, 64, 64)
    frac = overlap_fraction(rig.K, rig.R, 64, 64)
    for pole in (8, 9):
        overlapping = {j for j in range(10) if j != pole and frac[pole, j] > 0.1}
        assert overlapping == set(range(8)) and set(rig.neighbours[pole]) == overlapping
        order = [float(frac[pole, j]) for j in rig.neighbours[pole]]
        assert order == sorted(order, reverse=True)  # most overlapping first
    for i in range(8):
        assert set(rig.neighbours[i]) == {(i - 1) % 8, (i + 1) % 8, 8, 9}
    assert rig.max_neighbours == 8


def test_rows_are_added_between_the_ring_and_the_poles():
    rows = parse_rows("45:4, -45:4:100:45")
    assert rows == ((45.0, 4, 90.0, 0.0), (-45.0, 4, 100.0, 45.0))
    rig = sphere_rig(8, 90.0, 64, 64, pole_fov_deg=90.0, rows=rows)
    assert rig.num_views == 18
    assert rig.pitches_deg == (0.0,) * 8 + (45.0,) * 4 + (-45.0,) * 4 + (90.0, -90.0)
    assert rig.yaws_deg[12:16] == (45.0, 135.0, 225.0, 315.0) and rig.fovs_deg[12] == 100.0
    assert bool(covered(rig, _pixel_directions()).all())


@pytest.mark.parametrize("text, message", [
    ("45", "is not pitch:views"), ("45:x", "is not pitch:views"), ("1:2:3:4:5", "is not pitch:views"),
    ("95:4", "pitch must be in [-90, 90]"), ("45:0", "views at least 1"),
])
def test_bad_rows_are_refused_with_the_syntax(text, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_rows(text)


def test_a_bad_poles_choice_is_refused():
    with pytest.raises(ValueError, match="poles must be one of both, up, down, none"):
        sphere_rig(poles="top")


def test_the_overlap_psnr_of_sphere_views_cut_from_a_real_panorama_is_high_for_pole_and_ring_pairs(street):
    # views cut from one real panorama agree where they overlap, pole-ring pairs included; the same views with the
    # poles swapped do not (negative control)
    from comfyui_mvdiffusion.geometry import equirect_to_views, overlap_psnr

    rig = sphere_rig(8, 90.0, 96, 96)
    views = equirect_to_views(street(1024), rig.K, rig.R, 96, 96)[0]  # (10, 3, 96, 96)
    pairs = [(8, j) for j in range(8)] + [(9, j) for j in range(8)]
    good = overlap_psnr(views, rig.K, rig.R, pairs)
    swapped = overlap_psnr(views[[0, 1, 2, 3, 4, 5, 6, 7, 9, 8]], rig.K, rig.R, pairs)
    assert float(good.per_pair.min()) > 25.0
    assert float(swapped.per_pair.max()) < float(good.per_pair.min()) - 5.0
