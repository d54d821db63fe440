"""Rigs that cover the whole sphere: the panorama ring, optional further rows, and views looking straight up
and down, with neighbours chosen by measured overlap (conventions: ``geometry/cameras.py``).

View order: the ring first (view i at yaw ``360/N * i``, pitch 0: the views of ``pano_rig``, so a ring made with
Panorama Cameras keeps its indices), then the rows in the order given, then the up pole (pitch +90), then the
down pole (pitch -90). A pole view is ``rotation(0, ±90)``: its x axis is the world's x.

Coverage in closed form: a direction d is inside view v when, in v's camera frame ``c = R_v^T d``, ``c_z > 0``,
``|c_x / c_z| < W / 2f`` and ``|c_y / c_z| < H / 2f`` (:func:`covered`; strictly inside, where the feathered
stitch weights are positive). For a ring with poles a sufficient condition follows: a direction at azimuth
``phi`` from the nearest ring view's centre is covered up to latitude ``atan(cos(phi) H / 2f)``, worst halfway
between two views (:func:`ring_top_latitude`), and a pole view reaches down to ``90° - atan(min(W, H) / 2f)``
at the middle of its shorter borders (:func:`pole_reach`).
"""
from __future__ import annotations

import math

import torch

from .cameras import Rig, check_size, rig_cameras
from .equirect import equirect_grid, lonlat_to_direction

__all__ = ["POLES", "sphere_rig", "parse_rows", "ring_top_latitude", "pole_reach", "pole_fov_for_full_sphere",
           "covered", "sphere_coverage"]

# which pole views a sphere rig has
POLES = ("both", "up", "down", "none")


def _half_extent(fov_deg: float, height: int, width: int) -> tuple[float, float]:
    """``(W / 2f, H / 2f)``: the tangents of the half fields of view across and along a view's image."""
    t = math.tan(math.radians(fov_deg) / 2)
    return t, t * height / width


def ring_top_latitude(ring_views: int, ring_fov_deg: float, height: int, width: int) -> float:
    """Degrees: the ring of ``ring_views`` views (pitch 0) covers every latitude strictly below this one (and
    above its negative) at every longitude, halfway between two views included. 0 when the views leave gaps
    between them on the horizon."""
    tx, ty = _half_extent(ring_fov_deg, height, width)
    phi = math.pi / ring_views  # the worst azimuth: halfway between two views
    if math.tan(phi) >= tx:
        return 0.0
    return math.degrees(math.atan(ty * math.cos(phi)))


def pole_reach(pole_fov_deg: float, height: int, width: int) -> float:
    """Degrees: a view looking straight up (down) covers every latitude strictly above this one (below its
    negative) at every longitude: the middle of its shorter border is the nearest point to the horizon."""
    tx, ty = _half_extent(pole_fov_deg, height, width)
    return 90.0 - math.degrees(math.atan(min(tx, ty)))


def pole_fov_for_full_sphere(ring_views: int, ring_fov_deg: float, height: int, width: int) -> float:
    """A horizontal pole fov (degrees) above which a ring with both poles surely leaves no hole (no further
    rows; sufficient: the ring's and the poles' weakest azimuths need not coincide); inf when no pole fov can
    do it (gaps on the horizon)."""
    top = ring_top_latitude(ring_views, ring_fov_deg, height, width)
    if top <= 0.0:
        return math.inf
    # pole_reach(g) < top  <=>  min(tx, ty) > tan(90 - top), with ty = tx * H / W
    need = math.tan(math.radians(90.0 - top)) * max(1.0, width / height)
    return math.degrees(2 * math.atan(need))


