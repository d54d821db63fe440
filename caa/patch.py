"""Patching a ComfyUI UNet with CAA through the host's own ModelPatcher mechanisms.

Nothing here imports ComfyUI: the ModelPatcher is used through its public methods (duck typing), so this
module stays testable without the host. :func:`patch_model` returns a patched CLONE; the input model is never
touched, and everything it adds lives in that clone:

* encoder blocks: ``set_model_input_block_patch_after_skip`` (the skip is pushed before CAA, as officially);
* mid and decoder blocks: ``add_object_patch`` of the layer they follow or precede, replaced by a shallow copy
  whose class is a subclass of the original (extra work + the original forward). The copy shares every
  parameter with the original, so state-dict and LoRA keys are unchanged and the UNet's ``isinstance``
  dispatch still holds; ComfyUI puts the original back when the clone is unloaded;
* an ``outer_sample`` wrapper that validates the run before sampling starts (view count, latent size, and
  what would split or crop the views: area conditioning, context windows over the batch, multi-GPU);
* an ``on_clone`` callback: a clone normally shares the UNet, but where the host clones onto ANOTHER UNet
  instance (newer ComfyUI: multi-GPU copies, non-dynamic delegates), the layer copies are rebuilt from that
  UNet's own layers instead of grafting this one's into it;
* a ``prepare_sampling`` wrapper that adds CAA's working memory and its per-run cache to ComfyUI's
  ``memory_required`` estimate (the noise shape it passes on only feeds that estimate: it is enlarged by as many
  latent rows as CAA needs);
* the CAA weights' own ModelPatcher (when given) through the patch object's ``models()``, so ComfyUI's model
  management loads, counts and offloads it with the UNet.

Views of one scene are consecutive rows of every UNet call: a call holds k chunks of the whole latent batch
(cond/uncond), and the latent batch is s scenes of m views, so rows ``[g*m:(g+1)*m]`` are one scene of one
chunk. CAA runs on each group of m rows on its own: cond and uncond never mix, nor do scenes.
"""
from __future__ import annotations

import copy
import functools
import itertools

import torch

from ..geometry.cameras import Rig
from ..geometry.sampling_plan import level_plan, unet_level_sizes
from .fast import centred_positional_encoding, fast_forward, fold_weights, pe_bytes
from .placement import Site, check_sites, unet_sites

__all__ = ["MultiViewError", "MultiViewPatch", "patch_model", "wrap_layer", "unwrap_layer"]

WRAPPER_KEY = "mvdiffusion"
OUTER_SAMPLE = "outer_sample"  # comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
PREPARE_SAMPLING = "prepare_sampling"  # comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING
ON_CLONE = "on_clone"  # comfy.patcher_extension.CallbacksMP.ON_CLONE
VAE_FACTOR = 8
# working memory of the fast path's query chunks (less when the device has less free memory)
CAA_WORK_BYTES = 256 << 20
# the fast path's per-run cache of positional encodings (they only depend on the cameras and the level): at
# most this many bytes, and at most this fraction of the device's free memory when the run starts
PE_CACHE_BYTES = 1 << 30
PE_CACHE_FRACTION = 0.25
IMPLEMENTATIONS = ("fast", "reference")


class MultiViewError(ValueError):
    """A sampling run that MVDiffusion cannot serve, with what to change."""

    def __init__(self, message: str):
        super().__init__(f"MVDiffusion: {message}")


# ---- layer wrappers (object patches) -------------------------------------------------------------------------
_WRAPPER_CLASSES: dict = {}


def _wrapper_class(cls: type, position: str) -> type:
    key = (cls, position)
    if key not in _WRAPPER_CLASSES:
        if position == "before":
            def forward(self, x, *args, **kwargs):
                return cls.forward(self, self._mvd_hook(x), *args, **kwargs)
        elif position == "after":
            def forward(self, *args, **kwargs):
                return self._mvd_hook(cls.forward(self, *args, **kwargs))
        else:
            raise ValueError(f"position must be 'before' or 'after', got {position!r}")
        _WRAPPER_CLASSES[key] = type(f"MVDiffusion{position.title()}{cls.__name__}", (cls,),
                                     {"forward": forward, "__module__": __name__})
    return _WRAPPER_CLASSES[key]


def wrap_layer(layer: torch.nn.Module, hook, position: str) -> torch.nn.Module:
    """A shallow copy of ``layer`` that runs ``hook`` on its input ("before") or output ("after").

    The copy has its own module/parameter dictionaries holding the SAME children and tensors as ``layer``;
    ``layer`` itself is not modified.
    """
    layer = unwrap_layer(layer)
    wrapped = copy.copy(layer)
    for name in ("_modules", "_parameters", "_buffers"):
        wrapped.__dict__[name] = dict(layer.__dict__[name])
    wrapped.__class__ = _wrapper_class(type(layer), position)
    wrapped.__dict__["_mvd_hook"] = hook
    wrapped.__dict__["_mvd_original"] = layer
    return wrapped


