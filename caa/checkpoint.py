"""Reading MVDiffusion checkpoints safely, telling their layouts apart, and this pack's CAA-only file format.

Nothing here imports ComfyUI; ``nodes/checkpoint_loading.py`` builds the host's MODEL/CLIP/VAE from the parts
that :func:`split_official` cuts out of an official checkpoint.

Reading (:func:`read_checkpoint`) never runs code from a file:

* ``.ckpt/.pt/.pth/.bin`` (any PyTorch file, recognised by its content, not its name):
  ``torch.load(weights_only=True, mmap=True)`` (memory-mapped: a 5 GB checkpoint costs no RAM until its
  tensors are used), or without ``mmap`` for legacy (pre-zip) files, still ``weights_only``. A pickle that
  would import anything else (code execution) is refused; there is no unsafe fallback.
* ``.safetensors`` (recognised by its header) with its metadata.
* Every failure (missing, empty, truncated, not a checkpoint at all, a web page or Git LFS pointer saved
  instead of the file, refused pickle) becomes a :class:`CheckpointError` naming the file, what is wrong and
  what to do.

A Lightning checkpoint is a dict with ``state_dict`` (plus bookkeeping); a bare state dict is accepted too.

Layouts (:func:`classify`):

=====================  ===================================================================================
``pano``               official pano.ckpt: CAA blocks ``mv_base_model.cp_blocks_*.transformer.*`` (``CPAttn``)
                       and a diffusers UNet ``mv_base_model.unet.*`` with 4 input channels
``pano_outpaint``      the same CAA layout, UNet with 9 input channels (SD2-inpainting)
``depth``              depth_gen.ckpt: ``CPBlock`` layout ``cp_blocks_*.attn1.transformer.*`` + ``resnet`` +
                       condition encoders
``depth_single_view``  depth_single_view.ckpt: UNet (5 input channels), VAE, text encoder, no CAA
``single_view``        another UNet-only MVDiffusion checkpoint (no CAA)
``caa``                this pack's CAA-only format (keys ``cp_blocks_*``, CAASet names)
``stable_diffusion``   not MVDiffusion: an ldm/ComfyUI checkpoint (``model.diffusion_model.*``)
``diffusers_unet``     not MVDiffusion: a bare diffusers UNet
``unknown``            anything else
=====================  ===================================================================================

This pack's format (:func:`save_caa_file`): safetensors holding the CAASet state dict (the official keys
without ``mv_base_model.``), weights in fp16 by default, every ``*.pe.freq_bands`` in float32, and metadata
``{"format": "comfyui-mvdiffusion.caa", "format_version": "1", "model_kind", "source", "widths"}``.
A whole official checkpoint can also be stored as safetensors (:func:`save_whole_file`): the same keys and
dtypes, metadata ``{"format": "comfyui-mvdiffusion.whole", "format_version": "1", "model_kind", "source"}``;
it classifies and loads exactly like the ``.ckpt`` it came from.

The positional-encoding frequencies (``pe.freq_bands``, up to 2^79) are checked on every load; policy:

* float32 values within float32 rounding (relative 1e-6) of :func:`frequency_bands` are used AS STORED: they
  are what the official code computed and trained with (normally bit-for-bit equal to the formula);
* a lossy copy of the formula (stored in fp16/bf16/fp64, or float32 values equal to the formula rounded to
  fp16/bf16, e.g. overflowed to inf) is REPAIRED from :func:`frequency_bands` with a logged warning, and
  ``info["freq_bands"]`` says so;
* anything else is refused: those blocks would not compute MVDiffusion's attention.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import re
import struct
import tempfile
import zipfile
from pathlib import Path

import torch

from .blockset import CAASet, widths_from_state_dict
from .positional_encoding import frequency_bands

__all__ = [
    "CheckpointError", "CheckpointFile", "Layout", "FORMAT", "FORMAT_VERSION", "KINDS", "MVDIFFUSION_KINDS",
    "read_checkpoint", "classify", "split_official", "unet_widths", "check_caa_state_dict", "check_freq_bands",
    "caa_state_dict_from", "refusal_error", "check_whole_panorama", "load_caa_state_dict", "load_caa",
    "save_caa_file", "save_whole_file", "describe_widths", "WHOLE_FORMAT",
]

log = logging.getLogger(__name__)

FORMAT = "comfyui-mvdiffusion.caa"
FORMAT_VERSION = "1"
WHOLE_FORMAT = "comfyui-mvdiffusion.whole"  # a whole official checkpoint (same keys) as safetensors
OFFICIAL_PREFIX = "mv_base_model."
PARTS = {"text_encoder": "text_encoder.", "vae": "vae.", "unet": "mv_base_model.unet."}

PANO, PANO_OUTPAINT, DEPTH, DEPTH_SINGLE_VIEW, SINGLE_VIEW = (
    "pano", "pano_outpaint", "depth", "depth_single_view", "single_view")
CAA, STABLE_DIFFUSION, DIFFUSERS_UNET, UNKNOWN = "caa", "stable_diffusion", "diffusers_unet", "unknown"
KINDS = (PANO, PANO_OUTPAINT, DEPTH, DEPTH_SINGLE_VIEW, SINGLE_VIEW, CAA, STABLE_DIFFUSION, DIFFUSERS_UNET, UNKNOWN)
MVDIFFUSION_KINDS = (PANO, PANO_OUTPAINT, DEPTH, DEPTH_SINGLE_VIEW, SINGLE_VIEW, CAA)
CAA_KINDS = (PANO, PANO_OUTPAINT)  # official layouts whose CAA blocks are the panorama CPAttn blocks

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
FREQ_SUFFIX = "pe.freq_bands"
FREQ_RTOL = 1e-6
_CAA_KEY = re.compile(r"^(?P<prefix>.*?)cp_blocks_(?:encoder\.\d+|mid|decoder\.\d+)\.(?P<rest>.*)$")
_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_UNSUPPORTED_OPERAND = re.compile(r"Unsupported operand (\d+)")

OFFICIAL_HINT = ("MVDiffusion's official pano.ckpt / pano_outpaint.ckpt, or CAA weights converted with "
                 "`python -m comfyui_mvdiffusion.caa.convert pano.ckpt`")


class CheckpointError(ValueError):
    """A file that cannot be used as asked; the message names the file, what is wrong and what to do."""


def _fail(path, problem: str, todo: str | None = None) -> CheckpointError:
    text = f"{path}: {problem}"
    if todo:
        text += f". {todo}"
    return CheckpointError(text)


# ---------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CheckpointFile:
    """What :func:`read_checkpoint` found: the tensors and where they came from."""

    path: Path
    container: str  # "lightning" (dict with state_dict), "state_dict" (bare), "safetensors"
    state_dict: dict
    metadata: dict | None = None  # safetensors metadata
    lightning: dict = dataclasses.field(default_factory=dict)  # epoch, global_step, pytorch-lightning_version
    size: int = 0  # bytes on disk


def _sniff(path: Path, size: int) -> str:
    """'zip', 'pickle', 'safetensors', or a short description of what the file is instead."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])  # safetensors: u64 header length, then the JSON header
        if 0 < n <= size - 8:
            return "safetensors"
        if n < 1 << 40:  # (8 bytes of text read as a length are far larger)
            return "truncated safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    text = head.lstrip()
    if text.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer"
    if text[:1] in (b"<",):
        return "an HTML/XML page (a download page saved instead of the file?)"
    if text[:1] in (b"{", b"["):
        return "a JSON/text file"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "a text file"
    return "unknown"


