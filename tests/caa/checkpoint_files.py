"""Small checkpoints in the official layouts for the checkpoint tests (imported by them; not a test module)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import official_layouts as layouts  # noqa: E402

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
    """The CAA weights of an official state dict under the pack's names: the blocks (and the depth model's
    condition encoders) without ``mv_base_model.``."""
    return {k[len("mv_base_model."):]: v for k, v in sd.items()
            if k.startswith(("mv_base_model.cp_blocks_", "mv_base_model.condition_"))}


def assert_names_file(excinfo, path: Path, *fragments: str):
    text = str(excinfo.value)
    assert str(path) in text, text
    for fragment in fragments:
        assert fragment.lower() in text.lower(), text


# ---- the in-process host (tests that take the ``comfy`` fixture) -----------------------------------------
DEPTH_SPOT_CHECKS = ("cp_blocks_mid.resnet.conv2.weight", "cp_blocks_decoder.3.attn1.transformer.attn1.to_q.weight",
                     "cp_blocks_encoder.0.attn1.pe.freq_bands", "condition_conv_in.weight",
                     "condition_upblocks.1.conv1.weight")


def run_loader(comfy, path: Path, node_id: str = "MVDiffusionCheckpointLoader", input_name: str = "ckpt_name",
               name: str | None = None) -> tuple:
    """Link ``path`` into the host's models/mvdiffusion (as ``name``) and run one of our loader nodes on it the
    way the executor does (``execute`` in inference mode) -> the node's outputs."""
    import comfy_host
    import torch

    linked = comfy_host.link_model(comfy.base, path, "mvdiffusion", name)
    with torch.inference_mode():
        return comfy.mvd_nodes[node_id].execute(**{input_name: linked}).result


def assert_depth_model_loaded(comfy, outputs: tuple, path: Path, kind: str) -> None:
    """What Load MVDiffusion Checkpoint must give for a depth file of ``kind`` ("depth": depth_gen,
    "depth_single_view"): strict key reports, the file's 5-channel UNet as a depth MODEL (no inpainting concat,
    the depth-channel check registered) and, on the caa socket, DepthCAAWeights holding the file's tensors
    (:func:`assert_depth_caa_weights_of`) or NoCAA."""
    import torch

    from comfyui_mvdiffusion.caa import checkpoint as ck

    loading, weights = comfy.module("nodes.checkpoint_loading"), comfy.module("nodes.caa_weights")
    model, clip, vae, caa = outputs
    info = caa.info
    assert info["kind"] == kind and Path(info["file"]).resolve() == path.resolve()  # (linked into models/)
    for part in ("unet", "vae", "clip"):
        assert info[part]["missing"] == [] and info[part]["unexpected"] == [], part
    assert info["unet"]["in_channels"] == 5 and info["unet"]["model_config"] == "SD20"
    conv_in = model.model.diffusion_model.input_blocks[0][0].weight
    assert tuple(conv_in.shape) == (320, 5, 3, 3)
    assert model.model.concat_keys == () and loading.is_depth_model(model)
    assert model.get_wrappers("outer_sample", loading.DEPTH_WRAPPER_KEY)
    name = "mv_base_model.unet.conv_in.weight"
    assert torch.equal(conv_in, ck.read_checkpoint(path, select=name.__eq__).state_dict[name].to(conv_in.dtype))
    if kind == "depth_single_view":
        assert type(caa) is weights.NoCAA and caa.caa is None
    else:
        assert_depth_caa_weights_of(comfy, caa, path)


def assert_depth_caa_weights_of(comfy, caa, path: Path) -> None:
    """``caa`` is DepthCAAWeights of depth_gen's full-size blocks and condition encoders with the tensors of the
    file at ``path`` (spot checks, freq_bands float32)."""
    import torch

    from comfyui_mvdiffusion.caa import checkpoint as ck
    from comfyui_mvdiffusion.caa.depth_blockset import SD2_CONDITION_WIDTHS

    assert type(caa) is comfy.module("nodes.caa_weights").DepthCAAWeights and caa.caa.has_condition
    assert caa.info["kind"] == "depth" and caa.info["num_blocks"] == 9
    assert caa.info["condition_widths"] == SD2_CONDITION_WIDTHS
    names = {"mv_base_model." + k for k in DEPTH_SPOT_CHECKS}
    file = ck.read_checkpoint(path, select=names.__contains__).state_dict
    state = caa.caa.state_dict()
    for k in DEPTH_SPOT_CHECKS:
        mine, theirs = state[k], file["mv_base_model." + k]
        assert torch.equal(mine, theirs.to(mine.dtype)), k
    assert state["cp_blocks_encoder.0.attn1.pe.freq_bands"].dtype == torch.float32
