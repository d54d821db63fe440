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
import os
import pathlib
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import official_layouts as layouts  # noqa: E402
import random_weights  # noqa: E402

from comfyui_mvdiffusion.caa import checkpoint as ck  # noqa: E402
from comfyui_mvdiffusion.caa.blockset import CAASet, SD2_WIDTHS  # noqa: E402
from comfyui_mvdiffusion.caa.positional_encoding import frequency_bands  # noqa: E402

SMALL = 64
SMALL_WIDTHS = {"encoder": [64, 128, 256, 256], "mid": 256, "decoder": [256, 256, 128, 64]}
FEW = {"text_encoder.text_model.embeddings.position_ids", "text_encoder.text_model.embeddings.token_embedding.weight",
       "text_encoder.text_model.final_layer_norm.weight", "vae.encoder.conv_in.weight", "vae.post_quant_conv.weight",
       "vae.decoder.up_blocks.0.resnets.0.norm1.weight"}
_UNET_SHAPE_KEYS = re.compile(r"^mv_base_model\.unet\.(conv_in\.weight|.*resnets\.\d+\.conv2\.weight)$")


def official_subset(kind: str = "pano", model_channels: int = SMALL, seed: int = 0) -> dict:
    """The official layout of ``kind`` restricted to CAA/condition blocks, UNet shape keys and a few others."""
    def select(name):
        return (name.startswith(("mv_base_model.cp_blocks_", "mv_base_model.condition_")) or name in FEW
                or bool(_UNET_SHAPE_KEYS.match(name)))
    return layouts.official_state_dict(kind, seed, select, model_channels)


def write_official(path: Path, kind: str = "pano", sd: dict | None = None, **kw) -> Path:
    return layouts.save_lightning_checkpoint(path, sd if sd is not None else official_subset(kind, **kw), kind)


def caa_part(sd: dict) -> dict:
    return {k[len("mv_base_model."):]: v for k, v in sd.items() if k.startswith("mv_base_model.cp_blocks_")}


def assert_names_file(excinfo, path: Path, *fragments: str):
    text = str(excinfo.value)
    assert str(path) in text, text
    for fragment in fragments:
        assert fragment.lower() in text.lower(), text


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
    assert set(parts["other"]) == {k for k in sd if k.startswith("mv_base_model.condition_")}
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


def test_random_test_weights_of_the_other_builders_load(tmp_path):
    """scripts/random_weights.caa_weights calls save_caa_file(state_dict, tmp, source=..., model_kind=..., dtype=...)."""
    caa = CAASet(**{"encoder_widths": [64, 64], "mid_width": 128, "decoder_widths": [64, 64]})
    random_weights.init_parameters(caa, 0)
    path = ck.save_caa_file(caa.state_dict(), tmp_path / "t.safetensors", source="random (tests)",
                            model_kind="pano", dtype=torch.float16)
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