def covered(rig: Rig, directions: torch.Tensor) -> torch.Tensor:
    """Which world directions (..., 3) lie strictly inside some view of the rig -> (...) bool (float64 math)."""
    d = directions.double().reshape(-1, 3)
    cam = torch.einsum("vab,na->vnb", rig.R.double(), d)  # R_v^T d for every view v: (m, N, 3)
    tx = torch.tensor([math.tan(math.radians(f) / 2) for f in rig.fovs_deg], dtype=torch.float64)[:, None]
    ty = tx * rig.height / rig.width
    x, y, z = cam.unbind(-1)
    inside = (z > 0) & (x.abs() < tx * z) & (y.abs() < ty * z)
    return inside.any(dim=0).reshape(directions.shape[:-1])


def sphere_coverage(rig: Rig, pano_height: int = 512) -> float:
    """The fraction of the pixel centres of a ``pano_height x 2 pano_height`` equirectangular image that the rig
    covers (:func:`covered`)."""
    lon, lat = equirect_grid(pano_height, 2 * pano_height, dtype=torch.float64)
    return float(covered(rig, lonlat_to_direction(lon[None, :], lat[:, None])).double().mean())


def parse_rows(text: str) -> tuple[tuple[float, int, float, float], ...]:
    """Rows of a sphere rig from text: ``pitch:views[:fov[:yaw_offset]]`` entries separated by commas or
    semicolons, e.g. ``"45:4, -45:4:100:45"``. fov defaults to 90, yaw_offset to 0 (degrees)."""
    rows = []
    for entry in (e.strip() for e in text.replace(";", ",").split(",")):
        if not entry:
            continue
        parts = [p.strip() for p in entry.split(":")]
        try:
            if not 2 <= len(parts) <= 4:
                raise ValueError
            pitch, views = float(parts[0]), int(parts[1])
            fov = float(parts[2]) if len(parts) > 2 else 90.0
            offset = float(parts[3]) if len(parts) > 3 else 0.0
        except ValueError:
            raise ValueError(f"row {entry!r} is not pitch:views[:fov[:yaw_offset]] (e.g. 45:4 or -45:4:100:45)") \
                from None
        if not -90.0 <= pitch <= 90.0 or views < 1:
            raise ValueError(f"row {entry!r}: pitch must be in [-90, 90] and views at least 1")
        rows.append((pitch, views, fov, offset))
    return tuple(rows)


def sphere_rig(ring_views: int = 8, ring_fov_deg: float = 90.0, height: int = 512, width: int = 512,
               pole_fov_deg: float = 120.0, poles: str = "both", rows=(), min_overlap: float = 0.1,
               max_neighbours: int | None = None) -> Rig:
    """A rig of the ring (``ring_views`` views at pitch 0), ``rows`` (``(pitch, views, fov, yaw_offset)``
    tuples, see :func:`parse_rows`) and the pole views (``poles``: one of :data:`POLES`), all ``height x width``.

    Neighbours: the views that see more than ``min_overlap`` of a view's image, at most ``max_neighbours``
    (None: all), most overlapping first (:func:`geometry.correspondences.overlap_neighbours`): a pole view
    attends to every ring view it overlaps, a ring view to its two ring neighbours and the poles.
    """
    if poles not in POLES:
        raise ValueError(f"poles must be one of {', '.join(POLES)}, got {poles!r}")
    if int(ring_views) != ring_views or ring_views < 0:
        raise ValueError(f"ring views must be a non-negative integer, got {ring_views}")
    check_size("image", height, width)
    yaws, pitches, fovs = [], [], []

    def add(n: int, pitch: float, fov: float, offset: float) -> None:
        yaws.extend((offset + 360.0 * i / n) % 360.0 for i in range(n))
        pitches.extend([float(pitch)] * n)
        fovs.extend([float(fov)] * n)

    if ring_views:
        add(int(ring_views), 0.0, ring_fov_deg, 0.0)
    for pitch, views, fov, offset in rows:
        add(int(views), pitch, fov, offset)
    if poles in ("both", "up"):
        add(1, 90.0, pole_fov_deg, 0.0)
    if poles in ("both", "down"):
        add(1, -90.0, pole_fov_deg, 0.0)
    return rig_cameras(yaws, pitches, fovs, height, width, min_overlap=min_overlap, max_neighbours=max_neighbours)
