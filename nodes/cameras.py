"""Camera nodes: the panorama rig and a latent that matches it."""
from __future__ import annotations

import torch
import comfy.model_management
from comfy_api.latest import io

from ..geometry.cameras import pano_rig
from ..geometry.correspondences import overlap_fraction
from .io_types import CATEGORY, Cameras


class PanoramaCameras(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionPanoramaCameras",
            display_name="Panorama Cameras",
            category=CATEGORY,
            description="The ring of perspective views of a 360° panorama (official MVDiffusion: 8 views, 90° FoV, "
                        "45° apart, 512 px). Carries everything the correspondence-aware attention needs.",
            inputs=[
                io.Int.Input("views", default=8, min=2, max=64, tooltip="Number of views around the full circle."),
                io.Float.Input("fov", default=90.0, min=1.0, max=179.0, step=0.5,
                               tooltip="Horizontal field of view of each view, in degrees. Neighbouring views must "
                                       "overlap (fov > 360 / views)."),
                io.Float.Input("pitch", default=0.0, min=-89.0, max=89.0, step=0.5,
                               tooltip="Elevation of every view in degrees (positive looks up)."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8, tooltip="Width of each view in pixels."),
                io.Int.Input("height", default=512, min=64, max=4096, step=8, tooltip="Height of each view in pixels."),
                io.Float.Input("yaw_offset", default=0.0, min=-360.0, max=360.0, step=0.5,
                               tooltip="Yaw of view 0 in degrees; view i looks at yaw_offset + 360/views * i "
                                       "(positive yaw turns right)."),
            ],
            outputs=[Cameras.Output(display_name="cameras")],
        )

    @classmethod
    def execute(cls, views, fov, pitch, width, height, yaw_offset) -> io.NodeOutput:
        try:
            rig = pano_rig(views, fov, height, width, pitch, yaw_offset)
        except ValueError as e:
            raise ValueError(f"Panorama Cameras: {e}") from None
        frac = overlap_fraction(rig.K, rig.R, height, width)
        if float(frac[0, 1]) <= 0.0:
            raise ValueError(f"Panorama Cameras: {views} views of {fov:g}° are {360 / views:g}° apart and do not "
                             "overlap; the correspondence-aware attention needs overlapping neighbours: widen the "
                             f"field of view above {360 / views:g}° or add views")
        return io.NodeOutput(rig)


class EmptyPanoramaLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionEmptyLatent",
            display_name="Empty Panorama Latent",
            category=CATEGORY,
            description="An empty latent batch with one image per camera view (times the number of scenes), at "
                        "the cameras' size.",
            inputs=[
                Cameras.Input("cameras", tooltip="From Panorama Cameras."),
                io.Int.Input("scenes", default=1, min=1, max=64,
                             tooltip="Independent panoramas sampled together (batch = scenes x views)."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, cameras, scenes) -> io.NodeOutput:
        latent = torch.zeros([scenes * cameras.num_views, 4, cameras.height // 8, cameras.width // 8],
                             device=comfy.model_management.intermediate_device())
        return io.NodeOutput({"samples": latent})
