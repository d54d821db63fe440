"""This pack's CAA weights: validation of CAA tensors, loading them from any file that holds them, and the
CAA-only .safetensors format; whole official checkpoints as .safetensors.

Two kinds of CAA weights: the panorama ``CPAttn`` blocks (pano.ckpt, pano_outpaint.ckpt: a
:class:`~caa.blockset.CAASet`) and the depth model's ``CPBlock``s with its key-frame condition encoders
(depth_gen.ckpt: a :class:`~caa.depth_blockset.DepthCAASet`, ``info["kind"] == "depth"``); both under the official
keys without ``mv_base_model.``.

CAA-only format (:func:`save_caa_file`): safetensors holding that state dict, weights in fp16 by default, every
``*.pe.freq_bands`` in float32, and metadata ``{"format": "comfyui-mvdiffusion.caa", "format_version": "1",
"model_kind", "source", "widths"}``.
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

import json
import logging
from pathlib import Path

import torch

from ..blockset import CAASet, widths_from_state_dict
from ..depth_blockset import DepthCAASet, condition_widths_from_state_dict
from ..positional_encoding import frequency_bands
from .layouts import CAA, CAA_KINDS, CONDITION_KEY, DEPTH, OWN_CAA_FORMAT, Layout, classify, describe_widths, \
    refusal_error, split_official, unet_widths
from .reading import OFFICIAL_HINT, CheckpointFile, checkpoint_error, read_checkpoint
from .writing import write_safetensors

__all__ = ["FORMAT", "FORMAT_VERSION", "WHOLE_FORMAT", "FREQ_SUFFIX", "SET_CLASSES", "check_freq_bands",
           "check_caa_state_dict", "model_info", "caa_state_dict_from", "load_caa_state_dict", "is_caa_key",
           "load_caa", "save_caa_file", "save_whole_file"]

log = logging.getLogger(__name__)

FORMAT = OWN_CAA_FORMAT
FORMAT_VERSION = "1"
WHOLE_FORMAT = "comfyui-mvdiffusion.whole"  # a whole official checkpoint (same keys) as safetensors
FREQ_SUFFIX = "pe.freq_bands"
FREQ_RTOL = 1e-6
SET_CLASSES = {"pano": CAASet, "depth": DepthCAASet}  # LayoutSpec.caa_blocks -> the module holding them
_BLOCK_NAMES = {"pano": "panorama", "depth": "depth"}


# ---- validation of CAA tensors --------------------------------------------------------------------------
def _expected_shapes(set_class, shape: dict) -> dict:
    meta = set_class(**shape, device="meta")
    return {k: tuple(v.shape) for k, v in meta.state_dict().items()}


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal element by element, inf == inf (NaN never equal)."""
    return a.shape == b.shape and bool(torch.all(a == b))


def check_freq_bands(name: str, tensor: torch.Tensor, path="<state dict>") -> tuple[torch.Tensor, str]:
    """Apply the freq_bands policy (module docstring): -> (float32 tensor to use, "exact"|"rounding"|"repaired")."""
    num = int(tensor.shape[-1])
    expected = frequency_bands(num).to(tensor.device)
    if tuple(tensor.shape) != tuple(expected.shape):
        raise checkpoint_error(path, f"{name} has shape {tuple(tensor.shape)}, expected {tuple(expected.shape)}")
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
    raise checkpoint_error(path, f"{name} ({values.dtype}) is not MVDiffusion's positional-encoding frequencies "
                      f"frequency_bands({num}) ({diff})",
                "The file is damaged or not an MVDiffusion model; use the original checkpoint")


