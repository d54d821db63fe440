"""Panorama Cameras and Empty Panorama Latent."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.host


def test_the_default_cameras_are_the_official_rig(comfy, graph):
    (rig,) = graph.run("MVDiffusionPanoramaCameras", views=8, fov=90.0, pitch=0.0, width=512, height=512,
                       yaw_offset=0.0)
    K, R = comfy.module("geometry").pano_cameras()
    assert torch.equal(rig.K, K) and torch.equal(rig.R, R)
    assert rig.neighbours[0] == (7, 1)


def test_views_that_do_not_overlap_are_refused(graph):
    with pytest.raises(ValueError, match="Panorama Cameras: 4 views of 60° are 90° apart and do not overlap"):
        graph.run("MVDiffusionPanoramaCameras", views=4, fov=60.0, pitch=0.0, width=64, height=64, yaw_offset=0.0)


def test_the_empty_latent_holds_one_image_per_view_and_scene(graph, cameras):
    lat = graph.latent(cameras, scenes=3)
    assert lat["samples"].shape == (24, 4, 8, 8)


def sphere(graph, **overrides):
    inputs = dict(ring_views=8, ring_fov=90.0, poles="both", pole_fov=120.0, rows="", width=64, height=64,
                  min_overlap=0.1, max_neighbours=0)
    return graph.run("MVDiffusionSphereCameras", **{**inputs, **overrides})[0]


def test_sphere_cameras_put_the_official_ring_first_and_the_poles_see_every_ring_view(comfy, graph, cameras):
    rig = sphere(graph)
    assert rig.num_views == 10 and torch.equal(rig.R[:8], cameras.R) and torch.equal(rig.K[:8], cameras.K)
    assert set(rig.neighbours[8]) == set(rig.neighbours[9]) == set(range(8))
    assert comfy.module("geometry.sphere").sphere_coverage(rig) == 1.0
    assert sphere(graph, rows="45:4").num_views == 14 and sphere(graph, poles="up").num_views == 9
    assert max(len(n) for n in sphere(graph, max_neighbours=3).neighbours) == 3


def test_a_sphere_rig_with_a_hole_is_refused_with_a_pole_fov_that_fills_it(graph):
    with pytest.raises(ValueError, match=r"Sphere Cameras: these cameras leave [0-9.]+% of the sphere uncovered: "
                                         r"widen pole_fov or ring_fov, or add rows \(with 8 ring views of 90°, a pole "
                                         r"fov above 94\.5° surely leaves no hole\)"):
        sphere(graph, pole_fov=80.0, min_overlap=0.0)


@pytest.mark.parametrize("overrides, message", [
    (dict(rows="45"), "Sphere Cameras: row '45' is not pitch:views"),
    (dict(pole_fov=40.0), r"Sphere Cameras: views \[8, 9\] overlap no other view by more than 10%"),
])
def test_bad_sphere_inputs_are_refused_naming_the_node(graph, overrides, message):
    with pytest.raises(ValueError, match=message):
        sphere(graph, **overrides)


def test_text_to_views_on_the_sphere_rig_samples_through_the_hosts_ksampler(comfy, graph, sd2, caa, prompts):
    # the generic rig with pano CAA: the poles attend to the ring (8 neighbours), the ring views to 4 (padded)
    rig = sphere(graph)
    (pos,) = graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=rig, text="a cosy kitchen")
    lat = graph.latent(rig)
    assert lat["samples"].shape[0] == 10
    patch = comfy.module("caa.patch")
    runs = {impl: graph.ksample(patch.patch_model(sd2.model, caa.caa, rig, caa.patcher, impl), pos, prompts.neg, lat)
            for impl in ("fast", "reference")}
    plain = graph.ksample(sd2.model, pos, prompts.neg, lat)
    assert torch.isfinite(runs["fast"]).all()
    assert graph.max_rel(runs["fast"], runs["reference"]) < 1e-4
    assert graph.max_rel(runs["fast"][8:], plain[8:]) > 1e-2  # the pole views are changed by the attention
