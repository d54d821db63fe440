"""Placing known pixels in the views: a photo cropped as the official demo does, a photo placed in the rig by its
own camera, a partial panorama cut into views, and the pixel masks turned into latent "generate" masks.

Conventions are those of ``geometry/cameras.py`` (pixels are integer centres, horizontal field of view, ``R``
camera-to-world, yaw right and pitch up positive) and of ``geometry/equirect.py`` (the panorama grid).
Masks: ``known`` is 1 where a view pixel is given and 0 where it is to be generated; ``missing`` (ComfyUI MASK
polarity) is 1 where a panorama pixel is to be generated; :func:`latent_mask` returns 1 = generate.
Camera matrices are combined in float64 on the CPU; the per-pixel work runs in the working dtype (float32, or
float64 for float64 inputs) on the image's device, as in ``geometry/equirect.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .cameras import check_cameras, check_size, describe_shape, intrinsics, pixel_grid, project_to_image, rotation
from .equirect import bilinear_sample, equirect_to_views, working_dtype

__all__ = ["fit_official", "photo_camera", "reproject_photo", "panorama_to_views", "latent_mask",
           "PHOTO_FOV_RANGE"]

# open interval of the horizontal field of view (degrees) a photo may have
PHOTO_FOV_RANGE = (1.0, 179.0)

# a sampled `missing` value below this counts as "no missing panorama pixel under the bilinear taps"
_MISSING_TOLERANCE = 1e-6


def _check_images(name: str, images, layout: str = "(B, C, H, W)") -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or any(s < 1 for s in images.shape):
        raise ValueError(f"{name} must be a non-empty batch of images of shape {layout}, got {describe_shape(images)}")


# --- the official demo's crop -----------------------------------------------------------------------------------

def fit_official(image: torch.Tensor, size: int) -> torch.Tensor:
    """The official demo's ``resize_and_center_crop``: image (B, C, H, W) -> (B, C, size, size), image's dtype.

    A square image is resized to ``size x size``. A tall one (H > W) is resized to width ``size`` and height
    ``int(size * H / W)`` (truncated), then rows ``[margin, margin + size)`` are kept with
    ``margin = (height - size) // 2``; a wide one likewise with the columns. The resize is OpenCV's INTER_LINEAR
    (half-pixel centres, two taps per axis, no antialiasing), i.e. ``F.interpolate(mode="bilinear",
    align_corners=False, antialias=False)``.

    One deliberate difference: when the truncated length equals ``size`` (an image barely off square, e.g.
    33 x 32 to 16), the official slice ``img[0:-0]`` is empty and the demo fails; here nothing is cropped.
    """
    _check_images("image", image)
    check_size("output", size, size)
    size = int(size)
    b, c, h, w = image.shape
    if h == w:
        out_h, out_w = size, size
    elif h > w:
        out_h, out_w = int(size * h / w), size
    else:
        out_h, out_w = size, int(size * w / h)
    resized = F.interpolate(image.to(working_dtype(image.dtype)), size=(out_h, out_w), mode="bilinear",
                            align_corners=False, antialias=False)
    top, left = (out_h - size) // 2, (out_w - size) // 2
    return resized[..., top:top + size, left:left + size].to(image.dtype).contiguous()


# --- a photo placed in the rig ----------------------------------------------------------------------------------

def photo_camera(fov_deg: float, yaw_deg: float, pitch_deg: float, height: int,
                 width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Intrinsics K (3, 3) and camera-to-world rotation R (3, 3), float32, of a ``height x width`` photo with
    HORIZONTAL field of view ``fov_deg``, looking at ``yaw_deg`` (right positive) and ``pitch_deg`` (up positive).

    The field of view must lie in the open interval (1, 179) degrees (ValueError otherwise). A phone's quoted
    field of view is often the DIAGONAL one (or a 35 mm equivalent focal length, ``dfov = 2 atan(21.63 / f)``);
    convert it with ``hfov = 2 atan(tan(dfov / 2) * W / sqrt(W^2 + H^2))``.
    """
    lo, hi = PHOTO_FOV_RANGE
    try:
        fov = float(fov_deg)
    except (TypeError, ValueError):
        fov = float("nan")  # fails the range test below
    if isinstance(fov_deg, bool) or not lo < fov < hi:
        raise ValueError(f"the photo's horizontal field of view must lie strictly between {lo:g} and {hi:g} "
                         f"degrees, got {fov_deg}")
    check_size("photo", height, width)
    return intrinsics(fov, int(height), int(width)), rotation(float(yaw_deg), float(pitch_deg))


