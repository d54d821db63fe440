"""Bad input for the checkpoint readers: every refusal names the file and what is wrong (no ComfyUI); a file
that would run code is never executed."""
from __future__ import annotations

import os
import pathlib
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import official_layouts as layouts  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_files import SMALL, assert_names_file, caa_part, official_subset, write_official  # noqa: E402

from comfyui_mvdiffusion.caa import checkpoint as ck  # noqa: E402


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


def test_the_single_view_depth_model_has_no_caa_keys_and_is_pointed_to_the_checkpoint_loader(tmp_path):
    path = write_official(tmp_path / "depth_single_view.ckpt", "depth_single_view")
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "no CAA keys", "single-view depth model", "Load MVDiffusion Checkpoint")


def test_depth_condition_encoders_that_do_not_fit_the_unet_are_refused(tmp_path):
    sd = {k: v for k, v in official_subset("depth").items() if not k.startswith("mv_base_model.condition_")}
    path = write_official(tmp_path / "no_condition.ckpt", "depth", sd=sd)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "condition encoders", "missing", "download depth_gen.ckpt again")
    wider = layouts.official_state_dict("depth", select=lambda k: k.startswith("mv_base_model.condition_"),
                                        model_channels=2 * SMALL)  # encoders of a UNet twice as wide
    path = write_official(tmp_path / "mixed.ckpt", "depth", sd={**official_subset("depth"), **wider})
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_caa_state_dict(path)
    assert_names_file(e, path, "condition encoders' widths", "do not match the UNet's levels", "'base': 128",
                      "'base': 64")


def test_caa_metadata_that_names_the_other_kind_of_blocks_is_refused(tmp_path):
    for kind, lie in (("depth", "pano"), ("pano", "depth")):
        path = tmp_path / f"{kind}.safetensors"
        save_file({k: v.contiguous() for k, v in caa_part(official_subset(kind)).items()}, path,
                  metadata={"format": ck.FORMAT, "format_version": "1", "model_kind": lie, "source": "x"})
        with pytest.raises(ck.CheckpointError) as e:
            ck.load_caa_state_dict(path)
        assert_names_file(e, path, f"metadata says '{lie}' weights", "damaged")


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
