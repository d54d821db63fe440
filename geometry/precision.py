"""Float32 as the geometry contract means it: plain IEEE float32 matrix products.

The correspondences feed positional encodings whose frequencies reach 2^79 (panorama) or ~1.7e9 rad/m (depth),
so the matrix products that build them must not run with reduced-precision inputs (TF32 on CUDA, bf16 on CPUs
with oneDNN) even when the host, or a script, selected them (``torch.set_float32_matmul_precision("medium")``,
as the official training and test scripts do).
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["ieee_float32_matmul"]


@contextlib.contextmanager
def ieee_float32_matmul():
    """Within the block, float32 matrix products are plain IEEE float32 on the CPU and on CUDA (no TF32 / bf16
    inputs), whatever precision the host selected; its settings are restored afterwards."""
    backends = [getattr(b, "matmul", None) for b in (torch.backends.mkldnn, torch.backends.cuda)]
    backends = [b for b in backends if b is not None and hasattr(b, "fp32_precision")]
    if not backends:  # torch < 2.9: the legacy switch only
        saved = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(saved)
        return
    saved = [b.fp32_precision for b in backends]
    try:
        for b in backends:
            b.fp32_precision = "ieee"
        yield
    finally:
        for b, precision in zip(backends, saved):
            b.fp32_precision = precision
