"""The depth UNet's 5th channel: normalised inverse depth per view, -2 without depth, pixel (8y, 8x) per cell."""
from __future__ import annotations

import pytest
import torch

from comfyui_mvdiffusion.geometry.depth_condition import inverse_depth_condition, views_without_depth


def test_each_view_is_normalised_by_its_own_inverse_depth_range_and_invalid_pixels_are_minus_two():
    depths = torch.zeros(2, 16, 16)
    depths[0, :8] = 1.0  # near: inverse depth ~1 -> +1
    depths[0, 8:] = 4.0  # far: inverse depth ~0.25 -> -1
    depths[0, 8:, 8:] = 0.0  # no depth
    depths[1] = 2.0  # one depth: max == min -> (0 / 1e-6) * 2 - 1 = -1 everywhere
    cond = inverse_depth_condition(depths)
    assert cond.shape == (2, 2, 2) and cond.dtype == torch.float32
    inv_near, inv_far = 1 / (1.0 + 1e-6), 1 / (4.0 + 1e-6)
    near = (inv_near - inv_far) / (inv_near - inv_far + 1e-6) * 2 - 1  # just below 1, as the official formula
    assert cond[0].flatten().tolist() == pytest.approx([near, near, -1.0, -2.0], abs=1e-7)
    assert torch.equal(cond[1], torch.full((2, 2), -1.0))


def test_each_latent_cell_takes_the_pixel_at_its_top_left_corner_as_opencvs_nearest():
    depths = torch.full((1, 16, 16), 2.0)
    depths[0, 0, 0] = 1.0  # the picked pixel of cell (0, 0)
    depths[0, 4, 4] = 8.0  # the centre of cell (0, 0): not picked
    depths[0, 8, 9] = 0.0  # next to the picked pixel (8, 8) of cell (1, 1): not picked
    cond = inverse_depth_condition(depths)
    assert cond[0, 0, 0] > 0.99 and cond[0, 1, 1] > -2  # (8, 8) still has depth
    assert float(cond.max()) == float(cond[0, 0, 0])


def test_a_view_without_depth_is_all_minus_two_and_reported():
    depths = torch.rand(3, 8, 8) + 0.5
    depths[1] = 0.0
    cond = inverse_depth_condition(depths)
    assert torch.equal(cond[1], torch.full((1, 1), -2.0)) and views_without_depth(depths) == (1,)
    assert torch.isfinite(cond).all()


def test_sizes_that_are_not_multiples_of_8_are_refused():
    with pytest.raises(ValueError, match="not a multiple of 8"):
        inverse_depth_condition(torch.ones(1, 12, 16))