def check_caa_state_dict(sd: dict, path="<state dict>", expected_widths: dict | None = None, blocks: str = "pano"):
    """Validate CAA tensors under the names of ``SET_CLASSES[blocks]`` ("pano": CAASet, "depth": DepthCAASet):
    complete, consistent shapes, finite, freq_bands policy.

    ``expected_widths``: the UNet's level widths (official checkpoints) that the blocks must match.
    Returns ``(state_dict to use, widths, freq_status)`` (repaired freq_bands replaced, others untouched).
    """
    set_class = SET_CLASSES[blocks]
    try:
        widths = widths_from_state_dict(sd)
        shape = set_class.shape_of(sd)
    except ValueError as e:
        raise checkpoint_error(path, f"incomplete CAA weights: {e}", f"Expected {OFFICIAL_HINT}") from None
    for w in [*widths["encoder"], widths["mid"], *widths["decoder"]]:
        if w % 32 or w <= 0:
            raise checkpoint_error(path, f"a CAA block is {w} wide; widths must be multiples of 32 (32-wide heads)")
    if expected_widths is not None and expected_widths != widths:
        raise checkpoint_error(path, f"the CAA blocks ({describe_widths(widths)}) do not match the UNet's levels "
                          f"({describe_widths(expected_widths)}) in the same file",
                    "The file mixes parts of different models; use the original checkpoint")
    shapes = _expected_shapes(set_class, shape)
    missing = sorted(set(shapes) - set(sd))
    unexpected = sorted(set(sd) - set(shapes))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        raise checkpoint_error(path, f"the CAA blocks' tensors are not those of MVDiffusion's {_BLOCK_NAMES[blocks]} "
                                     "blocks for widths "
                          f"{describe_widths(widths)}: " + "; ".join(parts), f"Expected {OFFICIAL_HINT}")
    wrong = [f"{k} has shape {tuple(sd[k].shape)}, expected {shapes[k]}" for k in shapes
             if tuple(sd[k].shape) != shapes[k]]
    if wrong:
        raise checkpoint_error(path, f"wrong CAA tensor shapes ({len(wrong)}): " + "; ".join(wrong[:4])
                    + (" ..." if len(wrong) > 4 else ""),
                    "The blocks are inconsistent (damaged file or mixed models); use the original checkpoint")
    out = dict(sd)
    status = {}
    for k, v in sd.items():
        if k.endswith(FREQ_SUFFIX):
            out[k], status[k] = check_freq_bands(k, v, path)
            continue
        if not v.is_floating_point():
            raise checkpoint_error(path, f"{k} is {v.dtype}, expected floating-point weights")
        if not bool(torch.isfinite(v).all()):
            raise checkpoint_error(path, f"{k} contains NaN or inf", "The file is damaged (or was cast to a too-small "
                                                          "dtype); use the original checkpoint")
    values = set(status.values())
    freq_status = "repaired" if "repaired" in values else "rounding" if "rounding" in values else "exact"
    return out, widths, freq_status


def _weights_dtype(sd: dict) -> str:
    dtypes = sorted({str(v.dtype).replace("torch.", "") for k, v in sd.items() if not k.endswith(FREQ_SUFFIX)})
    return dtypes[0] if len(dtypes) == 1 else "/".join(dtypes)



# ---- loading CAA weights ---------------------------------------------------------------------------------
def model_info(ckpt: CheckpointFile, layout: Layout) -> dict:
    """What is known of a file before its CAA blocks are read: ``kind`` (the layout's; for this pack's CAA
    files the kind written in their metadata), ``layout``, ``format``, ``file``, ``source``, ``file_size`` and
    ``lightning`` (a Lightning checkpoint's epoch, step, ...). Refuses a newer version of this pack's formats."""
    path, metadata = ckpt.path, ckpt.metadata or {}
    version, own = metadata.get("format_version"), metadata.get("format") in (FORMAT, WHOLE_FORMAT)
    if own and version is not None and version != FORMAT_VERSION:
        raise checkpoint_error(path, f"written in format version {version} of {metadata['format']}; this version reads "
                          f"version {FORMAT_VERSION}", "Update comfyui-mvdiffusion or convert the original again")
    if layout.kind == CAA:
        kind = metadata.get("model_kind") or (DEPTH if layout.spec.caa_blocks == "depth" else "pano")
        source_format = FORMAT if metadata.get("format") == FORMAT else "bare CAA state dict"
    else:
        kind = layout.kind
        source_format = WHOLE_FORMAT if metadata.get("format") == WHOLE_FORMAT else "official MVDiffusion checkpoint"
    info = {"kind": kind, "layout": layout.kind, "format": source_format, "file": str(path),
            "source": metadata.get("source", path.name) if own else path.name, "file_size": ckpt.size}
    if ckpt.lightning:
        info["lightning"] = dict(ckpt.lightning)
    return info


