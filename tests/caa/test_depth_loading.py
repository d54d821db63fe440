"""'Load MVDiffusion Checkpoint' and 'Load CAA Weights' on depth_gen.ckpt and its --whole conversion (in-process
host, CPU).

The file is the full-size random checkpoint in the official depth_gen.ckpt layout with fp16 weights
(``random_weights.official_depth``: 3.3 GB, built once into the test cache, about 25 s): real sizes matter,
since ComfyUI recognises SD2 by its shapes. The host stores the weights in fp16 (``fp16_weights``), so one
model takes about 3.4 GB. The --whole conversion and 'Load CAA Weights' run before the module fixture loads the
.ckpt, so that one model is in memory at a time (peak RSS of the module: under 5 GB).
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import random_weights  # noqa: E402
from checkpoint_files import assert_depth_caa_weights_of, assert_depth_model_loaded, run_loader  # noqa: E402

from comfyui_mvdiffusion.caa import checkpoint as ck  # noqa: E402

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def depth_gen_file(cache_dir) -> Path:
    return random_weights.official_depth(cache_dir)


@pytest.fixture(scope="module")
def depth_gen(comfy, depth_gen_file, fp16_weights, free_memory):
    """The node's outputs for depth_gen.ckpt (weights stored in fp16), loaded once for the module."""
    with fp16_weights():
        outputs = run_loader(comfy, depth_gen_file)
    loaded = types.SimpleNamespace(path=depth_gen_file, outputs=outputs)
    del outputs
    yield loaded
    loaded.outputs = None  # (the tests' arguments hold `loaded` until after this teardown)
    comfy.mm.unload_all_models()
    free_memory()


def test_the_whole_conversion_of_depth_gen_loads_as_the_same_depth_model(comfy, depth_gen_file, tmp_path,
                                                                          fp16_weights, free_memory):
    from comfyui_mvdiffusion.caa import convert

    out = convert.convert(depth_gen_file, tmp_path / "depth_gen.safetensors", whole=True).output
    try:
        assert ck.read_checkpoint(out).metadata["model_kind"] == "depth"
        with fp16_weights():
            outputs = run_loader(comfy, out, name=f"{tmp_path.name}-depth_gen.safetensors")
        assert_depth_model_loaded(comfy, outputs, out, "depth")
        assert outputs[3].info["format"] == ck.WHOLE_FORMAT and outputs[3].info["source"] == depth_gen_file.name
        del outputs
        comfy.mm.unload_all_models()
        free_memory()
    finally:
        out.unlink()  # 3.3 GB


def test_load_caa_weights_gives_the_depth_weights_of_depth_gen(comfy, depth_gen_file, fp16_weights, free_memory):
    with fp16_weights():
        (caa,) = run_loader(comfy, depth_gen_file, "MVDiffusionCAALoader", "caa_name")
    assert_depth_caa_weights_of(comfy, caa, depth_gen_file)
    assert caa.info["format"] == "official MVDiffusion checkpoint" and caa.info["layout"] == "depth"
    del caa
    free_memory()


def test_depth_gen_loads_as_a_5_channel_depth_model_with_its_depth_caa_weights(comfy, depth_gen):
    assert_depth_model_loaded(comfy, depth_gen.outputs, depth_gen.path, "depth")
    info = depth_gen.outputs[3].info
    assert info["format"] == "official MVDiffusion checkpoint" and info["freq_bands"] == "exact"
    assert info["lightning"]["model_id"] == "stabilityai/stable-diffusion-2-depth"


def test_the_text_encoder_and_vae_of_depth_gen_work(depth_gen):
    _, clip, vae, _ = depth_gen.outputs
    with torch.inference_mode():
        cond = clip.encode_from_tokens(clip.tokenize("a bedroom with a wooden desk"))
        pixels = vae.decode(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert cond.shape == (1, 77, 1024) and torch.isfinite(cond).all()
    assert pixels.shape[-3:] == (64, 64, 3) and torch.isfinite(pixels).all()


