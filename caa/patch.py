"""Patching a ComfyUI UNet with CAA through the host's own ModelPatcher mechanisms.

Nothing here imports ComfyUI: the ModelPatcher is used through its public methods (duck typing), so this
module stays testable without the host. :func:`patch_model` returns a patched CLONE; the input model is never
touched, and everything it adds lives in that clone:

* encoder blocks: ``set_model_input_block_patch_after_skip`` (the skip is pushed before CAA, as officially);
* mid and decoder blocks: ``add_object_patch`` of the layer they follow or precede with a layer copy that runs
  the block (``caa/layers.py``);
* a ``diffusion_model`` wrapper that checks, at every UNet call, how the host grouped the batch (below);
* an ``outer_sample`` wrapper that validates the run before sampling starts (view count, latent size,
  conditioning rows, and what would split or crop the views: area conditioning, context windows over the
  batch, multi-GPU) and owns the run's cache (``caa/run_cache.py``: plans, tap tables, folded weights,
  positional encodings), dropped in its ``finally``; an ``on_cleanup`` callback drops it too (the host's
  cleanup, on every version; newer hosts also call the patch object's ``cleanup()``);
* an ``on_clone`` callback: a clone normally shares the UNet, but where the host clones onto ANOTHER UNet
  instance (newer ComfyUI: multi-GPU copies, non-dynamic delegates), the layer copies are rebuilt from that
  UNet's own layers instead of grafting this one's into it;
* a ``prepare_sampling`` wrapper that adds CAA's working memory and its per-run cache to ComfyUI's
  ``memory_required`` estimate (the noise shape it passes on only feeds that estimate: it is enlarged by as many
  latent rows as CAA needs);
* the CAA weights' own ModelPatcher (when given) through the patch object's ``models()``, so ComfyUI's model
  management loads, counts and offloads it with the UNet.

Views of one scene are consecutive rows of every UNet call. The host (``comfy/samplers.py``) puts k chunks of
the WHOLE latent batch in one call, ``transformer_options["cond_or_uncond"][j]`` naming chunk j, and the latent
batch is s scenes of m views: so each chunk must hold a multiple of m rows, and rows ``[g*m:(g+1)*m]`` are then
one scene of one chunk. CAA runs on each group of m rows on its own: cond and uncond never mix, nor do scenes;
a call whose chunks would cut a scene's views apart is refused with a message.
"""
from __future__ import annotations

import functools

import torch

from ..geometry.cameras import Rig
from ..geometry.sampling_plan import unet_level_sizes
from .fast import fast_forward
from .layers import module_at, wrap_layer
from .placement import Site, check_sites, unet_sites
from .run_cache import CAA_WORK_BYTES, PE_CACHE_BYTES, RunCache, pe_candidates, pe_selection

__all__ = ["MultiViewError", "MultiViewPatch", "patch_model", "install", "reference_peak_bytes"]

WRAPPER_KEY = "mvdiffusion"
# comfy.patcher_extension.WrappersMP / CallbacksMP names
OUTER_SAMPLE, PREPARE_SAMPLING, DIFFUSION_MODEL = "outer_sample", "prepare_sampling", "diffusion_model"
ON_CLONE, ON_CLEANUP = "on_clone", "on_cleanup"
VAE_FACTOR = 8
IMPLEMENTATIONS = ("fast", "reference")


class MultiViewError(ValueError):
    """A sampling run that MVDiffusion cannot serve, with what to change."""

    def __init__(self, message: str):
        super().__init__(f"MVDiffusion: {message}")


# allocator slack of the reference block's estimate (reference_peak_bytes)
REFERENCE_SLACK = 16 << 20


