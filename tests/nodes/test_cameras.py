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
