"""The blocks of ``depth_gen.ckpt``: 2L + 1 depth ``CPBlock``s and the key-frame condition encoders, under the
official names without ``mv_base_model.`` (``cp_blocks_encoder.{i}.attn1.transformer.*``, ``...resnet.*``,
``condition_conv_in.*``, ``condition_downblocks.{i}.*``, ``condition_upblocks.{i}.*``), so the official tensors
load with ``strict=True``. Where the blocks run is ``caa/depth_patch.py``'s business.
"""
from __future__ import annotations

import re

from torch import nn

from .blockset import SD2_WIDTHS, CAASet
from .condition import ConditionEncoders
from .depth_block import DepthCPBlock

__all__ = ["DepthCAASet", "SD2_CONDITION_WIDTHS", "condition_widths_from_state_dict"]

SD2_CONDITION_WIDTHS = {"base": 320, "down": [320, 320, 640, 1280], "up": [1280, 1280, 1280, 640]}
_CONDITION_KEY = re.compile(r"^condition_(down|up)blocks\.(\d+)\.conv2\.weight$")


def condition_widths_from_state_dict(sd: dict) -> dict | None:
    """``{"base": C0, "down": [...], "up": [...]}`` from the condition encoders' tensors, None without them."""
    conv_in = sd.get("condition_conv_in.weight")
    if conv_in is None:
        return None
    found = {"down": {}, "up": {}}
    for key, value in sd.items():
        match = _CONDITION_KEY.match(key)
        if match:
            found[match.group(1)][int(match.group(2))] = int(value.shape[0])
    for part, widths in found.items():
        if sorted(widths) != list(range(len(widths))):
            raise ValueError(f"the condition {part} blocks are numbered with gaps: {sorted(widths)}")
    return {"base": int(conv_in.shape[0]), "down": [found["down"][i] for i in range(len(found["down"]))],
            "up": [found["up"][i] for i in range(len(found["up"]))]}


class DepthCAASet(CAASet):
    """The depth model's CAA: :class:`~caa.depth_block.DepthCPBlock` at the 2L + 1 sites and, when
    ``condition_widths`` is given, the key-frame :class:`~caa.condition.ConditionEncoders` (``self.condition``;
    their tensors keep the official top-level names)."""

    block_class = DepthCPBlock

    def __init__(self, encoder_widths=SD2_WIDTHS["encoder"], mid_width=SD2_WIDTHS["mid"],
                 decoder_widths=SD2_WIDTHS["decoder"], condition_widths: dict | None = SD2_CONDITION_WIDTHS,
                 operations=nn, device=None, dtype=None):
        super().__init__(encoder_widths, mid_width, decoder_widths, operations, device, dtype)
        if condition_widths is None:
            self.condition_conv_in = self.condition_downblocks = self.condition_upblocks = None
        else:
            encoders = ConditionEncoders(condition_widths["base"], condition_widths["down"], condition_widths["up"],
                                         operations, device, dtype)
            # registered under the official top-level names
            self.condition_conv_in = encoders.condition_conv_in
            self.condition_downblocks = encoders.condition_downblocks
            self.condition_upblocks = encoders.condition_upblocks
            self._encoders = [encoders]  # a plain list: not a second registration of the same modules

    @property
    def condition(self) -> ConditionEncoders | None:
        """The key-frame condition encoders (None when the weights have none)."""
        return self._encoders[0] if self.condition_conv_in is not None else None

    @property
    def has_condition(self) -> bool:
        return self.condition_conv_in is not None

    @classmethod
    def shape_of(cls, sd: dict) -> dict:
        return dict(super().shape_of(sd), condition_widths=condition_widths_from_state_dict(sd))

    def zero_(self) -> "DepthCAASet":
        super().zero_()
        if self.condition is not None:
            self.condition.zero_()
        return self
