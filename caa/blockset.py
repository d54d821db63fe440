"""The set of CAA blocks of one UNet, named as in the official checkpoints.

An SD UNet with L levels gets 2L + 1 blocks (9 for SD2): ``cp_blocks_encoder.{0..L-1}`` after each down
level, ``cp_blocks_mid`` inside the mid block and ``cp_blocks_decoder.{0..L-1}`` after each up level
(deepest first). The state-dict keys of :class:`CAASet` are the official keys without ``mv_base_model.``;
where each block sits in ComfyUI's ``UNetModel`` is decided in ``caa/placement.py``.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .block import CorrespondenceAttention

__all__ = ["CAASet", "SD2_WIDTHS", "widths_from_state_dict"]

SD2_WIDTHS = {"encoder": [320, 640, 1280, 1280], "mid": 1280, "decoder": [1280, 1280, 640, 320]}
# the pano CPAttn keys (cp_blocks_*.transformer...) and the depth CPBlock keys (cp_blocks_*.attn1.transformer...)
_WIDTH_KEY = re.compile(r"^cp_blocks_(encoder\.(\d+)|mid|decoder\.(\d+))\.(?:attn1\.)?transformer\.attn1\.to_q\.weight$")


def widths_from_state_dict(sd: dict) -> dict:
    """Block widths ``{"encoder": [...], "mid": w, "decoder": [...]}`` from a CAA state dict's shapes.

    Raises ValueError when blocks are missing or numbered with gaps.
    """
    enc, dec, mid = {}, {}, None
    for key, value in sd.items():
        match = _WIDTH_KEY.match(key)
        if not match:
            continue
        width = int(value.shape[0])
        if match.group(2) is not None:
            enc[int(match.group(2))] = width
        elif match.group(3) is not None:
            dec[int(match.group(3))] = width
        else:
            mid = width
    if mid is None or not enc or not dec:
        raise ValueError("not a CAA state dict: expected cp_blocks_encoder.*, cp_blocks_mid and cp_blocks_decoder.* "
                         "(...transformer.attn1.to_q.weight)")
    if sorted(enc) != list(range(len(enc))) or sorted(dec) != list(range(len(dec))):
        raise ValueError(f"CAA blocks are numbered with gaps: encoder {sorted(enc)}, decoder {sorted(dec)}")
    return {"encoder": [enc[i] for i in range(len(enc))], "mid": mid, "decoder": [dec[i] for i in range(len(dec))]}


class CAASet(nn.Module):
    """The 2L + 1 CAA blocks of a UNet with L levels (widths per level; SD2: :data:`SD2_WIDTHS`), of
    ``block_class`` (the pano ``CPAttn``; ``caa/depth_blockset.py`` uses the depth ``CPBlock``)."""

    block_class = CorrespondenceAttention

    def __init__(self, encoder_widths=SD2_WIDTHS["encoder"], mid_width=SD2_WIDTHS["mid"],
                 decoder_widths=SD2_WIDTHS["decoder"], operations=nn, device=None, dtype=None):
        super().__init__()
        if len(encoder_widths) != len(decoder_widths):
            raise ValueError(f"a UNet has as many up levels as down levels: got encoder widths {list(encoder_widths)}"
                             f" and decoder widths {list(decoder_widths)}")
        make = lambda w: self.block_class(int(w), operations, device, dtype)  # noqa: E731
        self.cp_blocks_encoder = nn.ModuleList(make(w) for w in encoder_widths)
        self.cp_blocks_mid = make(mid_width)
        self.cp_blocks_decoder = nn.ModuleList(make(w) for w in decoder_widths)

    @property
    def widths(self) -> dict:
        return {"encoder": [b.dim for b in self.cp_blocks_encoder], "mid": self.cp_blocks_mid.dim,
                "decoder": [b.dim for b in self.cp_blocks_decoder]}

    @property
    def num_levels(self) -> int:
        return len(self.cp_blocks_encoder)

    @classmethod
    def from_state_dict(cls, sd: dict, operations=nn, device=None, dtype=None) -> "CAASet":
        """Build a set shaped like ``sd`` and load it strictly (freq_bands stay float32)."""
        caa = cls(**cls.shape_of(sd), operations=operations, device=device, dtype=dtype)
        caa.load_state_dict(sd, strict=True)
        return caa

    @classmethod
    def shape_of(cls, sd: dict) -> dict:
        """The constructor's size arguments for a state dict shaped like ``sd``."""
        widths = widths_from_state_dict(sd)
        return {"encoder_widths": widths["encoder"], "mid_width": widths["mid"], "decoder_widths": widths["decoder"]}

    def named_blocks(self):
        """``("encoder", k, block)``, ``("mid", 0, block)``, ``("decoder", k, block)`` in UNet order."""
        for k, block in enumerate(self.cp_blocks_encoder):
            yield "encoder", k, block
        yield "mid", 0, self.cp_blocks_mid
        for k, block in enumerate(self.cp_blocks_decoder):
            yield "decoder", k, block

    @torch.no_grad()
    def zero_(self) -> "CAASet":
        """The official initialisation of the output layers: every block is the exact identity."""
        for _, _, block in self.named_blocks():
            block.zero_()
        return self
