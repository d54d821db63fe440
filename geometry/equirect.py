"""Equirectangular panoramas: cutting perspective views out of one, and stitching views into one.

Conventions, stated once for the equirectangular grid (cameras: ``geometry/cameras.py``):

* World frame: the cameras' world frame, x right, y down, z forward (= view 0 at yaw 0, pitch 0).
* Longitude ``lon`` (radians here, degrees at the camera API): 0 straight ahead (+z), positive to the right
  (towards +x, i.e. positive yaw), range [-pi, pi). Latitude ``lat``: positive up (towards -y), range
  [-pi/2, pi/2]. A direction is ``(cos(lat) sin(lon), -sin(lat), cos(lat) cos(lon))``.
* Pixels of an ``H x W`` panorama: column c is centred on longitude ``((c + 0.5) / W - 0.5) * 2 pi`` and row r on
  latitude ``(0.5 - (r + 0.5) / H) * pi``: longitude 0 lies at the CENTRE of the image (between columns
  W/2 - 1 and W/2 for even W), longitude increases to the right, the top row looks up. Each pixel covers
  ``2 pi / W`` of longitude, so the grid is exactly periodic: column W - 1 is followed by column 0 across the
  +-180 deg seam, and rolling a panorama by W/2 columns turns the world by 180 deg.

This is the orientation of the official tools (``generate_video_tool/lib/Equirec2Perspec.py``: longitude 0 at the
centre column, positive THETA to the right, positive PHI up), so that a view cut with THETA = 45 deg * i is our
camera i of ``pano_rig``. The official tools map longitude -180..180 deg onto columns 0..W-1 (both ends on the
seam); the periodic pixel-centre grid above differs from that by at most half a pixel at the left and right
borders and nowhere in orientation.

Sampling is bilinear: horizontally it wraps around the seam, vertically it clamps at the poles. Views are
sampled with clamping at their borders. Geometry is evaluated in float64 on the CPU for the (tiny) camera
matrices and in the working dtype (float32, or float64 for float64 inputs) on the input's device for the
per-pixel work; results keep the input's dtype and device. None of this feeds the positional encoding.
"""
from __future__ import annotations

import math

import torch

from .cameras import check_cameras, check_size, describe_shape, pixel_grid, project_to_image

__all__ = ["BLENDS", "equirect_grid", "lonlat_to_direction", "direction_to_lonlat", "lonlat_to_equirect_pixel",
           "equirect_to_views", "views_to_equirect", "blend_weight"]

# names accepted by views_to_equirect(blend=...)
BLENDS = ("ramp", "feather")


# --- conventions ------------------------------------------------------------------------------------------------

def equirect_grid(height: int, width: int, device=None, dtype: torch.dtype = torch.float32):
    """Longitudes (W,) and latitudes (H,) in radians of the pixel centres of an ``height x width`` panorama."""
    check_size("panorama", height, width)
    cols = torch.arange(width, device=device, dtype=dtype)
    rows = torch.arange(height, device=device, dtype=dtype)
    lon = ((cols + 0.5) / width - 0.5) * (2 * math.pi)
    lat = (0.5 - (rows + 0.5) / height) * math.pi
    return lon, lat