def reproject_photo(photo: torch.Tensor, K_photo: torch.Tensor, R_photo: torch.Tensor, K: torch.Tensor,
                    R: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Show photos taken from the rig's centre in the rig's views.

    photo: (B, C, Hp, Wp), B photos of one size, photo b taken with K_photo[b] and R_photo[b] ((B, 3, 3) each,
    e.g. stacked :func:`photo_camera` results). K (m, 3, 3), R (m, 3, 3): the ``height x width`` views.
    The ray ``R_i inv(K_i) (x, y, 1)`` of view pixel (x, y) is projected into photo b (``K_b inv(R_b)``); the pixel
    is known from photo b when the ray lies in front of the photo's camera and lands on its pixel footprint
    ``[-0.5, Wp-0.5] x [-0.5, Hp-0.5]``. Its colour is the photo sampled bilinearly there (clamped at the
    photo's borders, so the outer half pixel repeats the border pixels).

    Returns ``(views, known)``: views (m, C, height, width) in photo's dtype, 0 where no photo is known;
    known (m, 1, height, width) float32, 1 or 0; both on photo's device. Where several photos cover a pixel, the
    LATER photo in the batch wins (each photo overrides the earlier ones on its footprint).
    """
    _check_images("photo", photo, "(B, C, Hp, Wp)")
    check_cameras(K_photo, R_photo, num_views=photo.shape[0])
    m = check_cameras(K, R)
    check_size("view", height, width)
    height, width = int(height), int(width)
    c, hp, wp = photo.shape[1:]
    device, wdtype = photo.device, working_dtype(photo.dtype)

    # view pixel -> photo pixel (homogeneous): K_b @ inv(R_b) @ R_i @ inv(K_i), float64 on the CPU, (B, m, 3, 3)
    to_world = R.detach().cpu().double() @ torch.linalg.inv(K.detach().cpu().double())
    to_photo = K_photo.detach().cpu().double() @ torch.linalg.inv(R_photo.detach().cpu().double())
    view_to_photo = (to_photo[:, None] @ to_world[None]).to(device, wdtype)
    pix = pixel_grid(height, width, device, wdtype).reshape(-1, 3).T  # (3, h*w)

    views = torch.zeros(c, m * height * width, device=device, dtype=wdtype)
    known = torch.zeros(m * height * width, device=device, dtype=torch.bool)
    for b in range(photo.shape[0]):
        xyz = (view_to_photo[b] @ pix).transpose(0, 1).reshape(3, -1)  # (3, m*h*w), views one after the other
        x, y, inside = project_to_image(xyz, hp, wp, dim=0)
        idx = inside.nonzero().squeeze(1)
        views[:, idx] = bilinear_sample(photo[b:b + 1], x[idx], y[idx], wrap_x=False)[0]
        known[idx] = True
    views = views.reshape(c, m, height, width).transpose(0, 1).to(photo.dtype).contiguous()
    return views, known.reshape(m, 1, height, width).float()


# --- a partial panorama -----------------------------------------------------------------------------------------

def panorama_to_views(pano: torch.Tensor, missing: torch.Tensor, K: torch.Tensor, R: torch.Tensor, height: int,
                      width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a partially known equirectangular panorama into views, with the views' known pixels.

    pano: (1 or B, C, Hp, Wp) (``geometry/equirect.py`` conventions); missing: (1 or B, 1, Hp, Wp), 1 where the
    panorama pixel is unknown (ComfyUI MASK polarity; soft values count as unknown wherever they are above 0).
    K, R (m, 3, 3): the ``height x width`` views. The batches broadcast to B.

    Returns ``(views, known)``: views (B, m, C, height, width) = :func:`equirect_to_views` of pano, in pano's
    dtype; known (B, m, 1, height, width) float32, 1 where none of the bilinear taps the view pixel reads is
    missing (``missing`` sampled the same way is below 1e-6), else 0.
    """
    _check_images("pano", pano)
    _check_images("missing", missing, "(B, 1, Hp, Wp)")
    if missing.shape[1] != 1 or missing.shape[-2:] != pano.shape[-2:]:
        raise ValueError(f"missing must be a mask (B, 1, Hp, Wp) of the panorama's size {tuple(pano.shape[-2:])}, "
                         f"got {tuple(missing.shape)}")
    b = max(pano.shape[0], missing.shape[0])
    if {pano.shape[0], missing.shape[0]} - {1, b}:
        raise ValueError(f"pano and missing must hold the same number of panoramas (or one), got "
                         f"{pano.shape[0]} and {missing.shape[0]}")
    views = equirect_to_views(pano, K, R, height, width)
    sampled = equirect_to_views(missing.to(pano.device, working_dtype(missing.dtype)), K, R, height, width)
    known = (sampled < _MISSING_TOLERANCE).float()
    return views.expand(b, *views.shape[1:]).contiguous(), known.expand(b, *known.shape[1:]).contiguous()


# --- latent masks -----------------------------------------------------------------------------------------------

def latent_mask(known: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """Pixel ``known`` mask (..., 1, h, w) -> "generate" mask (..., 1, h/factor, w/factor), 1 = generate.

    A latent cell is generated when ANY of its ``factor x factor`` pixels is unknown (a max-pool of
    ``1 - known``), so no unknown pixel is ever kept from the input latent. For a mask that is constant over each
    view (the official demo's: the first view known, the others not) this equals the official nearest resizing.
    h and w must be multiples of ``factor`` (ValueError). Result in known's dtype (float32 for bool masks).
    """
    if isinstance(factor, bool) or int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    factor = int(factor)
    if not isinstance(known, torch.Tensor) or known.ndim < 3 or known.shape[-3] != 1:
        raise ValueError(f"known must be a mask of shape (..., 1, h, w), got {describe_shape(known)}")
    h, w = known.shape[-2:]
    if h < 1 or w < 1 or h % factor or w % factor:
        raise ValueError(f"the mask's size must be a positive multiple of {factor} (the latent factor), "
                         f"got {h} x {w}")
    unknown = 1 - (known.float() if known.dtype == torch.bool else known)
    cells = unknown.reshape(*known.shape[:-2], h // factor, factor, w // factor, factor)
    return cells.amax(dim=(-3, -1))
