"""The layouts of MVDiffusion checkpoints (and of what users mistake for them), told apart by their keys.

Every layout is one entry of :data:`LAYOUTS` (first match wins): what the file holds, how to recognise it
from the :class:`KeyFacts` of its state dict, and what the pack can do with it. Adding a layout is adding one
entry there.

=====================  ===================================================================================
``pano``               official pano.ckpt: CAA blocks ``mv_base_model.cp_blocks_*.transformer.*`` (``CPAttn``)
                       and a diffusers UNet ``mv_base_model.unet.*`` with 4 input channels (SD2-base)
``pano_outpaint``      the same CAA layout, UNet with 9 input channels (SD2-inpainting)
``depth``              depth_gen.ckpt: depth ``CPBlock``s ``mv_base_model.cp_blocks_*.attn1.transformer.*`` +
                       ``resnet``, condition encoders ``mv_base_model.condition_*``, UNet with 5 input channels
                       (SD2-depth)
``depth_single_view``  depth_single_view.ckpt: UNet (5 input channels), VAE, text encoder, no CAA
``single_view``        another UNet-only MVDiffusion checkpoint (no CAA)
``caa``                this pack's CAA-only format (keys ``cp_blocks_*``: CAASet names, or DepthCAASet names with
                       ``condition_*`` for depth blocks)
``stable_diffusion``   not MVDiffusion: an ldm/ComfyUI checkpoint (``model.diffusion_model.*``)
``diffusers_unet``     not MVDiffusion: a bare diffusers UNet
``unknown``            anything else
=====================  ===================================================================================
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

from .reading import OFFICIAL_HINT, CheckpointError, checkpoint_error

__all__ = ["KeyFacts", "LayoutSpec", "Layout", "LAYOUTS", "KINDS", "CAA_KINDS", "PANO", "PANO_OUTPAINT", "DEPTH",
           "DEPTH_SINGLE_VIEW", "SINGLE_VIEW", "CAA", "STABLE_DIFFUSION", "DIFFUSERS_UNET", "UNKNOWN",
           "OFFICIAL_PREFIX", "PARTS", "CONDITION_KEY", "key_facts", "classify", "split_official", "unet_widths",
           "describe_widths", "refusal_error", "check_whole_model"]

OFFICIAL_PREFIX = "mv_base_model."
PARTS = {"text_encoder": "text_encoder.", "vae": "vae.", "unet": "mv_base_model.unet."}
OWN_CAA_FORMAT = "comfyui-mvdiffusion.caa"  # caa_file.FORMAT (the metadata tells our files from bare dicts)

PANO, PANO_OUTPAINT, DEPTH, DEPTH_SINGLE_VIEW, SINGLE_VIEW = (
    "pano", "pano_outpaint", "depth", "depth_single_view", "single_view")
CAA, STABLE_DIFFUSION, DIFFUSERS_UNET, UNKNOWN = "caa", "stable_diffusion", "diffusers_unet", "unknown"

_CAA_KEY = re.compile(r"^(?P<prefix>.*?)cp_blocks_(?:encoder\.\d+|mid|decoder\.\d+)\.(?P<rest>.*)$")
# the depth model's key-frame condition encoders (part of its CAA weights: DepthCAASet names)
CONDITION_KEY = re.compile(r"(?:^|\.)condition_(?:conv_in|downblocks\.\d+|upblocks\.\d+)\.")


@dataclasses.dataclass(frozen=True)
class KeyFacts:
    """What the keys of a state dict say: ``caa_prefix`` ("mv_base_model.", "", another, or None without
    ``cp_blocks_*`` keys), ``caa_style`` ("cpattn": pano CPAttn, "cpblock": depth CPBlock, or None),
    ``unet_in`` (input channels of an official diffusers UNet), ``parts`` (of :data:`PARTS` present),
    ``ldm`` (``model.diffusion_model.*`` keys), ``diffusers_unet`` (a bare diffusers UNet), ``own_format``
    (the file's metadata says it is this pack's CAA format)."""

    caa_prefix: str | None
    caa_style: str | None
    unet_in: int | None
    parts: tuple
    ldm: bool
    diffusers_unet: bool
    own_format: bool


@dataclasses.dataclass(frozen=True)
class LayoutSpec:
    """One layout: ``kind``; ``matches(facts)``; ``description`` (may use ``{unet_in}`` and ``{caa_prefix}``);
    ``caa_blocks``: the CAA variant it holds ("pano" CPAttn blocks, "depth" CPBlocks, or None);
    ``unet_in``: the UNet input channels of a complete model of this layout (None: not a complete model);
    ``refusal``: why 'Load CAA Weights' cannot use it (None where it can), ``todo``: what to do instead
    (default: use an official panorama checkpoint or converted CAA weights)."""

    kind: str
    matches: Callable[[KeyFacts], bool]
    description: str
    caa_blocks: str | None = None
    unet_in: int | None = None
    refusal: str | None = None
    todo: str | None = None


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a state dict is: its :class:`LayoutSpec`'s kind and description, and the facts behind them."""

    kind: str
    caa_prefix: str | None
    caa_style: str | None
    unet_in_channels: int | None
    parts: tuple
    description: str
    spec: LayoutSpec


