"""The fast CAA path: the reference block's results without projecting the 18 keys of every query.

The reference (``caa/block.py``) spends ~36·C² multiply-adds per query pixel projecting its K = 18 keys and
values. Write ``kv_k`` for key k's input (sampled feature + positional encoding, zero when invalid), ``μ_k``,
``σ_k`` for its LayerNorm statistics (norm1: scale γ, shift β, the same LayerNorm as the query's), and
``d_k = kv_k - μ_k``, ``c_k = valid_k / σ_k``. Then exactly

    key_k   = W_k LN(kv_k) = c_k W̃_k d_k + W_k β        with W̃ = W diag(γ)
    value_k = c_k W̃_v d_k + W_v β

so for head h (rows h of the projections), with ``r_h = W̃_{k,h}ᵀ q_h`` (C numbers, computed once per query):

    logit_hk = c_k (r_h · d_k) + q_h · (W_k β)_h
    out_h    = W̃_{v,h} (Σ_k a_hk c_k d_k) + (W_v β)_h          (Σ_k a_hk = 1)

Per query that is ~3·C² (r, the value projection of the weighted sum, the query) plus O(K·C) work instead
of 36·C²; the query projection, output projection and feed-forward (~14·C²) are unchanged. The LayerNorm
statistics are computed exactly from the explicit ``kv_k``; an invalid key (``kv = 0``) gets ``c_k = 0`` and
so the key/value ``W β`` — the official behaviour.

Bilinear sampling is done with 4 precomputed taps per key (indices and float32 weights from the level
plan, once per run), i.e. the same arithmetic as ``grid_sample(align_corners=True)`` with zero padding. The
query pixels are processed in chunks, sized from a memory budget, so that the keys of a big level are never
materialised all at once.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .block import HEAD_DIM, check_features
from .positional_encoding import positional_encoding

__all__ = ["TapPlan", "tap_plan", "FoldedWeights", "fold_weights", "fast_forward", "bytes_per_query"]


@dataclass(frozen=True, eq=False)
class TapPlan:
    """Bilinear taps of every key of a level, for the flattened (view, y, x) query index q in [0, m h w).

    index: (m h w, K, 4) int64 rows of the flattened (view, y, x) feature maps of one group;
    weight: (m h w, K, 4) float32 (0 for taps outside the map, times the 1-pixel-axis factor);
    valid: (m h w, K) float32 (1 valid, 0 invalid); displacement: (m h w, K, 2) float32.
    """

    index: torch.Tensor
    weight: torch.Tensor
    valid: torch.Tensor
    displacement: torch.Tensor

    @property
    def rows(self) -> int:
        return self.index.shape[0]


@functools.lru_cache(maxsize=32)
def tap_plan(plan) -> TapPlan:
    """Taps for a :class:`geometry.LevelPlan` (cached per plan object: once per run)."""
    m, K, h, w = plan.valid.shape
    dev = plan.grid.device
    grid = plan.grid.float()
    # grid_sample(align_corners=True) un-normalisation, in its float32 order
    ix = ((grid[..., 0] + 1) / 2) * (w - 1)
    iy = ((grid[..., 1] + 1) / 2) * (h - 1)
    x0, y0 = torch.floor(ix), torch.floor(iy)
    x1, y1 = x0 + 1, y0 + 1
    taps = [(x0, y0, (x1 - ix) * (y1 - iy)), (x1, y0, (ix - x0) * (y1 - iy)),
            (x0, y1, (x1 - ix) * (iy - y0)), (x1, y1, (ix - x0) * (iy - y0))]
    src = plan.neighbours.to(dev).repeat_interleave(9, dim=1)[:, :, None, None]  # (m, K, 1, 1)
    index, weight = [], []
    for tx, ty, tw in taps:
        inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
        flat = src * (h * w) + ty.clamp(0, h - 1).long() * w + tx.clamp(0, w - 1).long()
        index.append(flat)
        weight.append(torch.where(inside, tw, torch.zeros_like(tw)))
    index = torch.stack(index, dim=-1)  # (m, K, h, w, 4)
    weight = torch.stack(weight, dim=-1)
    if plan.sample_weight is not None:
        weight = weight * plan.sample_weight.float()[..., None]

    def rows(t):  # (m, K, h, w, ...) -> (m h w, K, ...)
        return t.movedim(1, 3).reshape(m * h * w, K, *t.shape[4:]).contiguous()

    return TapPlan(rows(index), rows(weight), rows(plan.valid.float()), rows(plan.displacement.float()))


@dataclass(frozen=True, eq=False)
class FoldedWeights:
    """norm1 folded into the key/value projections of one block, per head.

    wk, wv: (H, 32, C) = rows of ``W diag(γ)``; bk, bv: (H, 32) = ``W β``; eps: norm1's epsilon.
    """

    wk: torch.Tensor
    wv: torch.Tensor
    bk: torch.Tensor
    bv: torch.Tensor
    eps: float


def _weight(layer, name: str, device) -> torch.Tensor:
    return getattr(layer, name).detach().to(device=device, dtype=torch.float32)


def fold_weights(block, device, dtype) -> FoldedWeights:
    """Fold a block's norm1 into its key/value projections (computed in float32, stored in ``dtype``)."""
    t = block.transformer
    gamma, beta = _weight(t.norm1, "weight", device), _weight(t.norm1, "bias", device)
    heads = t.attn1.heads
    out = []
    for layer in (t.attn1.to_k, t.attn1.to_v):
        w = _weight(layer, "weight", device)  # (C_out, C_in)
        out.append(((w * gamma).reshape(heads, HEAD_DIM, -1).to(dtype), (w @ beta).reshape(heads, HEAD_DIM).to(dtype)))
    (wk, bk), (wv, bv) = out
    return FoldedWeights(wk, wv, bk, bv, float(t.norm1.eps))


