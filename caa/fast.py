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

Per query that is ~2·C² (r, the value projection of the weighted sum) plus 2·K·C²/32 for the two small
per-query products instead of 36·C²; the query projection, output projection and feed-forward (~14·C²) are
unchanged. An invalid key gets ``c_k = 0`` and so the key/value ``W β`` — the official behaviour. The padding
keys of views with fewer neighbours (general rigs) get a logit of −∞ and so no weight.

The centred keys ``d_k`` are built without a statistics pass: the channel mean is linear, so bilinear samples
of the row-centred feature map plus the row-centred positional encoding are exactly ``kv_k - μ_k``; the
variance is then one norm. The samples are one fused weighted gather of 4 taps per key (indices and float32
weights from the level plan, once per run, ``caa/taps.py``: the same arithmetic as ``grid_sample(align_corners=True)`` with zero
padding): on CPUs a sparse (CSR) matrix product added in place onto the encodings, elsewhere
``F.embedding_bag``. The positional encoding only depends on the plan, so the caller may precompute it once
per run (:func:`centred_positional_encoding`; ``caa/patch.py`` caches it within a memory budget) and pass it
in; otherwise it is evaluated chunk by chunk, in float32 exactly like the reference.

Queries are processed in chunks: ones of up to 1024 rows for the query/output projections and the
feed-forward, and inside them ones for the per-key work, so the keys of a level are never materialised all
at once and the working memory stays within ``max_bytes``. Every chunk reuses the same buffers: on CPUs a
fresh allocation of a few MB per chunk costs page faults comparable to the arithmetic.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .block import HEAD_DIM, check_features, like
from .taps import DeviceTaps, TapPlan, device_taps, tap_plan

__all__ = ["TapPlan", "tap_plan", "DeviceTaps", "device_taps", "FoldedWeights", "fold_weights", "fast_forward",
           "attend_rows", "check_width", "check_encodings", "centre_rows", "bytes_per_query", "centred_positional_encoding", "pe_bytes"]

# per-key work in chunks of at most this many bytes on CPUs (other devices use the whole working-memory budget):
# big enough that the chunks' many small parallel ops do not stall a busy CPU (OpenMP barriers), no slower than
# cache-sized chunks otherwise
CPU_KEY_CHUNK_BYTES = 64 << 20
# rows per chunk of the query/output projections and the feed-forward (big enough for efficient matmuls)
MAX_ROW_CHUNK = 1024


@dataclass(frozen=True, eq=False)
class FoldedWeights:
    """One block's weights on the features' device and dtype, with norm1 folded into the key/value
    projections per head.

    wk, wv: (H, 32, C) = rows of ``W diag(γ)``; bk, bv: (H, 32) = ``W β``; eps: norm1's epsilon. The rest are
    the block's own tensors (no copy when they already have that device and dtype): wq (C, C); wo (C, C), bo;
    w1 (8 C, C), b1 (GEGLU); w2 (C, 4 C), b2; norm1/norm2 scale and shift, eps2 (norm2's epsilon).
    """

    wk: torch.Tensor
    wv: torch.Tensor
    bk: torch.Tensor
    bv: torch.Tensor
    eps: float
    wq: torch.Tensor
    wo: torch.Tensor
    bo: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    norm1: tuple
    norm2: tuple
    eps2: float


def _as(layer, name: str, device, dtype) -> torch.Tensor:
    return getattr(layer, name).detach().to(device=device, dtype=dtype)


