"""Camera nodes: the panorama ring, the full-sphere rig, and a latent that matches them."""
from __future__ import annotations

import torch
import comfy.model_management
from comfy_api.latest import io

from ..geometry.cameras import pano_rig
from ..geometry.correspondences import overlap_fraction
from ..geometry.sphere import POLES, parse_rows, pole_fov_for_full_sphere, sphere_coverage, sphere_rig
from .io_types import CATEGORY, Cameras, named


TRAINED_ON_RING = ("The released MVDiffusion weights were trained on the 8-view ring of 90° views: other rigs "
                   "(poles, rows, other fields of view) are your experiment.")


class PanoramaCameras(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionPanoramaCameras",
            display_name="Panorama Cameras",
            category=CATEGORY,
            description="The ring of perspective views of a 360° panorama (official MVDiffusion: 8 views, 90° FoV, "
                        "45° apart, 512 px). Carries everything the correspondence-aware attention needs. "
                        + TRAINED_ON_RING,
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
        with named("Panorama Cameras"):
            rig = pano_rig(views, fov, height, width, pitch, yaw_offset)
        frac = overlap_fraction(rig.K, rig.R, height, width)
        if float(frac[0, 1]) <= 0.0:
            raise ValueError(f"Panorama Cameras: {views} views of {fov:g}° are {360 / views:g}° apart and do not "
                             "overlap; the correspondence-aware attention needs overlapping neighbours: widen the "
                             f"field of view above {360 / views:g}° or add views")
        return io.NodeOutput(rig)


class SphereCameras(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionSphereCameras",
            display_name="Sphere Cameras",
            category=CATEGORY,
            description="Cameras that cover the whole sphere: the panorama ring (views 0..N-1, as Panorama Cameras "
                        "makes them), optional further rows, then a view looking straight up and one straight down. "
                        "Each view attends to the views that overlap it (a pole view to every ring view it sees). "
                        + TRAINED_ON_RING,
            inputs=[
                io.Int.Input("ring_views", default=8, min=0, max=64,
                             tooltip="Views around the horizon (pitch 0), view i at yaw 360/ring_views * i. "
                                     + TRAINED_ON_RING),
                io.Float.Input("ring_fov", default=90.0, min=1.0, max=179.0, step=0.5,
                               tooltip="Horizontal field of view of the ring views, in degrees."),
                io.Combo.Input("poles", options=list(POLES), default="both",
                               tooltip="Which pole views to add: both makes a full 360° x 180° rig (the node refuses "
                                       "a rig that leaves a hole)."),
                io.Float.Input("pole_fov", default=120.0, min=1.0, max=179.0, step=0.5,
                               tooltip="Field of view of the pole views, in degrees. Wider than the ring's so that "
                                       "they overlap it well: with 8 ring views of 90°, above ~95° leaves no hole."),
                io.String.Input("rows", default="", multiline=False,
                                tooltip="Further rows between ring and poles: pitch:views[:fov[:yaw_offset]], "
                                        "comma-separated, e.g. 45:4, -45:4:90:45 (degrees; fov 90 and offset 0 by "
                                        "default)."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8, tooltip="Width of each view in pixels."),
                io.Int.Input("height", default=512, min=64, max=4096, step=8, tooltip="Height of each view in pixels."),
                io.Float.Input("min_overlap", default=0.1, min=0.0, max=0.9, step=0.01,
                               tooltip="A view attends to the views that see more than this fraction of its image."),
                io.Int.Input("max_neighbours", default=0, min=0, max=64,
                             tooltip="At most this many neighbours per view, the most overlapping (0: all)."),
            ],
            outputs=[Cameras.Output(display_name="cameras")],
        )

    @classmethod
    def execute(cls, ring_views, ring_fov, poles, pole_fov, rows, width, height, min_overlap,
                max_neighbours) -> io.NodeOutput:
        node = "Sphere Cameras"
        with named(node):
            rig = sphere_rig(ring_views, ring_fov, height, width, pole_fov, poles, parse_rows(rows), min_overlap,
                             max_neighbours or None)
        coverage = sphere_coverage(rig) if poles == "both" else 1.0
        if coverage < 1.0:
            hint = ""
            if not rows.strip() and ring_views:
                need = pole_fov_for_full_sphere(ring_views, ring_fov, height, width)
                hint = (f" (with {ring_views} ring views of {ring_fov:g}°, a pole fov above {need:.1f}° surely leaves "
                        "no hole)" if need < 179.0 else " (the ring views leave gaps on the horizon: widen ring_fov)")
            raise ValueError(f"{node}: these cameras leave {100 * (1 - coverage):.2f}% of the sphere uncovered: "
                             f"widen pole_fov or ring_fov, or add rows{hint}")
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
                Cameras.Input("cameras", tooltip="From Panorama Cameras or Sphere Cameras."),
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
