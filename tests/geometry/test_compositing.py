"""Pasting known pixels back: the feather weight is the clipped chessboard distance to the unknown region."""
from __future__ import annotations

import pytest
import torch

from comfyui_mvdiffusion.geometry.compositing import feather_weight, paste_known


def chessboard_distance(known: torch.Tensor) -> torch.Tensor:
    """Brute force: for each pixel, the smallest max(|dy|, |dx|) to an unknown pixel (inf when none)."""
    h, w = known.shape
    ys, xs = torch.nonzero(known < 0.5, as_tuple=True)
    out = torch.full((h, w), float("inf"))
    for y in range(h):
        for x in range(w):
            if len(ys):
                out[y, x] = torch.maximum((ys - y).abs(), (xs - x).abs()).min().float()
    return out


@pytest.mark.parametrize("feather", [1, 3, 6])
def test_the_feather_weight_is_the_clipped_distance_to_the_unknown_region_over_the_feather(feather):
    g = torch.Generator().manual_seed(feather)
    known = torch.ones(20, 24)
    known[5:11, 7:15] = 0
    known[15:, 20:] = 0
    known[torch.rand(20, 24, generator=g) > 0.97] = 0
    want = chessboard_distance(known).clamp(max=feather) / feather
    torch.testing.assert_close(feather_weight(known, feather), want)


def test_no_feather_is_a_hard_paste_and_a_fully_known_view_keeps_weight_one():
    known = torch.zeros(2, 8, 8)
    known[0, 2:6, 2:6] = 1
    known[1] = 1
    assert torch.equal(feather_weight(known, 0), known)
    assert torch.equal(feather_weight(known, 5)[1], torch.ones(8, 8))  # the image border is not an edge


def test_paste_returns_the_known_pixels_exactly_and_the_generated_ones_untouched():
    g = torch.Generator().manual_seed(0)
    generated, given = torch.rand(2, 16, 16, 3, generator=g), torch.rand(2, 16, 16, 3, generator=g)
    known = torch.zeros(2, 16, 16)
    known[:, 4:12, 3:13] = 1
    hard = paste_known(generated, given, known, feather=0)
    assert torch.equal(hard[known > 0], given[known > 0]) and torch.equal(hard[known == 0], generated[known == 0])
    soft = paste_known(generated, given, known, feather=2)
    inner = feather_weight(known, 2) >= 1
    assert torch.equal(soft[inner], given[inner]) and torch.equal(soft[known == 0], generated[known == 0])
    edge = (known > 0) & ~inner
    torch.testing.assert_close(soft[edge], 0.5 * (given[edge] + generated[edge]))  # distance 1 of 2


def test_paste_refuses_images_and_masks_of_other_sizes():
    with pytest.raises(ValueError, match="known mask is"):
        paste_known(torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8, 3), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="feather must be >= 0"):
        feather_weight(torch.ones(4, 4), -1)