def fold_weights(block, device, dtype) -> FoldedWeights:
    """Fold a block's norm1 into its key/value projections (computed in float32, stored in ``dtype``), and
    take its other weights on ``device`` in ``dtype``."""
    t = block.transformer
    gamma, beta = _as(t.norm1, "weight", device, torch.float32), _as(t.norm1, "bias", device, torch.float32)
    heads = t.attn1.heads
    out = []
    for layer in (t.attn1.to_k, t.attn1.to_v):
        w = _as(layer, "weight", device, torch.float32)  # (C_out, C_in)
        out.append(((w * gamma).reshape(heads, HEAD_DIM, -1).to(dtype), (w @ beta).reshape(heads, HEAD_DIM).to(dtype)))
    (wk, bk), (wv, bv) = out
    proj, lin2 = t.ff.net[0].proj, t.ff.net[2]
    return FoldedWeights(
        wk, wv, bk, bv, float(t.norm1.eps),
        wq=_as(t.attn1.to_q, "weight", device, dtype), wo=_as(t.attn1.to_out, "weight", device, dtype),
        bo=_as(t.attn1.to_out, "bias", device, dtype), w1=_as(proj, "weight", device, dtype),
        b1=_as(proj, "bias", device, dtype), w2=_as(lin2, "weight", device, dtype), b2=_as(lin2, "bias", device, dtype),
        norm1=(_as(t.norm1, "weight", device, dtype), _as(t.norm1, "bias", device, dtype)),
        norm2=(_as(t.norm2, "weight", device, dtype), _as(t.norm2, "bias", device, dtype)), eps2=float(t.norm2.eps))


def bytes_per_query(channels: int, keys: int, element_size: int) -> int:
    """Working memory of one query pixel in :func:`fast_forward`'s per-key chunks: its centred keys and
    positional encodings (K·C each), the per-head vectors r and Σ a c d (H·C each) and the logits."""
    heads = channels // HEAD_DIM
    floats = 2 * keys * channels + 2 * heads * channels + 4 * keys * heads
    return floats * max(element_size, 4)


def pe_bytes(rows: int, keys: int, channels: int, element_size: int) -> int:
    """Size of a level's precomputed positional encodings (:func:`centred_positional_encoding`)."""
    return rows * keys * channels * element_size


