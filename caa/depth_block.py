"""The depth correspondence-aware attention block: the reference implementation.

Weight-compatible with the official depth ``CPBlock(dim)`` (src/models/depth/modules.py): the depth ``CPAttn``
followed by a zero-initialised ``BasicResNetBlock``. Parameter names and shapes are the official ones (relative
to one block), so an official block's state dict loads with ``strict=True``:

    attn1.transformer.*                (as the pano block, caa/block.py)
    attn1.pe.freq_bands                (1, 1, dim // 2) float32 buffer: PosEmbedding(2, dim // 2)
    resnet.conv1.weight, conv2.weight  (dim, dim, 3, 3)   no bias
    resnet.bn1/bn2.weight/bias         (dim,)             GroupNorm(32, dim), eps 1e-5

What the attention computes, for features x of shape ((b m), C, h, w) (b groups of m views) and each view i
with its l_i neighbours j (a :class:`geometry.depth_plan.DepthLevelPlan`):

1. keys/values: ONE bilinear sample of each neighbour's map at the correspondence (``plan.grid``),
   ``kv = (sample + pe_depth) * valid``; invalid keys stay in the softmax as zero vectors, the padding slots of
   views with fewer neighbours (``plan.present`` False) are left out of it;
2. query: ``x_i + pe_query``;
3. the pano block's transformer: ``out = to_out(softmax(q k^T / sqrt(32)) v) + x_i``, ``out = ff(norm2(out)) + out``.

The positional encodings reproduce the official reshape quirk. ``PosEmbedding(2, N)`` (N = C / 2) encodes
2-vectors, but the official feeds it the 1-D depth differences of view i as a (h w, l_i, 1) tensor (pixel-major,
neighbour-minor), so CONSECUTIVE flattened values v_{2k}, v_{2k+1} are paired and the 2C numbers of the pair
fill two tokens:

    token 2k   = [sin(v_{2k} f), sin(v_{2k+1} f)]      token 2k+1 = [cos(v_{2k} f), cos(v_{2k+1} f)]

(f the N frequencies). The pairing runs over each view's own l_i neighbours (padding never shifts it). The
query's encoding of zeros over the view's h w pixels is likewise all 0 on even pixels and all 1 on odd ones. An
odd number of values (h w and l_i both odd) makes the official reshape fail; it is refused here.

This module is written for clarity (vectorised over groups and views, no loop) and is the oracle of any faster
path. Layers come from ``operations`` (``torch.nn`` by default; ComfyUI passes ``comfy.ops.manual_cast``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .block import HEAD_DIM, TransformerBlock, check_features, like, sample_keys
from .positional_encoding import PositionalEncoding, positional_encoding

__all__ = ["depth_positional_encoding", "query_positional_encoding", "DepthCorrespondenceAttention",
           "ResNetBlock", "DepthCPBlock"]


def _check_even(count: int, what: str) -> None:
    if count % 2:
        raise ValueError(f"depth CAA: {what} gives an odd number ({count}) of values to the paired positional "
                         "encoding (the official reshape fails there); use feature maps with an even h*w")


def depth_positional_encoding(depth_difference: torch.Tensor, present: torch.Tensor,
                              freq_bands: torch.Tensor) -> torch.Tensor:
    """The keys' encoding with the official pairing: depth_difference (m, n, h, w), present (m, n) bool,
    freq_bands (1, 1, N) -> (m, h, w, n, 2N) float32 (zeros on padding slots).

    Each view's present values, flattened pixel-major and neighbour-minor (the official (h w, l_i) order),
    are concatenated view after view; every view contributes an even number of values, so pairing consecutive
    values of the whole sequence pairs them within each view exactly as the official per-view call does.
    """
    m, n, h, w = depth_difference.shape
    for i, count in enumerate(present.sum(dim=1).tolist()):
        _check_even(h * w * count, f"view {i} with {count} neighbours on a {h}x{w} map")
    values = depth_difference.float().permute(0, 2, 3, 1)  # (m, h, w, n)
    mask = present.to(values.device)[:, None, None, :].expand(m, h, w, n)
    tokens = positional_encoding(values[mask].reshape(-1, 2), freq_bands)  # (pairs, 4N) = 2 tokens per pair
    out = values.new_zeros(m, h, w, n, 2 * freq_bands.shape[-1])
    out[mask] = tokens.reshape(-1, out.shape[-1])
    return out


def query_positional_encoding(h: int, w: int, freq_bands: torch.Tensor) -> torch.Tensor:
    """The query's encoding of zeros with the official pairing: (h w, 1, 2N) float32 over a view's pixels in
    row-major order, all 0 (sines) on even pixels and all 1 (cosines) on odd ones."""
    _check_even(h * w, f"a {h}x{w} query map")
    zeros = torch.zeros(h * w // 2, 2, device=freq_bands.device)
    return positional_encoding(zeros, freq_bands).reshape(h * w, 1, -1)


class DepthCorrespondenceAttention(nn.Module):
    """One depth CAA attention of width ``dim`` (official depth ``CPAttn``); see the module docstring."""

    def __init__(self, dim: int, operations=nn, device=None, dtype=None):
        super().__init__()
        if dim % HEAD_DIM:
            raise ValueError(f"depth CAA width must be a multiple of {HEAD_DIM}, got {dim}")
        self.dim = dim
        self.transformer = TransformerBlock(dim, operations, device, dtype)
        self.pe = PositionalEncoding(dim // 2, device=device)

    def key_pe(self, plan) -> torch.Tensor:
        """The keys' paired encoding for a plan: (m, h, w, n, C) float32."""
        bands = self.pe.bands()
        return depth_positional_encoding(plan.depth_difference.to(bands.device), plan.present.to(bands.device), bands)

    def query_pe(self, h: int, w: int) -> torch.Tensor:
        """The query's alternating encoding: (h w, 1, C) float32."""
        return query_positional_encoding(h, w, self.pe.bands())

    def forward(self, x: torch.Tensor, plan) -> torch.Tensor:
        """x ((b m), C, h, w) -> ((b m), C, h, w): every view attends to its neighbours' correspondences."""
        b = check_features(x, plan)
        m, n = plan.neighbours.shape
        C, h, w = x.shape[1:]
        if C != self.dim:
            raise ValueError(f"depth CAA block of width {self.dim} got {C}-channel features")
        samples = sample_keys(x, plan)  # (b, m, n, C, h, w)
        kv = samples.permute(0, 1, 4, 5, 2, 3) + self.key_pe(plan).to(x.device, x.dtype)[None]  # (b, m, h, w, n, C)
        del samples  # the keys are the largest tensors here: one copy at a time
        kv.mul_(plan.valid.to(x.device).permute(0, 2, 3, 1)[None, ..., None].to(x.dtype))
        query = x.reshape(b, m, C, h, w).permute(0, 1, 3, 4, 2).reshape(-1, 1, C)
        query_pe = self.query_pe(h, w).to(x.device, x.dtype)[None].expand(b * m, h * w, 1, C).reshape(-1, 1, C)
        present = plan.present.to(x.device)
        # one row per query pixel, in the query order (b, m, h, w); None when every view has n neighbours
        present = None if bool(present.all()) else present[None, :, None, :].expand(b, m, h * w, n).reshape(-1, n)
        out = self.transformer(query, kv.reshape(-1, n, C), query_pe, present)
        return like(x, out.reshape(b, m, h, w, C).permute(0, 1, 4, 2, 3).reshape(b * m, C, h, w))


