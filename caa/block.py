"""The correspondence-aware attention (CAA) block: the reference implementation.

Weight-compatible with the official ``CPAttn(dim)`` (src/models/pano/modules.py): parameter names and shapes
are the official ones, so an official block's state dict loads with ``strict=True``:

    transformer.attn1.to_q/to_k/to_v.weight  (dim, dim)      no bias
    transformer.attn1.to_out.weight/bias     (dim, dim), (dim,)
    transformer.ff.net.0.proj.weight/bias    (8 dim, dim)    GEGLU
    transformer.ff.net.2.weight/bias         (dim, 4 dim)
    transformer.norm1/norm2.weight/bias      (dim,)
    pe.freq_bands                            (1, 1, dim // 4) float32 buffer

What it computes, for features x of shape ((b m), C, h, w) (b groups of the rig's m views) and each view i
with neighbours j (the rig's neighbour lists; the official pano ring is i-1, i+1), using the level's
:class:`geometry.LevelPlan`:

1. keys/values: the 9 bilinear samples of each neighbour's map around the correspondence,
   ``kv = (sample + pe(displacement)) * valid`` (invalid keys stay in the softmax as zero vectors; the padding
   keys of views with fewer neighbours, ``plan.present`` False, are left out of it);
2. query: ``x_i + pe((0, 0))``;
3. ``out = to_out(softmax(q k^T / sqrt(32)) v) + x_i`` with ``q = to_q(norm1(query))``,
   ``k, v = to_k(norm1(kv)), to_v(norm1(kv))`` (the same LayerNorm for both), 32-wide heads;
4. ``out = ff(norm2(out)) + out``.

This module is written for clarity and serves as the oracle of the fast path (``caa/fast.py``).
Layers come from ``operations`` (``torch.nn`` by default; ComfyUI passes ``comfy.ops.manual_cast``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .positional_encoding import PositionalEncoding

__all__ = ["HEAD_DIM", "CrossAttention", "FeedForward", "TransformerBlock", "CorrespondenceAttention",
           "sample_keys", "check_features", "like"]

HEAD_DIM = 32


class CrossAttention(nn.Module):
    """Multi-head attention of one query token over a few key tokens (official ``CrossAttention``)."""

    def __init__(self, dim: int, operations=nn, device=None, dtype=None):
        super().__init__()
        self.heads = dim // HEAD_DIM
        self.scale = HEAD_DIM ** -0.5
        self.to_q = operations.Linear(dim, dim, bias=False, device=device, dtype=dtype)
        self.to_k = operations.Linear(dim, dim, bias=False, device=device, dtype=dtype)
        self.to_v = operations.Linear(dim, dim, bias=False, device=device, dtype=dtype)
        self.to_out = operations.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, query: torch.Tensor, context: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """query (N, 1, C), context (N, K, C) -> (N, 1, C); ``present`` (N, K) bool leaves the keys where it is
        False out of the softmax (None: all take part)."""
        q, k, v = self.to_q(query), self.to_k(context), self.to_v(context)
        n = q.shape[0]
        q, k, v = (t.reshape(n, t.shape[1], self.heads, HEAD_DIM).transpose(1, 2) for t in (q, k, v))
        sim = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
        if present is not None:
            sim = sim.masked_fill(~present[:, None, None, :], float("-inf"))
        out = torch.einsum("bhij,bhjd->bhid", sim.softmax(dim=-1), v)
        return self.to_out(out.transpose(1, 2).reshape(n, -1, self.heads * HEAD_DIM))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, operations=nn, device=None, dtype=None):
        super().__init__()
        self.proj = operations.Linear(dim_in, dim_out * 2, device=device, dtype=dtype)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """``net = [GEGLU(dim -> 4 dim), dropout (identity at inference), Linear(4 dim -> dim)]``."""

    def __init__(self, dim: int, operations=nn, device=None, dtype=None):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim, operations, device, dtype), nn.Identity(),
                                 operations.Linear(4 * dim, dim, device=device, dtype=dtype))

    def forward(self, x):
        return self.net(x)


class TransformerBlock(nn.Module):
    """Official ``BasicTransformerBlock`` as CAA uses it: attention then a gated feed-forward."""

    def __init__(self, dim: int, operations=nn, device=None, dtype=None):
        super().__init__()
        self.attn1 = CrossAttention(dim, operations, device, dtype)
        self.ff = FeedForward(dim, operations, device, dtype)
        self.norm1 = operations.LayerNorm(dim, device=device, dtype=dtype)
        self.norm2 = operations.LayerNorm(dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, context: torch.Tensor, query_pe: torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, 1, C) raw query features, context (N, K, C) keys, query_pe (1 or N, 1, C), present (N, K) bool
        or None (see :meth:`CrossAttention.forward`) -> (N, 1, C)."""
        x = self.attn1(self.norm1(x + query_pe), self.norm1(context), present) + x
        return self.ff(self.norm2(x)) + x


