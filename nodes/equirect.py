"""Equirectangular nodes: stitch the views into a 360° panorama, and cut views out of one."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..geometry.equirect import BLENDS, equirect_to_views, views_to_equirect
from .io_types import CATEGORY, Cameras


class EquirectangularStitch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionEquirectStitch",
            display_name="Equirectangular Stitch",
            category=CATEGORY,
            description="Projects the views onto an equirectangular 360° panorama (longitude 0 at the centre "
                        "column = view 0) and blends their overlaps. Also returns which pixels the views cover.",
            inputs=[
                io.Image.Input("images", tooltip="The views in camera order (scenes x views images)."),
                Cameras.Input("cameras", tooltip="The cameras the views were made with."),
                io.Int.Input("width", default=4096, min=64, max=16384, step=8, tooltip="Panorama width (2 x height)."),
                io.Int.Input("height", default=2048, min=32, max=8192, step=8, tooltip="Panorama height."),
                io.Combo.Input("blend", options=list(BLENDS), default="ramp",
                               tooltip="ramp: the official horizontal weight ramp; feather: seam-free blending "
                                       "that fades towards every view edge."),
                io.Image.Input("known_panorama", optional=True,
                               tooltip="A partial panorama whose known pixels are kept exactly (completion), at "
                                       "the output's size."),
                io.Mask.Input("known_mask", optional=True,
                              tooltip="With known_panorama: 1 = missing (generated), 0 = known (kept)."),
            ],
            outputs=[io.Image.Output(display_name="panorama"), io.Mask.Output(display_name="coverage")],
        )

    @classmethod
    def execute(cls, images, cameras, width, height, blend, known_panorama=None, known_mask=None) -> io.NodeOutput:
        m = cameras.num_views
        if images.shape[0] % m:
            raise ValueError(f"Equirectangular Stitch: got {images.shape[0]} images, not a multiple of the {m} "
                             "camera views (give the views of each scene in camera order)")
        s, h, w, c = images.shape[0] // m, images.shape[1], images.shape[2], images.shape[3]
        K = cameras.intrinsics_for_size(h, w)  # the images may have been resized since generation
        views = images.reshape(s, m, h, w, c).permute(0, 1, 4, 2, 3).float()
        pano, coverage = views_to_equirect(views, K.to(views.device), cameras.R.to(views.device), height, width,
                                           blend=blend)
        pano = pano.permute(0, 2, 3, 1).clamp(0, 1).to(images.dtype)
        if known_panorama is not None or known_mask is not None:
            pano = keep_known(pano, known_panorama, known_mask)
        return io.NodeOutput(pano, coverage[:, 0].float())


def keep_known(pano, known, mask):
    """The stitched panoramas (B, H, W, C) with the known pixels (mask 0) of ``known`` put back exactly."""
    node = "Equirectangular Stitch"
    if known is None or mask is None:
        raise ValueError(f"{node}: connect both known_panorama and known_mask, or neither")
    mask = mask[None] if mask.ndim == 2 else mask
    if tuple(known.shape[1:3]) != tuple(pano.shape[1:3]) or tuple(mask.shape[-2:]) != tuple(pano.shape[1:3]):
        raise ValueError(f"{node}: the known panorama is {known.shape[2]}x{known.shape[1]} and its mask "
                         f"{mask.shape[-1]}x{mask.shape[-2]}, but the stitch is {pano.shape[2]}x{pano.shape[1]}: "
                         "set width and height to the known panorama's size")
    if known.shape[0] not in (1, pano.shape[0]) or mask.shape[0] not in (1, pano.shape[0]):
        raise ValueError(f"{node}: {known.shape[0]} known panoramas and {mask.shape[0]} masks for "
                         f"{pano.shape[0]} stitched panoramas")
    keep = (mask.to(pano.device) < 0.5)[..., None]
    return torch.where(keep, known[..., :pano.shape[-1]].to(pano), pano)


class EquirectangularToViews(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionEquirectToViews",
            display_name="Equirectangular To Views",
            category=CATEGORY,
            description="Cuts the cameras' perspective views out of an equirectangular panorama (for round trips "
                        "and for editing an existing panorama).",
            inputs=[
                io.Image.Input("panorama", tooltip="Equirectangular image(s), 2:1, longitude 0 at the centre column."),
                Cameras.Input("cameras", tooltip="The cameras of the views to cut (from Panorama Cameras)."),
            ],
            outputs=[io.Image.Output(display_name="views")],
        )

    @classmethod
    def execute(cls, panorama, cameras) -> io.NodeOutput:
        pano = panorama.permute(0, 3, 1, 2).float()
        K, R = cameras.K.to(pano.device), cameras.R.to(pano.device)
        views = equirect_to_views(pano, K, R, cameras.height, cameras.width)  # (B, m, C, h, w)
        b, m, c, h, w = views.shape
        return io.NodeOutput(views.permute(0, 1, 3, 4, 2).reshape(b * m, h, w, c).clamp(0, 1).to(panorama.dtype))
