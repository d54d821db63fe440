"""Building the host's MODEL, CLIP and VAE from an official MVDiffusion checkpoint (ComfyUI glue, no nodes).

An official ``pano.ckpt`` / ``pano_outpaint.ckpt`` / ``depth_gen.ckpt`` / ``depth_single_view.ckpt`` (or its
``--whole`` .safetensors conversion, the same keys) holds the whole pipeline in diffusers/transformers naming
(see ``caa/checkpoint/``). The file is read once (safely, memory-mapped), cut into parts, and every part
goes through ComfyUI's OWN converters and loaders, the functions its checkpoint loaders use:

* UNet: ``comfy.model_detection.unet_config_from_diffusers_unet`` + ``comfy.utils.unet_to_diffusers`` give
  the diffusers -> ldm key map (the same map ``comfy.sd.load_diffusion_model_state_dict`` applies to a
  diffusers UNet); the ldm-named weights then go to ``comfy.sd.load_diffusion_model_state_dict``, which
  detects SD2 (``SD20``), picks dtypes/devices with ``comfy.model_management`` and returns the ModelPatcher.
  Converting first (rather than handing the diffusers dict over) lets us report missing/unexpected keys
  exactly, and serves the 9-channel inpainting and 5-channel depth UNets too: ComfyUI's diffusers detection
  only knows 4-channel SD2 UNets, so for in_channels != 4 the config is detected on a view whose ``conv_in``
  has 4 input channels and the real count is put back (ComfyUI's ldm detection then makes it an inpainting
  SD2 model, as it does for any UNet with more than 4 input channels).
* Depth models (SD2-depth UNet, 5 input channels; ComfyUI has no such model class): :func:`make_depth_model`
  turns the inpainting concat off (``concat_keys = ()`` on the freshly built BaseModel, so the host no longer
  adds mask + masked-image channels) and registers an ``outer_sample`` wrapper that refuses, before the first
  step, a run whose conditioning lacks the depth channel. That channel reaches the UNet through the
  conditioning key ``noise_concat`` (set by 'Depth Conditioning'): ``BaseModel.extra_conds`` turns it into
  ``c_concat``, which ``_apply_model`` appends to the latent. :func:`is_depth_model` tells such a MODEL apart.
* VAE: ``comfy.diffusers_convert.convert_vae_state_dict`` (maps diffusers 0.16's old attention names
  ``query/key/value/proj_attn`` as well as the new ``to_q/...`` ones, in 0.3.75 and 0.26 alike) then
  ``comfy.sd.VAE(sd=...)``.
* CLIP: ``comfy.sd.load_text_encoder_state_dicts([te], clip_type=CLIPType.STABLE_DIFFUSION)`` (detected as
  OpenCLIP-H -> ``SD2ClipModel``, which uses the penultimate of 24 layers). The official text encoder is the
  diffusers export of SD2's, which keeps only 23 layers (SD2 never uses the last) and no projection. The
  missing tensors are filled so that nothing is left uninitialised and every output equals the official
  encoder's: layer 23 as an exact identity layer (zero attention/MLP output projections, unit norms), so the
  pooled output is the official ``pooler_output``, and ``text_projection`` = identity. The penultimate
  hidden state that SD2 conditioning uses is the official ``last_hidden_state`` either way. The
  ``position_ids`` buffer of transformers (arange(77)) is dropped: ComfyUI computes positions itself.

Everything raises :class:`caa.checkpoint.CheckpointError` (a ValueError) naming the file and what is wrong.
"""
from __future__ import annotations

import logging

import torch

import comfy.diffusers_convert
import comfy.model_detection
import comfy.patcher_extension
import comfy.sd
import comfy.utils

from ..caa import checkpoint as ckpt_io
from ..caa.checkpoint import CheckpointError, checkpoint_error
from ..caa.depth_patch import DEPTH_CHANNEL_KEY, DEPTH_UNET_IN, conditionings_without_depth
from .sampling import unet_in_channels