def _torch_load(path: Path):
    """torch.load with weights_only=True; mmap for zip files (the default since torch 1.6)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap can only be used with files saved with" not in str(e):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_error(path: Path, e: BaseException, kind: str) -> CheckpointError:
    text = str(e)
    refused = isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in text
    found = _UNSUPPORTED_GLOBAL.search(text) if refused else None
    if refused and (found or kind != "unknown"):
        if found:
            what = f"unsupported global {found.group(1)}"
        elif _UNSUPPORTED_OPERAND.search(text):
            what = f"unsupported pickle opcode {_UNSUPPORTED_OPERAND.search(text).group(1)}"
        else:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "Weights only load failed" not in ln
                     and "documentation of torch.load" not in ln]
            what = lines[-1][:200] if lines else "not plain tensors"
        return _fail(path, f"refused to unpickle this file with weights_only=True (it would run code / {what}), "
                           "so nothing in it was loaded or executed",
                     "Only plain PyTorch/Lightning checkpoints and .safetensors are read; get the file from the "
                     "official source, or convert a file you trust to .safetensors yourself")
    if "central directory" in text or "zip archive" in text or "invalid header or archive is corrupted" in text:
        return _fail(path, f"the file is truncated or corrupted ({text.splitlines()[0][:160]})",
                     "Download it again (an interrupted download leaves a partial file) and check its size")
    if isinstance(e, EOFError) or "Ran out of input" in text or "truncated" in text:
        return _fail(path, "the file ends before the checkpoint does (truncated)",
                     "Download it again and check its size")
    detail = f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text.strip() else type(e).__name__
    if kind == "unknown":
        detail = "its content is neither a PyTorch zip/pickle file nor safetensors; " + detail
    return _fail(path, f"not a readable PyTorch checkpoint ({detail})", f"Expected {OFFICIAL_HINT}")


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        message = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise _fail(path, f"not a valid .safetensors file, or truncated ({message})",
                    "Download or convert it again") from None
    return sd, metadata


def read_checkpoint(path) -> CheckpointFile:
    """Read a checkpoint safely (see the module docstring); raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise _fail(path, "no such file", "Check the name and the folder (models/mvdiffusion)")
    if path.is_dir():
        raise _fail(path, "is a folder, not a checkpoint file",
                    "Diffusers folders are not read here; point at pano.ckpt or a converted .safetensors")
    size = path.stat().st_size
    if size == 0:
        raise _fail(path, "the file is empty (0 bytes)", "Download it again")
    kind = _sniff(path, size)
    if kind == "safetensors":
        sd, metadata = _read_safetensors(path)
        return CheckpointFile(path, "safetensors", sd, metadata, {}, size)
    if kind == "truncated safetensors":
        raise _fail(path, "the .safetensors header is longer than the file (truncated)", "Download it again")
    if kind not in ("zip", "pickle", "unknown"):
        raise _fail(path, f"not a checkpoint: the file is {kind}",
                    f"Expected {OFFICIAL_HINT}. Get the real file (about 5 GB for pano.ckpt)")
    if kind == "zip" and not zipfile.is_zipfile(path):
        raise _fail(path, "the file is truncated or corrupted (its zip directory is missing)",
                    "Download it again (an interrupted download leaves a partial file) and check its size")
    try:
        obj = _torch_load(path)
    except Exception as e:  # noqa: BLE001 - every reading failure becomes a CheckpointError
        raise _load_error(path, e, kind) from None

    lightning = {}
    if isinstance(obj, dict) and "state_dict" in obj:
        sd = obj["state_dict"]
        container = "lightning"
        lightning = {k: obj[k] for k in ("epoch", "global_step", "pytorch-lightning_version", "hparams_name")
                     if k in obj and isinstance(obj[k], (int, float, str))}
        model_id = obj.get("hyper_parameters")
        for key in ("config", "model", "model_id"):  # hyper_parameters.config.model.model_id: the base model
            model_id = model_id.get(key) if isinstance(model_id, dict) else None
        if isinstance(model_id, str):
            lightning["model_id"] = model_id
        if not isinstance(sd, dict):
            raise _fail(path, f"its 'state_dict' entry is a {type(sd).__name__}, not a dict of tensors",
                        f"Expected {OFFICIAL_HINT}")
    elif isinstance(obj, dict):
        sd, container = obj, "state_dict"
    else:
        raise _fail(path, f"holds a {type(obj).__name__}, not a state dict or a Lightning checkpoint",
                    f"Expected {OFFICIAL_HINT}")
    tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        sample = ", ".join(repr(k) for k in list(sd)[:5])
        raise _fail(path, f"holds no tensors (top-level entries: {sample or 'none'})", f"Expected {OFFICIAL_HINT}")
    return CheckpointFile(path, container, tensors, None, lightning, size)


