"""Shared inputs and measures of the geometry tests: the real 360° street photograph as float tensors in [0, 1],
and the PSNR of two images."""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

STREET = Path(__file__).resolve().parents[1] / "fixtures" / "panoramas" / "street_2048x1024.jpg"


@functools.lru_cache(maxsize=4)
def _street(width: int) -> torch.Tensor:
    image = Image.open(STREET).convert("RGB")
    if image.width != width:
        image = image.resize((width, width // 2), Image.LANCZOS)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="session")
def street():
    """``street(width)``: the street panorama (1, 3, width/2, width), Lanczos-downscaled from 2048x1024."""
    return lambda width=2048: _street(int(width)).clone()


def psnr_db(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of images in [0, 1], over the pixels where ``mask`` (broadcast to the images) is true."""
    err = (a.double() - b.double()) ** 2
    if mask is not None:
        err = err[mask.expand_as(err)]
    return 10 * math.log10(1.0 / err.mean().item())


@pytest.fixture(scope="session")
def psnr():
    """``psnr(a, b, mask=None)``: PSNR in dB of images in [0, 1] (over the pixels where the bool mask is true)."""
    return psnr_db


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    """These tensors are small: one intra-op thread is as fast, and on a busy shared CPU it avoids OpenMP threads
    spinning against each other (measured here: 6 s instead of 60 s for this directory). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
