"""Convert the CAA weights of an official MVDiffusion checkpoint to this pack's small .safetensors file.

    python custom_nodes/comfyui-mvdiffusion/scripts/convert.py pano.ckpt [-o out.safetensors] [--dtype fp16|bf16|fp32]
                                                                           [--force]
    python custom_nodes/comfyui-mvdiffusion/scripts/convert.py --whole pano.ckpt   (everything, as pano.safetensors)
    mvdiffusion-convert pano.ckpt ...          (the same, when the pack is installed with pip)
    python -m comfyui_mvdiffusion.caa.convert pano.ckpt ...       (likewise)

The result holds only the 9 correspondence-aware attention blocks (about 295 MB in fp16 for pano.ckpt,
instead of 5 GB; for depth_gen.ckpt its 9 depth blocks and the key-frame condition encoders, ``model_kind``
"depth"): pair it with ComfyUI's own SD2 checkpoint ('Load Checkpoint') and 'Load CAA Weights'.
The input is read safely (``torch.load(weights_only=True)``: a checkpoint that would run code is refused).
Default output: ``<input stem>.caa.safetensors`` next to the input. The input is never overwritten; an
existing output only with ``--force``; the file is written to a temporary name and renamed (atomic).
The positional-encoding frequencies are always stored in float32, whatever ``--dtype`` says.

``--whole`` keeps everything (UNet, VAE, text encoder, CAA blocks; the stored dtypes unless ``--dtype`` is
given) in a ``<input stem>.safetensors`` that 'Load MVDiffusion Checkpoint' loads like the ``.ckpt``, without
unpickling. Only a complete official model (pano.ckpt, pano_outpaint.ckpt, depth_gen.ckpt, depth_single_view.ckpt)
is accepted; depth_single_view.ckpt has no CAA blocks, so ``--whole`` is the only conversion it has.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from .checkpoint import (CheckpointError, caa_state_dict_from, check_whole_model, classify, describe_widths,
                         model_info, read_checkpoint, save_caa_file, save_whole_file)

__all__ = ["DTYPES", "ConversionResult", "default_output", "convert", "main"]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclasses.dataclass
class ConversionResult:
    output: Path
    kind: str
    widths: dict | None  # None: a model without CAA blocks (depth_single_view, --whole only)
    parameters: int  # of the CAA weights (0 without)
    dtype: str
    size: int  # bytes
    freq_bands: str | None  # "exact" | "rounding" | "repaired" (None without CAA blocks)
    whole: bool = False  # the whole checkpoint, not only the CAA weights

    def summary(self) -> str:
        what = "whole checkpoint (UNet, VAE, text encoder) with" if self.whole else "CAA weights,"
        blocks = "no CAA blocks" if self.widths is None else (
            f"{len(self.widths['encoder']) * 2 + 1} CAA blocks ({describe_widths(self.widths)}), "
            f"{self.parameters:,} parameters")
        return (f"wrote {self.output}: {self.kind} {what} {blocks}, {self.dtype}, {self.size / 1e6:.1f} MB "
                f"({self.size:,} bytes)")


def default_output(src, whole: bool = False) -> Path:
    """``pano.ckpt`` -> ``pano.caa.safetensors`` (``pano.safetensors`` with ``whole``) in the same folder."""
    src = Path(src)
    return src.with_name(f"{src.stem}.safetensors" if whole else f"{src.stem}.caa.safetensors")


def convert(src, dst=None, dtype: str | torch.dtype | None = None, force: bool = False,
            whole: bool = False) -> ConversionResult:
    """Write the CAA weights of ``src`` (``whole``: the whole checkpoint) to a .safetensors file; raises
    :class:`CheckpointError` (or FileExistsError). ``dtype``: fp16 by default for CAA weights, the stored dtypes
    by default for a whole checkpoint."""
    src = Path(src)
    dst = Path(dst) if dst is not None else default_output(src, whole)
    if dtype is None and not whole:
        dtype = "fp16"
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if torch_dtype is not None and torch_dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype}")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise CheckpointError(f"{dst}: the output is the input file; refusing to overwrite the input "
                              "(choose another -o)")
    if dst.exists() and not force:
        raise FileExistsError(f"{dst} already exists; use --force to replace it (or choose another -o)")
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the output must be a .safetensors file")
    ckpt = read_checkpoint(src)
    layout = classify(ckpt.state_dict, ckpt.metadata)
    if whole:
        check_whole_model(src, layout, ckpt.state_dict, "Convert without --whole to keep the CAA weights only")
    if whole and not layout.spec.caa_blocks:  # depth_single_view: a complete model without CAA blocks
        sd, info = None, dict(model_info(ckpt, layout), widths=None, parameters=0, freq_bands=None)
    else:
        sd, info = caa_state_dict_from(ckpt, layout)  # validates the CAA blocks either way
    if whole:
        save_whole_file(ckpt.state_dict, dst, source=info["source"], model_kind=info["kind"], dtype=torch_dtype)
    else:
        save_caa_file(sd, dst, source=info["source"], model_kind=info["kind"], dtype=torch_dtype)
    name = "as stored" if torch_dtype is None else {v: k for k, v in DTYPES.items()}[torch_dtype]
    return ConversionResult(dst, info["kind"], info["widths"], info["parameters"], name, dst.stat().st_size,
                            info["freq_bands"], whole)


def main(argv=None, prog: str = "mvdiffusion-convert") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Extract the correspondence-aware attention (CAA) weights of an official MVDiffusion "
                    "checkpoint (pano.ckpt, pano_outpaint.ckpt, depth_gen.ckpt) into a small .safetensors file "
                    "for 'Load CAA Weights', or (--whole) store the whole checkpoint (those, or "
                    "depth_single_view.ckpt) as .safetensors for 'Load MVDiffusion Checkpoint'.")
    parser.add_argument("input", type=Path, help="official checkpoint (.ckpt) or CAA .safetensors")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="output .safetensors (default: <input stem>.caa.safetensors next to the input, "
                             "<input stem>.safetensors with --whole)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="dtype of the weights (default: fp16 for CAA weights, as stored with --whole; the "
                             "PE frequencies are never rounded)")
    parser.add_argument("--whole", action="store_true",
                        help="keep the whole checkpoint (UNet, VAE, text encoder, CAA blocks)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    try:
        result = convert(args.input, args.output, args.dtype, args.force, args.whole)
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
