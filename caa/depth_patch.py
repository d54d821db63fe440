"""Patching a ComfyUI SD2-depth UNet with the depth model's CAA and key-frame condition (official
``src/models/depth/MVDepthModel.py``), through the same host mechanisms as the panorama patch (``caa/patch.py``,
whose wrappers, callbacks, grouping checks and memory estimate it inherits).

What differs from the panorama model:

* the blocks are depth ``CPBlock``s driven by the per-level plans of a :class:`scenes.SceneCorrespondences`
  (built once by 'Depth Correspondences'), moved to the run's device once per run; "fast" runs them through
  ``caa/depth_fast.py``, "reference" through the blocks' own forward (``caa/depth_block.py``, the oracle); the
  mid block runs after the WHOLE mid block (``caa/placement.depth_sites``);
* a scene of one view runs no block (the official skips CAA when m = 1);
* the optional key-frame condition: a (m, 5, h, w) tensor ([latent of the key frame | 1] for key frames,
  zeros for the others) goes through the condition encoders once per run, and each level's state is added
  to the input of every down level (before the host pushes it as a skip: the official in-place add), once
  more before the mid block, and to the input of every up level (``caa/placement.condition_sites``). Every
  group of m rows (each cond/uncond chunk, each scene sample) gets the same m states, as the official feeds
  the condition to both halves of its classifier-free-guidance batch;
* the run is validated for the 5th input channel: every conditioning must carry ``noise_concat`` (from
  'Depth Conditioning') of the latent's size.
"""
from __future__ import annotations

import torch

from .depth_blockset import DepthCAASet
from .depth_fast import depth_centred_encoding, depth_cp_fast_forward, depth_key_terms
from .layers import module_at, wrap_layer
from .patch import MultiViewError, MultiViewPatch, install
from .placement import Site, check_sites, condition_sites, depth_sites
from .run_cache import RunCache

__all__ = ["DepthPatch", "DepthRunCache", "patch_depth_model", "DEPTH_UNET_IN", "DEPTH_CHANNEL_KEY",
           "conditionings_without_depth"]

DEPTH_UNET_IN = 5  # 4 latent channels + the depth channel
DEPTH_CHANNEL_KEY = "noise_concat"  # the conditioning key that carries the depth channel (the host's c_concat)


def conditionings_without_depth(conds: dict) -> list[str]:
    """The names (sorted) of a sampling run's conditionings ({"positive": [dict, ...], ...}) of which some entry
    carries no depth channel."""
    return sorted(name for name, entries in conds.items()
                  if any(isinstance(e, dict) and DEPTH_CHANNEL_KEY not in e for e in entries or ()))


