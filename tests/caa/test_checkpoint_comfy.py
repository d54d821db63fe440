"""ComfyUI accepts every part of an official MVDiffusion checkpoint (in-process host, CPU).

One full-size random checkpoint in the exact pano.ckpt layout (5.07 GB, built once into the test cache by
scripts/official_layouts.official_checkpoint, about 30 s) is loaded through nodes/checkpoint_loading.py,
which reads the file once (memory-mapped) and hands the UNet, VAE and text encoder to ComfyUI's own
converters and loaders. The real size matters here: ComfyUI recognises SD2 by its shapes (320 channels,
context 1024, OpenCLIP-H with 24 layers). The outpainting UNet takes the same path with 9 input channels; it
is checked on shape-only (meta) tensors for the conversion and ComfyUI's model detection, since a second
5 GB file would double the cost for no new loading code.

Justified differences between the file and ComfyUI's models (everything else must match exactly):
* text encoder: the file (the diffusers export of SD2's encoder) has 23 of OpenCLIP-H's 24 layers and no
  ``text_projection``; those 17 tensors are filled (an identity layer 23 and an identity projection, which
  leave every output equal to the official encoder's: checked below), and the ``position_ids`` buffer of
  transformers is dropped (ComfyUI computes the positions).
* UNet and VAE: none.
"""
from __future__ import annotations

import gc
import logging
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import official_layouts as layouts  # noqa: E402

from comfyui_mvdiffusion.caa import checkpoint as ck  # noqa: E402
from comfyui_mvdiffusion.caa.blockset import SD2_WIDTHS  # noqa: E402

pytestmark = pytest.mark.host

KEY_WORDS = ("missing", "left over", "leftover", "unexpected")
UNET_PAIRS = {"input_blocks.0.0.weight": "conv_in.weight",
              "middle_block.1.transformer_blocks.0.attn2.to_k.weight":
                  "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
              "output_blocks.11.1.proj_out.weight": "up_blocks.3.attentions.2.proj_out.weight",
              "out.2.weight": "conv_out.weight"}
VAE_QUERY = "vae.decoder.mid_block.attentions.0.query.weight"  # diffusers 0.16's old name
CLIP_FC1 = "text_encoder.text_model.encoder.layers.0.mlp.fc1.weight"
# the file's tensors the tests compare with (read from the file; the rest of it is never held in memory)
FILE_KEYS = {f"mv_base_model.unet.{k}" for k in UNET_PAIRS.values()} | {VAE_QUERY, CLIP_FC1}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def loading(comfy):
    return comfy.module("nodes.checkpoint_loading")


