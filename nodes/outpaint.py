"""Image -> 360°: known views (a placed photo, a partial panorama) and the official outpainting conditioning.

Known views travel as an IMAGE (scenes x views images at the cameras' size) plus a MASK of the same batch and
size in ComfyUI's polarity, 1 = generate, 0 = known (the SD-inpainting convention the official code uses).
"""
from __future__ import annotations

import torch
import comfy.model_management
import node_helpers
from comfy_api.latest import io

from ..geometry.compositing import paste_known
from ..geometry.placement import (PHOTO_FOV_RANGE, fit_official, latent_mask, panorama_to_views, photo_camera,
                                  reproject_photo)
from .io_types import CATEGORY, Cameras

PLACEMENTS = ("official", "reproject")
GREY = 0.5  # unknown pixels of the masked image: 0 in [-1, 1], the official value


def blank_known(cameras, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Nothing known yet: grey views (m, h, w, 3) and an all-generate mask (m, h, w)."""
    m, h, w = cameras.num_views, cameras.height, cameras.width
    return torch.full((m, h, w, 3), GREY, device=device), torch.ones((m, h, w), device=device)


def check_known(node: str, cameras, views: torch.Tensor, mask: torch.Tensor) -> int:
    """Validate known views + mask against the cameras; returns the number of scenes."""
    m, h, w = cameras.num_views, cameras.height, cameras.width
    if views.ndim != 4 or views.shape[0] % m or tuple(views.shape[1:3]) != (h, w):
        raise ValueError(f"{node}: the views are {tuple(views.shape)}; they must be scenes x {m} images of "
                         f"{w}x{h} px (the cameras' views, in camera order)")
    if mask.ndim == 2:
        mask = mask[None]
    if tuple(mask.shape) != tuple(views.shape[:3]):
        raise ValueError(f"{node}: the mask is {tuple(mask.shape)} but the views are {tuple(views.shape[:3])} "
                         "(one mask per view, at the views' size; 1 = generate, 0 = known)")
    return views.shape[0] // m


class PlacePhoto(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionPlacePhoto",
            display_name="Place Photo",
            category=CATEGORY,
            description="Puts a photo into the panorama's views as known pixels (for the outpainting model). "
                        "official: the photo is resized (short side) and centre-cropped to become the view "
                        "nearest the yaw, as the official demo does. reproject: the photo is projected with its "
                        "own field of view into every view it overlaps, at any yaw and pitch. Chain several "
                        "Place Photo nodes for several photos (a later photo wins where they overlap).",
            inputs=[
                Cameras.Input("cameras", tooltip="From Panorama Cameras or Sphere Cameras."),
                io.Image.Input("photo", tooltip="One photo (chain another Place Photo for each further photo)."),
                io.Combo.Input("placement", options=list(PLACEMENTS), default="official",
                               tooltip="official: the photo becomes one whole view (official pano_outpaint demo); "
                                       "reproject: projected with its real field of view."),
                io.Float.Input("fov", default=90.0, min=1.0, max=179.0, step=0.5,
                               tooltip="reproject: the photo's HORIZONTAL field of view in degrees (a phone's "
                                       "main camera is about 65-70°; its quoted FoV is often diagonal)."),
                io.Float.Input("yaw", default=0.0, min=-360.0, max=360.0, step=0.5,
                               tooltip="Where the photo looks, in degrees (0 = view 0, positive to the right). "
                                       "official: the photo becomes the view nearest this yaw."),
                io.Float.Input("pitch", default=0.0, min=-89.0, max=89.0, step=0.5,
                               tooltip="reproject: the photo's elevation in degrees (positive looks up)."),
                io.Image.Input("views", optional=True, tooltip="Known views from an earlier Place Photo or "
                                                               "Partial Panorama, to add this photo to."),
                io.Mask.Input("mask", optional=True, tooltip="Their mask (with 'views')."),
            ],
            outputs=[io.Image.Output(display_name="views"), io.Mask.Output(display_name="mask")],
        )

    @classmethod
    def execute(cls, cameras, photo, placement, fov, yaw, pitch, views=None, mask=None) -> io.NodeOutput:
        node = "Place Photo"
        if photo is None or photo.ndim != 4 or photo.shape[0] < 1:
            raise ValueError(f"{node}: no photo (connect an IMAGE)")
        if photo.shape[0] != 1:
            raise ValueError(f"{node}: got a batch of {photo.shape[0]} photos for one placement; place each "
                             "photo with its own Place Photo node (chain them through views/mask)")
        if not (PHOTO_FOV_RANGE[0] < fov < PHOTO_FOV_RANGE[1]):
            raise ValueError(f"{node}: the photo's field of view must be between {PHOTO_FOV_RANGE[0]:g}° and "
                             f"{PHOTO_FOV_RANGE[1]:g}°, got {fov:g}°")
        if (views is None) != (mask is None):
            raise ValueError(f"{node}: connect both 'views' and 'mask' of the earlier placement, or neither")
        if views is None:
            views, mask = blank_known(cameras, photo.device)
        if check_known(node, cameras, views, mask) != 1:
            raise ValueError(f"{node}: the earlier views hold several scenes; place photos into one scene at a time")
        views, mask = views.clone(), mask.reshape(views.shape[:3]).clone()
        image = photo[..., :3].permute(0, 3, 1, 2).float()
        m, h, w = cameras.num_views, cameras.height, cameras.width
        if placement == "official":
            if h != w:
                raise ValueError(f"{node}: the official placement makes the photo one square view, but the views "
                                 f"are {w}x{h}; use placement 'reproject'")
            # the view nearest in yaw among the lowest-pitch ones (the ring of a sphere rig, not a pole)
            i = min(range(m), key=lambda k: (abs(cameras.pitches_deg[k]),
                                             abs((cameras.yaws_deg[k] - yaw + 180.0) % 360.0 - 180.0)))
            views[i] = fit_official(image, h)[0].permute(1, 2, 0).clamp(0, 1).to(views)
            mask[i] = 0.0
        else:
            K_p, R_p = photo_camera(fov, yaw, pitch, image.shape[-2], image.shape[-1])
            placed, known = reproject_photo(image, K_p[None], R_p[None], cameras.K, cameras.R, h, w)
            known = known[:, 0].to(views.device) > 0.5
            views[known] = placed.permute(0, 2, 3, 1).clamp(0, 1).to(views)[known]
            mask[known] = 0.0
        if bool(mask.min() >= 1.0):
            raise ValueError(f"{node}: the photo (yaw {yaw:g}°, pitch {pitch:g}°, {fov:g}° wide) falls into none "
                             "of the cameras' views")
        return io.NodeOutput(views, mask)


class PartialPanorama(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionPartialPanorama",
            display_name="Partial Panorama",
            category=CATEGORY,
            description="Cuts the cameras' views out of an equirectangular panorama with holes: the known pixels "
                        "and, per view, a pixel mask of what the model must fill.",
            inputs=[
                io.Image.Input("panorama", tooltip="Equirectangular image (2:1, longitude 0 at the centre column)."),
                io.Mask.Input("mask", tooltip="Same size as the panorama: 1 = missing (to fill), 0 = known."),
                Cameras.Input("cameras", tooltip="From Panorama Cameras or Sphere Cameras."),
            ],
            outputs=[io.Image.Output(display_name="views"), io.Mask.Output(display_name="mask")],
        )

    @classmethod
    def execute(cls, panorama, mask, cameras) -> io.NodeOutput:
        node = "Partial Panorama"
        if mask.ndim == 2:
            mask = mask[None]
        if tuple(mask.shape[-2:]) != tuple(panorama.shape[1:3]):
            raise ValueError(f"{node}: the mask is {mask.shape[-1]}x{mask.shape[-2]} but the panorama is "
                             f"{panorama.shape[2]}x{panorama.shape[1]}; give a mask of the panorama's size")
        if mask.shape[0] not in (1, panorama.shape[0]):
            raise ValueError(f"{node}: {mask.shape[0]} masks for {panorama.shape[0]} panoramas")
        pano = panorama[..., :3].permute(0, 3, 1, 2).float()
        missing = mask.float().to(pano.device)[:, None].expand(pano.shape[0], 1, *pano.shape[-2:])
        views, known = panorama_to_views(pano, missing, cameras.K.to(pano.device), cameras.R.to(pano.device),
                                         cameras.height, cameras.width)
        b, m, c, h, w = views.shape
        views = views.permute(0, 1, 3, 4, 2).reshape(b * m, h, w, c).clamp(0, 1)
        generate = 1.0 - known.reshape(b * m, h, w)
        views = torch.where(generate[..., None] > 0.5, torch.full_like(views, GREY), views)
        return io.NodeOutput(views.to(panorama.dtype), generate.to(mask.dtype))


def outpaint_inputs(vae, views: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official outpainting inputs: (masked-image latents (n, 4, h/8, w/8) as the VAE encodes them,
    unscaled like ComfyUI's latents; generate mask (n, 1, h/8, w/8), 1 = generate, any unknown pixel marks its
    latent cell). The masked image is the views with every pixel to generate set to mid-grey."""
    generate = (mask.reshape(views.shape[:3]) > 0.5).to(views.device)
    masked = torch.where(generate[..., None], torch.full_like(views[..., :3], GREY), views[..., :3])
    latents = vae.encode(masked)
    return latents, latent_mask(1.0 - generate[:, None].float()).to(latents.device)


class OutpaintConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionOutpaintConditioning",
            display_name="Outpaint Conditioning",
            category=CATEGORY,
            description="The official pano_outpaint conditioning: every view's masked-image latent and mask go to "
                        "the 9-channel inpainting UNet (the same on positive and negative), and sampling starts "
                        "from pure noise. Unlike the core InpaintModelConditioning it returns an empty start "
                        "latent and no noise mask (the official behaviour) unless 'guide' is on.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="The prompt(s) (Panorama Prompts)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (official: empty)."),
                io.Vae.Input("vae", tooltip="Encodes the known views (the checkpoint's VAE)."),
                Cameras.Input("cameras", tooltip="From Panorama Cameras or Sphere Cameras."),
                io.Image.Input("views", tooltip="Known views (Place Photo, Partial Panorama): scenes x views."),
                io.Mask.Input("mask", tooltip="Their mask: 1 = generate, 0 = known."),
                io.Boolean.Input("guide", default=False,
                                 tooltip="Off (official): the known pixels only condition the model, which "
                                         "regenerates them. On: the latent starts from the known views and "
                                         "ComfyUI's noise mask re-injects them at every step."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative"),
                     io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, positive, negative, vae, cameras, views, mask, guide) -> io.NodeOutput:
        check_known("Outpaint Conditioning", cameras, views, mask)
        latents, generate = outpaint_inputs(vae, views, mask)
        values = {"concat_latent_image": latents, "concat_mask": generate}
        out = [node_helpers.conditioning_set_values(c, values) for c in (positive, negative)]
        if guide:
            latent = {"samples": latents, "noise_mask": generate}
        else:
            latent = {"samples": torch.zeros_like(latents, device=comfy.model_management.intermediate_device())}
        return io.NodeOutput(out[0], out[1], latent)


class PasteKnownPixels(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionPasteKnown",
            display_name="Paste Known Pixels",
            category=CATEGORY,
            description="Puts the known pixels back over the decoded views ('paste'; the official model "
                        "regenerates them), with an edge that blends over 'feather' pixels inside the known "
                        "region. feather 0 keeps every known pixel exactly.",
            inputs=[
                io.Image.Input("images", tooltip="The decoded views (scenes x views)."),
                io.Image.Input("views", tooltip="The known views (Place Photo, Partial Panorama)."),
                io.Mask.Input("mask", tooltip="Their mask: 1 = generated, 0 = known."),
                io.Int.Input("feather", default=8, min=0, max=256, tooltip="Blend width in pixels (0 = hard)."),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, images, views, mask, feather) -> io.NodeOutput:
        node = "Paste Known Pixels"
        mask = mask[None] if mask.ndim == 2 else mask
        if images.shape[:3] != views.shape[:3] or mask.shape != views.shape[:3]:
            raise ValueError(f"{node}: images {tuple(images.shape[:3])}, views {tuple(views.shape[:3])} and mask "
                             f"{tuple(mask.shape)} must have the same batch and size")
        known = 1.0 - mask.to(images.device).float()
        return io.NodeOutput(paste_known(images, views[..., :images.shape[-1]].to(images), known, feather))