class DepthRunCache(RunCache):
    """What one run builds (``caa/run_cache.py``, with the scene in the rig's place): each level's plan on the
    run's device, the fast path's key terms (``caa/depth_fast.py``), folded weights and key encodings within the
    cache's budget, and the condition encoders' states per (device, dtype)."""

    def __init__(self, patch: "DepthPatch"):
        super().__init__(patch.scene, patch.sites, patch.level_sizes, patch.free_memory)
        self.patch = patch
        self.keys = patch.scene.max_neighbours
        self.terms: dict = {}
        self.states: dict = {}

    def plan(self, level: int, device=None, dtype=torch.float32):
        key = (level, str(device))
        if key not in self.plans:
            self.plans[key] = self.patch.scene.plans[self.level_sizes[level]].to(device)
        return self.plans[key]

    def key_terms(self, level: int, device, dtype):
        key = (level, str(device), dtype)
        if key not in self.terms:
            self.terms[key] = depth_key_terms(self.plan(level, device), device, dtype)
        return self.terms[key]

    def build_encoding(self, level: int, freq: torch.Tensor, device, dtype) -> torch.Tensor:
        return depth_centred_encoding(self.key_terms(level, device, dtype), freq, dtype)

    def condition_states(self, device, dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(down states, up states) of the key-frame condition, each (m, C_level, h_level, w_level)."""
        key = (str(device), dtype)
        if key not in self.states:
            with torch.no_grad():
                self.states[key] = self.patch.caa.condition(self.patch.condition.to(device, dtype))
        return self.states[key]


class DepthPatch(MultiViewPatch):
    """The depth model's CAA for one model clone: ``caa`` a :class:`DepthCAASet`, ``scene`` a
    :class:`scenes.SceneCorrespondences` (it plays the rig's part: views, size, neighbours), ``condition``
    (m, 5, h, w) at the latent size or None, ``condition_places`` the :func:`condition_sites` of the UNet."""

    keys_per_neighbour = 1

    def __init__(self, caa: DepthCAASet, scene, sites: list[Site], condition_places, weights=None,
                 condition: torch.Tensor | None = None, implementation: str = "fast", free_memory=None):
        super().__init__(caa, scene, sites, weights, implementation, free_memory)
        self.scene, self.condition = scene, condition
        missing = [f"{w}x{h}" for h, w in self.level_sizes if (h, w) not in scene.plans]
        if missing:
            raise MultiViewError(f"the correspondences have no plan for the UNet's {', '.join(missing)} levels "
                                 f"(views of {scene.width}x{scene.height} px): build them again for this model")
        self.down_ids, self.mid_target, self.up_ids = condition_places
        if condition is not None:
            want = (scene.num_views, 5, *self.level_sizes[0])
            if not caa.has_condition:
                raise MultiViewError("these depth CAA weights have no condition encoders, so they cannot take "
                                     "key frames: use depth_gen.ckpt's")
            if tuple(condition.shape) != want:
                raise MultiViewError(f"the key-frame condition is {tuple(condition.shape)}, expected {want} "
                                     f"({scene.num_views} views, latent + mask, at the latent size)")

    # ---- the blocks -------------------------------------------------------------------------------------------
    def new_run_cache(self) -> DepthRunCache:
        return DepthRunCache(self)

    def forward_block(self, site: Site, h: torch.Tensor, cache: DepthRunCache) -> torch.Tensor:
        if self.scene.num_views < 2:
            return h
        block, plan = self.block(site), cache.plan(site.level, h.device)
        if self.implementation == "reference":
            return block(h, plan)
        return depth_cp_fast_forward(block, h, plan, folded=cache.folded_weights(block.attn1, h.device, h.dtype),
                                     max_bytes=cache.work_bytes(h.device),
                                     pe=cache.positional_encodings(site, block.attn1, h.device, h.dtype),
                                     terms=cache.key_terms(site.level, h.device, h.dtype))

    # ---- the key-frame condition ------------------------------------------------------------------------------
    def block_patches(self) -> dict:
        if self.condition is None:
            return {}
        return {"input_block_patch": self.add_down_condition, "output_block_patch": self.add_up_condition}

    def _state(self, states: list[torch.Tensor], level: int, h: torch.Tensor) -> torch.Tensor:
        m = self.scene.num_views
        if h.shape[0] % m:
            raise MultiViewError(f"the UNet got {h.shape[0]} images, not a multiple of the {m} views")
        state = states[level].repeat(h.shape[0] // m, 1, 1, 1)
        if state.shape != h.shape:
            raise MultiViewError(f"the key-frame condition of level {level} is {tuple(state.shape[1:])} but the "
                                 f"UNet's features are {tuple(h.shape[1:])}")
        return state

    def _states(self, h: torch.Tensor):
        return (self.run_cache or self.new_run_cache()).condition_states(h.device, h.dtype)

    def add_down_condition(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        """The host's ``input_block_patch``: the condition at the input of each down level."""
        block = transformer_options.get("block") or ("", -1)
        if block[0] != "input" or block[1] not in self.down_ids:
            return h
        level = self.down_ids.index(block[1])
        return h + self._state(self._states(h)[0], level, h)

    def add_mid_condition(self, h: torch.Tensor) -> torch.Tensor:
        """Before the mid block: the deepest down state again (the official's leaked loop variable)."""
        return h + self._state(self._states(h)[0], len(self.down_ids) - 1, h)

    def add_up_condition(self, h: torch.Tensor, skip: torch.Tensor, transformer_options: dict):
        """The host's ``output_block_patch``: the condition at the input of each up level."""
        block = transformer_options.get("block") or ("", -1)
        if block[0] != "output" or block[1] not in self.up_ids:
            return h, skip
        level = self.up_ids.index(block[1])
        return h + self._state(self._states(h)[1], level, h), skip

    def apply_layer_patches(self, patcher, own_layers: bool = False) -> None:
        super().apply_layer_patches(patcher, own_layers)
        if self.condition is not None:
            layer = module_at(patcher.model, self.mid_target) if own_layers else patcher.get_model_object(self.mid_target)
            patcher.add_object_patch(self.mid_target, wrap_layer(layer, self.add_mid_condition, "before"))

    # ---- the run ----------------------------------------------------------------------------------------------
    def validate(self, latent_shape: tuple, conds: dict, model_options: dict, model_patcher=None) -> None:
        super().validate(latent_shape, conds, model_options, model_patcher)
        lacking = conditionings_without_depth(conds)
        if lacking:
            raise MultiViewError(f"the {' and '.join(lacking)} conditioning has no depth channel: the depth model's "
                                 "5th input channel comes from 'Depth Conditioning' (connect both the positive and "
                                 "the negative conditioning through it)")
        m, size = self.scene.num_views, tuple(latent_shape[-2:])
        for name, cond_list in conds.items():
            for cond in cond_list or []:
                if not isinstance(cond, dict):
                    continue
                depth = cond[DEPTH_CHANNEL_KEY]
                rows = int(depth.shape[0])
                if depth.ndim != 4 or depth.shape[1] != 1 or tuple(depth.shape[-2:]) != size \
                        or (rows != 1 and (rows % m or latent_shape[0] % rows)):
                    raise MultiViewError(f"the {name} conditioning's depth channel is {tuple(depth.shape)}, but the "
                                         f"{m} views need ({m}, 1, {size[0]}, {size[1]}): make it with 'Depth "
                                         "Conditioning' from the same frames as the correspondences")


def patch_depth_model(model_patcher, caa: DepthCAASet, scene, weights=None, condition: torch.Tensor | None = None,
                      implementation: str = "fast", free_memory=None):
    """A clone of ``model_patcher`` with the depth CAA (and the key-frame ``condition``, if any) applied; the
    input model is never touched. Raises ValueError when the UNet is not SD2-like or the weights do not fit."""
    clone = model_patcher.clone()
    unet = clone.get_model_object("diffusion_model")
    sites = depth_sites(unet)
    check_sites(sites, caa.widths)
    return install(clone, DepthPatch(caa, scene, sites, condition_sites(unet), weights, condition, implementation,
                                     free_memory))