def unwrap_layer(layer):
    """The original layer behind a :func:`wrap_layer` copy (or the layer itself)."""
    return layer.__dict__.get("_mvd_original", layer)


# ---- the patch ---------------------------------------------------------------------------------------------
class MultiViewPatch:
    """CAA for one model clone: the blocks, the rig, and where each block runs.

    ``caa``: a :class:`caa.blockset.CAASet`; ``weights``: the host ModelPatcher that holds ``caa`` (returned by
    ``models()`` so the host loads it), or None; ``implementation``: "fast" (``caa/fast.py``) or "reference"
    (the block's own forward); ``free_memory``: ``device -> bytes`` (the host's estimate), bounds the fast
    path's chunks and its cache.

    The fast path keeps two caches here, built on first use and dropped by the host's ``cleanup()``: each
    block's folded weights, and the centred positional encodings of the levels that fit the budget
    (:data:`PE_CACHE_BYTES`, at most :data:`PE_CACHE_FRACTION` of the free memory; blocks of one width at one
    level share them). They only depend on the cameras, so a step of a run never recomputes them.
    """

    def __init__(self, caa, rig: Rig, sites: list[Site], weights=None, implementation: str = "fast",
                 free_memory=None):
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.caa = caa
        self.rig = rig
        self.sites = list(sites)
        self.weights = weights
        self.implementation = implementation
        self.free_memory = free_memory
        if rig.height % VAE_FACTOR or rig.width % VAE_FACTOR:
            raise MultiViewError(f"the camera views are {rig.width}x{rig.height} px; width and height must be "
                                 f"multiples of {VAE_FACTOR}")
        levels = max(s.level for s in self.sites) + 1
        self.level_sizes = unet_level_sizes(rig.height, rig.width, levels, VAE_FACTOR)
        self._encoder = {s.target: s for s in self.sites if s.hook == "after_input_block"}
        self._folded = {}  # (block, device, dtype) -> FoldedWeights, built once per run
        # (level, width, device, dtype) -> (freq_bands, centred positional encodings, {(id, data_ptr)} of the
        # blocks' frequency buffers checked equal to freq_bands), built once per run
        self._pe = {}
        self._pe_cached = {}  # (device, dtype) -> {(level, width)} chosen for the cache

    # ComfyUI calls patch objects with (h, transformer_options) for input_block_patch_after_skip
    def __call__(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        block = transformer_options.get("block")
        if not block or block[0] != "input":
            return h
        site = self._encoder.get(block[1])
        return h if site is None else self.run(site, h)

    def block(self, site: Site):
        if site.kind == "mid":
            return self.caa.cp_blocks_mid
        return (self.caa.cp_blocks_encoder if site.kind == "encoder" else self.caa.cp_blocks_decoder)[site.index]

    def run(self, site: Site, h: torch.Tensor) -> torch.Tensor:
        """Apply the site's block to the features h ((groups * m), C, h, w)."""
        m = self.rig.num_views
        expected = self.level_sizes[site.level]
        if tuple(h.shape[-2:]) != expected:
            raise MultiViewError(
                f"the UNet's level-{site.level} features are {h.shape[-2]}x{h.shape[-1]} but cameras of "
                f"{self.rig.width}x{self.rig.height} px expect {expected[0]}x{expected[1]}: something resized or "
                "cropped the latent (area conditioning, Deep Shrink, a different image size); "
                "MVDiffusion needs every view whole at the cameras' size")
        if h.shape[0] % m:
            raise MultiViewError(f"the UNet got a batch of {h.shape[0]} images, not a multiple of the {m} camera views "
                                 "(something split the views of a scene apart)")
        plan = level_plan(self.rig, expected[0], expected[1], h.device, h.dtype)
        block = self.block(site)
        if self.implementation == "reference":
            return block(h, plan)
        key = (id(block), h.device, h.dtype)
        if key not in self._folded:
            self._folded[key] = fold_weights(block, h.device, h.dtype)
        return fast_forward(block, h, plan, self._folded[key], self.work_bytes(h.device),
                            pe=self.positional_encodings(site, block, plan, h.device, h.dtype))

    def work_bytes(self, device) -> int:
        if self.free_memory is None:
            return CAA_WORK_BYTES
        return max(64 << 20, min(CAA_WORK_BYTES, int(self.free_memory(device) * 0.5)))

    # ---- per-run cache of the positional encodings (fast path) ----
    def pe_candidates(self, element_size: int) -> dict:
        """``{(level, width): (bytes, number of blocks using it)}``: the positional encodings a run can cache
        (blocks of one width at one level share them)."""
        keys = 9 * len(self.rig.neighbours[0])
        out = {}
        for site in self.sites:
            h, w = self.level_sizes[site.level]
            size = pe_bytes(self.rig.num_views * h * w, keys, site.width, element_size)
            uses = out.get((site.level, site.width), (size, 0))[1]
            out[(site.level, site.width)] = (size, uses + 1)
        return out

    def pe_selection(self, element_size: int, budget: int) -> set:
        """The (level, width) entries to cache within ``budget`` bytes: the most encodings saved per forward
        (bytes times the blocks sharing them); every subset is tried (there are a handful)."""
        items = list(self.pe_candidates(element_size).items())
        best, best_saved = set(), 0
        for n in range(1, len(items) + 1):
            for subset in itertools.combinations(items, n):
                size = sum(v[0] for _, v in subset)
                saved = sum(v[0] * v[1] for _, v in subset)
                if size <= budget and saved > best_saved:
                    best, best_saved = {k for k, _ in subset}, saved
        return best

    def pe_budget(self, device) -> int:
        if self.free_memory is None:
            return PE_CACHE_BYTES
        return max(0, min(PE_CACHE_BYTES, int(self.free_memory(device) * PE_CACHE_FRACTION)))

    def positional_encodings(self, site: Site, block, plan, device, dtype):
        """This level's centred positional encodings for ``block`` from the run's cache (built on first use), or
        None when the budget leaves them out (the fast path then evaluates them chunk by chunk)."""
        if (device, dtype) not in self._pe_cached:
            element_size = torch.empty((), dtype=dtype).element_size()
            self._pe_cached[(device, dtype)] = self.pe_selection(element_size, self.pe_budget(device))
        if (site.level, site.width) not in self._pe_cached[(device, dtype)]:
            return None
        key, freq = (site.level, site.width, device, dtype), block.pe.freq_bands
        entry = self._pe.get(key)
        # blocks of one width share the entry when their frequencies are equal (checked once per buffer and run,
        # like the folded weights; no version counters: the host's inference tensors have none)
        buffer = (id(freq), freq.data_ptr())
        if entry is None or buffer not in entry[2]:
            if entry is None or not torch.equal(entry[0], freq.to(entry[0].device)):
                entry = (freq.detach().clone(), centred_positional_encoding(plan, freq, device, dtype), set())
                self._pe[key] = entry
            entry[2].add(buffer)
        return entry[1]

    def hook(self, site: Site):
        return functools.partial(self.run, site)

    def apply_layer_patches(self, patcher, own_layers: bool = False) -> None:
        """Object-patch ``patcher`` with layer copies that run the mid/decoder blocks.

        The copied layer is the patcher's current object (its own object patch if it has one, so patches of
        other packs on the same layer are kept), or with ``own_layers`` the layer of the patcher's UNet itself.
        """
        for site in self.sites:
            if site.hook == "after_input_block":
                continue
            layer = _module_at(patcher.model, site.target) if own_layers else patcher.get_model_object(site.target)
            position = "after" if site.hook == "after_layer" else "before"
            patcher.add_object_patch(site.target, wrap_layer(layer, self.hook(site), position))

    def on_clone(self, source, clone) -> None:
        """ComfyUI's ON_CLONE callback: when the clone holds another UNet instance, rebuild the layer copies."""
        if getattr(clone, "model", None) is not getattr(source, "model", None):
            self.apply_layer_patches(clone, own_layers=True)

    # ---- memory estimate (prepare_sampling wrapper) ----
    def extra_memory(self, latent_batch: int, element_size: int) -> int:
        """Bytes CAA needs on top of the UNet for a latent batch (cond and uncond): the fast path's copies of
        the biggest level's features (centred rows, result, chunk buffers), its query-chunk working memory and
        its per-run cache of positional encodings."""
        (h, w), width = self.level_sizes[0], max(s.width for s in self.sites if s.level == 0)
        features = 3 * 2 * latent_batch * h * w * width * element_size
        if self.implementation == "reference":
            return features + CAA_WORK_BYTES
        candidates = self.pe_candidates(element_size)
        pe = sum(candidates[k][0] for k in self.pe_selection(element_size, PE_CACHE_BYTES))
        return features + CAA_WORK_BYTES + pe

    def prepare_sampling(self, executor, model, noise_shape, conds, *args, **kwargs):
        per_row = model.model.memory_required([1] + list(noise_shape[1:]))
        element_size = torch.empty((), dtype=model.model_dtype()).element_size()
        if per_row > 0:
            extra_rows = -(-self.extra_memory(noise_shape[0], element_size) // int(2 * per_row))
            noise_shape = [noise_shape[0] + extra_rows] + list(noise_shape[1:])
        return executor(model, noise_shape, conds, *args, **kwargs)

    # ---- validation before sampling (outer_sample wrapper) ----
    def outer_sample(self, executor, noise, latent_image, *args, **kwargs):
        guider = getattr(executor, "class_obj", None)
        self.validate(tuple(latent_image.shape), getattr(guider, "conds", None) or {},
                      getattr(guider, "model_options", None) or {}, getattr(guider, "model_patcher", None))
        return executor(noise, latent_image, *args, **kwargs)

    def validate(self, latent_shape: tuple, conds: dict, model_options: dict, model_patcher=None) -> None:
        m = self.rig.num_views
        if len(latent_shape) != 4:
            raise MultiViewError(f"expected an image latent (batch, channels, height, width), got shape {latent_shape}")
        if latent_shape[0] % m:
            raise MultiViewError(f"the latent batch holds {latent_shape[0]} images, but the cameras have {m} views: "
                                 f"use a batch of {m} (or a multiple of {m} for several scenes), e.g. "
                                 "'Empty Panorama Latent' or Empty Latent Image with batch_size "
                                 f"{m}")
        want = self.level_sizes[0]
        if tuple(latent_shape[-2:]) != want:
            raise MultiViewError(
                f"the latent is {latent_shape[-1] * VAE_FACTOR}x{latent_shape[-2] * VAE_FACTOR} px "
                f"({latent_shape[-1]}x{latent_shape[-2]} latent) but the cameras are {self.rig.width}x{self.rig.height}"
                " px: make the latent and the Panorama Cameras the same size")
        for name, cond_list in conds.items():
            for cond in cond_list or []:
                if isinstance(cond, dict) and cond.get("area") is not None:
                    raise MultiViewError(f"area conditioning ({name}) crops the latent and would cut the views apart; "
                                         "remove ConditioningSetArea (per-view prompts: use 'Panorama Prompts')")
        if model_options.get("context_handler") is not None:
            raise MultiViewError("context windows split the batch of views; remove the context-windows node from "
                                 "this model")
        multigpu = getattr(model_patcher, "get_additional_models_with_key", lambda key: [])("multigpu")
        if model_options.get("multigpu_clones") or model_options.get("multigpu_options") or multigpu:
            raise MultiViewError("multi-GPU splitting would send the views of one scene to different GPUs; "
                                 "sample MVDiffusion on one GPU")

    # ---- ModelPatcher patch-object protocol ----
    def models(self) -> list:
        return [self.weights] if self.weights is not None else []

    def to(self, device_or_dtype):
        return self

    def cleanup(self) -> None:
        """Called by the host after sampling: drop the per-run caches, folded weights and positional encodings
        (rebuilt on the next run)."""
        self._folded.clear()
        self._pe.clear()
        self._pe_cached.clear()

    def __deepcopy__(self, memo):
        # ComfyUI 0.3.x deep-copies model_options on clone: share this (immutable) patch instead of copying
        # the CAA weights with it
        return self


def patch_model(model_patcher, caa, rig: Rig, weights=None, implementation: str = "fast", free_memory=None):
    """A clone of ``model_patcher`` with CAA applied (replacing any earlier MVDiffusion patch on it).

    Raises ValueError when the UNet is not SD-like or the CAA widths do not fit it.
    """
    clone = model_patcher.clone()
    sites = unet_sites(clone.get_model_object("diffusion_model"))
    check_sites(sites, caa.widths)
    patch = MultiViewPatch(caa, rig, sites, weights, implementation, free_memory)

    transformer_options = clone.model_options.setdefault("transformer_options", {})
    patches = transformer_options.setdefault("patches", {})
    previous = patches.get("input_block_patch_after_skip", [])
    patches["input_block_patch_after_skip"] = [p for p in previous if not isinstance(p, MultiViewPatch)]
    clone.set_model_input_block_patch_after_skip(patch)
    patch.apply_layer_patches(clone)
    for kind, wrapper in ((OUTER_SAMPLE, patch.outer_sample), (PREPARE_SAMPLING, patch.prepare_sampling)):
        clone.remove_wrappers_with_key(kind, WRAPPER_KEY)
        clone.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)
    clone.remove_callbacks_with_key(ON_CLONE, WRAPPER_KEY)
    clone.add_callback_with_key(ON_CLONE, WRAPPER_KEY, patch.on_clone)
    return clone


def _module_at(root, path: str):
    """The submodule at a dotted ``path`` of ``root`` (e.g. "diffusion_model.output_blocks.2.2")."""
    for name in path.split("."):
        root = getattr(root, name)
    return root
