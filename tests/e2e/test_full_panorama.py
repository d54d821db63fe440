"""``workflows/text_to_full_panorama.json`` through a real ComfyUI server: a 2:1 panorama with no hole, shown in the
360 viewer node, saved as a Photo Sphere JPEG and as an orbit video (animated WEBP).

Random weights, 64-px views, 2 steps. The two official 5 GB checkpoints of the workflow are swapped for the host
route with small random models (each Load MVDiffusion Checkpoint becomes the host's CheckpointLoaderSimple plus
Load CAA Weights: the SD2 test checkpoint with pano CAA for the ring, the SD2-inpainting one with outpaint CAA for
the poles), so that the two models fit the suite's memory budget; loading the official layouts through the
server is the other workflow tests' job. Everything else runs as the file says.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from workflow_api import set_inputs, ui_to_api  # noqa: E402

pytestmark = [pytest.mark.host, pytest.mark.server]

VIEW, PANO_W, PANO_H, FRAMES = 64, 512, 256, 8
HOST_ROUTE = {"pano.ckpt": ("512-base-ema.safetensors", "pano.caa.safetensors"),
              "pano_outpaint.ckpt": ("512-inpainting-ema.safetensors", "pano_outpaint.caa.safetensors")}


def host_route(prompt: dict) -> dict:
    """Each MVDiffusion checkpoint loader -> CheckpointLoaderSimple (MODEL, CLIP, VAE at the same slots) plus a
    Load CAA Weights node that takes over the loader's caa output (slot 3)."""
    prompt = json.loads(json.dumps(prompt))
    for node_id in [k for k, n in prompt.items() if n["class_type"] == "MVDiffusionCheckpointLoader"]:
        ckpt, caa = HOST_ROUTE[prompt[node_id]["inputs"]["ckpt_name"]]
        prompt[node_id] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}
        caa_id = f"{node_id}00"
        prompt[caa_id] = {"class_type": "MVDiffusionCAALoader", "inputs": {"caa_name": caa}}
        for node in prompt.values():
            for name, value in node["inputs"].items():
                if value == [node_id, 3]:
                    node["inputs"][name] = [caa_id, 0]
    return prompt


def small(prompt: dict) -> dict:
    """64-px views, 2 steps, 512x256 panoramas, a short orbit, and the whole sphere's coverage mask saved."""
    for cams in ("MVDiffusionPanoramaCameras", "MVDiffusionSphereCameras"):
        prompt = set_inputs(prompt, cams, width=VIEW, height=VIEW)
    prompt = set_inputs(prompt, "MVDiffusionKSampler", steps=2)
    prompt = set_inputs(prompt, "MVDiffusionEquirectStitch", width=PANO_W, height=PANO_H)
    prompt = set_inputs(prompt, "MVDiffusionPanoramaOrbit", frames=FRAMES, width=VIEW, height=VIEW)
    full = next(k for k, n in prompt.items() if n["class_type"] == "MVDiffusionEquirectStitch"
                and "known_panorama" in n["inputs"])
    prompt["9001"] = {"class_type": "MaskToImage", "inputs": {"mask": [full, 1]}}
    prompt["9002"] = {"class_type": "SaveImage", "inputs": {"images": ["9001", 0], "filename_prefix": "coverage"}}
    return prompt


@pytest.fixture(scope="module")
def full_panorama_run(comfy_server, workflow_models):
    workflow_models.sd2(comfy_server)
    workflow_models.sd2_inpainting(comfy_server)
    workflow = json.loads((ROOT / "workflows" / "text_to_full_panorama.json").read_text())
    prompt = small(host_route(ui_to_api(workflow, comfy_server.object_info())))
    entry = comfy_server.run(prompt, timeout=1800)
    files = {str(p.relative_to(comfy_server.output)): p for p in comfy_server.output_files(entry)}
    return prompt, entry, files


def one(files: dict, prefix: str) -> Path:
    (path,) = [p for name, p in files.items() if name.startswith(prefix)]
    return path


def test_the_full_panorama_workflow_covers_every_pixel_of_a_2_to_1_panorama(full_panorama_run):
    _, _, files = full_panorama_run
    coverage = np.asarray(Image.open(one(files, "coverage")).convert("L"))
    assert coverage.shape == (PANO_H, PANO_W) and int(coverage.min()) == 255  # no hole, poles included
    with Image.open(one(files, "mvdiffusion/full_panorama_0")) as image:
        pano = np.asarray(image.convert("RGB")).astype(np.float32) / 255
    assert pano.shape == (PANO_H, PANO_W, 3)
    for rows in (pano[:PANO_H // 8], pano[-PANO_H // 8:]):  # the poles hold generated pixels, not a flat fill
        assert rows.std() > 0.02 and rows.min() < 0.95


def test_the_full_panorama_is_saved_as_a_photo_sphere_and_an_orbit_video(full_panorama_run):
    _, _, files = full_panorama_run
    with Image.open(one(files, "mvdiffusion/full_panorama_0")) as image:
        assert image.format == "JPEG"
        gpano = image.getxmp()["xmpmeta"]["RDF"]["Description"]  # Pillow's own XMP reader
    assert gpano["ProjectionType"] == "equirectangular"
    assert (int(gpano["FullPanoWidthPixels"]), int(gpano["FullPanoHeightPixels"])) == (PANO_W, PANO_H)
    with Image.open(one(files, "mvdiffusion/full_panorama_orbit")) as video:
        assert video.format == "WEBP" and video.n_frames == FRAMES and video.size == (VIEW, VIEW)


def test_the_full_panorama_is_shown_in_the_360_viewer_node(full_panorama_run, comfy_server):
    prompt, entry, _ = full_panorama_run
    (preview,) = [k for k, n in prompt.items() if n["class_type"] == "MVDiffusionPreviewPanorama"]
    (shown,) = entry["outputs"][preview]["mvdiffusion_panorama"]
    assert shown["type"] == "temp"
    with Image.open(comfy_server.base / "temp" / shown["subfolder"] / shown["filename"]) as image:
        assert image.size == (PANO_W, PANO_H)