# ---------------------------------------------------------------------------------------------------------
# bad input: every error names the file and what is wrong
# ---------------------------------------------------------------------------------------------------------
class TouchOnLoad:
    """Unpickling this runs ``pathlib.Path.touch(marker)``: the marker proves whether code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


class SystemOnLoad:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", [TouchOnLoad, SystemOnLoad])
@pytest.mark.parametrize("zip_format", [True, False])
def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, payload, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    obj = {"state_dict": caa_part(official_subset("pano")), "hyper_parameters": payload(marker)}
    with open(path, "wb") as f:
        torch.save(obj, f, _use_new_zipfile_serialization=zip_format)
    for load in (ck.load_caa_state_dict, ck.load_caa, ck.read_checkpoint):
        with pytest.raises(ck.CheckpointError) as e:
            load(path)
        assert_names_file(e, path, "refused to unpickle", "run code")
        assert re.search(r"unsupported global (getattr|posix\.system|os\.system|pathlib)", str(e.value)), str(e.value)
    assert not marker.exists()


def test_a_truncated_checkpoint_is_reported_as_truncated(tmp_path):
    full = write_official(tmp_path / "full.ckpt")
    data = full.read_bytes()
    path = tmp_path / "half.ckpt"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "truncated", "download it again")


def test_a_truncated_safetensors_file_is_reported(tmp_path):
    path = ck.save_caa_file(caa_part(official_subset("pano")), tmp_path / "c.safetensors", source="x",
                            model_kind="pano")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(cut)
    assert_names_file(e, cut, "safetensors")


@pytest.mark.parametrize("content, fragments", [
    (b'{"model": "pano", "note": "a JSON file renamed .ckpt"}', ("not a checkpoint", "JSON")),
    (b"<!DOCTYPE html><html><body>Dropbox</body></html>", ("not a checkpoint", "HTML")),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 5069332884\n", ("Git LFS pointer",)),
    (b"", ("empty",)),
    (b"\x00\x01garbage" * 10, ("not a readable PyTorch checkpoint",)),
])
def test_files_that_are_not_checkpoints_are_named_for_what_they_are(tmp_path, content, fragments):
    path = tmp_path / "pano.ckpt"
    path.write_bytes(content)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, *fragments)


def test_a_missing_file_is_reported(tmp_path):
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(tmp_path / "nope.ckpt")
    assert_names_file(e, tmp_path / "nope.ckpt", "no such file")


def test_a_pickle_of_something_else_than_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "holds a list")


def test_a_plain_stable_diffusion_checkpoint_has_no_caa_keys(tmp_path):
    path = tmp_path / "sd2.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
                               "model.diffusion_model.input_blocks.0.0.bias": torch.zeros(320),
                               "first_stage_model.decoder.conv_in.weight": torch.zeros(8, 4, 3, 3),
                               "cond_stage_model.model.ln_final.weight": torch.ones(8)}}, path)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "no CAA keys", "plain Stable Diffusion checkpoint", "Load Checkpoint",
                      "Load CAA Weights")


def test_a_diffusers_unet_has_no_caa_keys(tmp_path):
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    unet = {k[len("mv_base_model.unet."):]: v for k, v in official_subset("pano").items()
            if k.startswith("mv_base_model.unet.")}
    save_file(unet, path)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "no CAA keys", "diffusers UNet")


def test_the_depth_layout_is_refused_by_the_panorama_loader(tmp_path):
    path = write_official(tmp_path / "depth_gen.ckpt", "depth")
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "depth", "CPBlock", "not the panorama CAA blocks")


def test_the_single_view_depth_model_has_no_caa_keys(tmp_path):
    path = write_official(tmp_path / "depth_single_view.ckpt", "depth_single_view")
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "no CAA keys", "single-view depth model")


def test_a_block_of_the_wrong_width_is_refused(tmp_path):
    sd = official_subset("pano")
    wrong = layouts.official_state_dict("pano", select=lambda k: k.startswith("mv_base_model.cp_blocks_encoder.0."),
                                   model_channels=SMALL)  # a 64-wide block ...
    for k, v in wrong.items():  # ... put where the 128-wide encoder block 1 belongs
        sd[k.replace("cp_blocks_encoder.0.", "cp_blocks_encoder.1.")] = v
    path = write_official(tmp_path / "wrong_width.ckpt", sd=sd)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "do not match the UNet's levels", "encoder [64, 64, 256, 256]",
                      "encoder [64, 128, 256, 256]")


def test_an_inconsistent_tensor_shape_inside_a_block_is_refused(tmp_path):
    sd = official_subset("pano")
    sd["mv_base_model.cp_blocks_decoder.2.transformer.ff.net.2.weight"] = torch.zeros(128, 256)
    path = write_official(tmp_path / "inconsistent.ckpt", sd=sd)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "cp_blocks_decoder.2.transformer.ff.net.2.weight has shape (128, 256), "
                               "expected (128, 512)")


def test_a_missing_or_extra_block_tensor_is_refused(tmp_path):
    sd = official_subset("pano")
    del sd["mv_base_model.cp_blocks_mid.transformer.norm2.bias"]
    sd["mv_base_model.cp_blocks_mid.transformer.attn2.to_q.weight"] = torch.zeros(256, 256)
    path = write_official(tmp_path / "incomplete.ckpt", sd=sd)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "1 missing", "cp_blocks_mid.transformer.norm2.bias", "1 unexpected",
                      "cp_blocks_mid.transformer.attn2.to_q.weight")


def test_a_missing_level_is_refused(tmp_path):
    sd = {k: v for k, v in official_subset("pano").items() if not k.startswith("mv_base_model.cp_blocks_mid.")}
    path = write_official(tmp_path / "no_mid.ckpt", sd=sd)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "incomplete CAA weights")


def test_weights_with_nan_are_refused(tmp_path):
    sd = official_subset("pano")
    sd["mv_base_model.cp_blocks_encoder.0.transformer.attn1.to_v.weight"][0, 0] = float("nan")
    path = write_official(tmp_path / "nan.ckpt", sd=sd)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "cp_blocks_encoder.0.transformer.attn1.to_v.weight contains NaN")
