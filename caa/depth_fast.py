"""The fast depth CAA path: the reference depth block's results (``caa/depth_block.py``) without projecting keys.

The depth block is the pano block's transformer with ONE key per neighbour (n <= ~11 keys instead of 18), so the
algebra of ``caa/fast.py`` applies unchanged: norm1 is folded into per-head key/value products, the keys are
never projected (module docstring there), the centred keys are 4-tap gathers of the row-centred feature map
plus the row-centred key encodings, invalid keys get ``c_k = 0`` (the norm1-bias key) and the padding slots of
views with fewer neighbours a logit of -inf. The query/chunk loop is :func:`caa.fast.attend_rows`.

What differs is the positional encoding (the official pairing quirk, ``caa/depth_block.py``):

* keys: for view i with l_i neighbours, the value of (pixel p, slot k) is number ``t = p l_i + k`` of the view's
  flattened sequence; its token encodes the pair ``(v_{t - t%2}, v_{t - t%2 + 1})`` and is the sine half
  (t even) or the cosine half (t odd) of ``PosEmbedding``. :func:`depth_key_terms` finds each key's pair and
  half once per plan (no loop over views), so the encoding of any chunk of keys is one product, one sine and
  a cosine of the odd tokens, exactly the reference's float32 arithmetic (:func:`depth_centred_encoding`
  precomputes a whole level; otherwise the fast path evaluates it chunk by chunk);
* query: all 0 on even pixels and all 1 on odd ones; h w is even, so that is the parity of the flattened
  (view, pixel) row.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .block import like
from .depth_block import _check_even
from .fast import FoldedWeights, attend_rows, centre_rows, check_encodings, check_width, fold_weights
from .taps import DeviceTaps, device_taps, tap_plan

__all__ = ["DepthKeyTerms", "depth_key_terms", "depth_centred_encoding", "depth_fast_forward",
           "depth_cp_fast_forward"]


@dataclass(frozen=True, eq=False)
class DepthKeyTerms:
    """The plan-only terms of a depth level for the fast path, rows = flattened (view, y, x) of one group.

    taps: the level's :class:`caa.fast.DeviceTaps` (K = n keys per row, -inf ``absent`` on padding slots);
    pairs: (m h w, n, 2) float32, the two depth differences the key's token encodes (0 on padding slots);
    cosine: (m h w, n) bool, True where the token is the cosine half (odd position in the view's sequence).
    """

    taps: DeviceTaps
    pairs: torch.Tensor
    cosine: torch.Tensor


def depth_key_terms(plan, device, dtype) -> DepthKeyTerms:
    """The :class:`DepthKeyTerms` of a :class:`geometry.depth_plan.DepthLevelPlan` on ``device`` (tap weights in
    ``dtype``); build them once per run. Refuses (as the reference) a view whose values would pair oddly."""
    m, n, h, w = plan.depth_difference.shape
    hw = h * w
    present = plan.present.to(plan.depth_difference.device)
    for i, count in enumerate(present.sum(dim=1).tolist()):
        _check_even(hw * count, f"view {i} with {count} neighbours on a {h}x{w} map")
    length = present.sum(dim=1).clamp(min=1)[:, None, None]  # (m, 1, 1): l_i
    slot = torch.arange(n, device=present.device)[None, None, :]
    position = torch.arange(hw, device=present.device)[None, :, None] * length + slot  # (m, hw, n): t
    first = position - position % 2
    values = plan.depth_difference.float().permute(0, 2, 3, 1).reshape(m, hw * n)  # (view, pixel, slot) order

    def value(t):  # the view's t-th value: pixel t // l_i, slot t % l_i
        index = ((t // length) * n + t % length).clamp(0, hw * n - 1).reshape(m, -1)
        return values.gather(1, index).reshape(m, hw, n)

    real = present[:, None, :].expand(m, hw, n)
    pairs = torch.stack([value(first), value(first + 1)], dim=-1).masked_fill(~real[..., None], 0)
    cosine = (position % 2 == 1) & real
    return DepthKeyTerms(device_taps(tap_plan(plan), device, dtype), pairs.reshape(m * hw, n, 2).to(device),
                         cosine.reshape(m * hw, n).to(device))


def _centred_encoding(pairs: torch.Tensor, cosine: torch.Tensor, freq: torch.Tensor, dtype: torch.dtype,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """The tokens of keys with ``pairs`` (..., 2) and ``cosine`` (...) minus their channel means: (prod(...), C)
    in ``dtype`` (into ``out`` when given), C = 2 N for ``freq`` (1, 1, N); float32 arithmetic of the reference."""
    freq = freq.float().reshape(1, 1, -1)
    rows = cosine.numel()
    enc = (pairs.float().reshape(rows, 2, 1) * freq).reshape(rows, -1)
    pe = out if out is not None and dtype == torch.float32 else torch.empty_like(enc)
    torch.sin(enc, out=pe)
    odd = cosine.reshape(rows)
    pe[odd] = torch.cos(enc[odd])
    return centre_rows(pe, dtype, out)


def depth_centred_encoding(terms: DepthKeyTerms, freq: torch.Tensor, dtype: torch.dtype,
                           chunk_rows: int = 4096) -> torch.Tensor:
    """The row-centred key encodings of a whole level: (m h w, n, C) in ``dtype`` on the terms' device, for the
    frequencies ``freq`` (1, 1, C / 2). Blocks of one width at one level share them: compute once per run."""
    M, n = terms.cosine.shape
    freq = freq.to(terms.pairs.device)
    out = torch.empty(M, n, 2 * freq.numel(), device=terms.pairs.device, dtype=dtype)
    for start in range(0, M, chunk_rows):
        stop = min(M, start + chunk_rows)
        out[start:stop] = _centred_encoding(terms.pairs[start:stop], terms.cosine[start:stop], freq,
                                            dtype).reshape(stop - start, n, -1)
    return out


def depth_fast_forward(block, x: torch.Tensor, plan, folded: FoldedWeights | None = None,
                       max_bytes: int = 1 << 30, pe: torch.Tensor | None = None,
                       key_chunk_bytes: int | None = None, terms: DepthKeyTerms | None = None) -> torch.Tensor:
    """Same result as ``block(x, plan)`` (a :class:`caa.depth_block.DepthCorrespondenceAttention`) to float
    rounding: x ((b m), C, h, w) -> same shape and memory layout.

    ``folded``: the block's :func:`caa.fast.fold_weights` for x's device/dtype (computed if None);
    ``max_bytes``, ``key_chunk_bytes``: the chunk budgets of :func:`caa.fast.attend_rows`; ``pe``: the level's
    :func:`depth_centred_encoding` for the block's frequencies in x's dtype (evaluated chunk by chunk if None);
    ``terms``: the plan's :func:`depth_key_terms` for x's device and dtype (built if None).
    """
    C, dev, dtype = check_width(block, x, plan), x.device, x.dtype
    _check_even(plan.height * plan.width, f"a {plan.height}x{plan.width} query map")
    if terms is None:
        terms = depth_key_terms(plan, dev, dtype)
    M, n = terms.cosine.shape
    check_encodings(pe, (M, n, C), dtype, dev)
    freq = block.pe.bands()

    def encode(c, e, out):
        if pe is not None:
            return pe[c:e].reshape((e - c) * n, C)
        return _centred_encoding(terms.pairs[c:e], terms.cosine[c:e], freq, dtype, out=out)

    parity = (torch.arange(M + 1, device=dev) % 2).to(dtype)[:, None]  # the query encoding of row r: all r % 2
    W = folded if folded is not None else fold_weights(block, dev, dtype)
    return attend_rows(x, W, terms.taps, encode, lambda a, b: parity[a:b], max_bytes, key_chunk_bytes)


def depth_cp_fast_forward(block, x: torch.Tensor, plan, **kwargs) -> torch.Tensor:
    """Same result as ``block(x, plan)`` for a :class:`caa.depth_block.DepthCPBlock`: the fast attention
    (``kwargs`` as :func:`depth_fast_forward`) then the block's resnet as it is, on the channels-last layout the
    reference hands it. x ((b m), C, h, w) -> same shape and memory layout."""
    out = depth_fast_forward(block.attn1, x, plan, **kwargs).contiguous(memory_format=torch.channels_last)
    return like(x, block.resnet(out))
