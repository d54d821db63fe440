"""The key-frame condition encoders of ``depth_gen.ckpt`` (official ``ImageEncodingBlock`` and the
``condition_*`` modules of ``src/models/depth/MVDepthModel.py``), weight-compatible with the official names:

    condition_conv_in                    Conv2d(5, C0, 3, padding 1) on [VAE latent (4) | mask (1)] at latent size
    condition_downblocks.{i}, i < L      ImageEncodingBlock(C0 -> in channels of down level i, stride 2**i)
    condition_upblocks.{i},   i < L      ImageEncodingBlock(C0 -> in channels of up level i, stride 2**(L-1-i))

``ImageEncodingBlock``: GroupNorm(32, eps 1e-6) -> SiLU -> conv 3x3 (stride) -> GroupNorm(32, eps 1e-6) -> SiLU
-> conv 1x1 (zero-initialised officially). For SD2 (C0 = 320, L = 4) the down outputs are 320, 320, 640, 1280
channels and the up outputs 1280, 1280, 1280, 640.

Where the official adds them (``MultiViewBaseModel.forward``): ``condition_downblocks[i]`` at the input of down
level i, IN PLACE on a tensor that was already pushed as a skip connection (so the skip is ``h + c``);
``condition_downblocks[L-1]`` once more before the mid block (a leaked loop variable); ``condition_upblocks[i]``
at the input of up level i. The patch (``caa/depth_patch.py``) reproduces this with the host's block patches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CONDITION_CHANNELS", "ImageEncodingBlock", "ConditionEncoders", "key_frame_condition"]

CONDITION_CHANNELS = 5  # 4 latent channels + the key-frame mask


class ImageEncodingBlock(nn.Module):
    """Official ``ImageEncodingBlock(in_channels, out_channels, stride)``: (N, cin, h, w) -> (N, cout, h/s, w/s)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, operations=nn, device=None, dtype=None):
        super().__init__()
        self.stride = int(stride)
        self.norm1 = operations.GroupNorm(32, in_channels, eps=1e-6, device=device, dtype=dtype)
        self.conv1 = operations.Conv2d(in_channels, out_channels, 3, stride=self.stride, padding=1, device=device,
                                       dtype=dtype)
        self.norm2 = operations.GroupNorm(32, out_channels, eps=1e-6, device=device, dtype=dtype)
        self.conv2 = operations.Conv2d(out_channels, out_channels, 1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class ConditionEncoders(nn.Module):
    """``condition_conv_in`` and the per-level encoders (module docstring). ``down_widths`` / ``up_widths``: the
    output channels per level (SD2: [320, 320, 640, 1280] and [1280, 1280, 1280, 640]); ``base``: C0."""

    def __init__(self, base: int, down_widths, up_widths, operations=nn, device=None, dtype=None):
        super().__init__()
        levels = len(down_widths)
        if len(up_widths) != levels:
            raise ValueError(f"condition encoders need as many up levels as down levels: got {list(down_widths)} "
                             f"and {list(up_widths)}")
        self.condition_conv_in = operations.Conv2d(CONDITION_CHANNELS, base, 3, padding=1, device=device, dtype=dtype)
        self.condition_downblocks = nn.ModuleList(
            ImageEncodingBlock(base, int(w), 2 ** i, operations, device, dtype) for i, w in enumerate(down_widths))
        self.condition_upblocks = nn.ModuleList(
            ImageEncodingBlock(base, int(w), 2 ** (levels - 1 - i), operations, device, dtype)
            for i, w in enumerate(up_widths))

    @property
    def widths(self) -> dict:
        return {"base": self.condition_conv_in.out_channels,
                "down": [b.conv2.out_channels for b in self.condition_downblocks],
                "up": [b.conv2.out_channels for b in self.condition_upblocks]}

    def forward(self, condition: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """condition (N, 5, h, w) -> (down states per level, up states per level); level i of the down list is
        (N, down_widths[i], h / 2**i, w / 2**i)."""
        if condition.ndim != 4 or condition.shape[1] != CONDITION_CHANNELS:
            raise ValueError(f"the key-frame condition must be (views, {CONDITION_CHANNELS}, h, w) (latent + mask), "
                             f"got {tuple(condition.shape)}")
        states = self.condition_conv_in(condition)
        return ([block(states) for block in self.condition_downblocks],
                [block(states) for block in self.condition_upblocks])

    @torch.no_grad()
    def zero_(self) -> "ConditionEncoders":
        """The official initialisation of every block's last conv (zero): the encoders then add exact zeros."""
        for block in (*self.condition_downblocks, *self.condition_upblocks):
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
        return self


def key_frame_condition(latents: torch.Tensor, positions, views: int) -> torch.Tensor:
    """The condition of the interpolation stage (official ``gen_cls_free_guide_pair``, 'interpolation'):
    latents (k, 4, h, w) of the key frames (scaled as the UNet sees latents), ``positions`` the k view indices
    they belong to, ``views`` m -> (m, 5, h, w): ``[latent | 1]`` at the key views, zeros elsewhere."""
    positions = [int(p) for p in positions]
    if latents.ndim != 4 or latents.shape[1] != CONDITION_CHANNELS - 1 or latents.shape[0] != len(positions):
        raise ValueError(f"{len(positions)} key-frame positions need ({len(positions)}, 4, h, w) latents, got "
                         f"{tuple(latents.shape)}")
    if len(set(positions)) != len(positions) or any(p < 0 or p >= views for p in positions):
        raise ValueError(f"key-frame positions {positions} must be distinct views among 0..{views - 1}")
    out = latents.new_zeros(views, CONDITION_CHANNELS, *latents.shape[-2:])
    out[positions, :-1] = latents
    out[positions, -1] = 1
    return out
