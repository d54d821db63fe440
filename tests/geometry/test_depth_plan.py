"""The depth attention plan of one level, on 16x16 views with a 2x2 level (stride 8: the query cells are the
image pixels (4, 4), (12, 4), (4, 12), (12, 12)) and hand-placed correspondences whose expected fields are
worked out in the comments."""
from __future__ import annotations

import pytest
import torch

from comfyui_mvdiffusion.geometry.depth_plan import build_depth_level_plan

S = 16
ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
FAR = torch.tensor(1e6, dtype=torch.float32)


def two_views():
    """View 0's depth 2 + x/16 + y/32 (2.375, 2.875, 2.625, 3.125 at the cells), view 1's 1 + x/16 + y except a
    hole at (x=7, y=9); every value is exact in binary. Correspondences 0 -> 1 at the four cells (x, y):"""
    depths = torch.stack([2 + xs / 16 + ys / 32, 1 + xs / 16 + ys])
    depths[1, 9, 7] = 0
    corr = torch.zeros(2, 2, S, S, 2)
    corr[0, 1, 4, 4] = torch.tensor([2.5, 3.5])  # rescaled exactly to (2.5, 3.5): rounds half to even -> (2, 4)
    corr[0, 1, 4, 12] = torch.tensor([15.6, 0.2])  # rounds to x = 16: outside the 16-px image
    corr[0, 1, 12, 4] = torch.tensor([-0.4, 15.4])  # rounds to (0, 15): inside although x < 0
    corr[0, 1, 12, 12] = torch.tensor([7.0, 9.0])  # inside, on view 1's hole
    return corr, depths


def test_cells_read_the_neighbour_depth_at_the_correspondence_rounded_half_to_even():
    corr, depths = two_views()
    plan = build_depth_level_plan(corr, depths, ((1,), (0,)), 2, 2)
    assert plan.neighbours.tolist() == [[1], [0]] and plan.present.all()
    # cell (u=0, v=0): query depth 2.375, neighbour depth at (2, 4) = 1 + 2/16 + 4 = 5.125 (not (3, 4): 5.1875)
    assert plan.valid[0, 0, 0, 0] and plan.depth_difference[0, 0, 0, 0] == 2.75
    # cell (0, 1) = pixel (4, 12): rounded (0, 15), depth 16, query 2.625
    assert plan.valid[0, 0, 1, 0] and plan.depth_difference[0, 0, 1, 0] == 13.375


def test_a_rounded_point_outside_or_on_a_hole_is_invalid_and_its_neighbour_depth_is_a_million():
    corr, depths = two_views()
    plan = build_depth_level_plan(corr, depths, ((1,), (0,)), 2, 2)
    assert not plan.valid[0, 0, 0, 1] and plan.depth_difference[0, 0, 0, 1] == FAR - 2.875  # x rounds to 16
    assert not plan.valid[0, 0, 1, 1] and plan.depth_difference[0, 0, 1, 1] == FAR - 3.125  # the hole
    assert plan.valid[0, 0].sum() == 2


def test_a_query_cell_without_depth_is_invalid_but_keeps_the_neighbour_depth_in_its_difference():
    corr, depths = two_views()
    depths[0, 4, 4] = 0
    corr[0, 1, 12, 12] = -1e6  # what a depth-less pixel's correspondence is
    depths[0, 12, 12] = 0
    plan = build_depth_level_plan(corr, depths, ((1,), (0,)), 2, 2)
    assert not plan.valid[0, 0, 0, 0] and plan.depth_difference[0, 0, 0, 0] == 5.125  # |0 - 5.125|, not 1e6
    assert not plan.valid[0, 0, 1, 1] and plan.depth_difference[0, 0, 1, 1] == FAR


def test_the_grid_is_the_correspondence_in_key_map_pixels_normalised_with_align_corners():
    corr, depths = two_views()
    plan = build_depth_level_plan(corr, depths, ((1,), (0,)), 2, 2)
    # c = xy / 8 - 0.5 key-map pixels; a 2-pixel axis maps c to c / (2 - 1) * 2 - 1
    assert plan.grid[0, 0, 0, 0].tolist() == [(2.5 / 8 - 0.5) * 2 - 1, (3.5 / 8 - 0.5) * 2 - 1]
    assert plan.grid[0, 0, 1, 1].tolist() == [(7 / 8 - 0.5) * 2 - 1, (9 / 8 - 0.5) * 2 - 1]
    # view 1 -> 0 correspondences are all (0, 0): the key-map point (-0.5, -0.5), the image pixel (0, 0)
    assert (plan.grid[1] == -2).all() and plan.valid[1].all()
    assert torch.equal(plan.depth_difference[1, 0], (depths[1, 4::8, 4::8] - depths[0, 0, 0]).abs())


def test_views_with_fewer_neighbours_get_absent_invalid_zero_padding_slots():
    corr = torch.zeros(3, 3, S, S, 2)
    corr[1, 2] = 5.0
    depths = torch.ones(3, S, S)
    plan = build_depth_level_plan(corr, depths, ((1,), (0, 2), (1,)), 2, 2)
    assert plan.neighbours.tolist() == [[1, 1], [0, 2], [1, 1]]  # a padding slot repeats the first neighbour
    assert plan.present.tolist() == [[True, False], [True, True], [True, False]]
    assert plan.num_neighbours.tolist() == [1, 2, 1]
    for view in (0, 2):
        assert not plan.valid[view, 1].any() and (plan.grid[view, 1] == 0).all()
        assert (plan.depth_difference[view, 1] == 0).all()
    assert plan.valid[1].all() and (plan.grid[1, 1] == (5 / 8 - 0.5) * 2 - 1).all()  # view 1's slot 1 is view 2
    assert plan.grid.shape == (3, 2, 2, 2, 2) and plan.depth_difference.dtype == torch.float32


def test_sizes_that_do_not_tile_the_image_and_bad_neighbour_lists_are_refused():
    corr, depths = two_views()
    with pytest.raises(ValueError, match="tile"):
        build_depth_level_plan(corr, depths, ((1,), (0,)), 3, 3)
    with pytest.raises(ValueError, match="tile"):
        build_depth_level_plan(corr, depths, ((1,), (0,)), 1, 1)  # a 1-pixel axis: NaN in the official code
    with pytest.raises(ValueError, match="distinct other views"):
        build_depth_level_plan(corr, depths, ((0,), (0,)), 2, 2)
    with pytest.raises(ValueError, match="neighbour lists"):
        build_depth_level_plan(corr, depths, ((1,),), 2, 2)