def _centred_pe(displacement: torch.Tensor, freq: torch.Tensor, dtype: torch.dtype,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """``pe(v) - mean_c pe(v)`` of displacements (..., 2) -> (prod(...), C) in ``dtype`` (into ``out`` if given).

    The encoding itself is evaluated exactly like :func:`caa.positional_encoding.positional_encoding` (the same
    float32 products, sines and cosines), written straight into one buffer.
    """
    freq = freq.float().reshape(1, 1, -1)
    n, N = displacement.numel() // 2, freq.shape[-1]
    enc = (displacement.float().reshape(n, 2, 1) * freq).reshape(n, 2 * N)
    pe = out if out is not None and dtype == torch.float32 else torch.empty(n, 4 * N, device=enc.device)
    halves = pe.reshape(n, 2, 2 * N)
    torch.sin(enc, out=halves[:, 0])
    torch.cos(enc, out=halves[:, 1])
    return centre_rows(pe, dtype, out)


def centre_rows(pe: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None) -> torch.Tensor:
    """float32 encodings (rows, C) minus their channel means, in ``dtype`` (into ``out`` when given)."""
    pe -= pe.mean(dim=-1, keepdim=True)
    if out is None:
        return pe.to(dtype)
    return out if pe is out else out.copy_(pe)


def check_encodings(pe: torch.Tensor | None, shape: tuple, dtype: torch.dtype, device) -> None:
    """Refuses precomputed key encodings that do not fit the level (``shape``) and the features."""
    if pe is not None and (tuple(pe.shape) != shape or pe.dtype != dtype or pe.device != device):
        raise ValueError(f"precomputed key encodings of shape {tuple(pe.shape)} ({pe.dtype}, {pe.device}) "
                         f"do not fit this level: expected {shape} ({dtype}, {device})")


def centred_positional_encoding(plan, freq: torch.Tensor, device, dtype, chunk_rows: int = 4096,
                                taps: TapPlan | None = None) -> torch.Tensor:
    """The row-centred positional encodings of every key of a level: (m h w, K, C) in ``dtype`` on ``device``.

    They only depend on the plan and the block's frequencies: compute them once per run and pass them to
    :func:`fast_forward` (``pe=``) of every block of this width at this level. ``taps``: the plan's
    :func:`tap_plan` when already built.
    """
    taps = taps or tap_plan(plan)
    disp = taps.displacement.to(device)
    M, K = disp.shape[:2]
    C = 4 * freq.numel()
    out = torch.empty(M, K, C, device=device, dtype=dtype)
    freq = freq.to(device)
    for start in range(0, M, chunk_rows):
        stop = min(M, start + chunk_rows)
        out[start:stop] = _centred_pe(disp[start:stop], freq, dtype).reshape(stop - start, K, C)
    return out


@functools.lru_cache(maxsize=None)
def _sparse_gather_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``addmm(dense, sparse CSR, dense, out=dense)`` runs here (CPU builds with MKL: float32/64)."""
    if device_type != "cpu" or dtype not in (torch.float32, torch.float64):
        return False
    try:
        table = torch.arange(6, dtype=dtype).reshape(3, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta": only the path taken here is used
            samples = torch.sparse_csr_tensor(torch.tensor([0, 2]), torch.tensor([0, 2]),
                                              torch.tensor([0.5, 0.25], dtype=dtype), size=(1, 3))
        out = torch.ones(1, 2, dtype=dtype)
        torch.addmm(out, samples, table, out=out)
        return bool(torch.equal(out, torch.tensor([[2.0, 2.75]], dtype=dtype)))
    except (RuntimeError, NotImplementedError):
        return False


class _KeyGather:
    """The centred keys of query rows [c, e) of one group: (e - c) K rows of C, in a reused buffer on CPUs.

    ``encode(c, e, out)``: the centred positional encodings of the keys of query rows [c, e), ((e - c) K, C) in
    the features' dtype, written into ``out`` when it is given and can take them. On CPUs (float32/float64)
    the 4-tap samples are one sparse (CSR, 4 entries a row) matrix product added in place onto the encodings
    (``addmm``), so no big tensor is allocated per chunk (fresh allocations of a few MB page-fault on every
    chunk). Elsewhere: ``F.embedding_bag`` plus the encodings.
    """

    def __init__(self, taps: DeviceTaps, encode, key_chunk: int, channels: int, device, dtype):
        self.taps, self.encode = taps, encode
        self.K = taps.valid.shape[1]
        self.sparse = _sparse_gather_works(device.type, dtype)
        if self.sparse:
            self.buf = torch.empty(key_chunk * self.K, channels, device=device, dtype=dtype)
            self.crow = torch.arange(0, 4 * key_chunk * self.K + 1, 4, device=device)

    def __call__(self, table: torch.Tensor, c: int, e: int, offset: int = 0) -> torch.Tensor:
        """``offset``: the first row of the group in ``table`` (the maps of every group, one after the other)."""
        K, taps = self.K, self.taps
        rows = (e - c) * K
        index, weight = taps.index[c * K:e * K], taps.weight[c * K:e * K]
        index = index + offset if offset else index
        if not self.sparse:
            d = F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")
            return d.add_(self.encode(c, e, None))
        d = self.buf[:rows]
        pe = self.encode(c, e, d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            samples = torch.sparse_csr_tensor(self.crow[:rows + 1], index.reshape(-1), weight.reshape(-1),
                                              size=(rows, table.shape[0]), check_invariants=False)
        return torch.addmm(pe, samples, table, out=d)


def fast_forward(block, x: torch.Tensor, plan, folded: FoldedWeights | None = None,
                 max_bytes: int = 1 << 30, pe: torch.Tensor | None = None,
                 key_chunk_bytes: int | None = None, taps: DeviceTaps | None = None) -> torch.Tensor:
    """Same result as ``block(x, plan)`` (the reference) to float rounding: x ((b m), C, h, w) -> same shape.

    ``folded``: this block's :func:`fold_weights` for x's device/dtype (computed if None); ``max_bytes``: the
    working-memory budget that sets the query chunk sizes; ``pe``: this level's
    :func:`centred_positional_encoding` for the block's frequencies, x's device and dtype (evaluated chunk by
    chunk if None); ``key_chunk_bytes``: the size of the per-key chunks (default: :data:`CPU_KEY_CHUNK_BYTES` on
    CPUs, the budget elsewhere); ``taps``: the plan's :func:`device_taps` for x's device and dtype (built if
    None).
    """
    C, dev, dtype = check_width(block, x, plan), x.device, x.dtype
    if taps is None:
        taps = device_taps(tap_plan(plan), dev, dtype)
    M, K = taps.valid.shape
    check_encodings(pe, (M, K, C), dtype, dev)
    freq = block.pe.freq_bands

    def encode(c, e, out):
        if pe is not None:
            return pe[c:e].reshape((e - c) * K, C)
        return _centred_pe(taps.displacement[c:e], freq, dtype, out=out)

    pe0 = block.query_pe().to(dev, dtype).reshape(1, C)
    W = folded if folded is not None else fold_weights(block, dev, dtype)
    return attend_rows(x, W, taps, encode, lambda a, b: pe0, max_bytes, key_chunk_bytes)


def check_width(block, x: torch.Tensor, plan) -> int:
    """Validates features ((b m), C, h, w) against a level plan and the block's width; returns C."""
    check_features(x, plan)
    if x.shape[1] != block.dim:
        raise ValueError(f"{type(block).__name__} of width {block.dim} got {x.shape[1]}-channel features")
    return x.shape[1]


def attend_rows(x: torch.Tensor, W: FoldedWeights, taps: DeviceTaps, encode, query_pe, max_bytes: int,
                key_chunk_bytes: int | None) -> torch.Tensor:
    """The folded attention and feed-forward of every query pixel (module docstring): x ((b m), C, h, w) -> same.

    ``taps``: the level's :class:`DeviceTaps` (K keys per query row; the rows are the flattened (view, y, x) of
    one group); ``encode(c, e, out)``: the centred key encodings of rows [c, e) (see :class:`_KeyGather`);
    ``query_pe(a, b)``: the query encoding of rows [a, b), broadcastable to (b - a, C).
    """
    groups = x.shape[0] * x.shape[2] * x.shape[3] // taps.valid.shape[0]
    C, h, w = x.shape[1:]
    dev, dtype = x.device, x.dtype
    M, K = taps.valid.shape
    heads = C // HEAD_DIM
    scale = HEAD_DIM ** -0.5
    wv_t = W.wv.transpose(1, 2)  # (H, C, 32)
    bv = W.bv.reshape(1, C)

    if key_chunk_bytes is None:
        key_chunk_bytes = CPU_KEY_CHUNK_BYTES if dev.type == "cpu" else max_bytes
    per_query = bytes_per_query(C, K, x.element_size())
    key_chunk = max(1, min(M, min(max_bytes, key_chunk_bytes) // per_query))
    # projections and feed-forward: ~16 C floats per row (q, values, hidden, GEGLU 8 C + 4 C)
    row_chunk = max(1, min(M, MAX_ROW_CHUNK, max_bytes // (16 * C * max(x.element_size(), 4))))
    row_chunk = max(key_chunk, row_chunk // key_chunk * key_chunk)
    # the features as rows (group, view, pixel) -> C, one batched transpose (no loop over groups or views); the
    # rows also receive the block's output
    rows = torch.empty(groups * M, C, device=dev, dtype=dtype)
    rows.view(x.shape[0], h, w, C).copy_(x.permute(0, 2, 3, 1))
    # row-centred copy: a bilinear sample of it is the sample minus its channel mean
    centred = torch.sub(rows, rows.mean(dim=-1, keepdim=True))
    # buffers reused by every chunk (fresh big allocations cost page faults on CPUs)
    new = functools.partial(torch.empty, device=dev, dtype=dtype)
    q_buf, hidden_buf, ff_buf = new(row_chunk, C), new(row_chunk, C), new(row_chunk, 8 * C)
    q_heads, values = new(heads, row_chunk, HEAD_DIM), new(row_chunk, heads, HEAD_DIM)
    r_buf, z_buf, v_buf = new(heads, key_chunk, C), new(key_chunk, heads, C), new(heads, key_chunk, HEAD_DIM)
    keys = _KeyGather(taps, encode, key_chunk, C, dev, dtype)
    # row chunks [a, b) of the groups' rows one after the other, never across two groups (the taps, encodings
    # and query encodings are those of one group's rows [a - g M, b - g M)); no loop over groups or views
    bounds, a = [], 0
    while a < groups * M:
        bounds.append((a, min(a + row_chunk, (a // M + 1) * M)))
        a = bounds[-1][1]
    for start, stop in bounds:
        offset = start // M * M
        a, b = start - offset, stop - offset
        xq = rows[start:stop]
        query = torch.add(xq, query_pe(a, b), out=hidden_buf[:b - a])
        q = torch.mm(F.layer_norm(query, (C,), *W.norm1, W.eps), W.wq.t(), out=q_buf[:b - a])
        q = q.reshape(b - a, heads, HEAD_DIM)
        q_bias = (q * W.bk).sum(dim=-1, dtype=torch.float32).mul_(scale)[:, :, None]  # (n, H, 1): q_h · (W_k β)_h
        q_heads[:, :b - a].copy_(q.transpose(0, 1))  # head-major for the per-head products
        for c in range(a, b, key_chunk):
            e = min(b, c + key_chunk)
            n = e - c
            # centred keys d_k = kv_k - mean(kv_k): 4-tap samples of the centred map + centred pe
            d = keys(centred, c, e, offset).reshape(n, K, C)
            var = torch.linalg.vector_norm(d, dim=-1, dtype=torch.float32).square_().div_(C)
            coef = taps.valid[c:e] * torch.rsqrt(var.add_(W.eps))  # (n, K) float32: c_k
            # (n, H, C): r_h = W̃_k,hᵀ q_h
            r = torch.bmm(q_heads[:, c - a:e - a], W.wk, out=r_buf[:, :n]).transpose(0, 1)
            logits = torch.bmm(r, d.transpose(1, 2)).float()  # (n, H, K): r_h · d_k
            logits = torch.addcmul(q_bias[c - a:e - a], logits, (coef * scale)[:, None, :])
            if taps.absent is not None:  # padding keys take no part in the softmax
                logits.add_(taps.absent[c:e, None, :])
            attn = torch.softmax(logits, dim=-1).mul_(coef[:, None, :])  # a_hk c_k
            z = torch.bmm(attn.to(dtype), d, out=z_buf[:n])  # (n, H, C): Σ_k a_hk c_k d_k
            # W̃_v,h z_h (into a contiguous buffer: a strided `out` is much slower, above all on a busy CPU)
            values[c - a:e - a] = torch.bmm(z.transpose(0, 1), wv_t, out=v_buf[:, :n]).transpose(0, 1)
        hidden = torch.addmm(W.bo, values[:b - a].reshape(b - a, C).add_(bv), W.wo.t(),
                             out=hidden_buf[:b - a]).add_(xq)
        ff = torch.addmm(W.b1, F.layer_norm(hidden, (C,), *W.norm2, W.eps2), W.w1.t(), out=ff_buf[:b - a])
        gated = ff[:, :4 * C].mul_(torch.ops.aten.gelu_(ff[:, 4 * C:]))  # GEGLU: x * gelu(gate)
        torch.addmm(W.b2, gated, W.w2.t(), out=xq).add_(hidden)  # the rows [a, b) are not read again
    return like(x, rows.view(x.shape[0], h, w, C).permute(0, 3, 1, 2))

