"""Using a finished panorama: a view out of it, a yaw sweep for video, its consistency number, a 360-photo file."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import folder_paths
from comfy_api.latest import io, ui

from ..geometry.cameras import intrinsics, rotation
from ..geometry.equirect import equirect_to_views
from ..geometry.metrics import overlap_psnr
from ..geometry.photosphere import gpano_fields, gpano_xmp
from .io_types import CATEGORY, Cameras, named


def save_images(images: torch.Tensor, directory: str, prefix: str, extension: str, write) -> list[tuple[str, str]]:
    """Each IMAGE of the batch as a PIL image handed to ``write(pixels, path)`` under ComfyUI's numbered names
    in ``directory``; returns ``[(file name, subfolder)]``."""
    from PIL import Image

    h, w = images.shape[1:3]
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, directory, w, h)
    saved = []
    for k, image in enumerate(images):
        file = f"{name}_{counter + k:05}_.{extension}"
        write(Image.fromarray(np.clip(image.cpu().numpy() * 255.0, 0, 255).round().astype(np.uint8)),
              os.path.join(folder, file))
        saved.append((file, subfolder))
    return saved


def perspective(node: str, panorama: torch.Tensor, yaws, pitch: float, fov: float, width: int, height: int):
    """Perspective views (B * len(yaws), height, width, C) of equirectangular IMAGEs, in panorama order then yaw."""
    if panorama.ndim != 4:
        raise ValueError(f"{node}: expected an IMAGE batch, got shape {tuple(panorama.shape)}")
    with named(node):
        K = torch.stack([intrinsics(fov, height, width)] * len(yaws))
        R = torch.stack([rotation(y, pitch) for y in yaws])
    pano = panorama.permute(0, 3, 1, 2).float()
    views = equirect_to_views(pano, K.to(pano.device), R.to(pano.device), height, width)  # (B, n, C, h, w)
    b, n, c = views.shape[:3]
    return views.permute(0, 1, 3, 4, 2).reshape(b * n, height, width, c).clamp(0, 1).to(panorama.dtype)


def view_inputs(fov: float = 90.0) -> list:
    return [io.Float.Input("pitch", default=0.0, min=-90.0, max=90.0, step=0.5,
                           tooltip="Elevation in degrees (positive looks up)."),
            io.Float.Input("fov", default=fov, min=1.0, max=179.0, step=0.5,
                           tooltip="Horizontal field of view in degrees."),
            io.Int.Input("width", default=512, min=16, max=8192, step=8, tooltip="Width in pixels."),
            io.Int.Input("height", default=512, min=16, max=8192, step=8, tooltip="Height in pixels.")]


class PanoramaView(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionPanoramaView", display_name="Panorama View", category=CATEGORY,
            description="A perspective view out of an equirectangular panorama (any yaw, pitch and field of view).",
            inputs=[io.Image.Input("panorama", tooltip="Equirectangular IMAGE (longitude 0 at the centre column)."),
                    io.Float.Input("yaw", default=0.0, min=-360.0, max=360.0, step=0.5,
                                   tooltip="Where to look, in degrees (0 = centre column, positive to the right).")]
            + view_inputs(),
            outputs=[io.Image.Output(display_name="view")],
        )

    @classmethod
    def execute(cls, panorama, yaw, pitch, fov, width, height) -> io.NodeOutput:
        return io.NodeOutput(perspective("Panorama View", panorama, [yaw], pitch, fov, width, height))


class PanoramaOrbit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionPanoramaOrbit", display_name="Panorama Orbit", category=CATEGORY,
            description="A full turn around the panorama as an IMAGE batch (frame i looks at yaw start + 360 i / "
                        "frames), for the core video and animated-image savers. The official video tool: 60° FoV, "
                        "720 frames (0.5° apart), 600 x 450.",
            inputs=[io.Image.Input("panorama", tooltip="One equirectangular IMAGE."),
                    io.Int.Input("frames", default=120, min=1, max=7200, tooltip="Frames per full turn."),
                    io.Float.Input("start_yaw", default=0.0, min=-360.0, max=360.0, step=0.5,
                                   tooltip="Yaw of the first frame in degrees.")]
            + view_inputs(fov=60.0),
            outputs=[io.Image.Output(display_name="frames")],
        )

    @classmethod
    def execute(cls, panorama, frames, start_yaw, pitch, fov, width, height) -> io.NodeOutput:
        if panorama.shape[0] != 1:
            raise ValueError(f"Panorama Orbit: give one panorama, got a batch of {panorama.shape[0]}")
        yaws = [start_yaw + 360.0 * i / frames for i in range(frames)]
        return io.NodeOutput(perspective("Panorama Orbit", panorama, yaws, pitch, fov, width, height))


def table_image(pairs, psnrs, mean: float) -> torch.Tensor:
    """A small IMAGE (1, H, W, 3): one bar per view pair (length = PSNR / 50 dB) and its value, then the mean."""
    from PIL import Image, ImageDraw

    rows = [(f"{i}-{j}", float(p)) for (i, j), p in zip(pairs, psnrs)] + [("mean", mean)]
    image = Image.new("RGB", (360, 18 * len(rows) + 8), (24, 24, 24))
    draw = ImageDraw.Draw(image)
    for k, (label, value) in enumerate(rows):
        y = 4 + 18 * k
        length = 0 if not np.isfinite(value) else int(200 * min(max(value, 0.0), 50.0) / 50.0)
        draw.rectangle([60, y + 3, 60 + length, y + 13], fill=(90, 160, 230) if label != "mean" else (230, 170, 60))
        draw.text((4, y), label, fill=(230, 230, 230))
        draw.text((268, y), f"{value:.2f} dB", fill=(230, 230, 230))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


class PanoramaConsistency(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionPanoramaConsistency", display_name="Panorama Consistency", category=CATEGORY,
            description="The paper's consistency number: each view warped into its ring neighbour and compared on "
                        "their overlap (PSNR in dB, higher is more consistent), per pair and its mean.",
            inputs=[io.Image.Input("images", tooltip="The views of one scene in camera order."),
                    Cameras.Input("cameras", tooltip="The cameras the views were made with.")],
            outputs=[io.Float.Output(display_name="mean_psnr"), io.Image.Output(display_name="table")],
        )

    @classmethod
    def execute(cls, images, cameras) -> io.NodeOutput:
        node, m = "Panorama Consistency", cameras.num_views
        if images.shape[0] != m:
            raise ValueError(f"{node}: give the {m} views of one scene, got {images.shape[0]} images")
        h, w = images.shape[1:3]
        views = images.permute(0, 3, 1, 2).float()
        result = overlap_psnr(views, cameras.intrinsics_for_size(h, w), cameras.R,
                              pairs=sorted({(min(i, j), max(i, j))
                                            for i, nbs in enumerate(cameras.neighbours) for j in nbs}))
        mean = float(result.mean)
        return io.NodeOutput(mean, table_image(result.pairs, result.per_pair.tolist(), mean))


class SavePanorama(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionSavePanorama", display_name="Save Panorama", category=CATEGORY,
            description="Saves equirectangular panoramas as 360 photos: Google Photo Sphere XMP (GPano) in JPEG or "
                        "PNG, so photo viewers open them in 360; a band (e.g. the 8-view ring) is saved with its "
                        "cropped-area fields. PNGs also carry the workflow, like Save Image.",
            inputs=[io.Image.Input("panorama", tooltip="Equirectangular IMAGE(s)."),
                    io.String.Input("filename_prefix", default="mvdiffusion/panorama360",
                                    tooltip="File name prefix in the output folder (may contain a subfolder)."),
                    io.Combo.Input("format", options=["jpeg", "png"], default="jpeg",
                                   tooltip="jpeg: what photo apps open in 360; png: lossless, with the workflow."),
                    io.Boolean.Input("full_sphere", default=True,
                                     tooltip="On: the image is the whole sphere and must be 2:1. Off: it is a band "
                                             "centred on the horizon (cropped-area fields)."),
                    io.Int.Input("quality", default=95, min=1, max=100, tooltip="JPEG quality.")],
            outputs=[], is_output_node=True, hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, panorama, filename_prefix, format, full_sphere, quality) -> io.NodeOutput:
        from PIL import PngImagePlugin

        h, w = panorama.shape[1:3]
        with named("Save Panorama"):
            xmp = gpano_xmp(gpano_fields(w, h, full_sphere))
        def write(pixels, path: str) -> None:
            if format == "jpeg":
                pixels.save(path, quality=quality, xmp=xmp)
                return
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"))
            hidden = getattr(cls, "hidden", None)  # set by the executor
            if getattr(hidden, "prompt", None) is not None:
                info.add_text("prompt", json.dumps(hidden.prompt))
            for key, value in (getattr(hidden, "extra_pnginfo", None) or {}).items():
                info.add_text(key, json.dumps(value))
            pixels.save(path, pnginfo=info, compress_level=4)

        saved = save_images(panorama, folder_paths.get_output_directory(), filename_prefix,
                            "jpg" if format == "jpeg" else "png", write)
        return io.NodeOutput(ui=ui.SavedImages([ui.SavedResult(f, sub, io.FolderType.output) for f, sub in saved]))


class PreviewPanorama(io.ComfyNode):
    """Shows an equirectangular IMAGE in the pack's 360° viewer (web/panorama_viewer.js) inside the node."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionPreviewPanorama", display_name="Preview Panorama", category=CATEGORY,
            description="Look around an equirectangular panorama in 360 inside the node: drag to turn, wheel to "
                        "zoom, the full-screen button to fill the screen, 'use this view' to copy the yaw, pitch "
                        "and FoV into the Panorama View nodes fed by the same panorama. Works offline.",
            inputs=[io.Image.Input("panorama", tooltip="Equirectangular IMAGE (2:1 for the whole sphere).")],
            outputs=[], is_output_node=True,
        )

    @classmethod
    def execute(cls, panorama) -> io.NodeOutput:
        saved = save_images(panorama, folder_paths.get_temp_directory(), "mvdiffusion_panorama", "png",
                            lambda pixels, path: pixels.save(path, compress_level=1))
        # a key of its own: the frontend's default image preview stays out of the viewer's way
        return io.NodeOutput(ui={"mvdiffusion_panorama": [{"filename": f, "subfolder": sub, "type": "temp"}
                                                          for f, sub in saved]})