# ---------------------------------------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Layout:
    """What a state dict is (see the module docstring for the kinds)."""

    kind: str
    caa_prefix: str | None = None  # "mv_base_model." (official), "" (ours) or None (no CAA)
    caa_style: str | None = None  # "cpattn" (pano CPAttn), "cpblock" (depth CPBlock) or None
    unet_in_channels: int | None = None  # diffusers UNet conv_in of an official checkpoint
    parts: tuple = ()  # which of "text_encoder", "vae", "unet", "caa" are present
    description: str = ""


def _caa_keys(sd: dict) -> dict:
    """{prefix: [keys]} of the cp_blocks_* keys."""
    found = {}
    for k in sd:
        m = _CAA_KEY.match(k)
        if m:
            found.setdefault(m.group("prefix"), []).append(k)
    return found


def classify(state_dict: dict, metadata: dict | None = None) -> Layout:
    """Tell the layouts apart from the key names (and the UNet's input channels)."""
    metadata = metadata or {}
    keys = state_dict.keys()
    parts = tuple(name for name, prefix in PARTS.items() if any(k.startswith(prefix) for k in keys))
    conv_in = state_dict.get(PARTS["unet"] + "conv_in.weight")
    in_ch = int(conv_in.shape[1]) if conv_in is not None and conv_in.ndim == 4 else None
    caa = _caa_keys(state_dict)
    if caa:
        prefix = OFFICIAL_PREFIX if OFFICIAL_PREFIX in caa else max(caa, key=lambda p: len(caa[p]))
        rests = [_CAA_KEY.match(k).group("rest") for k in caa[prefix]]
        if any(r.startswith(("attn1.", "attn2.", "resnet.")) for r in rests):
            style = "cpblock"
        else:
            style = "cpattn"
        parts = parts + ("caa",)
        if style == "cpblock":
            return Layout(DEPTH, prefix, style, in_ch, parts,
                          "the depth-conditioned MVDiffusion model (depth_gen.ckpt: CPBlock layout "
                          "'cp_blocks_*.attn1.transformer.*' with ResNet blocks and condition encoders)")
        if prefix == OFFICIAL_PREFIX:
            if in_ch == 9:
                return Layout(PANO_OUTPAINT, prefix, style, in_ch, parts,
                              "the official MVDiffusion panorama outpainting checkpoint (SD2-inpainting UNet)")
            if in_ch not in (None, 4):
                return Layout(UNKNOWN, prefix, style, in_ch, parts,
                              f"panorama CAA blocks with a UNet of {in_ch} input channels (neither SD2-base's "
                              "4 nor SD2-inpainting's 9)")
            return Layout(PANO, prefix, style, in_ch, parts, "the official MVDiffusion panorama checkpoint"
                          + ("" if in_ch else " (CAA blocks only, no UNet)"))
        if prefix == "":
            own = metadata.get("format") == FORMAT
            return Layout(CAA, prefix, style, None, parts,
                          "CAA weights in this pack's format" if own else "a bare CAA state dict (cp_blocks_* keys)")
        return Layout(UNKNOWN, prefix, style, in_ch, parts,
                      f"CAA-like keys under an unexpected prefix {prefix!r}")
    if "unet" in parts:
        if in_ch == 5:
            return Layout(DEPTH_SINGLE_VIEW, None, None, in_ch, parts,
                          "the single-view depth model (depth_single_view.ckpt: a fine-tuned SD2-depth UNet, "
                          "no CAA blocks)")
        return Layout(SINGLE_VIEW, None, None, in_ch, parts,
                      "an MVDiffusion single-view checkpoint (a UNet, no CAA blocks)")
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return Layout(STABLE_DIFFUSION, None, None, None, parts,
                      "a plain Stable Diffusion checkpoint (ldm/ComfyUI 'model.diffusion_model.*' keys)")
    if "conv_in.weight" in keys and any(k.startswith(("down_blocks.", "mid_block.")) for k in keys):
        return Layout(DIFFUSERS_UNET, None, None, None, parts, "a diffusers UNet (no CAA blocks)")
    return Layout(UNKNOWN, None, None, None, parts, "no MVDiffusion keys")


