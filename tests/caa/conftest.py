"""Shared inputs of the CAA tests: blocks with random weights and random feature maps (no ComfyUI needed)."""
from __future__ import annotations

import pytest
import torch

from comfyui_mvdiffusion.caa.block import CorrespondenceAttention


def _randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            norm = "norm" in name or ".bn" in name
            if norm and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif norm:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel() if p.ndim > 2 else p.shape[-1]  # convolutions: C_in k k
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
    return module


def _random_block(dim: int, seed: int = 0, freq_scale: float | None = None) -> CorrespondenceAttention:
    block = _randomise(CorrespondenceAttention(dim).eval(), seed)
    with torch.no_grad():
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
def randomised():
    """``randomised(module, seed=0)``: the module with every parameter random as in ``random_block`` (norm and
    GroupNorm ``bn`` weights around 1, other weights scaled by 1/sqrt(fan_in)); returns the module."""
    return _randomise


def _attending_only_to_invalid_keys(transformer, query: torch.Tensor) -> torch.Tensor:
    # every key is the zero vector -> LayerNorm gives norm1.bias -> the value W_v @ bias; softmax is uniform
    t = transformer
    attended = t.attn1.to_out(t.attn1.to_v(t.norm1.bias)) + query
    return t.ff(t.norm2(attended)) + attended


@pytest.fixture(scope="session")
def all_keys_invalid():
    """``all_keys_invalid(transformer, query (C,)) -> (C,)``: a CAA transformer's output for a query whose keys
    are all invalid (zero vectors, so each is norm1.bias after the LayerNorm)."""
    return _attending_only_to_invalid_keys


@pytest.fixture(scope="session")
def features():
    """``features(n, dim, size, seed=1)``: n random square feature maps (n, dim, size, size), mean 0.3, std 2."""
    return _features
