"""A ControlNet (the host's ControlNetLoader and ControlNetApplyAdvanced) on Panorama Prompts conditioning,
sampled with the patched model: it acts, and every view gets its own hint image."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.host

HINT_VIEW = 5  # the view whose hint image differs


def hints(seed: int, views: int = 8, size: int = 64) -> torch.Tensor:
    """A batch of hint images [views, size, size, 3] in 0..1: one seeded image for every view."""
    image = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))
    return image.repeat(views, 1, 1, 1)


def sample_with_controlnet(graph, host, controlnet, model, prompts, cameras, images):
    """ControlNetApplyAdvanced on the positive and negative conditioning, then the host's KSampler (1 step)."""
    pos, neg = host("ControlNetApplyAdvanced", positive=prompts.pos, negative=prompts.neg, control_net=controlnet.net,
                    image=images, strength=1.0, start_percent=0.0, end_percent=1.0)
    return graph.ksample(model, pos, neg, graph.latent(cameras), steps=1)


@pytest.fixture(scope="module")
def same_hints(graph, host, controlnet, patched, prompts, cameras):
    """The patched model's views with the same hint image for every view."""
    return sample_with_controlnet(graph, host, controlnet, patched, prompts, cameras, hints(seed=1))


def test_a_controlnet_changes_the_patched_views_and_they_stay_finite(graph, same_hints, patched_sample):
    assert torch.isfinite(same_hints).all()
    assert graph.max_rel(same_hints, patched_sample) > 1e-2


def test_the_controlnet_gives_each_view_its_own_hint_image(graph, host, controlnet, patched, prompts, cameras,
                                                           same_hints):
    """A batch of 8 hints of which only view 5's differs changes view 5 most: hint i reaches view i (in the cond
    and the uncond chunk alike)."""
    images = hints(seed=1)
    images[HINT_VIEW] = hints(seed=2, views=1)[0]
    changed = sample_with_controlnet(graph, host, controlnet, patched, prompts, cameras, images)
    per_view_change = (changed - same_hints).flatten(1).abs().mean(dim=1)
    assert torch.isfinite(changed).all()
    assert int(per_view_change.argmax()) == HINT_VIEW, per_view_change
