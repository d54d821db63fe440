"""Panorama View / Orbit / Consistency / Save Panorama on the real street panorama (in-process host)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_mvdiffusion.geometry import equirect_to_views, intrinsics, overlap_psnr, pano_rig, rotation

pytestmark = pytest.mark.host

STREET = Path(__file__).resolve().parents[1] / "fixtures" / "panoramas" / "street_2048x1024.jpg"


@pytest.fixture(scope="module")
def street() -> torch.Tensor:
    """The street panorama at 1024 x 512 as a ComfyUI IMAGE (1, H, W, 3)."""
    image = Image.open(STREET).convert("RGB").resize((1024, 512), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def direct_view(pano: torch.Tensor, yaw: float, pitch: float, fov: float, h: int, w: int) -> torch.Tensor:
    out = equirect_to_views(pano.permute(0, 3, 1, 2), intrinsics(fov, h, w)[None], rotation(yaw, pitch)[None], h, w)
    return out[0, 0].permute(1, 2, 0).clamp(0, 1)


def test_panorama_view_is_the_panoramas_perspective_view_at_that_yaw_pitch_and_fov(graph, street):
    (view,) = graph.run("MVDiffusionPanoramaView", panorama=street, yaw=30.0, pitch=10.0, fov=70.0, width=96,
                        height=64)
    assert view.shape == (1, 64, 96, 3)
    assert torch.equal(view[0], direct_view(street, 30.0, 10.0, 70.0, 64, 96))
    assert (view[0] - direct_view(street, 40.0, 10.0, 70.0, 64, 96)).abs().mean() > 0.02  # another yaw differs


def test_panorama_orbit_turns_once_in_the_given_number_of_frames(graph, street):
    (frames,) = graph.run("MVDiffusionPanoramaOrbit", panorama=street, frames=12, start_yaw=15.0, pitch=0.0,
                          fov=60.0, width=48, height=32)
    assert frames.shape == (12, 32, 48, 3)
    for k in (0, 1, 7):
        assert torch.equal(frames[k], direct_view(street, 15.0 + 30.0 * k, 0.0, 60.0, 32, 48)), k
    with pytest.raises(ValueError, match="Panorama Orbit: give one panorama, got a batch of 2"):
        graph.run("MVDiffusionPanoramaOrbit", panorama=street.expand(2, -1, -1, -1), frames=4, start_yaw=0.0,
                  pitch=0.0, fov=60.0, width=48, height=32)


def test_panorama_consistency_is_the_overlap_psnr_and_drops_for_shuffled_views(graph, street):
    rig = pano_rig(8, 90, 64, 64)
    views = equirect_to_views(street.permute(0, 3, 1, 2), rig.K, rig.R, 64, 64)[0]  # (8, 3, 64, 64)
    images = views.permute(0, 2, 3, 1).clamp(0, 1)
    mean, table = graph.run("MVDiffusionPanoramaConsistency", images=images, cameras=rig)
    want = overlap_psnr(images.permute(0, 3, 1, 2), rig.K, rig.R, pairs=[(i, (i + 1) % 8) for i in range(7)]
                        + [(0, 7)])
    assert mean == pytest.approx(float(want.mean), rel=1e-6) and mean > 25
    assert table.ndim == 4 and table.shape[0] == 1 and table.shape[-1] == 3 and float(table.std()) > 0
    shuffled, _ = graph.run("MVDiffusionPanoramaConsistency", images=images[[0, 3, 6, 1, 4, 7, 2, 5]], cameras=rig)
    assert shuffled < mean - 8


def saved_file(comfy, result) -> Path:
    (entry,) = result.ui["images"] if isinstance(result.ui, dict) else result.ui.as_dict()["images"]
    return Path(comfy.folder_paths.get_output_directory()) / entry["subfolder"] / entry["filename"]


@pytest.mark.parametrize("fmt, full, size, top", [("jpeg", True, (256, 128), 0), ("png", False, (256, 64), 32)],
                         ids=["full sphere jpeg", "band png"])
def test_save_panorama_writes_photo_sphere_xmp_that_pillows_reader_reads_back(comfy, fmt, full, size, top):
    w, h = size
    pano = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        result = comfy.mvd_nodes["MVDiffusionSavePanorama"].execute(panorama=pano, filename_prefix="test/pano360",
                                                                    format=fmt, full_sphere=full, quality=90)
    path = saved_file(comfy, result)
    with Image.open(path) as image:
        assert image.size == (w, h) and image.format == fmt.upper()
        xmp = image.getxmp()  # Pillow's own XMP reader (defusedxml)
    description = xmp["xmpmeta"]["RDF"]["Description"]
    assert description["ProjectionType"] == "equirectangular"
    fields = {k: int(description[k]) for k in ("FullPanoWidthPixels", "FullPanoHeightPixels",
                                               "CroppedAreaImageWidthPixels", "CroppedAreaImageHeightPixels",
                                               "CroppedAreaLeftPixels", "CroppedAreaTopPixels")}
    assert fields == {"FullPanoWidthPixels": w, "FullPanoHeightPixels": w // 2, "CroppedAreaImageWidthPixels": w,
                      "CroppedAreaImageHeightPixels": h, "CroppedAreaLeftPixels": 0, "CroppedAreaTopPixels": top}


def test_save_panorama_refuses_a_full_sphere_that_is_not_2_to_1(comfy):
    with pytest.raises(ValueError, match=r"Save Panorama: a full-sphere panorama is 2:1, but this image is 256x64"):
        comfy.mvd_nodes["MVDiffusionSavePanorama"].execute(panorama=torch.zeros(1, 64, 256, 3), filename_prefix="x",
                                                           format="png", full_sphere=True, quality=90)