def _condition_widths_for(unet_sd: dict, levels: dict) -> dict | None:
    """The widths the depth condition encoders must have for a UNet: C0 = conv_in's output, then the input width
    of every down block ([C0, encoder[:-1]...]) and of every up block ([mid, decoder[:-1]...])."""
    conv_in = unet_sd.get("conv_in.weight")
    if conv_in is None or levels is None:
        return None
    base = int(conv_in.shape[0])
    return {"base": base, "down": [base, *levels["encoder"][:-1]], "up": [levels["mid"], *levels["decoder"][:-1]]}


def caa_state_dict_from(ckpt: CheckpointFile, layout: Layout | None = None) -> tuple[dict, dict]:
    """The validated CAA tensors of an already-read file (CAASet names, or DepthCAASet names for depth weights:
    CPBlocks and condition encoders) and the info dict (see :func:`load_caa_state_dict`)."""
    path = ckpt.path
    layout = layout or classify(ckpt.state_dict, ckpt.metadata)
    metadata = ckpt.metadata or {}
    info = model_info(ckpt, layout)
    blocks = layout.spec.caa_blocks
    unet_levels = condition_widths = None
    if layout.kind in CAA_KINDS:
        parts = split_official(ckpt.state_dict)
        raw = parts["caa"]
        unet_levels = unet_widths(parts["unet"])
        condition_widths = _condition_widths_for(parts["unet"], unet_levels)
    elif layout.kind == CAA:
        raw = ckpt.state_dict
        if (info["kind"] == DEPTH) != (blocks == "depth"):
            raise checkpoint_error(path, f"its metadata says {info['kind']!r} weights but the tensors are "
                                         f"{_BLOCK_NAMES[blocks]} blocks",
                                   "The file is damaged; convert the original again")
    else:
        raise refusal_error(path, layout, ckpt.state_dict)
    sd, widths, freq_status = check_caa_state_dict(raw, path, unet_levels, blocks)
    if layout.kind == CAA and metadata.get("widths"):
        try:
            declared = json.loads(metadata["widths"])
        except ValueError:
            declared = None
        if declared != widths:
            raise checkpoint_error(path, f"its metadata declares widths {metadata['widths']} but the tensors are "
                              f"{describe_widths(widths)}", "The file is damaged; convert the original again")
    info.update(widths=widths, num_blocks=len(widths["encoder"]) + 1 + len(widths["decoder"]),
                parameters=sum(v.numel() for k, v in sd.items() if not k.endswith(FREQ_SUFFIX)),
                dtype=_weights_dtype(sd), freq_bands=freq_status)
    if blocks == "depth":
        info["condition_widths"] = _check_condition_widths(path, sd, condition_widths, layout.kind in CAA_KINDS)
    return sd, info


def _check_condition_widths(path, sd: dict, expected: dict | None, official: bool) -> dict | None:
    """The depth weights' condition-encoder widths (None without encoders: only allowed outside an official
    depth_gen file), checked against the UNet's when the file has one."""
    found = condition_widths_from_state_dict(sd)
    if found is None and official:
        raise checkpoint_error(path, "the depth model's condition encoders (mv_base_model.condition_*) are missing",
                               "The file is damaged or incomplete; download depth_gen.ckpt again")
    if found is not None and expected is not None and found != expected:
        raise checkpoint_error(path, f"the condition encoders' widths {found} do not match the UNet's levels "
                                     f"{expected} in the same file",
                               "The file mixes parts of different models; use the original checkpoint")
    return found


