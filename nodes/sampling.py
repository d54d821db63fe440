"""Patching the host's MODEL with MVDiffusion, and the multi-view KSampler."""
from __future__ import annotations

import comfy.model_management
import comfy.samplers
import nodes as host_nodes
from comfy_api.latest import io

from ..caa.patch import MultiViewError, patch_model
from .io_types import CATEGORY, CAA, Cameras


# the UNet input channels each kind of CAA weights was trained with
UNET_INPUTS = {"pano": (4, "an SD2-base model (512-base-ema, or pano.ckpt through Load MVDiffusion Checkpoint)"),
               "pano_outpaint": (9, "an SD2-inpainting model (512-inpainting-ema, or pano_outpaint.ckpt through "
                                    "Load MVDiffusion Checkpoint)")}


MODEL_TOOLTIP = ("An SD2 model: SD2-base for pano CAA weights, SD2-inpainting (9 input channels) for pano_outpaint "
                 "CAA weights.")


def sampler_inputs(seed_tooltip: str, steps_tooltip: str = "Denoising steps.") -> list:
    """seed, steps, cfg, sampler_name, scheduler with the official defaults (DDIM, 50 steps, guidance 9)."""
    return [io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                         tooltip=seed_tooltip),
            io.Int.Input("steps", default=50, min=1, max=10000, tooltip=steps_tooltip),
            io.Float.Input("cfg", default=9.0, min=0.0, max=100.0, step=0.1, round=0.01,
                           tooltip="Classifier-free guidance scale (official 9)."),
            io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="ddim",
                           tooltip="Sampling algorithm (official: DDIM)."),
            io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="ddim_uniform",
                           tooltip="Noise schedule.")]


def unet_in_channels(model) -> int | None:
    """The input channels of the MODEL's UNet (4 SD2-base, 9 SD2-inpainting), or None when unknown."""
    config = getattr(getattr(model.model, "model_config", None), "unet_config", None) or {}
    channels = config.get("in_channels", getattr(model.get_model_object("diffusion_model"), "in_channels", None))
    return None if channels is None else int(channels)


def check_model_kind(model, caa) -> None:
    """Refuse CAA weights trained for another kind of UNet (pano CAA on an inpainting UNet, outpaint CAA on
    SD2-base): they would run but their attention was trained on other features."""
    kind = caa.info.get("kind", "pano")
    if getattr(caa, "is_depth", False):
        raise ValueError(f"these are the depth model's weights ({caa.info.get('source', '?')}): use 'Apply "
                         "MVDiffusion (Depth)' with Depth Correspondences")
    if kind not in UNET_INPUTS:
        return
    want, which = UNET_INPUTS[kind]
    have = unet_in_channels(model)
    if have is not None and have != want:
        what = {4: "a 4-channel (SD2-base) UNet", 9: "a 9-channel (inpainting) UNet"}.get(have,
                                                                                          f"a {have}-channel UNet")
        raise ValueError(f"the CAA weights are {kind} weights ({caa.info.get('source', '?')}), made for "
                         f"{want}-channel UNets, but the MODEL is {what}: connect {which}")


def apply_mvdiffusion(node: str, model, caa, cameras):
    """A patched clone of ``model`` (the input MODEL is left untouched); errors name ``node``."""
    try:
        check_model_kind(model, caa)
        # newer hosts: the patcher's estimate also counts memory a dynamic-VRAM allocator can reclaim
        free_memory = getattr(model, "get_free_memory", None) or comfy.model_management.get_free_memory
        return patch_model(model, caa.caa, cameras, weights=caa.patcher, free_memory=free_memory)
    except ValueError as e:
        raise node_error(node, e) from None


def node_error(node: str, error: Exception) -> ValueError:
    return ValueError(f"{node}: {str(error).removeprefix('MVDiffusion: ')}")


class ApplyMVDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionApply",
            display_name="Apply MVDiffusion",
            category=CATEGORY,
            description="Adds correspondence-aware attention to a copy of the model, so that any sampler samples "
                        "all camera views of a scene together. The latent batch must hold the views in camera "
                        "order (a multiple of the number of views).",
            inputs=[
                io.Model.Input("model", tooltip=MODEL_TOOLTIP),
                CAA.Input("caa", tooltip="From Load MVDiffusion Checkpoint or Load CAA Weights."),
                Cameras.Input("cameras", tooltip="From Panorama Cameras or Sphere Cameras: the views the latent batch holds."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, caa, cameras) -> io.NodeOutput:
        return io.NodeOutput(apply_mvdiffusion("Apply MVDiffusion", model, caa, cameras))


class MVDiffusionKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionKSampler",
            display_name="MVDiffusion KSampler",
            category=CATEGORY,
            description="Samples all camera views of each scene together with correspondence-aware attention "
                        "(defaults: the official DDIM, 50 steps, guidance 9).",
            inputs=[
                io.Model.Input("model", tooltip=MODEL_TOOLTIP),
                CAA.Input("caa", tooltip="From Load MVDiffusion Checkpoint or Load CAA Weights."),
                Cameras.Input("cameras", tooltip="From Panorama Cameras or Sphere Cameras."),
                io.Conditioning.Input("positive", tooltip="One prompt for all views, or one per view "
                                                          "(Panorama Prompts)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (official: empty)."),
                io.Latent.Input("latent_image", tooltip="scenes x views latents in camera order, at the cameras' "
                                                        "size (Empty Panorama Latent)."),
                *sampler_inputs("Noise seed; every view gets its own independent noise."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Amount of denoising (below 1 keeps part of the input latent)."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, caa, cameras, positive, negative, latent_image, seed, steps, cfg, sampler_name,
                scheduler, denoise) -> io.NodeOutput:
        name = "MVDiffusion KSampler"
        samples = latent_image["samples"]
        m = cameras.num_views
        if samples.shape[0] % m:
            raise ValueError(f"{name}: the latent batch holds {samples.shape[0]} images, not a multiple of the "
                             f"{m} camera views: use Empty Panorama Latent (or a batch of {m})")
        patched = apply_mvdiffusion(name, model, caa, cameras)
        try:
            (out,) = host_nodes.common_ksampler(patched, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                                latent_image, denoise=denoise)
        except MultiViewError as e:
            raise node_error(name, e) from None
        return io.NodeOutput(out)