def refusal_error(path, layout: Layout, state_dict: dict, wanted: str = "CAA weights") -> CheckpointError:
    """Why a layout cannot give panorama CAA weights, and what to do instead."""
    k = layout.kind
    if k == DEPTH:
        return _fail(path, f"this is {layout.description}; its blocks are not the panorama CAA blocks this pack runs",
                     f"Use {OFFICIAL_HINT}")
    if k in (DEPTH_SINGLE_VIEW, SINGLE_VIEW):
        return _fail(path, f"no CAA keys: this is {layout.description}",
                     f"Use {OFFICIAL_HINT}")
    if k == STABLE_DIFFUSION:
        return _fail(path, "no CAA keys: this looks like a plain Stable Diffusion checkpoint; load it with ComfyUI's "
                           "Load Checkpoint and add CAA weights with 'Load CAA Weights'")
    if k == DIFFUSERS_UNET:
        return _fail(path, "no CAA keys: this looks like a diffusers UNet; load your SD2 model with ComfyUI's "
                           "loaders and add CAA weights with 'Load CAA Weights'")
    sample = ", ".join(list(state_dict)[:4])
    return _fail(path, f"no usable {wanted}: {layout.description} ({len(state_dict)} tensors, e.g. {sample})",
                 f"Expected {OFFICIAL_HINT}")


