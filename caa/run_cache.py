"""What one sampling run builds from the cameras and the CAA weights, kept for that run only.

Everything the CAA needs besides the features depends only on the cameras, the feature sizes and the weights:
the sampling plan of each UNet level (``geometry/sampling_plan.py``), the fast path's bilinear tap tables
(``caa/fast.py``), each block's folded weights, and the centred positional encodings of the keys. A
:class:`RunCache` builds each of them on first use (so once per run, never per step) and holds them until the
run ends; ``caa/patch.py`` creates one when sampling starts and drops it when sampling ends (the sampling
wrapper's ``finally`` and the host's cleanup), so nothing outlives the run. Nothing here is global.

The positional encodings are the large part (0.9 GiB for 8 views of 512 px in float32), so only the levels
that fit a budget are kept (:func:`pe_selection`): at most :data:`PE_CACHE_BYTES`, and at most
:data:`PE_CACHE_FRACTION` of the device's free memory when the run first needs them; the others are evaluated
chunk by chunk inside the fast path. ComfyUI's memory estimate counts the cached ones (``caa/patch.py``).
"""
from __future__ import annotations

import itertools

import torch

from ..geometry import sampling_plan
from .fast import centred_positional_encoding, device_taps, fold_weights, pe_bytes, tap_plan

__all__ = ["RunCache", "pe_candidates", "pe_selection", "PE_CACHE_BYTES", "PE_CACHE_FRACTION", "CAA_WORK_BYTES"]

# working memory of the fast path's query chunks (less when the device has less free memory)
CAA_WORK_BYTES = 256 << 20
# the per-run cache of positional encodings: at most this many bytes, and this fraction of the free memory
PE_CACHE_BYTES = 1 << 30
PE_CACHE_FRACTION = 0.25


def pe_candidates(sites, level_sizes: list, num_views: int, keys: int, element_size: int) -> dict:
    """``{(level, width): (bytes, number of blocks using it)}``: the positional encodings a run can cache
    (blocks of one width at one level share them). ``keys``: keys per query pixel (9 per neighbour)."""
    out = {}
    for site in sites:
        h, w = level_sizes[site.level]
        size = pe_bytes(num_views * h * w, keys, site.width, element_size)
        uses = out.get((site.level, site.width), (size, 0))[1]
        out[(site.level, site.width)] = (size, uses + 1)
    return out


def pe_selection(candidates: dict, budget: int) -> set:
    """The (level, width) entries of :func:`pe_candidates` to cache within ``budget`` bytes: the most encodings
    saved per forward (bytes times the blocks sharing them); every subset is tried (there are a handful)."""
    items = list(candidates.items())
    best, best_saved = set(), 0
    for n in range(1, len(items) + 1):
        for subset in itertools.combinations(items, n):
            size = sum(v[0] for _, v in subset)
            saved = sum(v[0] * v[1] for _, v in subset)
            if size <= budget and saved > best_saved:
                best, best_saved = {k for k, _ in subset}, saved
    return best


