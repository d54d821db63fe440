"""Guidance patches of the host on the patched model: RescaleCFG, Self-Attention Guidance and Perturbed
Attention Guidance (at 128-px views: SAG needs a middle block of more than one latent pixel)."""
from __future__ import annotations

import types

import pytest
import torch

pytestmark = pytest.mark.host


def test_rescale_cfg_on_the_patched_model_changes_the_views(graph, host, patched, patched_sample, prompts, cameras):
    (rescaled,) = host("RescaleCFG", model=patched, multiplier=0.7)
    views = graph.ksample(rescaled, prompts.pos, prompts.neg, graph.latent(cameras), steps=1)
    assert torch.isfinite(views).all()
    assert graph.max_rel(views, patched_sample) > 1e-2


@pytest.fixture(scope="module")
def views_128(graph, sd2, caa, prompts):
    """A rig of 4 views of 128 px (a 2x2 middle block for SAG; 4 views keep it cheap), the patched model for it,
    and its KSampler result (1 step)."""
    (rig,) = graph.run("MVDiffusionPanoramaCameras", views=4, fov=120.0, pitch=0.0, width=128, height=128,
                       yaw_offset=0.0)
    model = graph.run("MVDiffusionApply", model=sd2.model, caa=caa, cameras=rig)[0]
    lat = graph.latent(rig)
    return types.SimpleNamespace(model=model, latent=lat,
                                 sample=graph.ksample(model, prompts.pos, prompts.neg, lat, steps=1))


@pytest.mark.parametrize("node,inputs", [("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0}),
                                         ("PerturbedAttentionGuidance", {"scale": 3.0})], ids=["SAG", "PAG"])
def test_attention_guidance_runs_on_the_patched_model_and_changes_the_views(graph, host, prompts, views_128, node,
                                                                            inputs):
    (guided,) = host(node, model=views_128.model, **inputs)
    views = graph.ksample(guided, prompts.pos, prompts.neg, views_128.latent, steps=1)
    assert torch.isfinite(views).all()
    assert graph.max_rel(views, views_128.sample) > 1e-2
