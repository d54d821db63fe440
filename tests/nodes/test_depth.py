"""The depth model's nodes in the in-process host, sampled with the host's own KSampler: Depth Conditioning,
Apply MVDiffusion (Depth) with random depth CAA on a random SD2-depth test UNet (5 input channels, ComfyUI's own
SD20 model class), Key-Frame Conditioning, and their errors. The scene is a flat wall seen by cameras sliding
sideways, 128 px (UNet levels 16, 8, 4, 2)."""
from __future__ import annotations

import json
import types

import pytest
import torch

pytestmark = pytest.mark.host

SIZE = 128
SHIFTS = (0.0, 0.3, 0.6)  # metres, in front of a wall 2 m away: neighbours overlap


@pytest.fixture(scope="module")
def frames(graph):
    poses = [[[1, 0, 0, x], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]] for x in SHIFTS]
    depth = torch.full((len(SHIFTS), SIZE, SIZE), 2.0)
    depth[1, :8, :8] = 0.0  # a corner without depth: masked keys, -2 in the 5th channel
    return graph.run("MVDiffusionSceneFromTensors", depth=depth, poses=json.dumps(poses), pose_kind="c2w_opencv",
                     fov=60.0, fx=0.0, fy=0.0, cx=0.0, cy=0.0, depth_scale=1.0, inverse=False, width=0, height=0)[0]


@pytest.fixture(scope="module")
def scene(graph, frames):
    return graph.run("MVDiffusionDepthCorrespondences", scene=frames, threshold=0.3)[0]


@pytest.fixture(scope="module")
def conditioned(comfy, graph, sd2, frames):
    with torch.inference_mode():
        (pos,) = comfy.nodes.CLIPTextEncode().encode(sd2.clip, "a kitchen")
        (neg,) = comfy.nodes.CLIPTextEncode().encode(sd2.clip, "")
    pos, neg, latent = graph.run("MVDiffusionDepthConditioning", positive=pos, negative=neg, scene=frames)
    return types.SimpleNamespace(pos=pos, neg=neg, latent=latent, plain_pos=None)


def sample(graph, model, c, **kw):
    return graph.ksample(model, c.pos, c.neg, c.latent, **kw)