class ResNetBlock(nn.Module):
    """Official ``BasicResNetBlock(dim, dim, zero_init=True)`` as ``CPBlock`` uses it (identity shortcut):
    ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``, 3x3 convolutions without bias, GroupNorm(32, dim)."""

    def __init__(self, dim: int, operations=nn, device=None, dtype=None):
        super().__init__()
        self.conv1 = operations.Conv2d(dim, dim, 3, padding=1, bias=False, device=device, dtype=dtype)
        self.bn1 = operations.GroupNorm(32, dim, device=device, dtype=dtype)
        self.conv2 = operations.Conv2d(dim, dim, 3, padding=1, bias=False, device=device, dtype=dtype)
        self.bn2 = operations.GroupNorm(32, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, h, w) -> (N, C, h, w)."""
        out = self.conv1(F.relu(self.bn1(x)))
        return self.conv2(F.relu(self.bn2(out))) + x


class DepthCPBlock(nn.Module):
    """The official depth ``CPBlock(dim)``: :class:`DepthCorrespondenceAttention` then :class:`ResNetBlock`."""

    def __init__(self, dim: int, operations=nn, device=None, dtype=None):
        super().__init__()
        self.attn1 = DepthCorrespondenceAttention(dim, operations, device, dtype)
        self.resnet = ResNetBlock(dim, operations, device, dtype)

    @property
    def dim(self) -> int:
        return self.attn1.dim

    def forward(self, x: torch.Tensor, plan) -> torch.Tensor:
        """x ((b m), C, h, w), plan: DepthLevelPlan of the level -> ((b m), C, h, w) in x's memory layout.

        The official hands the resnet its attention output as a permuted (channels-last) view; the convolutions'
        rounding depends on the layout, so it gets the same one here (the block's values then match the official
        bit for bit where the attention does).
        """
        out = self.attn1(x, plan).contiguous(memory_format=torch.channels_last)
        return like(x, self.resnet(out))

    @torch.no_grad()
    def zero_(self) -> "DepthCPBlock":
        """The official initialisation of the output layers (attention to_out, ff.net.2, resnet conv2 zero):
        the block is then the exact identity."""
        t = self.attn1.transformer
        for layer in (t.attn1.to_out, t.ff.net[2]):
            layer.weight.zero_()
            layer.bias.zero_()
        self.resnet.conv2.weight.zero_()
        return self