def lonlat_to_direction(lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
    """Unit world directions (..., 3) of longitudes and latitudes in radians (broadcast against each other)."""
    lon, lat = torch.broadcast_tensors(lon, lat)
    c = torch.cos(lat)
    return torch.stack([c * torch.sin(lon), -torch.sin(lat), c * torch.cos(lon)], dim=-1)


def direction_to_lonlat(direction: torch.Tensor):
    """Longitude in [-pi, pi] and latitude in [-pi/2, pi/2] (radians) of world directions (..., 3), any length."""
    x, y, z = direction.unbind(-1)
    return torch.atan2(x, z), torch.atan2(-y, torch.hypot(x, z))


def lonlat_to_equirect_pixel(lon: torch.Tensor, lat: torch.Tensor, height: int, width: int):
    """Continuous panorama pixel coordinates (u, v) of longitudes/latitudes in radians: the inverse of
    :func:`equirect_grid` (pixel centres at integers; u in [-0.5, W - 0.5], v in [-0.5, H - 0.5])."""
    u = (lon / (2 * math.pi) + 0.5) * width - 0.5
    v = (0.5 - lat / math.pi) * height - 0.5
    return u, v


# --- working precision ------------------------------------------------------------------------------------------

def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The per-pixel working precision of the geometry modules: float64 for float64 data, float32 for everything
    else (half, bfloat16, float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- sampling ---------------------------------------------------------------------------------------------------

def bilinear_sample(image: torch.Tensor, x: torch.Tensor, y: torch.Tensor, wrap_x: bool) -> torch.Tensor:
    """Sample ``image`` (B, C, H, W) at continuous pixel coordinates x, y (N,) -> (B, C, N) in x's dtype.

    The bilinear sampler of every geometry module (equirect, metrics, placement). Pixel centres at integers. ``wrap_x``: columns are periodic (index modulo W); otherwise x is clamped to
    [0, W-1]. y is always clamped to [0, H-1].
    """
    b, c, h, w = image.shape
    flat = image.reshape(b, c, h * w)
    y = y.clamp(0, h - 1)
    y0f = torch.floor(y)
    fy = y - y0f
    y0 = y0f.long()
    y1 = (y0 + 1).clamp(max=h - 1)
    if wrap_x:
        x0f = torch.floor(x)
        fx = x - x0f
        x0 = x0f.long().remainder(w)
        x1 = (x0 + 1).remainder(w)
    else:
        x = x.clamp(0, w - 1)
        x0f = torch.floor(x)
        fx = x - x0f
        x0 = x0f.long()
        x1 = (x0 + 1).clamp(max=w - 1)

    def tap(yi, xi):
        return flat[:, :, yi * w + xi].to(x.dtype)

    top = tap(y0, x0) * (1 - fx) + tap(y0, x1) * fx
    bottom = tap(y1, x0) * (1 - fx) + tap(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


def equirect_to_views(pano: torch.Tensor, K: torch.Tensor, R: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Cut perspective views out of equirectangular panoramas.

    pano: (B, C, Hp, Wp), longitude 0 at the centre column (module conventions).
    K: (m, 3, 3) intrinsics for ``height x width`` views and R: (m, 3, 3) camera-to-world rotations, in the
    conventions of ``geometry.cameras`` (e.g. ``pano_cameras(8, 90, height, width)``).
    Returns views (B, m, C, height, width) in pano's dtype, on pano's device: pixel (x, y) of view i shows the
    direction ``R_i @ inv(K_i) @ (x, y, 1)``, bilinearly sampled, wrapping across the +-180 deg seam.
    """
    if not isinstance(pano, torch.Tensor) or pano.ndim != 4:
        raise ValueError(f"pano must be a batch of panoramas of shape (B, C, H, W), got {describe_shape(pano)}")
    m = check_cameras(K, R)
    check_size("view", height, width)
    height, width = int(height), int(width)
    hp, wp = pano.shape[-2:]
    if hp < 1 or wp < 1 or pano.shape[1] < 1:
        raise ValueError(f"pano must have at least one channel and pixel, got shape {tuple(pano.shape)}")
    device, wdtype = pano.device, working_dtype(pano.dtype)

    # pixel -> world direction matrices, in float64 on the CPU (3x3 each), then to the working dtype
    to_world = (R.detach().cpu().double() @ torch.linalg.inv(K.detach().cpu().double())).to(device, wdtype)
    pix = pixel_grid(height, width, device, wdtype).reshape(-1, 3).T  # (3, h*w)
    dirs = (to_world @ pix).transpose(1, 2)  # (m, h*w, 3)
    lon, lat = direction_to_lonlat(dirs)
    u, v = lonlat_to_equirect_pixel(lon, lat, hp, wp)
    samples = bilinear_sample(pano, u.reshape(-1), v.reshape(-1), wrap_x=True)  # (B, C, m*h*w)
    b, c = pano.shape[:2]
    views = samples.reshape(b, c, m, height, width).transpose(1, 2)
    return views.to(pano.dtype).contiguous()


# --- stitching --------------------------------------------------------------------------------------------------

def _min_cos_of_image(K64: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(m,) float64: a lower bound of the cosine between each camera's optical axis and any ray through its image
    ``[-0.5, W-0.5] x [-0.5, H-0.5]``: the angle grows with the distance from the axis on the image plane, a convex
    function, so it is largest at a corner. A small margin keeps the bound safe in float32."""
    xs = torch.tensor([-0.5, width - 0.5], dtype=torch.float64)
    ys = torch.tensor([-0.5, height - 0.5], dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    corners = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.ones(4, dtype=torch.float64)])  # (3, 4)
    rays = torch.linalg.inv(K64) @ corners  # (m, 3, 4)
    cos = rays[:, 2] / rays.norm(dim=1)
    return (cos.min(dim=1).values - 1e-3).clamp(min=-1.0)


def _check_blend(blend: str) -> None:
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(map(repr, BLENDS))}, got {blend!r}")


def blend_weight(x: torch.Tensor, y: torch.Tensor, height: int, width: int, blend: str) -> torch.Tensor:
    """Blending weight in [0, 1] of continuous view pixel coordinates (x, y) of a ``height x width`` view.

    * ``"ramp"``: the official horizontal ramp (``generate_video_tool/lib/multi_Perspec2Equirec.py``): per pixel
      column c, ``min(c, W-1-c) / (W//2 - 1)`` for even W (0 at the first and last columns, 1 at the two centre
      columns), linear in between and 0 outside [0, W-1]; it does not depend on y.
      Odd widths use ``min(c, W-1-c) / ((W-1)/2)`` (1 at the centre column).
    * ``"feather"``: ``min(distance to the left, right, top and bottom border) / (min(H, W) / 2)``, clipped to
      [0, 1], with the borders at the image's outer edge (-0.5 and W-0.5, H-0.5): it falls to 0 towards every
      edge, so blended panoramas have no seam where a view ends.
    """
    _check_blend(blend)
    if blend == "ramp":
        half = max((width - 1) // 2, 1)
        d = torch.minimum(x, (width - 1) - x)
        return (d / half).clamp(0, 1)
    # "feather"
    d = torch.minimum(torch.minimum(x + 0.5, width - 0.5 - x), torch.minimum(y + 0.5, height - 0.5 - y))
    return (d / (min(height, width) / 2)).clamp(0, 1)


def views_to_equirect(views: torch.Tensor, K: torch.Tensor, R: torch.Tensor, out_height: int, out_width: int,
                      blend: str = "ramp"):
    """Stitch perspective views into equirectangular panoramas.

    views: (B, m, C, h, w); K (m, 3, 3) intrinsics for ``h x w`` views and R (m, 3, 3) camera-to-world rotations
    (``geometry.cameras`` conventions). For every panorama pixel and view, the pixel's direction is projected
    into the view (only in front of the camera, only inside the view's image ``[-0.5, w-0.5] x [-0.5, h-0.5]``),
    the view is sampled bilinearly and weighted by :func:`blend_weight`; the result is the weighted average.
    As in the official tool, pixels that no view covers with a positive weight are white (1.0).

    Returns ``(pano, coverage)``: pano (B, C, out_height, out_width) in views' dtype and coverage
    (B, 1, out_height, out_width) bool (True where some view contributes), both on views' device.
    """
    _check_blend(blend)
    if not isinstance(views, torch.Tensor) or views.ndim != 5:
        raise ValueError(f"views must have shape (B, m, C, h, w), got {describe_shape(views)}")
    b, m, c, h, w = views.shape
    check_cameras(K, R, num_views=m)
    if b < 1 or c < 1 or h < 1 or w < 1:
        raise ValueError(f"views must be non-empty, got shape {tuple(views.shape)}")
    check_size("output panorama", out_height, out_width)
    out_height, out_width = int(out_height), int(out_width)
    device, wdtype = views.device, working_dtype(views.dtype)

    K64, R64 = K.detach().cpu().double(), R.detach().cpu().double()
    # world -> view pixel (homogeneous) matrices K_i @ R_i^T, in float64 on the CPU, then the working dtype
    to_pixel = (K64 @ R64.transpose(1, 2)).to(device, wdtype)
    # a cone around each view's optical axis that holds its whole image: only those directions are projected
    forward = R64[:, :, 2].to(device, wdtype)  # (m, 3) world direction of each camera's +z
    min_cos = _min_cos_of_image(K64, h, w)
    lon, lat = equirect_grid(out_height, out_width, device=device, dtype=wdtype)
    dirs = lonlat_to_direction(lon[None, :], lat[:, None]).reshape(-1, 3)  # (Hp*Wp, 3) unit directions

    acc = torch.zeros(b, c, out_height * out_width, device=device, dtype=wdtype)
    wsum = torch.zeros(out_height * out_width, device=device, dtype=wdtype)
    for i in range(m):
        idx = (dirs @ forward[i] >= float(min_cos[i])).nonzero().squeeze(1)
        x, y, inside = project_to_image(dirs[idx] @ to_pixel[i].T, h, w)  # (n,) each
        weight = torch.where(inside, blend_weight(x, y, h, w, blend), torch.zeros_like(x))
        keep = weight > 0
        idx, x, y, weight = idx[keep], x[keep], y[keep], weight[keep]
        if idx.numel() == 0:
            continue
        samples = bilinear_sample(views[:, i], x, y, wrap_x=False)  # (B, C, n)
        acc.index_add_(2, idx, samples * weight)
        wsum.index_add_(0, idx, weight)

    covered = wsum > 0
    pano = torch.where(covered, acc / torch.where(covered, wsum, torch.ones_like(wsum)), torch.ones_like(acc))
    pano = pano.reshape(b, c, out_height, out_width).to(views.dtype)
    coverage = covered.reshape(1, 1, out_height, out_width).expand(b, 1, out_height, out_width).clone()
    return pano, coverage