def reference_peak_bytes(rows: int, views: int, keys: int, channels: int, height: int, width: int,
                         element_size: int) -> int:
    """Peak working memory of the reference block (``caa/block.py``) on ``rows`` feature maps of C x h x w
    (groups of ``views`` views, ``keys`` keys per query pixel).

    It materialises the keys of every query pixel, E = rows K C h w numbers, several times at once: the
    samples and the keys with their encodings (briefly together), then the masked keys, their LayerNorm, the
    key and value projections and the attention's working copies (measured on the CPU: 4.8 to 5.1 E besides
    the encodings; counted as 6 E); plus the float32 encodings (views K h w C), a few tensors of the
    queries' size (rows C h w) and 16 MiB of allocator slack (without it, a 600 MiB block's peak varied
    between 540 and 607 MiB, 2 MiB above the count, in fresh processes)."""
    e = rows * keys * channels * height * width
    return 6 * e * element_size + 4 * (e * views // rows) + 4 * (e // keys) * element_size + REFERENCE_SLACK


class MultiViewPatch:
    """CAA for one model clone: the blocks, the rig, and where each block runs.

    ``caa``: a :class:`caa.blockset.CAASet`; ``weights``: the host ModelPatcher that holds ``caa`` (returned by
    ``models()`` so the host loads it), or None; ``implementation``: "fast" (``caa/fast.py``) or "reference"
    (the block's own forward); ``free_memory``: ``device -> bytes`` (the host's estimate), bounds the fast
    path's chunks and its cache. ``run_cache``: the :class:`RunCache` of the sampling run under way (None
    between runs).
    """

    keys_per_neighbour = 9  # the attention's keys per query pixel and neighbour (3x3 around the correspondence)

    def __init__(self, caa, rig: Rig, sites: list[Site], weights=None, implementation: str = "fast",
                 free_memory=None):
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.caa, self.rig, self.sites, self.weights = caa, rig, list(sites), weights
        self.implementation, self.free_memory = implementation, free_memory
        if rig.height % VAE_FACTOR or rig.width % VAE_FACTOR:
            raise MultiViewError(f"the camera views are {rig.width}x{rig.height} px; width and height must be "
                                 f"multiples of {VAE_FACTOR}")
        levels = max(s.level for s in self.sites) + 1
        self.level_sizes = unet_level_sizes(rig.height, rig.width, levels, VAE_FACTOR)
        self._encoder = {s.target: s for s in self.sites if s.hook == "after_input_block"}
        self.run_cache: RunCache | None = None

    # ---- the blocks -------------------------------------------------------------------------------------------
    def __call__(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        """ComfyUI's ``input_block_patch_after_skip``: the encoder block after its input block, if any."""
        block = transformer_options.get("block")
        if not block or block[0] != "input":
            return h
        site = self._encoder.get(block[1])
        return h if site is None else self.run(site, h)

    mvdiffusion_patch = True  # tells this pack's block patches apart from other packs' (install())

    def block_patches(self) -> dict:
        """Host block patches besides the encoder blocks' (none for the panorama model)."""
        return {}

    def hook(self, site: Site):
        return functools.partial(self.run, site)

    def block(self, site: Site):
        if site.kind == "mid":
            return self.caa.cp_blocks_mid
        return (self.caa.cp_blocks_encoder if site.kind == "encoder" else self.caa.cp_blocks_decoder)[site.index]

    def run(self, site: Site, h: torch.Tensor) -> torch.Tensor:
        """Apply the site's block to the features h ((groups * m), C, h, w)."""
        expected = self.level_sizes[site.level]
        if tuple(h.shape[-2:]) != expected:
            raise MultiViewError(
                f"the UNet's level-{site.level} features are {h.shape[-2]}x{h.shape[-1]} but cameras of "
                f"{self.rig.width}x{self.rig.height} px expect {expected[0]}x{expected[1]}: something resized or "
                "cropped the latent (area conditioning, Deep Shrink, a different image size); "
                "MVDiffusion needs every view whole at the cameras' size")
        self.check_grouping(h.shape[0], None)
        return self.forward_block(site, h, self.run_cache or self.new_run_cache())

    def forward_block(self, site: Site, h: torch.Tensor, cache: RunCache) -> torch.Tensor:
        """The site's block on features whose size and grouping were checked, with the run's cache."""
        block = self.block(site)
        if self.implementation == "reference":
            return block(h, cache.plan(site.level, h.device, h.dtype))
        return fast_forward(block, h, cache.plan(site.level), cache.folded_weights(block, h.device, h.dtype),
                            cache.work_bytes(h.device), pe=cache.positional_encodings(site, block, h.device, h.dtype),
                            taps=cache.device_taps(site.level, h.device, h.dtype))

    def new_run_cache(self) -> RunCache:
        """A cache for everything a run builds (outside a sampling run: for one direct UNet call)."""
        return RunCache(self.rig, self.sites, self.level_sizes, self.free_memory)

    # ---- how the host grouped the batch (diffusion_model wrapper) ---------------------------------------------
    def check_grouping(self, rows: int, cond_or_uncond) -> None:
        """Refuse a UNet call whose rows cannot be cut into whole scenes of m views within each cond/uncond chunk.

        ``cond_or_uncond``: the host's list naming the call's chunks (None: unknown, one chunk)."""
        m = self.rig.num_views
        chunks = len(cond_or_uncond) if cond_or_uncond else 1
        if rows % chunks:
            raise MultiViewError(f"the UNet got {rows} rows for {chunks} cond/uncond chunks: the chunks differ in "
                                 "size, so the views of a scene cannot be found")
        if (rows // chunks) % m:
            what = f"{chunks} cond/uncond chunks of {rows // chunks} images" if chunks > 1 else f"{rows} images"
            raise MultiViewError(f"the UNet got {what}, not a multiple of the {m} camera views (something split "
                                 "the views of a scene apart, or the latent batch does not hold whole scenes)")

    def diffusion_model(self, executor, x, *args, **kwargs):
        """ComfyUI's ``diffusion_model`` wrapper: check the call's grouping from the host's own chunk list."""
        options = args[4] if len(args) > 4 else kwargs.get("transformer_options", {})
        self.check_grouping(x.shape[0], (options or {}).get("cond_or_uncond"))
        return executor(x, *args, **kwargs)

    # ---- the run: validation before sampling, its cache, and its end -----------------------------------------
    def outer_sample(self, executor, noise, latent_image, *args, **kwargs):
        """ComfyUI's ``outer_sample`` wrapper: validate the run, give it a fresh cache, drop the cache after."""
        guider = getattr(executor, "class_obj", None)
        self.validate(tuple(latent_image.shape), getattr(guider, "conds", None) or {},
                      getattr(guider, "model_options", None) or {}, getattr(guider, "model_patcher", None))
        self.begin_run()
        try:
            return executor(noise, latent_image, *args, **kwargs)
        finally:
            self.end_run()

    def begin_run(self) -> RunCache:
        """Start a run: a fresh cache for everything the run builds (until :meth:`end_run`)."""
        self.run_cache = self.new_run_cache()
        return self.run_cache

    def end_run(self, *args) -> None:
        """Drop everything the run built (plans, tap tables, folded weights, encodings). Also the host's
        ``on_cleanup`` callback (called with the patcher) and, on newer hosts, its ``cleanup()`` call."""
        self.run_cache = None

    cleanup = end_run

    def validate(self, latent_shape: tuple, conds: dict, model_options: dict, model_patcher=None) -> None:
        m = self.rig.num_views
        if len(latent_shape) != 4:
            raise MultiViewError(f"expected an image latent (batch, channels, height, width), got shape {latent_shape}")
        if latent_shape[0] % m:
            raise MultiViewError(f"the latent batch holds {latent_shape[0]} images, but the cameras have {m} views: "
                                 f"use a batch of {m} (or a multiple of {m} for several scenes), e.g. "
                                 f"'Empty Panorama Latent' or Empty Latent Image with batch_size {m}")
        want = self.level_sizes[0]
        if tuple(latent_shape[-2:]) != want:
            raise MultiViewError(
                f"the latent is {latent_shape[-1] * VAE_FACTOR}x{latent_shape[-2] * VAE_FACTOR} px "
                f"({latent_shape[-1]}x{latent_shape[-2]} latent) but the cameras are {self.rig.width}x{self.rig.height}"
                " px: make the latent and the Panorama Cameras the same size")
        for name, cond_list in conds.items():
            for cond in cond_list or []:
                if not isinstance(cond, dict):
                    continue
                if cond.get("area") is not None or cond.get("set_area_to_bounds"):
                    raise MultiViewError(f"area conditioning ({name}) crops the latent and would cut the views apart; "
                                         "remove ConditioningSetArea, or set ConditioningSetMask's set_cond_area to "
                                         "'default' (per-view prompts: use 'Panorama Prompts')")
                self.check_rows(name, cond.get("cross_attn"), latent_shape[0])
        if model_options.get("context_handler") is not None:
            raise MultiViewError("context windows split the batch of views; remove the context-windows node from "
                                 "this model")
        multigpu = getattr(model_patcher, "get_additional_models_with_key", lambda key: [])("multigpu")
        if model_options.get("multigpu_clones") or model_options.get("multigpu_options") or multigpu:
            raise MultiViewError("multi-GPU splitting would send the views of one scene to different GPUs; "
                                 "sample MVDiffusion on one GPU")

    def check_rows(self, name: str, cond, batch: int) -> None:
        """A conditioning tensor (rows, tokens, C) must have 1 row (every view) or one per view (of one scene,
        repeated for every scene, or of every scene): the host repeats or truncates other counts silently."""
        rows, m = (int(cond.shape[0]) if isinstance(cond, torch.Tensor) and cond.ndim == 3 else 1), self.rig.num_views
        if rows != 1 and (rows % m or batch % rows):
            raise MultiViewError(
                f"the {name} conditioning has {rows} rows, but with {m} camera views (latent batch {batch}) it needs "
                f"1 row (shared by every view) or one per view ({m} rows in view order, or {batch} for every view "
                "of every scene): check what combined it (e.g. ConditioningConcat of conditionings with different "
                "row counts, or a batch of prompts made for another number of views)")

    # ---- memory estimate (prepare_sampling wrapper) ----------------------------------------------------------
    def extra_memory(self, latent_batch: int, element_size: int) -> int:
        """Bytes CAA needs on top of the UNet for a latent batch (cond and uncond: 2 rows per latent)."""
        rows = 2 * latent_batch
        (h, w), width = self.level_sizes[0], max(s.width for s in self.sites if s.level == 0)
        if self.implementation == "reference":
            keys = self.keys_per_neighbour * self.rig.max_neighbours
            return max(reference_peak_bytes(rows, self.rig.num_views, keys, s.width, *self.level_sizes[s.level],
                                            element_size) for s in self.sites)
        # the fast path: copies of the biggest level's features (rows, centred rows, result), its query-chunk
        # working memory and its per-run cache of positional encodings
        features = 3 * rows * h * w * width * element_size
        keys = self.keys_per_neighbour * self.rig.max_neighbours
        candidates = pe_candidates(self.sites, self.level_sizes, self.rig.num_views, keys, element_size)
        pe = sum(candidates[k][0] for k in pe_selection(candidates, PE_CACHE_BYTES))
        return features + CAA_WORK_BYTES + pe

    def prepare_sampling(self, executor, model, noise_shape, conds, *args, **kwargs):
        per_row = model.model.memory_required([1] + list(noise_shape[1:]))
        element_size = torch.empty((), dtype=model.model_dtype()).element_size()
        if per_row > 0:
            extra_rows = -(-self.extra_memory(noise_shape[0], element_size) // int(2 * per_row))
            noise_shape = [noise_shape[0] + extra_rows] + list(noise_shape[1:])
        return executor(model, noise_shape, conds, *args, **kwargs)

    # ---- layer copies and clones -----------------------------------------------------------------------------
    def apply_layer_patches(self, patcher, own_layers: bool = False) -> None:
        """Object-patch ``patcher`` with layer copies that run the mid/decoder blocks.

        The copied layer is the patcher's current object (its own object patch if it has one, so patches of
        other packs on the same layer are kept), or with ``own_layers`` the layer of the patcher's UNet itself.
        """
        for site in self.sites:
            if site.hook == "after_input_block":
                continue
            layer = module_at(patcher.model, site.target) if own_layers else patcher.get_model_object(site.target)
            position = "after" if site.hook == "after_layer" else "before"
            patcher.add_object_patch(site.target, wrap_layer(layer, self.hook(site), position))

    def on_clone(self, source, clone) -> None:
        """ComfyUI's ON_CLONE callback: when the clone holds another UNet instance, rebuild the layer copies."""
        if getattr(clone, "model", None) is not getattr(source, "model", None):
            self.apply_layer_patches(clone, own_layers=True)

    # ---- ModelPatcher patch-object protocol ------------------------------------------------------------------
    def models(self) -> list:
        return [self.weights] if self.weights is not None else []

    def to(self, device_or_dtype):
        return self

    def __deepcopy__(self, memo):
        # ComfyUI 0.3.x deep-copies model_options on clone: share this patch instead of copying the CAA weights
        return self


def patch_model(model_patcher, caa, rig: Rig, weights=None, implementation: str = "fast", free_memory=None):
    """A clone of ``model_patcher`` with CAA applied (replacing any earlier MVDiffusion patch on it).

    Raises ValueError when the UNet is not SD-like or the CAA widths do not fit it.
    """
    clone = model_patcher.clone()
    sites = unet_sites(clone.get_model_object("diffusion_model"))
    check_sites(sites, caa.widths)
    return install(clone, MultiViewPatch(caa, rig, sites, weights, implementation, free_memory))


def install(clone, patch: MultiViewPatch):
    """Put ``patch`` on the ModelPatcher ``clone`` (replacing any earlier MVDiffusion patch on it): its encoder
    blocks, layer copies, wrappers and callbacks, and the extra block patches it declares (``block_patches()``:
    ``{patch kind: callable}`` for the host's ``set_model_patch``). Returns ``clone``."""
    transformer_options = clone.model_options.setdefault("transformer_options", {})
    patches = transformer_options.setdefault("patches", {})
    extra = patch.block_patches()
    for kind in ("input_block_patch_after_skip", *extra):
        patches[kind] = [p for p in patches.get(kind, [])  # bound methods: their instance tells
                         if not getattr(getattr(p, "__self__", p), "mvdiffusion_patch", False)]
    clone.set_model_input_block_patch_after_skip(patch)
    for kind, function in extra.items():
        clone.set_model_patch(function, kind)
    patch.apply_layer_patches(clone)
    for kind, wrapper in ((OUTER_SAMPLE, patch.outer_sample), (PREPARE_SAMPLING, patch.prepare_sampling),
                          (DIFFUSION_MODEL, patch.diffusion_model)):
        clone.remove_wrappers_with_key(kind, WRAPPER_KEY)
        clone.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)
    for kind, callback in ((ON_CLONE, patch.on_clone), (ON_CLEANUP, patch.end_run)):
        clone.remove_callbacks_with_key(kind, WRAPPER_KEY)
        clone.add_callback_with_key(kind, WRAPPER_KEY, callback)
    return clone
