"""Where the CAA blocks sit in ComfyUI's SD ``UNetModel`` (read off the module, duck-typed by class name).

Official placement (src/models/pano/MVGenModel.py) and its ComfyUI equivalent, for L levels:

=============  ======================================================  ===============================================
block          diffusers                                               ComfyUI ``UNetModel``
=============  ======================================================  ===============================================
encoder k      after down block k's resnets/attentions (the skips are  after input block ``last_of_level(k)``, after its
               saved before CAA), before its downsampler               output was pushed as a skip:
                                                                       ``input_block_patch_after_skip``
mid            after the mid block's first ResBlock                    after layer ``middle_block.0``
decoder k<L-1  after up block k's layers, before its upsampler         before the ``Upsample`` layer of its last block
decoder L-1    after the last up block                                 after the last layer of the last output block
=============  ======================================================  ===============================================

For SD2 that is input blocks 2, 5, 8, 11; ``middle_block.0``; ``output_blocks.{2,5,8}.<Upsample>``;
``output_blocks.11.1``. Paths are relative to ComfyUI's ``BaseModel`` (``diffusion_model.…``), the form
``ModelPatcher.add_object_patch`` takes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["Site", "unet_sites", "depth_sites", "condition_sites", "check_sites"]


@dataclass(frozen=True)
class Site:
    """One block's place. ``hook``: "after_input_block" (target: input block id), "after_layer" or
    "before_layer" (target: layer path). ``level``: UNet level of the features there (0 = latent size)."""

    kind: str  # "encoder" | "mid" | "decoder"
    index: int
    hook: str
    target: int | str
    width: int
    level: int


def _class_names(layer) -> set:
    return {c.__name__ for c in type(layer).__mro__}


def _res_out_channels(block) -> int:
    for layer in block:
        if "ResBlock" in _class_names(layer):
            return int(layer.out_channels)
    raise ValueError(f"no ResBlock in UNet block {block.__class__.__name__}")


def unet_sites(diffusion_model, prefix: str = "diffusion_model.") -> list[Site]:
    """The CAA sites of a ComfyUI SD ``UNetModel`` (input_blocks / middle_block / output_blocks)."""
    for name in ("input_blocks", "middle_block", "output_blocks"):
        if getattr(diffusion_model, name, None) is None:
            raise ValueError(f"this model's UNet has no {name}: MVDiffusion needs an SD1.x/SD2-style UNet")
    inputs, middle, outputs = diffusion_model.input_blocks, diffusion_model.middle_block, diffusion_model.output_blocks
    down_ids = [i for i, block in enumerate(inputs) if "Downsample" in _class_names(block[0])]
    level_ends = [i - 1 for i in down_ids] + [len(inputs) - 1]
    sites = [Site("encoder", k, "after_input_block", i, _res_out_channels(inputs[i]), k)
             for k, i in enumerate(level_ends)]
    levels = len(level_ends)
    sites.append(Site("mid", 0, "after_layer", f"{prefix}middle_block.0", int(middle[0].out_channels), levels - 1))
    up_ids = [i for i, block in enumerate(outputs) if "Upsample" in _class_names(block[-1])]
    for k, i in enumerate(up_ids):
        upsample = outputs[i][-1]
        sites.append(Site("decoder", k, "before_layer", f"{prefix}output_blocks.{i}.{len(outputs[i]) - 1}",
                          int(upsample.channels), levels - 1 - k))
    last = len(outputs) - 1
    sites.append(Site("decoder", len(up_ids), "after_layer", f"{prefix}output_blocks.{last}.{len(outputs[last]) - 1}",
                      _res_out_channels(outputs[last]), 0))
    if len(up_ids) + 1 != levels:
        raise ValueError(f"this UNet has {levels} down levels but {len(up_ids) + 1} up levels")
    return sites


def depth_sites(diffusion_model, prefix: str = "diffusion_model.") -> list[Site]:
    """The sites of the depth model (official ``src/models/depth/MVDepthModel.py``): those of
    :func:`unet_sites` except the mid block's, which runs after the WHOLE mid block (its last layer)."""
    sites = unet_sites(diffusion_model, prefix)
    last = len(diffusion_model.middle_block) - 1
    if last < 1:
        raise ValueError("this UNet's mid block has a single layer: the depth model needs an SD2-style mid block")
    return [replace(s, target=f"{prefix}middle_block.{last}") if s.kind == "mid" else s for s in sites]


def condition_sites(diffusion_model, prefix: str = "diffusion_model.") -> tuple[list[int], str, list[int]]:
    """Where the depth model's key-frame condition is added (``caa/condition.py``), in ComfyUI's terms:
    ``(input block ids, mid layer, output block ids)``. Down level k's input is the output of input block
    ``ids[k]`` (``conv_in`` for k = 0, then each ``Downsample``): the host's ``input_block_patch`` sees it before
    it is pushed as a skip, as the official in-place add requires. The mid block's input is the input of its
    first layer. Up level k's input is what output block ``ids[k]`` receives (``output_block_patch``)."""
    unet_sites(diffusion_model, prefix)  # the same checks
    inputs, outputs = diffusion_model.input_blocks, diffusion_model.output_blocks
    down = [0] + [i for i, block in enumerate(inputs) if "Downsample" in _class_names(block[0])]
    up = [0] + [i + 1 for i, block in enumerate(outputs) if "Upsample" in _class_names(block[-1])]
    return down, f"{prefix}middle_block.0", up


def check_sites(sites: list[Site], widths: dict) -> None:
    """Refuse CAA weights whose block widths do not fit the UNet (ValueError naming both)."""
    unet = {"encoder": [s.width for s in sites if s.kind == "encoder"],
            "mid": next(s.width for s in sites if s.kind == "mid"),
            "decoder": [s.width for s in sites if s.kind == "decoder"]}
    caa = {"encoder": list(widths["encoder"]), "mid": int(widths["mid"]), "decoder": list(widths["decoder"])}
    if unet != caa:
        raise ValueError(f"the CAA weights do not fit this model's UNet: CAA block widths {caa}, UNet widths {unet}. "
                         "Official MVDiffusion weights need a Stable Diffusion 2 UNet (SD2-base for pano.ckpt).")
