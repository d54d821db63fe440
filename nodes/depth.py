"""The depth model's nodes: Depth Conditioning (the UNet's 5th channel), Apply MVDiffusion (Depth), Key-Frame
Conditioning, and the glue both stages of the official two-stage generation share."""
from __future__ import annotations

import logging

import torch
import comfy.model_management
import node_helpers
from comfy_api.latest import io

from ..caa.condition import key_frame_condition
from ..caa.depth_patch import DEPTH_CHANNEL_KEY, DEPTH_UNET_IN, patch_depth_model
from ..geometry.depth_condition import inverse_depth_condition, views_without_depth
from .io_types import CATEGORY, CAA, DepthScene, KeyFrames, Scene, named
from .sampling import unet_in_channels

__all__ = ["DepthConditioning", "ApplyMVDiffusionDepth", "KeyFrameConditioning", "depth_conditioning",
           "apply_depth", "KeyFrameLatents"]

log = logging.getLogger(__name__)


def depth_conditioning(positive, negative, frames):
    """(positive, negative, empty latent) for the frames: both conditionings carry the normalised inverse depth
    as ``noise_concat`` (n, 1, H/8, W/8), which the host feeds to the UNet as its 5th input channel."""
    depth = inverse_depth_condition(frames.depths)[:, None]
    missing = views_without_depth(frames.depths)
    if missing:
        log.warning("MVDiffusion: frames without any valid depth (their 5th channel is -2 everywhere and their "
                    "keys are masked): %s", ", ".join(frames.names[i] for i in missing))
    values = {DEPTH_CHANNEL_KEY: depth}
    pos, neg = (node_helpers.conditioning_set_values(c, values) for c in (positive, negative))
    latent = torch.zeros(frames.num_frames, 4, frames.height // 8, frames.width // 8,
                         device=comfy.model_management.intermediate_device())
    return pos, neg, {"samples": latent}


class KeyFrameLatents:
    """Key frames for the interpolation stage: ``latents`` (k, 4, h, w) as the VAE encodes them (unscaled) and the
    ``positions`` (view indices) they take among ``views`` views."""

    def __init__(self, latents: torch.Tensor, positions, views: int):
        self.latents, self.positions, self.views = latents, [int(p) for p in positions], int(views)
        key_frame_condition(latents, self.positions, self.views)  # the same checks as at use

    def condition(self, model) -> torch.Tensor:
        """(m, 5, h, w): the scaled latents (the model's own latent format) and the mask."""
        return key_frame_condition(model.model.process_latent_in(self.latents), self.positions, self.views)


def check_depth_inputs(model, caa) -> None:
    if getattr(caa, "caa", None) is None:
        raise ValueError(f"{caa.info.get('source', 'these weights')} has no CAA blocks (depth_single_view.ckpt is "
                         "the single-view model): load depth_gen.ckpt for views that agree with each other")
    if not getattr(caa, "is_depth", False):
        raise ValueError(f"these are {caa.info.get('kind', 'panorama')} CAA weights: the depth model needs "
                         "depth_gen.ckpt's (or use 'Apply MVDiffusion' for panoramas)")
    have = unet_in_channels(model)
    if have is not None and have != DEPTH_UNET_IN:
        raise ValueError(f"the MODEL's UNet has {have} input channels; the depth CAA needs the SD2-depth UNet (5: "
                         "latent + depth), e.g. depth_gen.ckpt through Load MVDiffusion Checkpoint")


def apply_depth(model, caa, correspondences, key_frames: KeyFrameLatents | None = None):
    """A patched clone of ``model`` (ValueError with what to change)."""
    check_depth_inputs(model, caa)
    condition = None
    if key_frames is not None:
        if key_frames.views != correspondences.num_views:
            raise ValueError(f"the key frames were placed among {key_frames.views} views but the correspondences "
                             f"have {correspondences.num_views}")
        condition = key_frames.condition(model)
    free_memory = getattr(model, "get_free_memory", None) or comfy.model_management.get_free_memory
    return patch_depth_model(model, caa.caa, correspondences, weights=caa.patcher, condition=condition,
                             free_memory=free_memory)


class DepthConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionDepthConditioning", display_name="Depth Conditioning", category=CATEGORY,
            description="Gives the SD2-depth UNet its 5th input channel: each frame's inverse depth normalised to "
                        "[-1, 1] with its own min/max (pixels without depth -2), at the latent size, as the official "
                        "dataset code computes it. Also gives the empty latent of the frames.",
            inputs=[io.Conditioning.Input("positive", tooltip="The prompt (CLIP Text Encode of the depth checkpoint)."),
                    io.Conditioning.Input("negative", tooltip="The negative prompt (official: empty)."),
                    Scene.Input("scene", tooltip="The frames to generate (the same as the correspondences').")],
            outputs=[io.Conditioning.Output(display_name="positive"),
                     io.Conditioning.Output(display_name="negative"),
                     io.Latent.Output(display_name="latent", tooltip="One empty latent per frame, in frame order.")],
        )

    @classmethod
    def execute(cls, positive, negative, scene) -> io.NodeOutput:
        with named("Depth Conditioning"):
            return io.NodeOutput(*depth_conditioning(positive, negative, scene))


class ApplyMVDiffusionDepth(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionApplyDepth", display_name="Apply MVDiffusion (Depth)", category=CATEGORY,
            description="Adds the depth model's correspondence-aware attention to a copy of the model, so any "
                        "sampler generates the frames of a scanned scene together, consistent with each other and "
                        "with the depth. With key frames, also the interpolation stage's condition.",
            inputs=[io.Model.Input("model", tooltip="The SD2-depth MODEL of depth_gen.ckpt."),
                    CAA.Input("caa", tooltip="depth_gen.ckpt's CAA (Load MVDiffusion Checkpoint)."),
                    DepthScene.Input("correspondences", tooltip="From Depth Correspondences, of the frames the "
                                                                "latent batch holds, in the same order."),
                    KeyFrames.Input("key_frames", optional=True,
                                    tooltip="Key-Frame Conditioning: generate the frames between known key frames.")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, caa, correspondences, key_frames=None) -> io.NodeOutput:
        with named("Apply MVDiffusion (Depth)"):
            return io.NodeOutput(apply_depth(model, caa, correspondences, key_frames))


def parse_positions(text: str, views: int) -> list[int]:
    """'first,last' or view indices ('0, 11'; negative counts from the end) -> view indices."""
    out = []
    for item in (t.strip().lower() for t in str(text).split(",")):
        if not item:
            continue
        if item in ("first", "last"):
            out.append(0 if item == "first" else views - 1)
            continue
        try:
            index = int(item)
        except ValueError:
            raise ValueError(f"key-frame position {item!r} is neither 'first', 'last' nor a view index") from None
        out.append(index + views if index < 0 else index)
    return out


class KeyFrameConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionKeyFrameConditioning", display_name="Key-Frame Conditioning", category=CATEGORY,
            description="Known key frames for the interpolation stage (official: the two generated key frames at "
                        "both ends of a group of frames): their VAE latents with mask 1, zeros with mask 0 for the "
                        "frames to generate. Connect to Apply MVDiffusion (Depth).",
            inputs=[io.Vae.Input("vae", tooltip="The depth checkpoint's VAE (encodes the key frames)."),
                    io.Image.Input("images", tooltip="The key frames' images, one per position, in that order."),
                    DepthScene.Input("correspondences", tooltip="The frames of the group (key frames included)."),
                    io.String.Input("positions", default="first,last",
                                    tooltip="Where the key frames are among the group's frames: 'first', 'last' or "
                                            "indices, comma-separated.")],
            outputs=[KeyFrames.Output(display_name="key_frames")],
        )

    @classmethod
    def execute(cls, vae, images, correspondences, positions) -> io.NodeOutput:
        with named("Key-Frame Conditioning"):
            views = correspondences.num_views
            where = parse_positions(positions, views)
            if images.shape[0] != len(where):
                raise ValueError(f"{images.shape[0]} key-frame images for {len(where)} positions ({positions!r})")
            size = (correspondences.height, correspondences.width)
            if tuple(images.shape[1:3]) != size:
                raise ValueError(f"the key-frame images are {images.shape[2]}x{images.shape[1]} but the frames are "
                                 f"{size[1]}x{size[0]}")
            return io.NodeOutput(KeyFrameLatents(vae.encode(images[..., :3]), where, views))
