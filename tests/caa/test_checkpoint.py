"""Reading MVDiffusion checkpoints safely, telling layouts apart, and the pack's CAA file format (no ComfyUI).

Checkpoints are synthesised in the exact official layout (scripts/official_layouts.py, checked against the
official layouts in test_checkpoint_layout.py) but only with the tensors a test needs: the CAA blocks, the
UNet tensors that give its input channels and level widths, and a few text-encoder/VAE tensors, so the
classification sees a realistic file. Only the first test uses the full-size (SD2) CAA blocks; the others
use the same names at a quarter of the width (``model_channels=64``: blocks 64/128/256/256 wide).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_files import SMALL_WIDTHS, assert_names_file, caa_part, official_subset, write_official  # noqa: E402
import random_weights  # noqa: E402

from comfyui_mvdiffusion.caa import checkpoint as ck  # noqa: E402
from comfyui_mvdiffusion.caa.blockset import CAASet, SD2_WIDTHS  # noqa: E402
from comfyui_mvdiffusion.caa.positional_encoding import frequency_bands  # noqa: E402

# ---------------------------------------------------------------------------------------------------------
# loading official checkpoints
# ---------------------------------------------------------------------------------------------------------
def test_an_official_layout_checkpoint_gives_nine_blocks_whose_tensors_equal_the_files(tmp_path):
    sd = official_subset("pano", model_channels=320)
    path = write_official(tmp_path / "pano.ckpt", sd=sd)
    caa_sd, info = ck.load_caa_state_dict(path)
    expected = caa_part(sd)
    assert list(caa_sd) == list(expected)
    assert all(torch.equal(caa_sd[k], v) and caa_sd[k].dtype == v.dtype for k, v in expected.items())
    assert info["kind"] == "pano" and info["layout"] == "pano" and info["num_blocks"] == 9
    assert info["widths"] == SD2_WIDTHS and info["dtype"] == "float32" and info["freq_bands"] == "exact"
    assert info["parameters"] == 147_572_480  # the official trainable parameter count
    assert info["lightning"]["pytorch-lightning_version"] == "1.5.0"
    assert info["lightning"]["model_id"] == "stabilityai/stable-diffusion-2-base"
    assert info["source"] == "pano.ckpt" and info["file"] == str(path)

    caa, info2 = ck.load_caa(path)
    assert isinstance(caa, CAASet) and caa.widths == SD2_WIDTHS and len(list(caa.named_blocks())) == 9
    state = caa.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    half, _ = ck.load_caa(path, dtype=torch.float16)
    assert half.cp_blocks_mid.transformer.attn1.to_q.weight.dtype == torch.float16
    for _, _, block in half.named_blocks():
        assert block.pe.freq_bands.dtype == torch.float32
        assert torch.equal(block.pe.freq_bands, frequency_bands(block.dim // 4))


def test_a_bare_state_dict_without_lightning_bookkeeping_is_accepted(tmp_path):
    sd = official_subset("pano")
    torch.save(sd, tmp_path / "bare.pt")
    caa_sd, info = ck.load_caa_state_dict(tmp_path / "bare.pt")
    assert info["kind"] == "pano" and info["widths"] == SMALL_WIDTHS and "lightning" not in info
    assert all(torch.equal(caa_sd[k], v) for k, v in caa_part(sd).items())


def test_a_legacy_non_zip_torch_file_is_read_without_mmap_and_still_weights_only(tmp_path):
    sd = official_subset("pano")
    with open(tmp_path / "legacy.ckpt", "wb") as f:
        torch.save({"state_dict": sd, "epoch": 1}, f, _use_new_zipfile_serialization=False)
    caa_sd, info = ck.load_caa_state_dict(tmp_path / "legacy.ckpt")
    assert info["widths"] == SMALL_WIDTHS and info["lightning"] == {"epoch": 1}
    assert all(torch.equal(caa_sd[k], v) for k, v in caa_part(sd).items())


def test_the_file_is_recognised_by_its_content_not_its_extension(tmp_path):
    sd = official_subset("pano")
    save_file(sd, tmp_path / "pano_as.ckpt")  # a safetensors file named .ckpt
    _, info = ck.load_caa_state_dict(tmp_path / "pano_as.ckpt")
    assert info["kind"] == "pano"


def test_the_outpainting_checkpoint_is_told_apart_by_its_unets_input_channels(tmp_path):
    sd = official_subset("pano_outpaint")
    assert sd["mv_base_model.unet.conv_in.weight"].shape[1] == 9
    layout = ck.classify(sd)
    assert (layout.kind, layout.unet_in_channels, layout.caa_style) == ("pano_outpaint", 9, "cpattn")
    _, info = ck.load_caa_state_dict(write_official(tmp_path / "pano_outpaint.ckpt", "pano_outpaint"))
    assert info["kind"] == "pano_outpaint"


@pytest.mark.parametrize("kind, expected", [
    ("pano", ("pano", "cpattn", 4)), ("pano_outpaint", ("pano_outpaint", "cpattn", 9)),
    ("depth", ("depth", "cpblock", 5)), ("depth_single_view", ("depth_single_view", None, 5))])
def test_each_official_layout_is_classified(kind, expected):
    layout = ck.classify(official_subset(kind))
    assert (layout.kind, layout.caa_style, layout.unet_in_channels) == expected
    assert set(layout.parts) >= {"text_encoder", "vae", "unet"}


def test_non_mvdiffusion_layouts_are_classified():
    ldm = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
           "first_stage_model.decoder.conv_in.weight": torch.zeros(512, 4, 3, 3),
           "cond_stage_model.model.token_embedding.weight": torch.zeros(8, 8)}
    assert ck.classify(ldm).kind == "stable_diffusion"
    diffusers = {"conv_in.weight": torch.zeros(320, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}
    assert ck.classify(diffusers).kind == "diffusers_unet"
    assert ck.classify({"foo.weight": torch.zeros(1)}).kind == "unknown"
    ours = caa_part(official_subset("pano"))
    assert ck.classify(ours, {"format": ck.FORMAT}).kind == "caa"
    assert ck.classify(ours).kind == "caa"


def test_split_official_gives_prefix_stripped_views_of_the_same_tensors():
    sd = official_subset("depth")
    parts = ck.split_official(sd)
    assert set(parts) == {"unet", "vae", "text_encoder", "caa", "other"}
    assert parts["unet"]["conv_in.weight"] is sd["mv_base_model.unet.conv_in.weight"]
    assert parts["vae"]["encoder.conv_in.weight"] is sd["vae.encoder.conv_in.weight"]
    assert parts["text_encoder"]["text_model.embeddings.token_embedding.weight"] is \
        sd["text_encoder.text_model.embeddings.token_embedding.weight"]
    assert parts["caa"]["cp_blocks_mid.attn1.pe.freq_bands"] is sd["mv_base_model.cp_blocks_mid.attn1.pe.freq_bands"]
    # the depth model's condition encoders are part of its CAA weights (DepthCAASet names)
    condition = {k[len("mv_base_model."):] for k in sd if k.startswith("mv_base_model.condition_")}
    assert condition and condition <= set(parts["caa"]) and parts["other"] == {}
    assert sum(len(p) for p in parts.values()) == len(sd)


def test_unet_widths_are_the_output_channels_of_each_level():
    parts = ck.split_official(official_subset("pano", model_channels=320))
    assert ck.unet_widths(parts["unet"]) == SD2_WIDTHS


# ---------------------------------------------------------------------------------------------------------
# this pack's format
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_save_then_load_round_trips_the_weights_and_keeps_freq_bands_float32(tmp_path, dtype):
    sd = caa_part(official_subset("pano"))
    path = ck.save_caa_file(sd, tmp_path / "caa.safetensors", source="pano.ckpt", model_kind="pano", dtype=dtype)
    loaded, info = ck.load_caa_state_dict(path)
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        if k.endswith("pe.freq_bands"):
            assert loaded[k].dtype == torch.float32 and torch.equal(loaded[k], v)
        else:
            assert loaded[k].dtype == dtype and torch.equal(loaded[k], v.to(dtype))
    assert info["kind"] == "pano" and info["layout"] == "caa" and info["format"] == ck.FORMAT
    assert info["source"] == "pano.ckpt" and info["widths"] == SMALL_WIDTHS
    assert info["dtype"] == str(dtype).removeprefix("torch.")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta == {"format": "comfyui-mvdiffusion.caa", "format_version": "1", "model_kind": "pano",
                    "source": "pano.ckpt", "widths": json.dumps(SMALL_WIDTHS)}
    assert all(k.startswith("cp_blocks_") for k in keys)


def test_saving_is_atomic_and_leaves_no_temporary_file(tmp_path):
    sd = caa_part(official_subset("pano"))
    target = tmp_path / "caa.safetensors"
    target.write_bytes(b"old")
    ck.save_caa_file(sd, target, source="x", model_kind="pano")
    assert [p.name for p in tmp_path.iterdir()] == ["caa.safetensors"]
    assert ck.load_caa_state_dict(target)[1]["kind"] == "pano"
    assert target.stat().st_mode & 0o044  # readable like any file the user writes, not mkstemp's 0600


def test_the_random_test_weights_builder_writes_loadable_caa_files(tmp_path):
    widths = {"encoder": [64, 64], "mid": 128, "decoder": [64, 64]}
    path = random_weights.caa_weights(tmp_path, widths=widths)
    loaded, info = ck.load_caa(path, dtype=torch.float32)
    assert loaded.widths == {"encoder": [64, 64], "mid": 128, "decoder": [64, 64]} and info["source"] == "random (tests)"


def test_a_newer_format_version_is_refused(tmp_path):
    sd = caa_part(official_subset("pano"))
    path = tmp_path / "future.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path,
              metadata={"format": ck.FORMAT, "format_version": "2", "model_kind": "pano", "source": "x",
                        "widths": json.dumps(SMALL_WIDTHS)})
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "format version 2")


def test_metadata_widths_that_contradict_the_tensors_are_refused(tmp_path):
    sd = caa_part(official_subset("pano"))
    path = tmp_path / "lying.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path,
              metadata={"format": ck.FORMAT, "format_version": "1", "model_kind": "pano", "source": "x",
                        "widths": json.dumps(SD2_WIDTHS)})
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "metadata declares widths")


# ---------------------------------------------------------------------------------------------------------
# positional-encoding frequencies
# ---------------------------------------------------------------------------------------------------------
def test_freq_bands_stored_in_fp16_are_repaired_from_the_formula_with_a_warning(tmp_path, caplog):
    sd = official_subset("pano")
    sd = {k: (v.half() if k.endswith("pe.freq_bands") else v) for k, v in sd.items()}
    # 64-wide blocks: 16 frequencies 2^0..2^15 (exact in fp16); 256-wide: 64 up to 2^63 -> inf in fp16
    assert torch.isinf(sd["mv_base_model.cp_blocks_mid.pe.freq_bands"].float()).any()
    path = write_official(tmp_path / "fp16_freq.ckpt", sd=sd)
    with caplog.at_level(logging.WARNING, logger=ck.__name__):
        caa_sd, info = ck.load_caa_state_dict(path)
    assert info["freq_bands"] == "repaired"
    for k, v in caa_sd.items():
        if k.endswith("pe.freq_bands"):
            assert v.dtype == torch.float32 and torch.equal(v, frequency_bands(v.shape[-1]))
    assert any("cp_blocks_mid.pe.freq_bands" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)


def test_float32_freq_bands_within_rounding_are_used_as_stored():
    freq = frequency_bands(320)
    nudged = freq * (1 + 1.2e-7)  # one ulp away for most entries
    assert not torch.equal(nudged, freq)
    used, status = ck.check_freq_bands("cp_blocks_mid.pe.freq_bands", nudged)
    assert status == "rounding" and used is nudged
    used, status = ck.check_freq_bands("x.pe.freq_bands", freq.clone())
    assert status == "exact"


def test_float32_freq_bands_rounded_through_fp16_with_inf_are_repaired():
    lossy = frequency_bands(80).half().float()
    assert torch.isinf(lossy).any()
    used, status = ck.check_freq_bands("x.pe.freq_bands", lossy)
    assert status == "repaired" and torch.equal(used, frequency_bands(80))


def test_freq_bands_that_are_not_the_positional_encoding_are_refused(tmp_path):
    sd = official_subset("pano")
    sd["mv_base_model.cp_blocks_encoder.1.pe.freq_bands"] = torch.linspace(0, 1, 32)[None, None]
    path = write_official(tmp_path / "bad_freq.ckpt", sd=sd)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "cp_blocks_encoder.1.pe.freq_bands", "not MVDiffusion's positional-encoding")