def load_caa_state_dict(path) -> tuple[dict, dict]:
    """CAA weights of a file (official pano/pano_outpaint/depth_gen checkpoint, its whole .safetensors, or this
    pack's CAA .safetensors).

    Returns ``(state_dict, info)``: tensors under CAASet names (DepthCAASet names when ``info["kind"]`` is
    "depth"; views of the file where possible; repaired freq_bands are new float32 tensors) and ``info`` = kind,
    layout, format, file, source, widths, num_blocks, parameters, dtype (of the weights as stored), freq_bands
    ("exact"/"rounding"/"repaired"), for depth weights condition_widths (``{"base", "down", "up"}``, None
    without condition encoders), file_size (and lightning for a Lightning checkpoint).
    """
    return caa_state_dict_from(read_checkpoint(path, select=is_caa_key))


def is_caa_key(name: str) -> bool:
    """A tensor of the CAA weights (any prefix): the blocks, and the depth model's condition encoders."""
    return "cp_blocks_" in name or CONDITION_KEY.search(name) is not None


def load_caa(path, operations=torch.nn, device=None, dtype=None) -> tuple[CAASet, dict]:
    """A :class:`CAASet` (a :class:`DepthCAASet` for depth weights) loaded strictly from ``path``: weights in
    ``dtype`` (default float32) on ``device``, ``pe.freq_bands`` always float32."""
    sd, info = load_caa_state_dict(path)
    set_class = DepthCAASet if info["kind"] == DEPTH else CAASet
    caa = set_class.from_state_dict(sd, operations=operations, device=device, dtype=dtype)
    for name, buf in caa.named_buffers():
        if name.endswith(FREQ_SUFFIX) and buf.dtype != torch.float32:  # pragma: no cover (PositionalEncoding)
            raise checkpoint_error(path, f"{name} became {buf.dtype}; it must stay float32")
    return caa.eval(), info



# ---- writing ---------------------------------------------------------------------------------------------
def save_caa_file(state_dict: dict, path, source: str, model_kind: str, dtype=torch.float16) -> Path:
    """Write CAA weights (CAASet names; DepthCAASet names when ``model_kind`` is "depth") to a .safetensors file
    in this pack's format, atomically.

    Weights are stored in ``dtype`` (fp16 by default), every ``*.pe.freq_bands`` in float32 (checked and, if
    needed, repaired, see the module docstring). Returns the path.
    """
    path = Path(path)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"save_caa_file: dtype must be float16, bfloat16 or float32, not {dtype}")
    sd, widths, _ = check_caa_state_dict(dict(state_dict), path, blocks="depth" if model_kind == DEPTH else "pano")
    tensors = {k: v.detach().to(torch.float32 if k.endswith(FREQ_SUFFIX) else dtype) for k, v in sd.items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_kind": str(model_kind),
                "source": str(source), "widths": json.dumps(widths)}
    return write_safetensors(tensors, path, metadata)


def save_whole_file(state_dict: dict, path, source: str, model_kind: str, dtype=None) -> Path:
    """Write a whole official checkpoint's state dict (same keys: UNet, VAE, text encoder and CAA blocks) to a
    .safetensors file, atomically and tensor by tensor: loads like the ``.ckpt`` without unpickling and
    memory-maps faster.

    Tensors keep their stored dtype unless ``dtype`` is given (floating tensors then take it, except every
    ``*.pe.freq_bands``, which stays as stored). Metadata: ``{"format": WHOLE_FORMAT, "format_version",
    "model_kind", "source"}``. Returns the path.
    """
    def cast(k, v):
        return v.to(dtype) if dtype is not None and v.is_floating_point() and not k.endswith(FREQ_SUFFIX) else v

    metadata = {"format": WHOLE_FORMAT, "format_version": FORMAT_VERSION, "model_kind": str(model_kind),
                "source": str(source)}
    return write_safetensors(state_dict, Path(path), metadata, cast=cast)