@pytest.fixture(scope="module")
def official(comfy, loading, cache_dir, fp16_weights):
    """The full-size random pano.ckpt, loaded once (weights stored in fp16: the host's --fp16-unet
    --fp16-text-enc); ComfyUI's own log records captured at DEBUG level."""
    path = layouts.official_checkpoint(cache_dir, "pano")
    handler, root = _Records(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with fp16_weights():
            model, clip, vae, caa_sd, info = loading.load_mvdiffusion_checkpoint(path)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    file_sd = ck.read_checkpoint(path, select=lambda k: k in FILE_KEYS or ck.is_caa_key(k)).state_dict
    yield types.SimpleNamespace(path=path, model=model, clip=clip, vae=vae, caa_sd=caa_sd, info=info,
                                file=file_sd, records=handler.records)
    del model, clip, vae, caa_sd, file_sd
    comfy.mm.unload_all_models()
    gc.collect()


def test_comfyui_logs_no_missing_unexpected_or_left_over_keys(official):
    host = [r.getMessage() for r in official.records if not r.name.startswith("comfyui_mvdiffusion")]
    assert any("model_type" in m or "model weight dtype" in m for m in host), host[:20]  # the capture works
    noisy = [r.getMessage()[:300] for r in official.records
             if any(w in r.getMessage().lower() for w in KEY_WORDS) and not r.name.startswith("comfyui_mvdiffusion")]
    assert noisy == []


def test_the_unet_is_comfyuis_sd2_eps_model_with_every_weight_from_the_file(comfy, official):
    import comfy.model_base

    model = official.model
    report = official.info["unet"]
    assert report["missing"] == [] and report["unexpected"] == []
    assert report["model_config"] == "SD20" and report["in_channels"] == 4 and report["model_type"] == "EPS"
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    assert type(model.model.model_config).__name__ == "SD20"
    unet = model.model.diffusion_model
    state = unet.state_dict()
    for ours, theirs in UNET_PAIRS.items():
        mine = state[ours]  # in the dtype ComfyUI chose for this device
        assert torch.equal(mine, official.file[f"mv_base_model.unet.{theirs}"].to(mine.dtype)), ours
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 77, 1024, generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.no_grad():
        out = model.model.apply_model(x, torch.tensor([14.6, 1.0]), c_crossattn=context)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_the_vae_decodes_a_latent_to_finite_pixels_with_every_weight_from_the_file(official):
    report = official.info["vae"]
    assert report["missing"] == [] and report["unexpected"] == []
    decoder = official.vae.first_stage_model.decoder
    query = official.file[VAE_QUERY]
    mine = decoder.mid.attn_1.q.weight
    assert torch.equal(mine.reshape(query.shape), query.to(mine.dtype))
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    pixels = official.vae.decode(latent)
    assert pixels.shape[-3:] == (64, 64, 3) and torch.isfinite(pixels).all()
    encoded = official.vae.encode(pixels[..., :3])
    assert encoded.shape[-3:] == (4, 8, 8) and torch.isfinite(encoded).all()


def test_clip_encodes_a_prompt_to_1x77x1024_with_only_the_justified_tensors_filled(official, loading):
    report = official.info["clip"]
    assert report["missing"] == [] and report["unexpected"] == []
    assert report["filled"] == list(loading.CLIP_FILLED)  # layer 23 (16 tensors) + text_projection
    assert report["dropped"] == ["text_model.embeddings.position_ids"]
    transformer = loading._clip_transformer(official.clip)
    mine = transformer.text_model.encoder.layers[0].mlp.fc1.weight
    assert torch.equal(mine, official.file[CLIP_FC1].to(mine.dtype))
    tokens = official.clip.tokenize("a cosy kitchen, morning light")
    cond, pooled = official.clip.encode_from_tokens(tokens, return_pooled=True)
    assert cond.shape == (1, 77, 1024) and torch.isfinite(cond).all()
    assert pooled.shape == (1, 1024) and torch.isfinite(pooled).all()
    # identity layer 23 + identity projection: the pooled output is the official pooler_output, i.e. the
    # final-layer-normed penultimate state at the end token (what SD2 conditioning uses, row by row)
    ids = [t[0] for t in tokens["h"][0]]
    eos = ids.index(49407)
    assert torch.allclose(pooled[0], cond[0, eos], rtol=2e-3, atol=2e-3)  # (fp16 rounding on GPUs)
    other = official.clip.encode_from_tokens(official.clip.tokenize("a snowy mountain ridge"))
    assert not torch.allclose(other, cond)


def test_the_caa_weights_are_the_files_and_build_the_packs_caa_socket(comfy, official):
    info = official.info
    assert info["kind"] == "pano" and info["widths"] == SD2_WIDTHS and info["num_blocks"] == 9
    assert info["parameters"] == 147_572_480 and info["freq_bands"] == "exact"
    for k, v in official.caa_sd.items():
        assert torch.equal(v, official.file["mv_base_model." + k]), k
    caa_weights = comfy.module("nodes.caa_weights")
    weights = caa_weights.CAAWeights(official.caa_sd, info)
    assert weights.widths == SD2_WIDTHS
    assert weights.caa.cp_blocks_encoder[0].pe.freq_bands.dtype == torch.float32


def test_load_caa_weights_reads_the_official_file_and_its_conversion_alike(official, loading, tmp_path):
    from comfyui_mvdiffusion.caa import convert

    official_sd, info = loading.load_caa_weights_file(official.path)
    assert info["kind"] == "pano" and info["format"] == "official MVDiffusion checkpoint"
    out = tmp_path / "pano.caa.safetensors"
    result = convert.convert(official.path, out)
    assert result.parameters == 147_572_480 and result.size < 300e6  # fp16: 295.2 MB
    converted, info2 = loading.load_caa_weights_file(out)
    assert info2["format"] == ck.FORMAT and info2["widths"] == SD2_WIDTHS
    for k, v in official_sd.items():
        assert torch.equal(converted[k], v if k.endswith("freq_bands") else v.half()), k


def test_the_outpainting_unet_converts_to_comfyuis_sd2_inpainting_model(comfy, official, loading):
    import comfy.model_detection

    unet = {k[len("mv_base_model.unet."):]: torch.empty(shape, dtype=dtype, device="meta")
            for k, shape, dtype in layouts.official_keys("pano_outpaint") if k.startswith("mv_base_model.unet.")}
    ldm, config, unmapped = loading.diffusers_unet_to_ldm(unet, "pano_outpaint.ckpt (UNet)")
    assert unmapped == [] and config["in_channels"] == 9
    accepted = set(official.model.model.diffusion_model.state_dict())  # the pano UNet ComfyUI loaded fully
    assert set(ldm) == accepted
    assert tuple(ldm["input_blocks.0.0.weight"].shape) == (320, 9, 3, 3)
    model_config = comfy.model_detection.model_config_from_unet(ldm, "")
    assert type(model_config).__name__ == "SD20" and model_config.unet_config["in_channels"] == 9
    assert model_config.inpaint_model() and model_config.model_type(ldm).name == "EPS"


def _small(tmp_path, name, kind, select=None):
    sd = layouts.official_state_dict(kind, model_channels=64, select=select or (
        lambda k: k.startswith("mv_base_model.cp_blocks_") or k.endswith("conv_in.weight")))
    return layouts.save_lightning_checkpoint(tmp_path / name, sd, kind)


def test_the_checkpoint_loader_refuses_what_is_not_a_whole_mvdiffusion_model(loading, tmp_path):
    ours = tmp_path / "pano.caa.safetensors"
    caa = {k[len("mv_base_model."):]: v for k, v in
           layouts.official_state_dict("pano", model_channels=64, select=lambda k: "cp_blocks_" in k).items()}
    ck.save_caa_file(caa, ours, source="pano.ckpt", model_kind="pano")
    cases = [
        (ours, ("only holds CAA weights", "Load CAA Weights")),
        (_small(tmp_path, "depth_gen.ckpt", "depth"), ("lacks the text_encoder", "only holds: vae, unet, caa",
                                                       "Load CAA Weights")),
        (_small(tmp_path, "depth_single_view.ckpt", "depth_single_view"), ("lacks the text_encoder",
                                                                           "download it again")),
        (_small(tmp_path, "caa_only.ckpt", "pano", lambda k: k.startswith("mv_base_model.cp_blocks_")),
         ("lacks the unet, vae, text_encoder",)),
    ]
    sd2 = tmp_path / "v2-1_512.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}}, sd2)
    cases.append((sd2, ("no CAA keys", "plain Stable Diffusion checkpoint", "Load Checkpoint")))
    for path, fragments in cases:
        with pytest.raises(loading.CheckpointError) as e:  # the class of the module tree ComfyUI loaded
            loading.load_mvdiffusion_checkpoint(path)
        assert str(path) in str(e.value), str(e.value)
        for fragment in fragments:
            assert fragment.lower() in str(e.value).lower(), str(e.value)
