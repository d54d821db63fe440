"""The positional encoding of correspondence displacements (official ``PosEmbedding(2, dim // 4)``).

``pe(v)`` of a 2-vector ``v`` with ``N = dim // 4`` frequencies ``freq = base ** linspace(0, N-1, N)``, base 2
when ``N <= 80`` else ``5000 ** (1 / (N / 2.5))``, is ``[sin(v_x f), sin(v_y f), cos(v_x f), cos(v_y f)]``
(length 4N = dim). The frequencies reach 2^79, so the values are pseudo-random functions of the exact
float32 bits of ``v``; the trained weights expect exactly that: always evaluate in float32.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["PositionalEncoding", "frequency_bands", "positional_encoding"]


def frequency_bands(num_freqs: int) -> torch.Tensor:
    """The official frequency buffer (1, 1, N) float32."""
    base = 2 if num_freqs <= 80 else 5000 ** (1 / (num_freqs / 2.5))
    return base ** torch.linspace(0, num_freqs - 1, num_freqs)[None, None]


def positional_encoding(v: torch.Tensor, freq_bands: torch.Tensor) -> torch.Tensor:
    """``pe(v)``: v (..., 2) -> (..., 4N) float32, for ``freq_bands`` (1, 1, N)."""
    shape = v.shape[:-1]
    enc = v.float().reshape(-1, 2, 1) * freq_bands.float()
    return torch.cat([torch.sin(enc), torch.cos(enc)], dim=1).reshape(*shape, -1)


class PositionalEncoding(nn.Module):
    """Holds the ``freq_bands`` buffer under the official name; float32 whatever the module's dtype."""

    def __init__(self, num_freqs: int, device=None):
        super().__init__()
        self.register_buffer("freq_bands", frequency_bands(num_freqs).to(device))

    def bands(self) -> torch.Tensor:
        """The frequency buffer (1, 1, N), checked to be float32."""
        if self.freq_bands.dtype != torch.float32:
            raise RuntimeError("CAA positional-encoding frequencies must stay float32 (they reach 2^79, "
                               f"far beyond {self.freq_bands.dtype}); do not cast the CAA blocks' buffers")
        return self.freq_bands

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return positional_encoding(v, self.bands())

    def _apply(self, fn, *args, **kwargs):
        # keep the frequency buffer float32 when the module is cast (.half(), .to(dtype)); devices still move
        freq = self.freq_bands
        out = super()._apply(fn, *args, **kwargs)
        if self.freq_bands.dtype != torch.float32:
            self.freq_bands = freq.to(device=self.freq_bands.device)
        return out