class RunCache:
    """The geometry and weight terms of one run (see the module docstring).

    ``rig``: the cameras; ``sites``: the CAA sites (``caa/placement.py``); ``level_sizes``: (h, w) per UNet
    level; ``free_memory``: ``device -> bytes`` (the host's estimate) or None (then the fixed budgets).
    """

    def __init__(self, rig, sites, level_sizes: list, free_memory=None):
        self.rig, self.sites, self.level_sizes, self.free_memory = rig, list(sites), list(level_sizes), free_memory
        self.keys = 9 * rig.max_neighbours
        self.plans = {}  # level -> the CPU float32 LevelPlan; (level, device, dtype) -> its copy
        self.taps = {}  # level -> TapPlan; (level, device, dtype) -> DeviceTaps
        self.folded = {}  # (id(block), device, dtype) -> FoldedWeights
        # (level, width, device, dtype) -> (freq_bands, encodings, {(id, data_ptr)} of the frequency buffers found
        # equal to freq_bands: blocks of one width share the entry when their frequencies are equal)
        self.encodings = {}
        self.selected = {}  # (device, dtype) -> the (level, width) entries chosen for the cache

    def plan(self, level: int, device=None, dtype=torch.float32):
        """The level's sampling plan: built once on the CPU in float32, copied once per (device, dtype)."""
        if level not in self.plans:
            self.plans[level] = sampling_plan.build_level_plan(self.rig, *self.level_sizes[level])
        if device is None and dtype == torch.float32:
            return self.plans[level]
        key = (level, device, dtype)
        if key not in self.plans:
            self.plans[key] = self.plans[level].to(device=device, dtype=dtype)
        return self.plans[key]

    def tap_plan(self, level: int):
        """The fast path's tap table of the level (CPU)."""
        if level not in self.taps:
            self.taps[level] = tap_plan(self.plan(level))
        return self.taps[level]

    def device_taps(self, level: int, device, dtype):
        """The level's tap table on ``device`` with its weights in ``dtype``."""
        key = (level, device, dtype)
        if key not in self.taps:
            self.taps[key] = device_taps(self.tap_plan(level), device, dtype)
        return self.taps[key]

    def folded_weights(self, block, device, dtype):
        key = (id(block), device, dtype)
        if key not in self.folded:
            self.folded[key] = fold_weights(block, device, dtype)
        return self.folded[key]

    def work_bytes(self, device) -> int:
        """The fast path's working-memory budget for its query chunks."""
        if self.free_memory is None:
            return CAA_WORK_BYTES
        return max(64 << 20, min(CAA_WORK_BYTES, int(self.free_memory(device) * 0.5)))

    def pe_budget(self, device) -> int:
        if self.free_memory is None:
            return PE_CACHE_BYTES
        return max(0, min(PE_CACHE_BYTES, int(self.free_memory(device) * PE_CACHE_FRACTION)))

    def positional_encodings(self, site, block, device, dtype):
        """The level's centred positional encodings for ``block`` (built on first use), or None when the budget
        leaves this level out (the fast path then evaluates them chunk by chunk)."""
        if (device, dtype) not in self.selected:
            element_size = torch.empty((), dtype=dtype).element_size()
            candidates = pe_candidates(self.sites, self.level_sizes, self.rig.num_views, self.keys, element_size)
            self.selected[(device, dtype)] = pe_selection(candidates, self.pe_budget(device))
        if (site.level, site.width) not in self.selected[(device, dtype)]:
            return None
        key, freq = (site.level, site.width, device, dtype), block.pe.freq_bands
        entry = self.encodings.get(key)
        # checked once per buffer and run (by identity; no version counters: the host's inference tensors have none)
        buffer = (id(freq), freq.data_ptr())
        if entry is None or buffer not in entry[2]:
            if entry is None or not torch.equal(entry[0], freq.to(entry[0].device)):
                pe = self.build_encoding(site.level, freq, device, dtype)
                entry = self.encodings[key] = (freq.detach().clone(), pe, set())
            entry[2].add(buffer)
        return entry[1]

    def build_encoding(self, level: int, freq: torch.Tensor, device, dtype) -> torch.Tensor:
        """A level's centred key encodings for the frequencies ``freq`` (what :meth:`positional_encodings` keeps)."""
        return centred_positional_encoding(self.plan(level), freq, device, dtype, taps=self.tap_plan(level))

    def nbytes(self) -> int:
        """Bytes of the tensors this cache holds (plans, taps, folded weights, encodings)."""
        seen, total = set(), 0

        def add(t):
            nonlocal total
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
            elif isinstance(t, (tuple, list)):
                for x in t:
                    add(x)
            elif hasattr(t, "__dataclass_fields__"):
                for name in t.__dataclass_fields__:
                    add(getattr(t, name))

        for table in (self.plans, self.taps, self.folded):
            for value in table.values():
                add(value)
        for freq, pe, _ in self.encodings.values():
            add(freq)
            add(pe)
        return total
