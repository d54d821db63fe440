"""Reading checkpoint files safely: nothing in a file is ever executed.

* ``.ckpt/.pt/.pth/.bin`` (any PyTorch file, recognised by its content, not its name):
  ``torch.load(weights_only=True, mmap=True)`` (memory-mapped: a 5 GB checkpoint costs no RAM until its
  tensors are used), or without ``mmap`` for legacy (pre-zip) files, still ``weights_only``. A pickle that
  would import anything else (code execution) is refused; there is no unsafe fallback.
* ``.safetensors`` (recognised by its header) with its metadata.
* Every failure (missing, empty, truncated, not a checkpoint at all, a web page or Git LFS pointer saved
  instead of the file, refused pickle) becomes a :class:`CheckpointError` naming the file, what is wrong and
  what to do (:func:`checkpoint_error` builds every such message in the pack).

A Lightning checkpoint is a dict with ``state_dict`` (plus bookkeeping); a bare state dict is accepted too.
"""
from __future__ import annotations

import dataclasses
import pickle
import re
import struct
import zipfile
from pathlib import Path

import torch

__all__ = ["CheckpointError", "checkpoint_error", "CheckpointFile", "read_checkpoint", "OFFICIAL_HINT"]

_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_UNSUPPORTED_OPERAND = re.compile(r"Unsupported operand (\d+)")

OFFICIAL_HINT = ("an official MVDiffusion checkpoint (pano.ckpt, pano_outpaint.ckpt, depth_gen.ckpt), or CAA weights "
                 "converted with the pack's converter (scripts/convert.py)")


class CheckpointError(ValueError):
    """A file that cannot be used as asked; the message names the file, what is wrong and what to do."""


def checkpoint_error(path, problem: str, todo: str | None = None) -> CheckpointError:
    """``"<path>: <problem>. <todo>"`` as a :class:`CheckpointError` (raise it)."""
    return CheckpointError(f"{path}: {problem}" + (f". {todo}" if todo else ""))


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
        return checkpoint_error(path, f"refused to unpickle this file with weights_only=True (it would run code / {what}), "
                           "so nothing in it was loaded or executed",
                     "Only plain PyTorch/Lightning checkpoints and .safetensors are read; get the file from the "
                     "official source, or convert a file you trust to .safetensors yourself")
    if "central directory" in text or "zip archive" in text or "invalid header or archive is corrupted" in text:
        return checkpoint_error(path, f"the file is truncated or corrupted ({text.splitlines()[0][:160]})",
                     "Download it again (an interrupted download leaves a partial file) and check its size")
    if isinstance(e, EOFError) or "Ran out of input" in text or "truncated" in text:
        return checkpoint_error(path, "the file ends before the checkpoint does (truncated)",
                     "Download it again and check its size")
    detail = f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text.strip() else type(e).__name__
    if kind == "unknown":
        detail = "its content is neither a PyTorch zip/pickle file nor safetensors; " + detail
    return checkpoint_error(path, f"not a readable PyTorch checkpoint ({detail})", f"Expected {OFFICIAL_HINT}")


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _meta(shape, dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def _read_safetensors(path: Path, select) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            sd = {}
            for k in f.keys():
                if select(k):
                    sd[k] = f.get_tensor(k)
                else:  # shape and dtype from the header, nothing read
                    part = f.get_slice(k)
                    sd[k] = _meta(part.get_shape(), _SAFETENSORS_DTYPES.get(part.get_dtype(), torch.uint8))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        message = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise checkpoint_error(path, f"not a valid .safetensors file, or truncated ({message})",
                    "Download or convert it again") from None
    return sd, metadata


def read_checkpoint(path, select=None) -> CheckpointFile:
    """Read a checkpoint safely (see the module docstring); raises :class:`CheckpointError`.

    ``select(name) -> bool``: which tensors to read; the others come as ``meta`` tensors (their shape and dtype
    only), so loading a model part by part never holds more of a 5 GB file than that part (default: all)."""
    select = select or (lambda name: True)
    path = Path(path)
    if not path.exists():
        raise checkpoint_error(path, "no such file", "Check the name and the folder (models/mvdiffusion)")
    if path.is_dir():
        raise checkpoint_error(path, "is a folder, not a checkpoint file",
                    "Diffusers folders are not read here; point at pano.ckpt or a converted .safetensors")
    size = path.stat().st_size
    if size == 0:
        raise checkpoint_error(path, "the file is empty (0 bytes)", "Download it again")
    kind = _sniff(path, size)
    if kind == "safetensors":
        sd, metadata = _read_safetensors(path, select)
        return CheckpointFile(path, "safetensors", sd, metadata, {}, size)
    if kind == "truncated safetensors":
        raise checkpoint_error(path, "the .safetensors header is longer than the file (truncated)", "Download it again")
    if kind not in ("zip", "pickle", "unknown"):
        raise checkpoint_error(path, f"not a checkpoint: the file is {kind}",
                    f"Expected {OFFICIAL_HINT}. Get the real file (about 5 GB for pano.ckpt)")
    if kind == "zip" and not zipfile.is_zipfile(path):
        raise checkpoint_error(path, "the file is truncated or corrupted (its zip directory is missing)",
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
            raise checkpoint_error(path, f"its 'state_dict' entry is a {type(sd).__name__}, not a dict of tensors",
                        f"Expected {OFFICIAL_HINT}")
    elif isinstance(obj, dict):
        sd, container = obj, "state_dict"
    else:
        raise checkpoint_error(path, f"holds a {type(obj).__name__}, not a state dict or a Lightning checkpoint",
                    f"Expected {OFFICIAL_HINT}")
    tensors = {k: (v if select(k) else _meta(v.shape, v.dtype)) for k, v in sd.items()
               if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        sample = ", ".join(repr(k) for k in list(sd)[:5])
        raise checkpoint_error(path, f"holds no tensors (top-level entries: {sample or 'none'})", f"Expected {OFFICIAL_HINT}")
    return CheckpointFile(path, container, tensors, None, lightning, size)

