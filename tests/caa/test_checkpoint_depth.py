"""The depth model's CAA weights (depth_gen.ckpt: depth CPBlocks and key-frame condition encoders) through the
checkpoint readers, without ComfyUI; the files are the official layout at a fifth of the width
(``model_channels=64``, see checkpoint_files.py). Loading whole depth models into ComfyUI:
test_depth_loading.py."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_files import SMALL, SMALL_WIDTHS, caa_part, official_subset, write_official  # noqa: E402

from comfyui_mvdiffusion.caa import checkpoint as ck  # noqa: E402
from comfyui_mvdiffusion.caa.depth_blockset import DepthCAASet  # noqa: E402

# the condition encoders' widths for a UNet of SMALL channels: C0, then the input of each down / up block
SMALL_CONDITION = {"base": SMALL, "down": [SMALL, SMALL, 2 * SMALL, 4 * SMALL], "up": [4 * SMALL] * 3 + [2 * SMALL]}


def test_depth_gen_gives_its_nine_blocks_and_condition_encoders_with_the_files_tensors(tmp_path):
    sd = official_subset("depth")
    path = write_official(tmp_path / "depth_gen.ckpt", "depth", sd=sd)
    caa_sd, info = ck.load_caa_state_dict(path)
    expected = caa_part(sd)
    assert any(k.startswith("condition_downblocks.3.") for k in expected)  # the encoders are part of it
    assert list(caa_sd) == list(expected)
    assert all(torch.equal(caa_sd[k], v) and caa_sd[k].dtype == v.dtype for k, v in expected.items())
    assert info["kind"] == "depth" and info["layout"] == "depth" and info["num_blocks"] == 9
    assert info["widths"] == SMALL_WIDTHS and info["condition_widths"] == SMALL_CONDITION
    assert info["freq_bands"] == "exact" and info["dtype"] == "float32"
    assert info["parameters"] == sum(v.numel() for k, v in expected.items() if not k.endswith("freq_bands"))
    assert info["lightning"]["model_id"] == "stabilityai/stable-diffusion-2-depth"
    assert info["format"] == "official MVDiffusion checkpoint" and info["source"] == "depth_gen.ckpt"

    caa, _ = ck.load_caa(path)
    assert isinstance(caa, DepthCAASet) and caa.has_condition and caa.widths == SMALL_WIDTHS
    assert caa.condition.widths == SMALL_CONDITION
    state = caa.state_dict()
    assert set(state) == set(expected) and all(torch.equal(state[k], v) for k, v in expected.items())


def test_reading_the_caa_part_selects_the_condition_encoders_and_leaves_the_unet_unread(tmp_path):
    path = write_official(tmp_path / "depth_gen.ckpt", "depth")
    read = ck.read_checkpoint(path, select=ck.is_caa_key).state_dict
    assert not read["mv_base_model.condition_upblocks.2.conv1.weight"].is_meta
    assert not read["mv_base_model.cp_blocks_mid.resnet.conv2.weight"].is_meta
    assert read["mv_base_model.unet.conv_in.weight"].is_meta
    assert not ck.is_caa_key("mv_base_model.unet.down_blocks.0.resnets.0.conv1.weight")


def test_depth_caa_weights_round_trip_through_this_packs_format(tmp_path):
    sd = caa_part(official_subset("depth"))
    path = ck.save_caa_file(sd, tmp_path / "depth.caa.safetensors", source="depth_gen.ckpt", model_kind="depth")
    loaded, info = ck.load_caa_state_dict(path)
    assert ck.classify(ck.read_checkpoint(path).state_dict, {"format": ck.FORMAT}).description.startswith("depth")
    assert info["kind"] == "depth" and info["layout"] == "caa" and info["format"] == ck.FORMAT
    assert info["condition_widths"] == SMALL_CONDITION and info["widths"] == SMALL_WIDTHS
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        want = v if k.endswith("pe.freq_bands") else v.half()
        assert loaded[k].dtype == want.dtype and torch.equal(loaded[k], want), k


def test_the_depth_models_are_complete_models_and_only_depth_gen_has_caa_blocks():
    for kind, blocks in (("depth", "depth"), ("depth_single_view", None)):
        layout = ck.classify(official_subset(kind))
        assert layout.spec.unet_in == 5 and layout.spec.caa_blocks == blocks
        ck.check_whole_model("x.ckpt", layout, {})  # complete: no error
