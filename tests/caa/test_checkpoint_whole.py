"""The converter's ``--whole`` .safetensors loads through ComfyUI exactly like the official .ckpt it came from.

The full-size random pano.ckpt (see test_checkpoint_comfy.py) is converted, then each file is loaded through
``nodes/checkpoint_loading.py`` on its own and reduced to a digest of every tensor of the host's UNet, VAE,
text encoder and of the CAA weights: one 5 GB model is in memory at a time.
"""
from __future__ import annotations

import gc
import hashlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import official_layouts as layouts  # noqa: E402

from comfyui_mvdiffusion.caa import checkpoint as ck  # noqa: E402

pytestmark = pytest.mark.host


def digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous().reshape(-1)
    return f"{tensor.dtype}:{tuple(tensor.shape)}:" + hashlib.sha1(data.view(torch.uint8).numpy()).hexdigest()


def loaded_digests(comfy, path) -> tuple[dict, dict]:
    """Load ``path`` with Load MVDiffusion Checkpoint's loader; ``({part.name: digest}, info)``, models freed."""
    loading = comfy.module("nodes.checkpoint_loading")
    model, clip, vae, caa_sd, info = loading.load_mvdiffusion_checkpoint(path)
    out = {}
    for part, module in (("unet", model.model.diffusion_model), ("vae", vae.first_stage_model),
                         ("clip", clip.cond_stage_model)):
        out.update({f"{part}.{k}": digest(v) for k, v in module.state_dict().items()})
    out.update({f"caa.{k}": digest(v) for k, v in caa_sd.items()})
    del model, clip, vae, caa_sd
    comfy.mm.unload_all_models()
    gc.collect()
    return out, info


def test_the_whole_safetensors_conversion_loads_the_same_model_clip_vae_and_caa(comfy, cache_dir, tmp_path,
                                                                                fp16_weights):
    from comfyui_mvdiffusion.caa import convert

    ckpt = layouts.official_checkpoint(cache_dir, "pano")
    out = convert.convert(ckpt, tmp_path / "pano.safetensors", whole=True).output
    with fp16_weights():
        from_ckpt, _ = loaded_digests(comfy, ckpt)
        from_whole, info = loaded_digests(comfy, out)
    out.unlink()  # 5 GB
    assert info["format"] == ck.WHOLE_FORMAT and info["kind"] == "pano"
    assert len(from_ckpt) > 1000 and from_whole == from_ckpt
