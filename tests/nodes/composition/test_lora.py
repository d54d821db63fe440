"""A LoRA file loaded by the host's LoraLoaderModelOnly works with the patched model, in either order."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

pytestmark = pytest.mark.host


def load_lora(host, model, lora_file, install):
    return host("LoraLoaderModelOnly", model=model, lora_name=install(lora_file, "loras"), strength_model=1.0)[0]


def test_every_layer_of_the_lora_file_patches_a_unet_weight(host, sd2, lora_file, install):
    with safe_open(lora_file, framework="pt") as f:
        layers = {k.removesuffix(".lora_down.weight") for k in f.keys() if k.endswith(".lora_down.weight")}
    model = load_lora(host, sd2.model, lora_file, install)
    assert len(model.patches) - len(sd2.model.patches) == len(layers) > 0


def test_a_lora_loaded_before_or_after_apply_mvdiffusion_changes_the_views_the_same_way(
        graph, host, sd2, caa, cameras, prompts, lora_file, install, patched, patched_sample):
    lat = graph.latent(cameras)
    lora_first = graph.run("MVDiffusionApply", model=load_lora(host, sd2.model, lora_file, install), caa=caa,
                           cameras=cameras)[0]
    before = graph.ksample(lora_first, prompts.pos, prompts.neg, lat, steps=1)
    after = graph.ksample(load_lora(host, patched, lora_file, install), prompts.pos, prompts.neg, lat, steps=1)
    assert torch.isfinite(before).all()
    assert graph.max_rel(before, after) < 1e-6
    assert graph.max_rel(before, patched_sample) > 1e-2
