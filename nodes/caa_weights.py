"""What the MVDIFFUSION_CAA socket carries: CAA blocks held by their own ComfyUI ModelPatcher.

The blocks are built with ``comfy.ops.manual_cast`` layers (weights cast to the features' dtype at compute),
and the ModelPatcher lets ComfyUI's model management load, count and offload them with the UNet
(the patch object returns it from ``models()``). Panorama weights hold a :class:`~caa.blockset.CAASet`, the
depth model's a :class:`~caa.depth_blockset.DepthCAASet` (depth ``CPBlock``s and the key-frame condition
encoders); ``depth_single_view.ckpt`` has no blocks at all (:class:`NoCAA`).
"""
from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import comfy.ops

from ..caa.blockset import CAASet
from ..caa.depth_blockset import DepthCAASet

__all__ = ["CAAWeights", "DepthCAAWeights", "NoCAA"]


class CAAWeights:
    """Panorama CAA weights (``info["kind"]``: "pano" or "pano_outpaint")."""

    set_class = CAASet
    is_depth = False

    def __init__(self, state_dict: dict, info: dict):
        load_device = comfy.model_management.get_torch_device()
        offload_device = comfy.model_management.unet_offload_device()
        params = sum(v.numel() for k, v in state_dict.items() if not k.endswith("freq_bands"))
        dtype = comfy.model_management.unet_dtype(model_params=params)
        self.caa = self.set_class.from_state_dict(state_dict, operations=comfy.ops.manual_cast,
                                                  device=offload_device, dtype=dtype).eval()
        self.patcher = comfy.model_patcher.ModelPatcher(self.caa, load_device=load_device,
                                                        offload_device=offload_device)
        self.info = dict(info)

    @property
    def widths(self) -> dict:
        return self.caa.widths

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.get('source', '?')}, widths={self.widths})"


class DepthCAAWeights(CAAWeights):
    """The depth model's CAA (``depth_gen.ckpt``): depth CPBlocks and, usually, the condition encoders."""

    set_class = DepthCAASet
    is_depth = True


class NoCAA:
    """What a checkpoint without CAA blocks gives on the caa socket (``depth_single_view.ckpt``): nodes that need
    blocks refuse it, naming the file."""

    caa = None
    patcher = None
    is_depth = True

    def __init__(self, info: dict):
        self.info = dict(info)

    def __repr__(self) -> str:
        return f"NoCAA({self.info.get('source', '?')})"
