"""depth_single_view.ckpt through 'Load MVDiffusion Checkpoint', and sampling with a depth MODEL through the host's
own KSampler (``nodes.common_ksampler``; in-process host, CPU).

The file is written into the test's temporary folder from the cached random depth_gen.ckpt (the same VAE, text
encoder and UNet names; ``official_layouts.derived_checkpoint``, fp16 weights, 2.6 GB) and deleted at the end.
A depth MODEL takes its 5th input channel from the conditioning key ``noise_concat`` (what 'Depth Conditioning'
sets): with it two steps give finite latents; without it the sampler refuses before the first step.
"""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import official_layouts as layouts  # noqa: E402
import random_weights  # noqa: E402
from checkpoint_files import assert_depth_model_loaded, run_loader  # noqa: E402

pytestmark = pytest.mark.host

VIEWS, LATENT = 2, 8  # 2 views of 64x64 px


@pytest.fixture(scope="module")
def single_view(comfy, cache_dir, tmp_path_factory, fp16_weights, free_memory):
    folder = tmp_path_factory.mktemp("depth_single_view")
    path = layouts.derived_checkpoint(random_weights.official_depth(cache_dir), folder / "depth_single_view.ckpt",
                                      "depth_single_view")
    name = f"{folder.name}-{path.name}"  # as linked into models/mvdiffusion
    try:
        with fp16_weights():
            outputs = run_loader(comfy, path, name=name)
        loaded = types.SimpleNamespace(path=path, name=name, outputs=outputs)
        del outputs
        yield loaded
        loaded.outputs = None  # (the tests' arguments hold `loaded` until after this teardown)
        comfy.mm.unload_all_models()
        free_memory()
    finally:
        path.unlink()  # 2.6 GB


def depth_channel(seed: int = 0) -> torch.Tensor:
    """A (views, 1, h, w) depth channel like the official one: normalised inverse depth in [-1, 1], -2 where
    there is no depth."""
    depth = torch.rand(VIEWS, 1, LATENT, LATENT, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    depth[:, :, 0, :2] = -2.0
    return depth


@pytest.fixture(scope="module")
def prompts(comfy, single_view):
    """``prompts(positive_depth, negative_depth) -> (positive, negative)``: the model's CLIP encodings of a
    prompt and of "" (encoded once), each with ``noise_concat`` = the given depth channel (None: without)."""
    clip = single_view.outputs[1]
    with torch.inference_mode():
        encoded = [comfy.nodes.CLIPTextEncode().encode(clip, text)[0] for text in ("a living room", "")]

    def with_depth(cond, depth):
        return cond if depth is None else [[t, dict(d, noise_concat=depth)] for t, d in cond]

    return lambda positive, negative: (with_depth(encoded[0], positive), with_depth(encoded[1], negative))


def ksample(comfy, model, conditioning, steps: int = 1) -> torch.Tensor:
    latent = {"samples": torch.zeros(VIEWS, 4, LATENT, LATENT)}
    with torch.inference_mode():  # as the executor runs KSampler
        (out,) = comfy.nodes.common_ksampler(model, 0, steps, 5.0, "euler", "normal", *conditioning, latent)
    return out["samples"]


def test_depth_single_view_loads_as_a_5_channel_depth_model_without_caa(comfy, single_view):
    assert_depth_model_loaded(comfy, single_view.outputs, single_view.path, "depth_single_view")
    assert "widths" not in single_view.outputs[3].info


def test_load_caa_weights_refuses_the_single_view_depth_model_naming_the_node_and_the_file(comfy, single_view):
    with pytest.raises(ValueError) as e:
        run_loader(comfy, single_view.path, "MVDiffusionCAALoader", "caa_name", name=single_view.name)
    text = str(e.value)
    assert text.startswith("Load CAA Weights: ") and single_view.name in text
    assert "no CAA keys" in text and "Load MVDiffusion Checkpoint" in text


def test_sampling_with_the_depth_channel_in_noise_concat_gives_finite_latents(comfy, single_view, prompts):
    model = single_view.outputs[0]
    samples = ksample(comfy, model, prompts(depth_channel(), depth_channel()), steps=2)
    assert samples.shape == (VIEWS, 4, LATENT, LATENT) and torch.isfinite(samples).all()
    other = ksample(comfy, model, prompts(depth_channel(1), depth_channel(1)), steps=2)
    assert not torch.allclose(samples, other)  # the channel reaches the UNet


def test_sampling_without_the_depth_channel_is_refused_before_the_first_step(comfy, single_view, prompts):
    for positive, negative, lacking in ((None, None, "negative and positive"), (depth_channel(), None, "negative")):
        with pytest.raises(ValueError) as e:
            ksample(comfy, single_view.outputs[0], prompts(positive, negative))
        text = str(e.value)
        assert f"this is an MVDiffusion depth model ({single_view.name})" in text, text
        assert f"the {lacking} conditioning has none" in text and "'Depth Conditioning'" in text, text


def test_without_the_check_the_hosts_unet_gets_4_of_its_5_channels(comfy, single_view, prompts):
    """What the check prevents: the host's own failure deep inside the UNet."""
    loading = comfy.module("nodes.checkpoint_loading")
    unchecked = single_view.outputs[0].clone()
    unchecked.remove_wrappers_with_key("outer_sample", loading.DEPTH_WRAPPER_KEY)
    assert unchecked.model.concat_keys == ()  # the clone is the same depth model
    with pytest.raises(RuntimeError) as e:
        ksample(comfy, unchecked, prompts(None, None))
    assert re.search(r"expected input\[\d+, 4, 8, 8\] to have 5 channels, but got 4 channels instead", str(e.value))