def _official_caa(style: str, unet_in=None):
    return lambda f: f.caa_prefix == OFFICIAL_PREFIX and f.caa_style == style and (
        unet_in is None or f.unet_in in unet_in)


def _own_caa(style: str | None = None):
    return lambda f: f.caa_prefix == "" and (style is None or f.caa_style == style)


LAYOUTS: tuple[LayoutSpec, ...] = (
    LayoutSpec(DEPTH, _official_caa("cpblock", (5, None)),
               "the depth-conditioned MVDiffusion model (depth_gen.ckpt: depth CPBlocks "
               "'cp_blocks_*.attn1.transformer.*' with ResNet blocks and condition encoders, SD2-depth UNet)",
               caa_blocks="depth", unet_in=5),
    LayoutSpec(PANO, _official_caa("cpattn", (4, None)), "the official MVDiffusion panorama checkpoint",
               caa_blocks="pano", unet_in=4),
    LayoutSpec(PANO_OUTPAINT, _official_caa("cpattn", (9,)),
               "the official MVDiffusion panorama outpainting checkpoint (SD2-inpainting UNet)", caa_blocks="pano",
               unet_in=9),
    LayoutSpec(UNKNOWN, lambda f: f.caa_prefix == OFFICIAL_PREFIX,
               "MVDiffusion CAA blocks ({caa_style}) with a UNet of {unet_in} input channels (neither SD2-base's 4, "
               "SD2-inpainting's 9 nor SD2-depth's 5 that these blocks were trained with)"),
    LayoutSpec(CAA, lambda f: _own_caa("cpblock")(f) and f.own_format, "depth CAA weights in this pack's format",
               caa_blocks="depth"),
    LayoutSpec(CAA, lambda f: _own_caa()(f) and f.own_format, "CAA weights in this pack's format", caa_blocks="pano"),
    LayoutSpec(CAA, _own_caa("cpblock"), "a bare depth CAA state dict (cp_blocks_*.attn1 keys)", caa_blocks="depth"),
    LayoutSpec(CAA, _own_caa(), "a bare CAA state dict (cp_blocks_* keys)", caa_blocks="pano"),
    LayoutSpec(UNKNOWN, lambda f: f.caa_prefix is not None, "CAA-like keys under an unexpected prefix {caa_prefix!r}"),
    LayoutSpec(DEPTH_SINGLE_VIEW, lambda f: "unet" in f.parts and f.unet_in == 5,
               "the single-view depth model (depth_single_view.ckpt: a fine-tuned SD2-depth UNet, no CAA blocks)",
               unet_in=5, refusal="it has no CAA keys",
               todo="Load it with 'Load MVDiffusion Checkpoint' (a complete single-view model without CAA)"),
    LayoutSpec(SINGLE_VIEW, lambda f: "unet" in f.parts,
               "an MVDiffusion single-view checkpoint (a UNet, no CAA blocks)", refusal="it has no CAA keys"),
    LayoutSpec(STABLE_DIFFUSION, lambda f: f.ldm,
               "a plain Stable Diffusion checkpoint (ldm/ComfyUI 'model.diffusion_model.*' keys)",
               refusal="it has no CAA keys",
               todo="Load it with ComfyUI's Load Checkpoint and add CAA weights with 'Load CAA Weights'"),
    LayoutSpec(DIFFUSERS_UNET, lambda f: f.diffusers_unet, "a diffusers UNet (no CAA blocks)",
               refusal="it has no CAA keys",
               todo="Load your SD2 model with ComfyUI's loaders and add CAA weights with 'Load CAA Weights'"),
    LayoutSpec(UNKNOWN, lambda f: True, "no MVDiffusion keys"),
)
KINDS = tuple(dict.fromkeys(spec.kind for spec in LAYOUTS))
CAA_KINDS = tuple(s.kind for s in LAYOUTS if s.caa_blocks and s.unet_in)  # official files with CAA blocks


