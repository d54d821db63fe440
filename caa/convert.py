"""Convert the CAA weights of an official MVDiffusion checkpoint to this pack's small .safetensors file.

    python -m comfyui_mvdiffusion.caa.convert pano.ckpt [-o out.safetensors] [--dtype fp16|bf16|fp32] [--force]
    mvdiffusion-convert pano.ckpt ...          (the same, when the pack is installed with pip)

The result holds only the 9 correspondence-aware attention blocks (about 295 MB in fp16 for pano.ckpt,
instead of 5 GB): pair it with ComfyUI's own SD2 checkpoint ('Load Checkpoint') and 'Load CAA Weights'.
The input is read safely (``torch.load(weights_only=True)``: a checkpoint that would run code is refused).
Default output: ``<input stem>.caa.safetensors`` next to the input. The input is never overwritten; an
existing output only with ``--force``; the file is written to a temporary name and renamed (atomic).
The positional-encoding frequencies are always stored in float32, whatever ``--dtype`` says.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError, describe_widths, load_caa_state_dict, save_caa_file

__all__ = ["DTYPES", "ConversionResult", "default_output", "convert", "main"]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclasses.dataclass
class ConversionResult:
    output: Path
    kind: str
    widths: dict
    parameters: int
    dtype: str
    size: int  # bytes
    freq_bands: str  # "exact" | "rounding" | "repaired"

    def summary(self) -> str:
        return (f"wrote {self.output}: {self.kind} CAA weights, {len(self.widths['encoder']) * 2 + 1} blocks "
                f"({describe_widths(self.widths)}), {self.parameters:,} parameters, {self.dtype}, "
                f"{self.size / 1e6:.1f} MB ({self.size:,} bytes)")


def default_output(src) -> Path:
    """``pano.ckpt`` -> ``pano.caa.safetensors`` in the same folder."""
    src = Path(src)
    return src.with_name(f"{src.stem}.caa.safetensors")


def convert(src, dst=None, dtype: str | torch.dtype = "fp16", force: bool = False) -> ConversionResult:
    """Extract and write the CAA weights of ``src``; raises :class:`CheckpointError` (or FileExistsError)."""
    src = Path(src)
    dst = Path(dst) if dst is not None else default_output(src)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if torch_dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype}")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise CheckpointError(f"{dst}: the output is the input file; refusing to overwrite the input "
                              "(choose another -o)")
    if dst.exists() and not force:
        raise FileExistsError(f"{dst} already exists; use --force to replace it (or choose another -o)")
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the output must be a .safetensors file")
    sd, info = load_caa_state_dict(src)
    save_caa_file(sd, dst, source=info["source"], model_kind=info["kind"], dtype=torch_dtype)
    name = {v: k for k, v in DTYPES.items()}[torch_dtype]
    return ConversionResult(dst, info["kind"], info["widths"], info["parameters"], name, dst.stat().st_size,
                            info["freq_bands"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m comfyui_mvdiffusion.caa.convert",
        description="Extract the correspondence-aware attention (CAA) weights of an official MVDiffusion "
                    "checkpoint (pano.ckpt, pano_outpaint.ckpt) into a small .safetensors file for "
                    "'Load CAA Weights'.")
    parser.add_argument("input", type=Path, help="official checkpoint (.ckpt) or CAA .safetensors")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="output .safetensors (default: <input stem>.caa.safetensors next to the input)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16",
                        help="dtype of the weights (default fp16; the PE frequencies stay float32)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    try:
        result = convert(args.input, args.output, args.dtype, args.force)
    except (CheckpointError, FileExistsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    if result.freq_bands == "repaired":
        print("note: the input stored the positional-encoding frequencies in a lossy dtype; they were "
              "recomputed exactly (float32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