def bytes_per_query(channels: int, keys: int, element_size: int) -> int:
    """Working memory of one query pixel in :func:`fast_forward` (keys, their statistics, per-head terms, FF)."""
    heads = channels // HEAD_DIM
    floats = 3 * keys * channels + 2 * heads * channels + 2 * keys * heads + 14 * channels
    return floats * max(element_size, 4)


def fast_forward(block, x: torch.Tensor, plan, folded: FoldedWeights | None = None,
                 max_bytes: int = 1 << 30) -> torch.Tensor:
    """Same result as ``block(x, plan)`` (the reference) to float rounding: x ((b m), C, h, w) -> same shape.

    ``folded``: this block's :func:`fold_weights` for x's device/dtype (computed if None); ``max_bytes``: the
    working-memory budget that sets the query chunk size.
    """
    groups = check_features(x, plan)
    C, h, w = x.shape[1:]
    if C != block.dim:
        raise ValueError(f"CAA block of width {block.dim} got {C}-channel features")
    taps = tap_plan(plan)
    M, K = taps.rows, taps.index.shape[1]
    heads = C // HEAD_DIM
    t = block.transformer
    dev, dtype = x.device, x.dtype
    folded = folded or fold_weights(block, dev, dtype)
    pe0 = block.query_pe().to(dev, dtype).reshape(1, C)
    freq = block.pe.freq_bands
    scale = HEAD_DIM ** -0.5

    # channels-last rows: (group, view, y, x) -> C; a group's views are consecutive rows
    rows = x.reshape(groups, -1, C, h, w).permute(0, 1, 3, 4, 2).reshape(groups * M, C)
    out = torch.empty_like(rows)
    chunk = max(1, min(groups * M, max_bytes // bytes_per_query(C, K, x.element_size())))
    for start in range(0, groups * M, chunk):
        q_idx = torch.arange(start, min(start + chunk, groups * M), device=dev)
        r_idx = q_idx % M
        offset = (q_idx - r_idx)[:, None, None]  # group * M
        xq = rows[q_idx]  # (n, C)
        # keys: bilinear samples of the neighbours (4 taps) plus the positional encoding, masked
        index = taps.index.to(dev)[r_idx] + offset  # (n, K, 4)
        weight = taps.weight.to(dev)[r_idx].to(dtype)
        kv = positional_encoding(taps.displacement.to(dev)[r_idx], freq).to(dtype)  # (n, K, C)
        for tap in range(4):
            kv = kv + weight[..., tap, None] * rows[index[..., tap]]
        valid = taps.valid.to(dev)[r_idx]  # (n, K) float32
        kv = kv * valid[..., None].to(dtype)
        kv32 = kv.float()
        mu = kv32.mean(dim=-1, keepdim=True)
        var = (kv32 - mu).square().mean(dim=-1)
        coef = valid * torch.rsqrt(var + folded.eps)  # (n, K)
        d = (kv32 - mu).to(dtype)  # (n, K, C)
        del kv, kv32
        # query
        q = t.attn1.to_q(t.norm1(xq + pe0)).reshape(-1, heads, HEAD_DIM)  # (n, H, 32)
        r = torch.einsum("nhd,hdc->nhc", q, folded.wk)  # (n, H, C)
        logits = torch.einsum("nkc,nhc->nkh", d, r).float() * coef[..., None]
        logits = logits + torch.einsum("nhd,hd->nh", q, folded.bk).float()[:, None, :]
        attn = torch.softmax(logits * scale, dim=1) * coef[..., None]  # (n, K, H), a_hk c_k
        z = torch.einsum("nkh,nkc->nhc", attn.to(dtype), d)  # (n, H, C)
        values = torch.einsum("nhc,hdc->nhd", z, folded.wv) + folded.bv  # (n, H, 32)
        hidden = t.attn1.to_out(values.reshape(-1, C)) + xq
        out[q_idx] = t.ff(t.norm2(hidden)) + hidden
    result = torch.empty_like(x)
    result.copy_(out.reshape(groups, -1, h, w, C).permute(0, 1, 4, 2, 3).reshape(x.shape))
    return result