def key_facts(state_dict: dict, metadata: dict | None = None) -> KeyFacts:
    """The :class:`KeyFacts` of a state dict (and its safetensors metadata)."""
    keys = state_dict.keys()
    parts = tuple(name for name, prefix in PARTS.items() if any(k.startswith(prefix) for k in keys))
    conv_in = state_dict.get(PARTS["unet"] + "conv_in.weight")
    unet_in = int(conv_in.shape[1]) if conv_in is not None and conv_in.ndim == 4 else None
    caa = {}  # prefix -> the rest of its cp_blocks_* keys
    for k in keys:
        m = _CAA_KEY.match(k)
        if m:
            caa.setdefault(m.group("prefix"), []).append(m.group("rest"))
    prefix = style = None
    if caa:
        prefix = OFFICIAL_PREFIX if OFFICIAL_PREFIX in caa else max(caa, key=lambda p: len(caa[p]))
        style = "cpblock" if any(r.startswith(("attn1.", "attn2.", "resnet.")) for r in caa[prefix]) else "cpattn"
        parts = parts + ("caa",)
    return KeyFacts(prefix, style, unet_in, parts, any(k.startswith("model.diffusion_model.") for k in keys),
                    "conv_in.weight" in keys and any(k.startswith(("down_blocks.", "mid_block.")) for k in keys),
                    (metadata or {}).get("format") == OWN_CAA_FORMAT)


def classify(state_dict: dict, metadata: dict | None = None) -> Layout:
    """Tell the layouts apart from the key names (and the UNet's input channels): the first matching entry of
    :data:`LAYOUTS`."""
    facts = key_facts(state_dict, metadata)
    spec = next(s for s in LAYOUTS if s.matches(facts))
    description = spec.description.format(unet_in=facts.unet_in, caa_prefix=facts.caa_prefix,
                                          caa_style={"cpblock": "depth CPBlocks"}.get(facts.caa_style, "CPAttn"))
    if spec.unet_in and "unet" not in facts.parts:
        description += " (CAA blocks only, no UNet)"
    return Layout(spec.kind, facts.caa_prefix, facts.caa_style, facts.unet_in, facts.parts, description, spec)


def refusal_error(path, layout: Layout, state_dict: dict, wanted: str = "CAA weights") -> CheckpointError:
    """Why a layout cannot give CAA weights (or what ``wanted`` says), and what to do instead."""
    if layout.spec.refusal:
        return checkpoint_error(path, f"this is {layout.description}; {layout.spec.refusal}",
                                layout.spec.todo or f"Use {OFFICIAL_HINT}")
    sample = ", ".join(list(state_dict)[:4])
    return checkpoint_error(path, f"no usable {wanted}: {layout.description} ({len(state_dict)} tensors, e.g. "
                                  f"{sample})", f"Expected {OFFICIAL_HINT}")