def check_whole_panorama(path, layout: Layout, state_dict: dict,
                         todo: str = "Use 'Load CAA Weights' with a separate SD2 checkpoint") -> None:
    """Raise unless ``layout`` is a complete panorama model (pano/pano_outpaint with UNet, VAE, text encoder
    and CAA blocks); ``todo`` says what to do with a file that lacks some of those parts."""
    if layout.kind == CAA:
        raise _fail(path, "this file only holds CAA weights (no UNet, text encoder or VAE)",
                    "Load it with 'Load CAA Weights' next to ComfyUI's Load Checkpoint with an SD2 model")
    if layout.kind not in CAA_KINDS:
        raise refusal_error(path, layout, state_dict, wanted="MVDiffusion panorama model")
    missing = [p for p in ("unet", "vae", "text_encoder") if p not in layout.parts]
    if missing:
        raise _fail(path, f"the checkpoint lacks the {', '.join(missing)} (it only holds: {', '.join(layout.parts)})",
                    todo)


def split_official(state_dict: dict) -> dict:
    """Cut an official state dict into prefix-stripped parts (the same tensor objects, no copies).

    ``{"unet": diffusers UNet names, "vae": diffusers AutoencoderKL names, "text_encoder": transformers
    CLIPTextModel names, "caa": CAASet names, "other": anything else (e.g. depth condition encoders)}``.
    """
    out = {"unet": {}, "vae": {}, "text_encoder": {}, "caa": {}, "other": {}}
    for k, v in state_dict.items():
        for part, prefix in PARTS.items():
            if k.startswith(prefix):
                out[part][k[len(prefix):]] = v
                break
        else:
            if k.startswith(OFFICIAL_PREFIX + "cp_blocks_"):
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


