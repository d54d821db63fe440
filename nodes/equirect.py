"""Equirectangular nodes: stitch the views into a 360° panorama, and cut views out of one."""
from __future__ import annotations

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
            ],
            outputs=[io.Image.Output(display_name="panorama"), io.Mask.Output(display_name="coverage")],
        )

    @classmethod
    def execute(cls, images, cameras, width, height, blend) -> io.NodeOutput:
        m = cameras.num_views
        if images.shape[0] % m:
            raise ValueError(f"Equirectangular Stitch: got {images.shape[0]} images, not a multiple of the {m} "
                             "camera views (give the views of each scene in camera order)")
        s, h, w, c = images.shape[0] // m, images.shape[1], images.shape[2], images.shape[3]
        K = cameras.intrinsics_for_size(h, w)  # the images may have been resized since generation
        views = images.reshape(s, m, h, w, c).permute(0, 1, 4, 2, 3).float()
        pano, coverage = views_to_equirect(views, K.to(views.device), cameras.R.to(views.device), height, width,
                                           blend=blend)
        return io.NodeOutput(pano.permute(0, 2, 3, 1).clamp(0, 1).to(images.dtype), coverage[:, 0].float())


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
