"""The depth model's block set: the official depth_gen.ckpt names and shapes (fixture layout), the key-frame
condition encoders against their formula (GroupNorm eps 1e-6 -> SiLU -> strided 3x3 conv -> GroupNorm -> SiLU ->
1x1 conv) at the official level sizes, the interpolation stage's condition layout, and the zero init."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from comfyui_mvdiffusion.caa.condition import ImageEncodingBlock, key_frame_condition
from comfyui_mvdiffusion.caa.depth_blockset import DepthCAASet, condition_widths_from_state_dict

LAYOUT = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint-layouts" / "depth_gen.json"
PREFIX = "mv_base_model."


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return module


def test_the_set_has_exactly_the_official_depth_gen_names_and_shapes_besides_the_unet():
    official = {name[len(PREFIX):]: shape for name, shape, _ in json.loads(LAYOUT.read_text())["keys"]
                if name.startswith(PREFIX) and not name.startswith(PREFIX + "unet.")}
    ours = {name: list(t.shape) for name, t in DepthCAASet().state_dict().items()}
    assert ours == official
    assert condition_widths_from_state_dict(DepthCAASet().state_dict()) == {
        "base": 320, "down": [320, 320, 640, 1280], "up": [1280, 1280, 1280, 640]}


def test_a_state_dict_loads_strictly_into_a_set_of_its_own_shape():
    small = randomise(DepthCAASet([64, 64, 128, 128], 128, [128, 128, 64, 64],
                                  {"base": 64, "down": [64, 64, 64, 128], "up": [128, 128, 128, 64]}))
    again = DepthCAASet.from_state_dict(small.state_dict())
    assert again.widths == small.widths and again.condition.widths == small.condition.widths
    for name, value in small.state_dict().items():
        assert torch.equal(again.state_dict()[name], value)
    bare = {k: v for k, v in small.state_dict().items() if not k.startswith("condition_")}
    assert DepthCAASet.from_state_dict(bare).condition is None  # blocks without condition encoders


def test_an_image_encoding_block_is_its_formula_with_the_stride():
    block = randomise(ImageEncodingBlock(64, 96, stride=4))
    x = torch.randn(3, 64, 24, 32)
    h = F.silu(F.group_norm(x, 32, block.norm1.weight, block.norm1.bias, eps=1e-6))
    h = F.conv2d(h, block.conv1.weight, block.conv1.bias, stride=4, padding=1)
    h = F.silu(F.group_norm(h, 32, block.norm2.weight, block.norm2.bias, eps=1e-6))
    expected = F.conv2d(h, block.conv2.weight, block.conv2.bias)
    assert torch.allclose(block(x), expected, atol=1e-5) and expected.shape == (3, 96, 6, 8)


def test_the_condition_states_have_each_levels_width_and_size_at_the_official_192x256():
    caa = randomise(DepthCAASet([64, 64, 128, 128], 128, [128, 128, 64, 64],
                                {"base": 64, "down": [64, 64, 64, 128], "up": [128, 128, 128, 64]}))
    down, up = caa.condition(torch.randn(2, 5, 24, 32))
    assert [tuple(t.shape[1:]) for t in down] == [(64, 24, 32), (64, 12, 16), (64, 6, 8), (128, 3, 4)]
    assert [tuple(t.shape[1:]) for t in up] == [(128, 3, 4), (128, 6, 8), (128, 12, 16), (64, 24, 32)]
    with pytest.raises(ValueError, match=r"\(views, 5, h, w\)"):
        caa.condition(torch.randn(2, 4, 24, 32))
    caa.zero_()
    assert all(float(t.abs().max()) == 0 for t in caa.condition(torch.randn(2, 5, 24, 32))[0])


def test_the_interpolation_condition_is_the_latent_and_mask_one_at_the_key_views_and_zeros_elsewhere():
    latents = torch.randn(2, 4, 3, 4)
    condition = key_frame_condition(latents, [0, 4], views=5)
    assert condition.shape == (5, 5, 3, 4)
    assert torch.equal(condition[0, :4], latents[0]) and torch.equal(condition[4, :4], latents[1])
    assert torch.equal(condition[[0, 4], 4], torch.ones(2, 3, 4))
    assert float(condition[1:4].abs().max()) == 0
    with pytest.raises(ValueError, match="distinct views among 0..4"):
        key_frame_condition(latents, [0, 5], views=5)