# ---------------------------------------------------------------------------------------------------------
# validation of CAA tensors
# ---------------------------------------------------------------------------------------------------------
def _expected_shapes(widths: dict) -> dict:
    meta = CAASet(widths["encoder"], widths["mid"], widths["decoder"], device="meta")
    return {k: tuple(v.shape) for k, v in meta.state_dict().items()}


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal element by element, inf == inf (NaN never equal)."""
    return a.shape == b.shape and bool(torch.all(a == b))


def check_freq_bands(name: str, tensor: torch.Tensor, path="<state dict>") -> tuple[torch.Tensor, str]:
    """Apply the freq_bands policy (module docstring): -> (float32 tensor to use, "exact"|"rounding"|"repaired")."""
    num = int(tensor.shape[-1])
    expected = frequency_bands(num).to(tensor.device)
    if tuple(tensor.shape) != tuple(expected.shape):
        raise _fail(path, f"{name} has shape {tuple(tensor.shape)}, expected {tuple(expected.shape)}")
    values = tensor.detach()
    finite = bool(torch.isfinite(values).all()) if values.is_floating_point() else True
    if values.dtype == torch.float32:
        if torch.equal(values, expected):
            return tensor, "exact"
        if finite and torch.allclose(values, expected, rtol=FREQ_RTOL, atol=0):
            return tensor, "rounding"
    if values.is_floating_point() and (
            any(_same_values(values.float(), expected.to(dt).float()) for dt in (torch.float16, torch.bfloat16))
            or (values.dtype != torch.float32 and finite
                and torch.allclose(values.double(), expected.double(), rtol=FREQ_RTOL, atol=0))):
        log.warning("%s: %s was stored as a lossy copy (%s%s) of the positional-encoding frequencies; "
                    "using the exact float32 values frequency_bands(%d) instead", path, name, values.dtype,
                    "" if finite else ", with inf", num)
        return expected, "repaired"
    if not values.is_floating_point():
        diff = f"stored as {values.dtype}"
    elif not finite:
        diff = "non-finite values"
    else:
        rel = (values.double() - expected.double()).abs() / expected.double()
        diff = f"max relative difference {float(rel.max()):.3g}"
    raise _fail(path, f"{name} ({values.dtype}) is not MVDiffusion's positional-encoding frequencies "
                      f"frequency_bands({num}) ({diff})",
                "The file is damaged or not an MVDiffusion model; use the original checkpoint")


def check_caa_state_dict(sd: dict, path="<state dict>", expected_widths: dict | None = None):
    """Validate CAA tensors under CAASet names: complete, consistent shapes, finite, freq_bands policy.

    ``expected_widths``: the UNet's level widths (official checkpoints) that the blocks must match.
    Returns ``(state_dict to use, widths, freq_status)`` (repaired freq_bands replaced, others untouched).
    """
    try:
        widths = widths_from_state_dict(sd)
    except ValueError as e:
        raise _fail(path, f"incomplete CAA weights: {e}", f"Expected {OFFICIAL_HINT}") from None
    for w in [*widths["encoder"], widths["mid"], *widths["decoder"]]:
        if w % 32 or w <= 0:
            raise _fail(path, f"a CAA block is {w} wide; widths must be multiples of 32 (32-wide heads)")
    if expected_widths is not None and expected_widths != widths:
        raise _fail(path, f"the CAA blocks ({describe_widths(widths)}) do not match the UNet's levels "
                          f"({describe_widths(expected_widths)}) in the same file",
                    "The file mixes parts of different models; use the original checkpoint")
    shapes = _expected_shapes(widths)
    missing = sorted(set(shapes) - set(sd))
    unexpected = sorted(set(sd) - set(shapes))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        raise _fail(path, "the CAA blocks' tensors are not those of MVDiffusion's panorama blocks for widths "
                          f"{describe_widths(widths)}: " + "; ".join(parts), f"Expected {OFFICIAL_HINT}")
    wrong = [f"{k} has shape {tuple(sd[k].shape)}, expected {shapes[k]}" for k in shapes
             if tuple(sd[k].shape) != shapes[k]]
    if wrong:
        raise _fail(path, f"wrong CAA tensor shapes ({len(wrong)}): " + "; ".join(wrong[:4])
                    + (" ..." if len(wrong) > 4 else ""),
                    "The blocks are inconsistent (damaged file or mixed models); use the original checkpoint")
    out = dict(sd)
    status = {}
    for k, v in sd.items():
        if k.endswith(FREQ_SUFFIX):
            out[k], status[k] = check_freq_bands(k, v, path)
            continue
        if not v.is_floating_point():
            raise _fail(path, f"{k} is {v.dtype}, expected floating-point weights")
        if not bool(torch.isfinite(v).all()):
            raise _fail(path, f"{k} contains NaN or inf", "The file is damaged (or was cast to a too-small "
                                                          "dtype); use the original checkpoint")
    values = set(status.values())
    freq_status = "repaired" if "repaired" in values else "rounding" if "rounding" in values else "exact"
    return out, widths, freq_status


def _weights_dtype(sd: dict) -> str:
    dtypes = sorted({str(v.dtype).replace("torch.", "") for k, v in sd.items() if not k.endswith(FREQ_SUFFIX)})
    return dtypes[0] if len(dtypes) == 1 else "/".join(dtypes)


# ---------------------------------------------------------------------------------------------------------
# loading CAA weights
# ---------------------------------------------------------------------------------------------------------
def caa_state_dict_from(ckpt: CheckpointFile, layout: Layout | None = None) -> tuple[dict, dict]:
    """The validated CAA tensors (CAASet names) of an already-read file, and the info dict."""
    path = ckpt.path
    layout = layout or classify(ckpt.state_dict, ckpt.metadata)
    metadata = ckpt.metadata or {}
    unet_levels = None
    version = metadata.get("format_version")
    if metadata.get("format") in (FORMAT, WHOLE_FORMAT) and version is not None and version != FORMAT_VERSION:
        raise _fail(path, f"written in format version {version} of {metadata['format']}; this version reads "
                          f"version {FORMAT_VERSION}", "Update comfyui-mvdiffusion or convert the original again")
    if layout.kind in CAA_KINDS:
        parts = split_official(ckpt.state_dict)
        raw = parts["caa"]
        unet_levels = unet_widths(parts["unet"])
        model_kind = layout.kind
        source_format = WHOLE_FORMAT if metadata.get("format") == WHOLE_FORMAT else "official MVDiffusion checkpoint"
    elif layout.kind == CAA:
        raw = ckpt.state_dict
        model_kind = metadata.get("model_kind", "pano")
        source_format = FORMAT if metadata.get("format") == FORMAT else "bare CAA state dict"
    else:
        raise refusal_error(path, layout, ckpt.state_dict)
    sd, widths, freq_status = check_caa_state_dict(raw, path, unet_levels)
    if layout.kind == CAA and metadata.get("widths"):
        try:
            declared = json.loads(metadata["widths"])
        except ValueError:
            declared = None
        if declared != widths:
            raise _fail(path, f"its metadata declares widths {metadata['widths']} but the tensors are "
                              f"{describe_widths(widths)}", "The file is damaged; convert the original again")
    info = {
        "kind": model_kind,
        "layout": layout.kind,
        "format": source_format,
        "file": str(path),
        "source": metadata.get("source", path.name) if metadata.get("format") in (FORMAT, WHOLE_FORMAT) else path.name,
        "widths": widths,
        "num_blocks": len(widths["encoder"]) + 1 + len(widths["decoder"]),
        "parameters": sum(v.numel() for k, v in sd.items() if not k.endswith(FREQ_SUFFIX)),
        "dtype": _weights_dtype(sd),
        "freq_bands": freq_status,
        "file_size": ckpt.size,
    }
    if ckpt.lightning:
        info["lightning"] = dict(ckpt.lightning)
    return sd, info


def load_caa_state_dict(path) -> tuple[dict, dict]:
    """CAA weights of a file (official pano/pano_outpaint checkpoint or this pack's .safetensors).

    Returns ``(state_dict, info)``: tensors under CAASet names (views of the file where possible; repaired
    freq_bands are new float32 tensors) and ``info`` = kind, layout, format, file, source, widths, num_blocks,
    parameters, dtype (of the weights as stored), freq_bands ("exact"/"rounding"/"repaired"), file_size.
    """
    ckpt = read_checkpoint(path)
    return caa_state_dict_from(ckpt)


def load_caa(path, operations=torch.nn, device=None, dtype=None) -> tuple[CAASet, dict]:
    """A :class:`CAASet` loaded strictly from ``path``: weights in ``dtype`` (default float32) on ``device``,
    ``pe.freq_bands`` always float32."""
    sd, info = load_caa_state_dict(path)
    caa = CAASet.from_state_dict(sd, operations=operations, device=device, dtype=dtype)
    for name, buf in caa.named_buffers():
        if name.endswith(FREQ_SUFFIX) and buf.dtype != torch.float32:  # pragma: no cover (PositionalEncoding)
            raise _fail(path, f"{name} became {buf.dtype}; it must stay float32")
    return caa.eval(), info


# ---------------------------------------------------------------------------------------------------------
# writing this pack's format
# ---------------------------------------------------------------------------------------------------------
def _default_permissions(path) -> None:
    """mkstemp creates 0600 files; give the result the permissions a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_caa_file(state_dict: dict, path, source: str, model_kind: str, dtype=torch.float16) -> Path:
    """Write CAA weights (CAASet names) to a .safetensors file in this pack's format, atomically.

    Weights are stored in ``dtype`` (fp16 by default), every ``*.pe.freq_bands`` in float32 (checked and, if
    needed, repaired, see the module docstring). Returns the path.
    """
    path = Path(path)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"save_caa_file: dtype must be float16, bfloat16 or float32, not {dtype}")
    sd = {k: v for k, v in state_dict.items()}
    sd, widths, _ = check_caa_state_dict(sd, path)
    tensors = {}
    for k, v in sd.items():
        v = v.detach().cpu()  # serialised from host memory
        tensors[k] = (v.to(torch.float32) if k.endswith(FREQ_SUFFIX) else v.to(dtype)).contiguous()
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_kind": str(model_kind),
                "source": str(source), "widths": json.dumps(widths)}
    return _write_safetensors(tensors, path, metadata)


