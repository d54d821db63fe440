"""Writing files: atomically (a temporary name in the same folder, renamed when complete), and safetensors
streamed tensor by tensor (a 5 GB checkpoint is converted without a second copy of it in memory).

The safetensors layout (https://github.com/huggingface/safetensors, "Format"): an 8-byte little-endian header
length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``
(padded with spaces to a multiple of 8), then the tensors' bytes (C order, little-endian) back to back, in
the order of their offsets. Files written here are read by ``safetensors.safe_open`` (tested).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

__all__ = ["atomic_write", "check_free_space", "write_safetensors"]

_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}
_CHUNK_BYTES = 64 << 20


def atomic_write(path, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)`` and rename the result to ``path`` (never a half-written ``path``); the
    file gets the permissions a plain ``open()`` would give it. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)  # mkstemp creates 0600 files
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_free_space(path, size: int) -> None:
    """Raise OSError (ENOSPC) naming the folder when the file system holding ``path`` has less than ``size``
    bytes free, before anything is written (a full disk would otherwise fail gigabytes into the file)."""
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < size:
        raise OSError(errno.ENOSPC, f"not enough free space in {folder} for {Path(path).name}: it needs "
                      f"{size / 1e9:.2f} GB, {free / 1e9:.2f} GB are free; free some space or write it elsewhere")


def _raw_bytes(tensor: torch.Tensor):
    """The tensor's bytes in C order as a flat uint8 tensor (a view when it is already contiguous)."""
    t = tensor.detach().cpu().contiguous()
    flat = t.reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)


def write_safetensors(tensors: dict, path, metadata: dict | None = None, cast=None) -> Path:
    """Write ``{name: tensor}`` (any device; shared storages are fine) and string ``metadata`` to a .safetensors
    file, atomically, one tensor at a time (peak memory: one tensor's copy when it must be cast, made contiguous
    or moved to the CPU, else nothing). ``cast(name, tensor) -> tensor`` converts each tensor as it is written
    (e.g. to another dtype). Returns the path."""
    cast = cast or (lambda name, t: t)
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for
        raise RuntimeError("write_safetensors needs a little-endian machine")
    header, offset = {}, 0
    for name, t in tensors.items():
        t = cast(name, t.to("meta"))  # dtype and shape only
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype {t.dtype} cannot be stored in safetensors")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    check_free_space(path, 8 + len(text) + offset)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for name, t in tensors.items():
                data = _raw_bytes(cast(name, t))
                for start in range(0, data.numel(), _CHUNK_BYTES):
                    f.write(data[start:start + _CHUNK_BYTES].numpy())

    return atomic_write(path, write)