__all__ = ["CheckpointError", "load_mvdiffusion_checkpoint", "load_caa_weights_file", "load_unet_part",
           "load_vae_part", "load_clip_part", "diffusers_unet_to_ldm", "complete_sd2_text_encoder",
           "make_depth_model", "is_depth_model", "DepthChannelCheck", "DEPTH_UNET_IN", "DEPTH_CHANNEL_KEY",
           "DEPTH_WRAPPER_KEY", "CLIP_FILLED", "CLIP_DROPPED"]

log = logging.getLogger(__name__)

SD2_CLIP_LAYERS = 24  # comfy/text_encoders/sd2_clip_config.json: num_hidden_layers
CLIP_DROPPED = ("text_model.embeddings.position_ids",)
# what complete_sd2_text_encoder adds to the official (diffusers-exported) SD2 text encoder
CLIP_FILLED = tuple(f"text_model.encoder.layers.23.{n}" for n in (
    "self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
    "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
    "layer_norm1.weight", "layer_norm1.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    "layer_norm2.weight", "layer_norm2.bias")) + ("text_projection.weight",)


def _key_report(expected, given) -> dict:
    expected, given = set(expected), set(given)
    return {"missing": sorted(expected - given), "unexpected": sorted(given - expected)}


def _host_error(source, part: str, e: BaseException) -> CheckpointError:
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return checkpoint_error(source, f"ComfyUI could not load the {part} ({type(e).__name__}: {first})",
                 "The checkpoint is damaged or its tensors have unexpected shapes; download it again")


def _sample(keys, n=5) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


# ---------------------------------------------------------------------------------------------------------
# UNet
# ---------------------------------------------------------------------------------------------------------
def diffusers_unet_to_ldm(unet_sd: dict, source="<UNet>") -> tuple[dict, dict, list]:
    """diffusers UNet2DConditionModel weights -> ComfyUI (ldm) names with ComfyUI's own key map.

    Returns ``(ldm_state_dict, unet_config, unmapped)``: ``unmapped`` lists the file's keys that the map
    does not know (the map itself is a superset: it also names optional layers SD2 does not have).
    """
    conv_in = unet_sd.get("conv_in.weight")
    if conv_in is None or conv_in.ndim != 4:
        raise checkpoint_error(source, "the UNet part has no conv_in.weight (not a diffusers UNet)")
    in_channels = int(conv_in.shape[1])
    config = comfy.model_detection.unet_config_from_diffusers_unet(unet_sd)
    if config is None and in_channels != 4:
        view = dict(unet_sd)
        view["conv_in.weight"] = torch.empty((conv_in.shape[0], 4, *conv_in.shape[2:]), device="meta")
        config = comfy.model_detection.unet_config_from_diffusers_unet(view)
        if config is not None:
            config = dict(config, in_channels=in_channels)
    if config is None:
        raise checkpoint_error(source, f"ComfyUI does not recognise this diffusers UNet ({in_channels} input channels, "
                            f"{len(unet_sd)} tensors) as an SD2 UNet",
                    "The checkpoint is damaged or not an MVDiffusion release")
    key_map = comfy.utils.unet_to_diffusers(config)
    ldm = {key_map[k]: v for k, v in unet_sd.items() if k in key_map}
    return ldm, config, sorted(set(unet_sd) - set(key_map))


def load_unet_part(unet_sd: dict, source="<UNet>", model_options: dict | None = None):
    """The host's MODEL (ModelPatcher) from diffusers-named UNet weights; returns ``(model, report)``.

    ``report``: ``missing``/``unexpected`` = ComfyUI's UNet weights the file does not provide / file
    weights ComfyUI's UNet has no place for (both empty for an intact official checkpoint),
    ``in_channels``, ``model_type`` (e.g. "EPS"), ``model_config`` (e.g. "SD20").
    """
    ldm, config, unmapped = diffusers_unet_to_ldm(unet_sd, source)
    if unmapped:
        raise checkpoint_error(source, f"the UNet has {len(unmapped)} tensors an SD2 UNet does not have: {_sample(unmapped)}",
                    "The checkpoint is damaged or not an MVDiffusion release")
    given = set(ldm)
    try:
        model = comfy.sd.load_diffusion_model_state_dict(dict(ldm), model_options=dict(model_options or {}))
    except (RuntimeError, ValueError, KeyError) as e:
        raise _host_error(source, "UNet", e) from None
    if model is None:
        raise checkpoint_error(source, "ComfyUI could not detect the UNet's model type")
    report = _key_report(model.model.diffusion_model.state_dict().keys(), given)
    if report["missing"] or report["unexpected"]:
        raise checkpoint_error(source, f"the UNet does not fit ComfyUI's SD2 UNet: {len(report['missing'])} weights missing "
                            f"({_sample(report['missing'])}), {len(report['unexpected'])} unexpected "
                            f"({_sample(report['unexpected'])})", "The checkpoint is damaged; download it again")
    report.update(in_channels=config["in_channels"],
                  model_type=getattr(model.model.model_type, "name", str(model.model.model_type)),
                  model_config=type(model.model.model_config).__name__)
    return model, report


# ---------------------------------------------------------------------------------------------------------
# depth models (SD2-depth UNet: the 5th input channel comes from the conditioning)
# ---------------------------------------------------------------------------------------------------------
DEPTH_WRAPPER_KEY = "mvdiffusion_depth"


def is_depth_model(model) -> bool:
    """A MODEL (ModelPatcher) whose UNet takes the depth channel: 5 input channels (SD2-depth)."""
    return unet_in_channels(model) == DEPTH_UNET_IN


class DepthChannelCheck:
    """The ``outer_sample`` wrapper of a depth MODEL: before the first step, every positive and negative
    conditioning must carry the depth channel (``noise_concat``), else the 5-channel UNet would get 4."""

    def __init__(self, source: str):
        self.source = source

    def __call__(self, executor, *args, **kwargs):
        lacking = conditionings_without_depth(getattr(executor.class_obj, "conds", None) or {})
        if lacking:
            raise ValueError(f"this is an MVDiffusion depth model ({self.source}): its 5th input channel comes from "
                             f"'Depth Conditioning', and the {' and '.join(lacking)} conditioning has none "
                             f"(no {DEPTH_CHANNEL_KEY!r}). Pass both the positive and the negative conditioning "
                             "through 'Depth Conditioning' before the sampler")
        return executor(*args, **kwargs)


def make_depth_model(model, source: str) -> None:
    """Make a freshly loaded 5-channel MODEL a depth model (module docstring): no inpainting concat, and the
    :class:`DepthChannelCheck` as its ``outer_sample`` wrapper (clones inherit both)."""
    model.model.concat_keys = ()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, DEPTH_WRAPPER_KEY,
                               DepthChannelCheck(source))


# ---------------------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------------------
def load_vae_part(vae_sd: dict, source="<VAE>"):
    """The host's VAE from diffusers-named AutoencoderKL weights; returns ``(vae, report)``."""
    if "decoder.up_blocks.0.resnets.0.norm1.weight" not in vae_sd:
        raise checkpoint_error(source, "the VAE part is not a diffusers AutoencoderKL (no decoder.up_blocks.*)")
    ldm = comfy.diffusers_convert.convert_vae_state_dict(dict(vae_sd))
    given = set(ldm)
    try:
        vae = comfy.sd.VAE(sd=dict(ldm))
    except (RuntimeError, ValueError, KeyError) as e:
        raise _host_error(source, "VAE", e) from None
    report = _key_report(vae.first_stage_model.state_dict().keys(), given)
    if report["missing"]:
        raise checkpoint_error(source, f"ComfyUI's VAE has {len(report['missing'])} weights the file does not provide: "
                            f"{_sample(report['missing'])}")
    return vae, report


# ---------------------------------------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------------------------------------
def complete_sd2_text_encoder(te_sd: dict) -> tuple[dict, list, list]:
    """Give the official 23-layer SD2 text encoder (transformers names) what ComfyUI's 24-layer OpenCLIP-H
    model needs, without changing any output it computes (see the module docstring).

    Returns ``(state_dict, filled keys, dropped keys)``; the input dict is not modified.
    """
    sd = dict(te_sd)
    dropped = [k for k in CLIP_DROPPED if sd.pop(k, None) is not None]
    token = sd.get("text_model.embeddings.token_embedding.weight")
    if token is None:
        raise ValueError("no text_model.embeddings.token_embedding.weight")
    width, dtype = int(token.shape[1]), token.dtype
    filled = []

    def put(key, tensor):
        if key not in sd:
            sd[key] = tensor
            filled.append(key)

    for i in range(SD2_CLIP_LAYERS):
        p = f"text_model.encoder.layers.{i}."
        if f"{p}mlp.fc1.weight" in sd:
            continue
        # an exact identity layer: attention and MLP add zeros to the residual stream
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            put(f"{p}self_attn.{proj}.weight", torch.zeros(width, width, dtype=dtype))
            put(f"{p}self_attn.{proj}.bias", torch.zeros(width, dtype=dtype))
        put(f"{p}layer_norm1.weight", torch.ones(width, dtype=dtype))
        put(f"{p}layer_norm1.bias", torch.zeros(width, dtype=dtype))
        put(f"{p}mlp.fc1.weight", torch.zeros(4 * width, width, dtype=dtype))
        put(f"{p}mlp.fc1.bias", torch.zeros(4 * width, dtype=dtype))
        put(f"{p}mlp.fc2.weight", torch.zeros(width, 4 * width, dtype=dtype))
        put(f"{p}mlp.fc2.bias", torch.zeros(width, dtype=dtype))
        put(f"{p}layer_norm2.weight", torch.ones(width, dtype=dtype))
        put(f"{p}layer_norm2.bias", torch.zeros(width, dtype=dtype))
    put("text_projection.weight", torch.eye(width, dtype=dtype))
    return sd, filled, dropped


def _clip_transformer(clip):
    inner = clip.cond_stage_model
    return getattr(inner, inner.clip).transformer


def load_clip_part(te_sd: dict, source="<text encoder>", embedding_directory=None):
    """The host's CLIP (SD2 / OpenCLIP-H) from transformers-named CLIPTextModel weights; ``(clip, report)``."""
    layer = "text_model.encoder.layers.{}.mlp.fc1.weight"
    if layer.format(22) not in te_sd or layer.format(30) in te_sd:
        raise checkpoint_error(source, "the text encoder is not SD2's OpenCLIP-H (expected 23 or 24 layers of width 1024 in "
                            "transformers naming)")
    try:
        sd, filled, dropped = complete_sd2_text_encoder(te_sd)
    except ValueError as e:
        raise checkpoint_error(source, f"the text encoder is incomplete: {e}") from None
    given = set(sd)
    try:
        clip = comfy.sd.load_text_encoder_state_dicts([sd], embedding_directory=embedding_directory,
                                                      clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    except (RuntimeError, ValueError, KeyError) as e:
        raise _host_error(source, "text encoder", e) from None
    report = _key_report(_clip_transformer(clip).state_dict().keys(), given)
    if report["missing"]:
        raise checkpoint_error(source, f"ComfyUI's SD2 text encoder has {len(report['missing'])} weights the file does not "
                            f"provide: {_sample(report['missing'])}")
    report.update(filled=filled, dropped=dropped)
    return clip, report


# ---------------------------------------------------------------------------------------------------------
# whole files
# ---------------------------------------------------------------------------------------------------------
def _embedding_directory():
    try:
        import folder_paths

        return folder_paths.get_folder_paths("embeddings")
    except Exception:  # noqa: BLE001 - embeddings are optional
        return None


def load_mvdiffusion_checkpoint(path):
    """Everything in an official pano.ckpt / pano_outpaint.ckpt / depth_gen.ckpt / depth_single_view.ckpt (or its
    ``--whole`` .safetensors).

    The file is read part by part (the CAA weights, then the UNet, the VAE and the text encoder, each read on its
    own and released once ComfyUI holds it), so loading a 5 GB checkpoint never holds more of the file than
    the part being loaded. Returns ``(model, clip, vae, caa_state_dict, info)``: the host's ModelPatcher, CLIP
    and VAE (a depth model's MODEL made by :func:`make_depth_model`), the CAA weights (CAASet names; DepthCAASet
    names for depth_gen; None for depth_single_view, which has none) and ``info``: the CAA info of
    :func:`caa.checkpoint.load_caa_state_dict` (only its file fields without CAA weights) plus ``unet``/``vae``/
    ``clip`` key reports and ``parts``. ``info["kind"]``: "pano", "pano_outpaint", "depth" or "depth_single_view".
    """
    ckpt = ckpt_io.read_checkpoint(path, select=ckpt_io.is_caa_key)
    layout = ckpt_io.classify(ckpt.state_dict, ckpt.metadata)
    ckpt_io.check_whole_model(path, layout, ckpt.state_dict)
    if layout.spec.caa_blocks:
        caa_sd, info = ckpt_io.caa_state_dict_from(ckpt, layout)
    else:
        caa_sd, info = None, ckpt_io.model_info(ckpt, layout)
    name = ckpt.path.name
    del ckpt

    def part(which: str) -> dict:
        prefix = ckpt_io.PARTS[which]
        return ckpt_io.split_official(ckpt_io.read_checkpoint(path, select=lambda k: k.startswith(prefix)).state_dict)[which]

    model, unet_report = load_unet_part(part("unet"), f"{path} (UNet)")
    if unet_report["in_channels"] != layout.spec.unet_in:  # pragma: no cover - classify() already guarantees it
        raise checkpoint_error(path, f"UNet with {unet_report['in_channels']} input channels for a {layout.kind} model")
    if layout.spec.unet_in == DEPTH_UNET_IN:
        make_depth_model(model, name)
    vae, vae_report = load_vae_part(part("vae"), f"{path} (VAE)")
    clip, clip_report = load_clip_part(part("text_encoder"), f"{path} (text encoder)", _embedding_directory())
    info.update(unet=unet_report, vae=vae_report, clip=clip_report, parts=list(layout.parts))
    caa = "no CAA blocks" if caa_sd is None else (
        f"CAA {info['num_blocks']} blocks ({ckpt_io.describe_widths(info['widths'])}, {info['dtype']})")
    log.info("MVDiffusion: loaded %s (%s): UNet %s %s, %d input channels, %s", name, layout.kind,
             unet_report["model_config"], unet_report["model_type"], unet_report["in_channels"], caa)
    if clip_report["filled"]:
        log.info("MVDiffusion: %s: the text encoder's unused layer %s and text_projection were filled as identity "
                 "(the official SD2 text encoder has 23 of OpenCLIP-H's 24 layers)", name,
                 ", ".join(sorted({k.split('.')[3] for k in clip_report['filled'] if '.layers.' in k})))
    return model, clip, vae, caa_sd, info


def load_caa_weights_file(path):
    """CAA weights for 'Load CAA Weights': this pack's .safetensors or an official pano/pano_outpaint/depth_gen
    .ckpt (or its whole .safetensors).

    Returns ``(caa_state_dict, info)`` (see :func:`caa.checkpoint.load_caa_state_dict`).
    """
    return ckpt_io.load_caa_state_dict(path)