def save_whole_file(state_dict: dict, path, source: str, model_kind: str, dtype=None) -> Path:
    """Write a whole official checkpoint's state dict (same keys: UNet, VAE, text encoder and CAA blocks) to a
    .safetensors file, atomically: loads like the ``.ckpt`` without unpickling and memory-maps faster.

    Tensors keep their stored dtype unless ``dtype`` is given (floating tensors then take it, except every
    ``*.pe.freq_bands``, which stays as stored). Metadata: ``{"format": WHOLE_FORMAT, "format_version",
    "model_kind", "source"}``. Returns the path.
    """
    tensors, storages = {}, set()
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point() and not k.endswith(FREQ_SUFFIX):
            v = v.to(dtype)
        v = v.contiguous()
        if v.untyped_storage().data_ptr() in storages:  # safetensors refuses tensors that share memory
            v = v.clone()
        storages.add(v.untyped_storage().data_ptr())
        tensors[k] = v
    metadata = {"format": WHOLE_FORMAT, "format_version": FORMAT_VERSION, "model_kind": str(model_kind),
                "source": str(source)}
    return _write_safetensors(tensors, Path(path), metadata)


def _write_safetensors(tensors: dict, path: Path, metadata: dict) -> Path:
    """Save ``tensors`` to ``path`` through a temporary file in the same folder, renamed when complete."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        _default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
