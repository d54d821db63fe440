"""Generate In-Between Frames in the in-process host (the official interpolation stage) on a wall seen by six
cameras sliding sideways: Select Key Frames' groups, the host's KSampler per group, key frames kept."""
from __future__ import annotations

import json

import pytest
import torch


pytestmark = pytest.mark.host

SIZE = 128
SHIFTS = (0.0, 0.15, 0.3, 0.45, 0.6, 0.75)


@pytest.fixture(scope="module")
def frames(graph):
    poses = [[[1, 0, 0, x], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]] for x in SHIFTS]
    return graph.run("MVDiffusionSceneFromTensors", depth=torch.full((len(SHIFTS), SIZE, SIZE), 2.0),
                     poses=json.dumps(poses), pose_kind="c2w_opencv", fov=60.0, fx=0.0, fy=0.0, cx=0.0, cy=0.0,
                     depth_scale=1.0, inverse=False, width=0, height=0)[0]


@pytest.fixture(scope="module")
def keys(graph, frames):
    key_scene, groups, _ = graph.run("MVDiffusionSelectKeyFrames", scene=frames, threshold=0.75, max_between=10,
                                     include_last=True)
    return key_scene, groups


def run(graph, sd2, model, caa, frames, groups, key_images, **extra):
    with torch.inference_mode():
        import nodes

        (pos,) = nodes.CLIPTextEncode().encode(sd2.clip, "a brick wall")
        (neg,) = nodes.CLIPTextEncode().encode(sd2.clip, "")
    inputs = dict(model=model, caa=caa, vae=sd2.vae, scene=frames, groups=groups, key_images=key_images,
                  positive=pos, negative=neg, seed=3, steps=1, cfg=2.0, sampler_name="euler", scheduler="normal",
                  threshold=0.3)
    inputs.update(extra)
    return graph.run("MVDiffusionInBetweenFrames", **inputs)


def test_every_frame_comes_back_in_order_with_the_key_frames_kept_and_the_in_betweens_generated(graph, sd2,
                                                                                               depth_model, depth_caa,
                                                                                               frames, keys):
    key_scene, groups = keys
    data = json.loads(groups)
    assert data["key_frames"][0] == 0 and data["key_frames"][-1] == len(SHIFTS) - 1 and len(data["groups"]) >= 1
    key_images = torch.rand(key_scene.num_frames, SIZE, SIZE, 3)
    images, scene = run(graph, sd2, depth_model, depth_caa, frames, groups, key_images)
    assert images.shape == (len(SHIFTS), SIZE, SIZE, 3) and scene.names == frames.names
    for i, k in enumerate(data["key_frames"]):
        assert torch.equal(images[k], key_images[i])
    between = [f for g in data["groups"] for f in g[1:-1]]
    assert between and all(torch.isfinite(images[f]).all() for f in between)
    assert all(float((images[f] - images[between[0]]).abs().max()) > 0 for f in between[1:])


def test_groups_of_another_scene_and_missing_key_images_are_refused_by_name(graph, sd2, depth_model, depth_caa, frames,
                                                                          keys):
    key_scene, groups = keys
    wrong = json.dumps({"key_frames": [0, 9], "groups": [[0, 5, 9]]})
    with pytest.raises(ValueError, match="Generate In-Between Frames: the groups name frames outside"):
        run(graph, sd2, depth_model, depth_caa, frames, wrong, torch.rand(2, SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="Generate In-Between Frames: 1 key-frame images for the"):
        run(graph, sd2, depth_model, depth_caa, frames, groups, torch.rand(1, SIZE, SIZE, 3))
