"""Fixtures for node tests in the in-process host: random-weight SD2 model, CAA weights, 64-px cameras, and
``graph``: small functions that run nodes the way the executor does."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import comfy_host  # noqa: E402
import random_weights  # noqa: E402

SIZE = 64  # view size in pixels: latents of 8x8, UNet levels 8, 4, 2, 1


def _run(comfy, node_id: str, **inputs):
    """Execute one of our V3 nodes the way the executor does (classmethod ``execute``, in inference mode) ->
    result tuple."""
    with torch.inference_mode():
        return comfy.mvd_nodes[node_id].execute(**inputs).result


def install_model(comfy, src: Path, folder: str, name: str | None = None) -> str:
    """Link a model file into the in-process host's models/<folder>; returns its name there."""
    return comfy_host.link_model(comfy.base, src, folder, name)


@pytest.fixture(scope="session")
def sd2(comfy, cache_dir):
    """The random SD2 test checkpoint loaded by ComfyUI's own CheckpointLoaderSimple: model, clip, vae."""
    name = install_model(comfy, random_weights.sd2_checkpoint(cache_dir), "checkpoints")
    with torch.inference_mode():  # as the executor runs nodes: the weights are inference tensors
        model, clip, vae = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]
    return types.SimpleNamespace(model=model, clip=clip, vae=vae, name=name)


@pytest.fixture(scope="session")
def caa(comfy, cache_dir):
    """Random CAA weights for the test UNet, loaded by our Load CAA Weights node."""
    name = install_model(comfy, random_weights.caa_weights(cache_dir), "mvdiffusion")
    (weights,) = _run(comfy, "MVDiffusionCAALoader", caa_name=name)
    return weights


@pytest.fixture(scope="session")
def cameras(comfy):
    (rig,) = _run(comfy, "MVDiffusionPanoramaCameras", views=8, fov=90.0, pitch=0.0, width=SIZE, height=SIZE,
                 yaw_offset=0.0)
    return rig


@pytest.fixture(scope="session")
def prompts(comfy, sd2, cameras):
    """positive (one prompt for all views) and negative (empty) conditioning."""
    (pos,) = _run(comfy, "MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text="a cosy kitchen")
    with torch.inference_mode():
        (neg,) = comfy.nodes.CLIPTextEncode().encode(sd2.clip, "")
    return types.SimpleNamespace(pos=pos, neg=neg)


@pytest.fixture(scope="session")
def graph(comfy):
    """run(node_id, **inputs) -> result tuple; latent(cameras, scenes) -> LATENT; ksample(model, pos, neg, lat,
    ...) -> samples with the host's KSampler node; max_rel(a, b)."""

    def latent(cameras, scenes: int = 1) -> dict:
        return _run(comfy, "MVDiffusionEmptyLatent", cameras=cameras, scenes=scenes)[0]

    def ksample(model, pos, neg, lat, seed=0, steps=2, cfg=5.0, sampler="euler", scheduler="normal"):
        with torch.inference_mode():  # as the executor runs the node
            (out,) = comfy.nodes.KSampler().sample(model, seed, steps, cfg, sampler, scheduler, pos, neg, lat,
                                                   denoise=1.0)
        return out["samples"]

    def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max())

    return types.SimpleNamespace(run=lambda node_id, **inputs: _run(comfy, node_id, **inputs), latent=latent,
                                 ksample=ksample, max_rel=max_rel)


@pytest.fixture
def zero_caa(comfy, caa):
    """A copy of the CAA weights with the official zero init of the output layers (every block = identity)."""
    nodes_pkg = comfy.module("nodes.caa_weights")
    state = {k: v.clone() for k, v in caa.caa.state_dict().items()}
    weights = nodes_pkg.CAAWeights(state, dict(caa.info))
    weights.caa.zero_()
    return weights


@pytest.fixture(scope="session")
def install(comfy):
    """install(src, folder, name=None) -> name: link a model file into the in-process host's models/<folder>."""
    return lambda src, folder, name=None: install_model(comfy, src, folder, name)


@pytest.fixture(scope="session")
def depth_model(comfy):
    """A random SD2-depth test UNet (5 input channels) in ComfyUI's SD20 class, as a depth model (no inpainting
    concat: its 5th channel comes from Depth Conditioning)."""
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD20(random_weights.test_unet_config(in_channels=5))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    random_weights.init_parameters(model.diffusion_model, seed=5)
    model.concat_keys = ()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


@pytest.fixture(scope="session")
def make_depth_caa(comfy):
    """make(zero=False, seed=7) -> random depth CAA (CPBlocks and condition encoders) for the test UNet, as
    DepthCAAWeights; ``zero``: the official zero init (every block and encoder adds exactly nothing)."""

    def make(zero: bool = False, seed: int = 7):
        sets = comfy.module("caa.depth_blockset")
        w = random_weights.test_unet_widths()
        caa = sets.DepthCAASet(w["encoder"], w["mid"], w["decoder"], random_weights.test_condition_widths())
        random_weights.init_parameters(caa, seed)
        if zero:
            caa.zero_()
        info = {"kind": "depth", "source": "random depth CAA"}
        return comfy.module("nodes.caa_weights").DepthCAAWeights(caa.state_dict(), info)

    return make


@pytest.fixture(scope="session")
def depth_caa(make_depth_caa):
    return make_depth_caa()