def test_depth_conditioning_carries_the_normalised_inverse_depth_and_an_empty_latent_per_frame(comfy, conditioned,
                                                                                              frames):
    formula = comfy.module("geometry.depth_condition").inverse_depth_condition
    for c in (conditioned.pos, conditioned.neg):
        depth = c[0][1]["noise_concat"]
        assert depth.shape == (3, 1, SIZE // 8, SIZE // 8)
        assert torch.equal(depth[:, 0], formula(frames.depths))
    assert float(conditioned.pos[0][1]["noise_concat"][1, 0, 0, 0]) == -2.0  # the corner without depth
    assert conditioned.latent["samples"].shape == (3, 4, SIZE // 8, SIZE // 8)


def test_zero_initialised_depth_caa_and_condition_encoders_leave_the_host_sampler_exact(graph, sd2, depth_model,
                                                                                      make_depth_caa, scene,
                                                                                      conditioned):
    zero = make_depth_caa(zero=True)
    keys = graph.run("MVDiffusionKeyFrameConditioning", vae=sd2.vae, images=torch.rand(2, SIZE, SIZE, 3),
                     correspondences=scene, positions="first,last")[0]
    (patched,) = graph.run("MVDiffusionApplyDepth", model=depth_model, caa=zero, correspondences=scene,
                           key_frames=keys)
    assert torch.equal(sample(graph, patched, conditioned), sample(graph, depth_model, conditioned))


def test_random_depth_caa_changes_every_view_and_leaves_the_input_model_untouched(graph, depth_model, depth_caa, scene,
                                                                                 conditioned):
    before = dict(depth_model.object_patches)
    (patched,) = graph.run("MVDiffusionApplyDepth", model=depth_model, caa=depth_caa, correspondences=scene)
    plain, out = sample(graph, depth_model, conditioned), sample(graph, patched, conditioned)
    assert torch.isfinite(out).all()
    for view in range(3):
        assert graph.max_rel(out[view], plain[view]) > 1e-3
    assert depth_model.object_patches == before
    assert "mvdiffusion" not in str(depth_model.model_options.get("transformer_options", {}))
    mid = [k for k in patched.object_patches if "middle_block" in k]
    assert mid == ["diffusion_model.middle_block.2"]  # the mid block's CAA after the whole mid block


def test_the_key_frame_condition_is_added_to_each_level_input_and_into_the_pushed_skips(comfy, graph, sd2, depth_model,
                                                                                       depth_caa, scene, conditioned):
    """The official adds the condition in place on tensors already pushed as skips: the skip the decoder pops
    last (conv_in's) must be conv_in(x) + c_down[0], and up level 0's input mid + c_up[0]."""
    vae = sd2.vae
    keys = graph.run("MVDiffusionKeyFrameConditioning", vae=vae, images=torch.rand(2, SIZE, SIZE, 3),
                     correspondences=scene, positions="first,last")[0]
    (patched,) = graph.run("MVDiffusionApplyDepth", model=depth_model, caa=depth_caa, correspondences=scene,
                           key_frames=keys)
    unet = depth_model.model.diffusion_model
    seen = {}
    handle = unet.input_blocks[0][0].register_forward_hook(lambda mod, args, out: seen.setdefault("conv_in", out))
    # the layer copy that runs the mid CAA after the mid block's last layer: its output is the CAA's
    mid_layer = patched.object_patches["diffusion_model.middle_block.2"]
    handle_mid = mid_layer.register_forward_hook(lambda mod, args, out: seen.setdefault("mid", out))

    def record(h, skip, transformer_options):
        seen.setdefault(transformer_options["block"][1], (h, skip))
        return h, skip

    probe = patched.clone()
    probe.set_model_output_block_patch(record)  # runs after ours
    try:
        graph.ksample(probe, conditioned.pos, conditioned.neg, conditioned.latent, steps=1, cfg=1.0)
    finally:
        handle.remove()
        handle_mid.remove()
    condition = keys.condition(depth_model)
    down, up = depth_caa.caa.condition(condition)
    last = len(unet.output_blocks) - 1
    assert torch.allclose(seen[last][1], seen["conv_in"] + down[0].repeat(seen["conv_in"].shape[0] // 3, 1, 1, 1),
                          atol=1e-5)
    mid = seen["mid"]
    assert torch.allclose(seen[0][0], mid + up[0].repeat(mid.shape[0] // 3, 1, 1, 1), atol=1e-5)
    assert graph.max_rel(seen[0][0], mid) > 1e-3  # the condition is not zero
    assert float(condition[0, 4].min()) == 1 and float(condition[1].abs().max()) == 0


def test_a_sampling_run_without_depth_conditioning_is_refused_with_what_to_connect(comfy, graph, sd2, depth_model,
                                                                                   depth_caa, scene, conditioned):
    (patched,) = graph.run("MVDiffusionApplyDepth", model=depth_model, caa=depth_caa, correspondences=scene)
    with torch.inference_mode():
        (plain,) = comfy.nodes.CLIPTextEncode().encode(sd2.clip, "a kitchen")
    with pytest.raises(ValueError, match="Depth Conditioning"):
        graph.ksample(patched, plain, conditioned.neg, conditioned.latent)


def test_apply_depth_refuses_panorama_weights_a_4_channel_model_and_a_checkpoint_without_blocks(comfy, graph, sd2,
                                                                                               depth_model, depth_caa,
                                                                                               scene):
    pano = comfy.module("nodes.caa_weights")
    with pytest.raises(ValueError, match=r"Apply MVDiffusion \(Depth\): .*SD2-depth UNet"):
        graph.run("MVDiffusionApplyDepth", model=sd2.model, caa=depth_caa, correspondences=scene)
    with pytest.raises(ValueError, match="has no CAA blocks"):
        graph.run("MVDiffusionApplyDepth", model=depth_model, caa=pano.NoCAA({"source": "depth_single_view.ckpt"}),
                  correspondences=scene)
    with pytest.raises(ValueError, match="Apply MVDiffusion: .*Apply MVDiffusion \\(Depth\\)"):
        graph.run("MVDiffusionApply", model=depth_model, caa=depth_caa,
                  cameras=graph.run("MVDiffusionPanoramaCameras", views=4, fov=100.0, pitch=0.0, width=SIZE,
                                    height=SIZE, yaw_offset=0.0)[0])


def test_key_frame_conditioning_checks_its_images_and_positions(graph, sd2, scene):
    vae = sd2.vae
    with pytest.raises(ValueError, match="Key-Frame Conditioning: 1 key-frame images for 2 positions"):
        graph.run("MVDiffusionKeyFrameConditioning", vae=vae, images=torch.rand(1, SIZE, SIZE, 3),
                  correspondences=scene, positions="first,last")
    with pytest.raises(ValueError, match="neither 'first', 'last' nor a view index"):
        graph.run("MVDiffusionKeyFrameConditioning", vae=vae, images=torch.rand(1, SIZE, SIZE, 3),
                  correspondences=scene, positions="middle")
    with pytest.raises(ValueError, match="must be distinct views among 0..2"):
        graph.run("MVDiffusionKeyFrameConditioning", vae=vae, images=torch.rand(2, SIZE, SIZE, 3),
                  correspondences=scene, positions="0,3")
    (keys,) = graph.run("MVDiffusionKeyFrameConditioning", vae=vae, images=torch.rand(2, SIZE, SIZE, 3),
                        correspondences=scene, positions="0,-1")
    assert keys.positions == [0, 2] and keys.latents.shape == (2, 4, SIZE // 8, SIZE // 8)


def test_the_fast_depth_path_samples_like_the_reference_blocks_through_the_host_ksampler(comfy, graph, sd2,
                                                                                        depth_model, depth_caa,
                                                                                        scene, conditioned):
    keys = graph.run("MVDiffusionKeyFrameConditioning", vae=sd2.vae, images=torch.rand(2, SIZE, SIZE, 3),
                     correspondences=scene, positions="first,last")[0]
    (fast,) = graph.run("MVDiffusionApplyDepth", model=depth_model, caa=depth_caa, correspondences=scene,
                        key_frames=keys)
    reference = comfy.module("caa.depth_patch").patch_depth_model(
        depth_model, depth_caa.caa, scene, weights=depth_caa.patcher, condition=keys.condition(depth_model),
        implementation="reference")
    assert graph.max_rel(sample(graph, fast, conditioned), sample(graph, reference, conditioned)) < 1e-4


def test_a_frame_without_any_depth_is_reported_and_still_sampled(comfy, graph, sd2, depth_model, depth_caa, frames):
    depths = frames.depths.clone()
    depths[1] = 0.0
    blind = type(frames)(depths, frames.cameras, frames.images, frames.names)
    correspondences, _, report = graph.run("MVDiffusionDepthCorrespondences", scene=blind, threshold=0.3)
    assert "without any valid depth: 1" in report
    with torch.inference_mode():
        (pos,) = comfy.nodes.CLIPTextEncode().encode(sd2.clip, "a kitchen")
    pos, neg, latent = graph.run("MVDiffusionDepthConditioning", positive=pos, negative=pos, scene=blind)
    assert float(pos[0][1]["noise_concat"][1].max()) == -2.0
    (patched,) = graph.run("MVDiffusionApplyDepth", model=depth_model, caa=depth_caa, correspondences=correspondences)
    assert torch.isfinite(graph.ksample(patched, pos, neg, latent)).all()