def check_features(x: torch.Tensor, plan) -> int:
    """Validate features ((b m), C, h, w) against a level plan; returns the number of groups b."""
    m = plan.num_views
    if x.ndim != 4:
        raise ValueError(f"CAA expects features of shape ((groups*views), C, h, w), got {tuple(x.shape)}")
    if x.shape[0] % m:
        raise ValueError(f"CAA got a batch of {x.shape[0]} feature maps, not a multiple of the rig's {m} views")
    if tuple(x.shape[-2:]) != (plan.height, plan.width):
        raise ValueError(f"CAA got {x.shape[-2]}x{x.shape[-1]} feature maps but the plan is for "
                         f"{plan.height}x{plan.width}")
    return x.shape[0] // m


def sample_keys(x: torch.Tensor, plan) -> torch.Tensor:
    """Bilinear samples of the neighbours' maps for every key: x ((b m), C, h, w) -> (b, m, K, C, h, w).

    ``F.grid_sample`` with ``align_corners=True`` and zero padding at the plan's grid (official normalisation),
    times the plan's 1-pixel-axis weights when present. Any plan with ``neighbours`` (m, n) and ``grid``
    (m, K, h, w, 2), K a multiple of n (9 keys per neighbour in the pano plan, 1 in the depth plan).
    """
    b = check_features(x, plan)
    m, K = plan.num_views, plan.grid.shape[1]
    C, h, w = x.shape[1:]
    xv = x.reshape(b, m, C, h, w)
    src = plan.neighbours.repeat_interleave(K // plan.neighbours.shape[1], dim=1)  # (m, K) view sampled by each key
    feats = xv[:, src.reshape(-1)].reshape(b * m * K, C, h, w)
    grid = plan.grid.to(x.device, x.dtype).reshape(1, m * K, h, w, 2).expand(b, m * K, h, w, 2).reshape(b * m * K, h, w, 2)
    out = F.grid_sample(feats, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out.reshape(b, m, K, C, h, w)
    weight = getattr(plan, "sample_weight", None)
    if weight is not None:
        out = out * weight.to(x.device, x.dtype)[None, :, :, None]
    return out


class CorrespondenceAttention(nn.Module):
    """One CAA block of width ``dim`` (official ``CPAttn``); see the module docstring."""

    def __init__(self, dim: int, operations=nn, device=None, dtype=None):
        super().__init__()
        if dim % HEAD_DIM or dim % 4:
            raise ValueError(f"CAA width must be a multiple of {HEAD_DIM}, got {dim}")
        self.dim = dim
        self.transformer = TransformerBlock(dim, operations, device, dtype)
        self.pe = PositionalEncoding(dim // 4, device=device)

    def query_pe(self) -> torch.Tensor:
        """``pe((0, 0))`` (1, 1, C) float32: zeros (sines) then ones (cosines)."""
        return self.pe(torch.zeros(1, 1, 2, device=self.pe.freq_bands.device))

    def forward(self, x: torch.Tensor, plan) -> torch.Tensor:
        """x ((b m), C, h, w) -> ((b m), C, h, w): every view attends to its neighbours' correspondences."""
        b = check_features(x, plan)
        m, K = plan.num_views, plan.num_keys
        C, h, w = x.shape[1:]
        if C != self.dim:
            raise ValueError(f"CAA block of width {self.dim} got {C}-channel features")
        samples = sample_keys(x, plan)  # (b, m, K, C, h, w)
        pe = self.pe(plan.displacement.to(x.device))  # (m, K, h, w, C) float32
        kv = samples.permute(0, 1, 4, 5, 2, 3) + pe.permute(0, 2, 3, 1, 4).to(x.dtype)[None]  # (b, m, h, w, K, C)
        del samples, pe  # the keys are the largest tensors here: one copy at a time
        kv.mul_(plan.valid.to(x.device).permute(0, 2, 3, 1)[None, ..., None].to(x.dtype))
        query = x.reshape(b, m, C, h, w).permute(0, 1, 3, 4, 2).reshape(-1, 1, C)
        present = None
        if plan.present is not None:  # (m, K) -> one row per query pixel, in the query order (b, m, h, w)
            present = plan.present.to(x.device)[None, :, None, None, :].expand(b, m, h, w, K).reshape(-1, K)
        out = self.transformer(query, kv.reshape(-1, K, C), self.query_pe().to(x.dtype), present)
        return like(x, out.reshape(b, m, h, w, C).permute(0, 1, 4, 2, 3).reshape(b * m, C, h, w))

    @torch.no_grad()
    def zero_(self) -> "CorrespondenceAttention":
        """The official initialisation of the output layers (to_out, ff.net.2 zero): the block is the identity."""
        for layer in (self.transformer.attn1.to_out, self.transformer.ff.net[2]):
            layer.weight.zero_()
            layer.bias.zero_()
        return self


def like(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` in a tensor with exactly ``x``'s memory layout (strides).

    The UNet's later convolutions pick their kernels from the input's layout: handing back a permuted
    (channels-last-like) tensor changes their rounding, so a zero-weight CAA would not be an exact identity.
    """
    out = torch.empty_like(x)
    out.copy_(values)
    return out
