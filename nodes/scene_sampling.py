"""The interpolation stage of the official two-stage generation (``lightning_depth.py`` ``test_step``): for each
group of Select Key Frames (key frame, in-betweens, key frame), the group's frames are generated together with
the depth CAA and the two key frames as the condition; the key frames' regenerated views are discarded."""
from __future__ import annotations

import json

import torch
import comfy.utils
import nodes as host_nodes
from comfy_api.latest import io

from ..caa.patch import MultiViewError
from ..geometry.depth_correspondences import NEIGHBOUR_OVERLAP
from ..scenes import scene_correspondences
from .depth import KeyFrameLatents, apply_depth, depth_conditioning
from .io_types import CATEGORY, CAA, Scene
from .sampling import sampler_inputs

__all__ = ["InBetweenFrames", "parse_groups", "generate_in_betweens"]

NODE = "Generate In-Between Frames"


def parse_groups(text: str, num_frames: int) -> tuple[list[int], list[list[int]]]:
    """Select Key Frames' ``groups`` JSON -> (key frames, groups), checked against the scene's frame count."""
    try:
        data = json.loads(text)
        keys = [int(k) for k in data["key_frames"]]
        groups = [[int(f) for f in g] for g in data["groups"]]
    except (ValueError, TypeError, KeyError):
        raise ValueError("'groups' must be the groups output of Select Key Frames (JSON with key_frames and "
                         "groups)") from None
    for group in [keys] + groups:
        if any(f < 0 or f >= num_frames for f in group):
            raise ValueError(f"the groups name frames outside the scene's 0..{num_frames - 1} (were they made from "
                             "another scene?)")
    for group in groups:
        if len(group) < 3 or group[0] not in keys or group[-1] not in keys:
            raise ValueError(f"group {group} is not 'key frame, in-betweens, key frame'")
    return keys, groups


def generate_in_betweens(model, caa, vae, frames, groups_text: str, key_images: torch.Tensor, positive, negative,
                         seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                         threshold: float = NEIGHBOUR_OVERLAP):
    """(images of every frame the key frames and groups cover, in frame order; those frames as a scene)."""
    keys, groups = parse_groups(groups_text, frames.num_frames)
    if key_images.shape[0] != len(keys):
        raise ValueError(f"{key_images.shape[0]} key-frame images for the {len(keys)} key frames of the groups")
    if tuple(key_images.shape[1:3]) != (frames.height, frames.width):
        raise ValueError(f"the key-frame images are {key_images.shape[2]}x{key_images.shape[1]} but the frames are "
                         f"{frames.width}x{frames.height}")
    index = {k: i for i, k in enumerate(keys)}
    images = {k: key_images[i, ..., :3] for i, k in enumerate(keys)}
    key_latents = vae.encode(key_images[..., :3])  # once: every inner key frame ends two groups
    progress = comfy.utils.ProgressBar(len(groups))
    for g, group in enumerate(groups):
        sub = frames.select(group)
        correspondences = scene_correspondences(sub, threshold)
        pos, neg, latent = depth_conditioning(positive, negative, sub)
        ends = key_latents[[index[group[0]], index[group[-1]]]]
        key_frames = KeyFrameLatents(ends, [0, len(group) - 1], len(group))
        patched = apply_depth(model, caa, correspondences, key_frames)
        (out,) = host_nodes.common_ksampler(patched, seed + g, steps, cfg, sampler_name, scheduler, pos, neg, latent)
        decoded = vae.decode(out["samples"])
        for j, frame in enumerate(group[1:-1], start=1):
            images[frame] = decoded[j].to(key_images.device)
        del patched, decoded
        progress.update(1)
    order = sorted(images)
    return torch.stack([images[f] for f in order]), frames.select(order)


class InBetweenFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionInBetweenFrames", display_name=NODE, category=CATEGORY,
            description="The official interpolation stage: every group of Select Key Frames (key frame, up to 10 "
                        "frames, key frame) is generated together with the depth CAA and the two generated key "
                        "frames as the condition, from fresh noise (seed + group index). Gives all frames in order.",
            inputs=[io.Model.Input("model", tooltip="depth_gen.ckpt's MODEL, not patched (each group is patched "
                                                    "with its own correspondences)."),
                    CAA.Input("caa", tooltip="depth_gen.ckpt's CAA."),
                    io.Vae.Input("vae", tooltip="The depth checkpoint's VAE (encodes the key frames, decodes the "
                                                "frames)."),
                    Scene.Input("scene", tooltip="All frames (Select Key Frames' input scene)."),
                    io.String.Input("groups", force_input=True, tooltip="Select Key Frames' groups."),
                    io.Image.Input("key_images", tooltip="The generated key frames, in key-frame order."),
                    io.Conditioning.Input("positive", tooltip="The prompt (without Depth Conditioning: each group "
                                                              "gets its own)."),
                    io.Conditioning.Input("negative", tooltip="The negative prompt (official: empty)."),
                    *sampler_inputs("Noise seed of the first group; group g uses seed + g.",
                                    "Denoising steps per group."),
                    io.Float.Input("threshold", default=NEIGHBOUR_OVERLAP, min=0.0, max=1.0, step=0.01,
                                   tooltip="Neighbour overlap of the depth CAA (official 0.3).")],
            outputs=[io.Image.Output(display_name="images", tooltip="Every frame the groups cover, in frame order."),
                     Scene.Output(display_name="scene", tooltip="Those frames (for Save Scene Point Cloud).")],
        )

    @classmethod
    def execute(cls, model, caa, vae, scene, groups, key_images, positive, negative, seed, steps, cfg, sampler_name,
                scheduler, threshold) -> io.NodeOutput:
        try:
            return io.NodeOutput(*generate_in_betweens(model, caa, vae, scene, groups, key_images, positive,
                                                       negative, seed, steps, cfg, sampler_name, scheduler,
                                                       threshold))
        except (MultiViewError, ValueError) as e:
            raise ValueError(f"{NODE}: {str(e).removeprefix('MVDiffusion: ')}") from None

