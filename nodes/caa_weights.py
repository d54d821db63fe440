"""What the MVDIFFUSION_CAA socket carries: CAA blocks held by their own ComfyUI ModelPatcher.

The blocks are built with ``comfy.ops.manual_cast`` layers (weights cast to the features' dtype at compute),
and the ModelPatcher lets ComfyUI's model management load, count and offload them with the UNet
(the patch object returns it from ``models()``).
"""
from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import comfy.ops

from ..caa.blockset import CAASet


class CAAWeights:
    def __init__(self, state_dict: dict, info: dict):
        load_device = comfy.model_management.get_torch_device()
        offload_device = comfy.model_management.unet_offload_device()
        params = sum(v.numel() for k, v in state_dict.items() if not k.endswith("freq_bands"))
        dtype = comfy.model_management.unet_dtype(model_params=params)
        self.caa = CAASet.from_state_dict(state_dict, operations=comfy.ops.manual_cast, device=offload_device,
                                          dtype=dtype).eval()
        self.patcher = comfy.model_patcher.ModelPatcher(self.caa, load_device=load_device,
                                                        offload_device=offload_device)
        self.info = dict(info)

    @property
    def widths(self) -> dict:
        return self.caa.widths

    def __repr__(self) -> str:
        return f"CAAWeights({self.info.get('source', '?')}, widths={self.widths})"