def check_whole_model(path, layout: Layout, state_dict: dict, todo: str | None = None) -> None:
    """Raise unless ``layout`` is a complete MVDiffusion model this pack loads (a layout with ``unet_in``: pano,
    pano_outpaint, depth, depth_single_view; its UNet, VAE and text encoder, and the CAA blocks where the layout
    has them); ``todo`` says what to do with a file that lacks some parts (default: use its CAA weights with
    'Load CAA Weights', or download a file without CAA blocks again)."""
    if todo is None:
        todo = ("Use 'Load CAA Weights' with a separate SD2 checkpoint" if layout.spec.caa_blocks
                else "The file is incomplete; download it again")
    if layout.kind == CAA:
        raise checkpoint_error(path, "this file only holds CAA weights (no UNet, text encoder or VAE)",
                               "Load it with 'Load CAA Weights' next to ComfyUI's Load Checkpoint with an SD2 model")
    if not layout.spec.unet_in:
        raise refusal_error(path, layout, state_dict, wanted="MVDiffusion model")
    missing = [p for p in ("unet", "vae", "text_encoder") if p not in layout.parts]
    if missing:
        raise checkpoint_error(path, f"the checkpoint lacks the {', '.join(missing)} (it only holds: "
                                     f"{', '.join(layout.parts)})", todo)


def split_official(state_dict: dict) -> dict:
    """Cut an official state dict into prefix-stripped parts (the same tensor objects, no copies).

    ``{"unet": diffusers UNet names, "vae": diffusers AutoencoderKL names, "text_encoder": transformers
    CLIPTextModel names, "caa": CAASet names (DepthCAASet names for depth_gen: its CPBlocks and condition
    encoders), "other": anything else}``.
    """
    out = {"unet": {}, "vae": {}, "text_encoder": {}, "caa": {}, "other": {}}
    for k, v in state_dict.items():
        for part, prefix in PARTS.items():
            if k.startswith(prefix):
                out[part][k[len(prefix):]] = v
                break
        else:
            if k.startswith((OFFICIAL_PREFIX + "cp_blocks_", OFFICIAL_PREFIX + "condition_")):
                out["caa"][k[len(OFFICIAL_PREFIX):]] = v
            else:
                out["other"][k] = v
    return out


_RESNET = re.compile(r"^(down_blocks\.(\d+)|mid_block|up_blocks\.(\d+))\.resnets\.(\d+)\.conv2\.weight$")


def unet_widths(unet_sd: dict) -> dict | None:
    """Output channels of each diffusers UNet level (its last resnet), as CAA widths; None without a UNet.

    The official model builds encoder block k with ``down_blocks[k].resnets[-1].out_channels``, the mid
    block with ``mid_block.resnets[-1]`` and decoder block k with ``up_blocks[k].resnets[-1]``.
    """
    last = {}  # (part, level) -> (resnet index, out channels)
    for k, v in unet_sd.items():
        m = _RESNET.match(k)
        if not m:
            continue
        if m.group(2) is not None:
            level = ("down", int(m.group(2)))
        elif m.group(3) is not None:
            level = ("up", int(m.group(3)))
        else:
            level = ("mid", 0)
        j = int(m.group(4))
        if j >= last.get(level, (-1, 0))[0]:
            last[level] = (j, int(v.shape[0]))
    if not last:
        return None

    def levels(part):
        return [last[(part, i)][1] for i in range(len(last)) if (part, i) in last]

    mid = last.get(("mid", 0))
    return {"encoder": levels("down"), "mid": mid[1] if mid else None, "decoder": levels("up")}


def describe_widths(widths: dict) -> str:
    return f"encoder {widths['encoder']}, mid {widths['mid']}, decoder {widths['decoder']}"
