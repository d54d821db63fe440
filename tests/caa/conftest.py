"""Shared inputs of the CAA tests: blocks with random weights and random feature maps (no ComfyUI needed)."""
from __future__ import annotations

import pytest
import torch

from comfyui_mvdiffusion.caa.block import CorrespondenceAttention


def _random_block(dim: int, seed: int = 0, freq_scale: float | None = None) -> CorrespondenceAttention:
    gen = torch.Generator().manual_seed(seed)
    block = CorrespondenceAttention(dim).eval()
    with torch.no_grad():
        for name, p in block.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif "norm" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
        if freq_scale is not None:
            block.pe.freq_bands.copy_(torch.linspace(0.05, freq_scale, dim // 4)[None, None])
    return block


def _features(n: int, dim: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, dim, size, size, generator=torch.Generator().manual_seed(seed)) * 2 + 0.3


@pytest.fixture(scope="session")
def random_block():
    """``random_block(dim, seed=0, freq_scale=None)``: a CAA block of width ``dim`` in eval mode with every
    parameter random (norm weights around 1, other weights scaled by 1/sqrt(fan_in)), reproducible from
    ``seed``; ``freq_scale`` replaces the positional-encoding frequencies by ``linspace(0.05, freq_scale)``."""
    return _random_block


@pytest.fixture(scope="session")
def features():
    """``features(n, dim, size, seed=1)``: n random square feature maps (n, dim, size, size), mean 0.3, std 2."""
    return _features
