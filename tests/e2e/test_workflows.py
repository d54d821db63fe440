"""The example workflows run through a real ComfyUI server (API format converted from the UI files).

Random weights, 64-px views, 2 steps: ``workflows/text_to_panorama.json`` on a full-size random checkpoint in
the exact official ``pano.ckpt`` layout (the file ComfyUI's SD2 detection has to accept), and
``workflows/text_to_panorama_sd2.json`` on the random SD2 test checkpoint with random CAA weights, and
``workflows/image_to_panorama.json`` on a full-size random checkpoint in the official ``pano_outpaint.ckpt``
layout (9-channel UNet) with a photo cut from the street panorama. The test
adds a MaskToImage + SaveImage pair to save the stitch's coverage mask, which must be the rig's footprint on
the sphere (computed here in closed form, independently of ``geometry/``).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from workflow_api import set_inputs, ui_to_api  # noqa: E402

pytestmark = [pytest.mark.host, pytest.mark.server]

WORKFLOWS = ROOT / "workflows"
VIEW, PANO_W, PANO_H = 64, 512, 256


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def small(prompt: dict, sampler: str, steps: int = 2) -> dict:
    """The workflow at 64-px views, ``steps`` steps and a 512x256 panorama, plus a saved coverage mask."""
    prompt = set_inputs(prompt, "MVDiffusionPanoramaCameras", width=VIEW, height=VIEW)
    prompt = set_inputs(prompt, sampler, steps=steps)
    prompt = set_inputs(prompt, "MVDiffusionEquirectStitch", width=PANO_W, height=PANO_H)
    stitch = next(k for k, n in prompt.items() if n["class_type"] == "MVDiffusionEquirectStitch")
    prompt["9001"] = {"class_type": "MaskToImage", "inputs": {"mask": [stitch, 1]}}
    prompt["9002"] = {"class_type": "SaveImage", "inputs": {"images": ["9001", 0], "filename_prefix": "coverage"}}
    return prompt


def expected_coverage(views: int, fov_deg: float, height: int, width: int) -> np.ndarray:
    """Closed form: the equirect pixel (longitude 0 at the centre column, positive to the right, latitude up)
    is covered when its direction lies inside the frustum of some view of the pitch-0 ring."""
    lon = ((np.arange(width) + 0.5) / width - 0.5) * 2 * math.pi
    lat = (0.5 - (np.arange(height) + 0.5) / height) * math.pi
    lat, lon = np.meshgrid(lat, lon, indexing="ij")
    half = math.tan(math.radians(fov_deg) / 2)
    covered = np.zeros_like(lon, dtype=bool)
    for i in range(views):
        d = lon - 2 * math.pi * i / views
        x, y, z = np.cos(lat) * np.sin(d), -np.sin(lat), np.cos(lat) * np.cos(d)
        with np.errstate(divide="ignore", invalid="ignore"):
            covered |= (z > 0) & (np.abs(x / z) <= half) & (np.abs(y / z) <= half)
    return covered


def saved(server, entry, prefix: str) -> list[np.ndarray]:
    """The images a finished prompt saved under ``prefix`` (relative to the output folder), as floats."""
    files = sorted(p for p in server.output_files(entry) if str(p.relative_to(server.output)).startswith(prefix))
    assert files, (prefix, server.output_files(entry))
    return [np.asarray(Image.open(f)).astype(np.float32) / 255.0 for f in files]


def check_outputs(server, entry, pano_prefix: str, views_prefix: str | None = None) -> None:
    (pano,) = saved(server, entry, pano_prefix)
    assert pano.shape == (PANO_H, PANO_W, 3)
    assert pano.std() > 0.02, "the panorama is constant"
    if views_prefix:
        views = saved(server, entry, views_prefix)
        assert len(views) == 8 and all(v.shape == (VIEW, VIEW, 3) for v in views)
    (coverage,) = saved(server, entry, "coverage")
    mask = (coverage[..., 0] if coverage.ndim == 3 else coverage) > 0.5
    want = expected_coverage(8, 90.0, PANO_H, PANO_W)
    disagree = float((mask != want).mean())
    assert disagree < 0.01, f"coverage differs from the rig's footprint on {disagree:.2%} of the pixels"
    assert 0.45 < float(want.mean()) < 0.75  # the 8x90 degree ring covers the band around the horizon
    # outside the coverage (away from its border) the official stitch leaves white
    inside = mask | np.roll(mask, 1, 0) | np.roll(mask, -1, 0)
    assert float(pano[~inside].min()) > 0.99


@pytest.fixture(scope="module")
def official_pano(comfy_server, workflow_models) -> str:
    return workflow_models.pano(comfy_server)


@pytest.fixture(scope="module")
def sd2_models(comfy_server, workflow_models) -> None:
    workflow_models.sd2(comfy_server)


def test_text_to_panorama_runs_on_an_official_layout_checkpoint(comfy_server, official_pano):
    prompt = small(ui_to_api(load_workflow("text_to_panorama.json"), comfy_server.object_info()),
                   "MVDiffusionKSampler")
    entry = comfy_server.run(prompt, timeout=1800)
    check_outputs(comfy_server, entry, "mvdiffusion/panorama_", "mvdiffusion/view_")


@pytest.fixture(scope="module")
def official_outpaint(comfy_server, workflow_models) -> str:
    comfy_server.free_models()  # the pano model of the test before: one 5 GB model in memory at a time
    return workflow_models.pano_outpaint(comfy_server)  # and the photo the workflow loads


def test_image_to_panorama_runs_on_an_official_layout_outpaint_checkpoint(comfy_server, official_outpaint):
    prompt = small(ui_to_api(load_workflow("image_to_panorama.json"), comfy_server.object_info()),
                   "MVDiffusionKSampler")
    entry = comfy_server.run(prompt, timeout=1800)
    check_outputs(comfy_server, entry, "mvdiffusion/outpaint_panorama", "mvdiffusion/outpaint_view")


def test_text_to_panorama_sd2_runs_on_the_hosts_checkpoint_with_caa_weights(comfy_server, sd2_models):
    prompt = small(ui_to_api(load_workflow("text_to_panorama_sd2.json"), comfy_server.object_info()), "KSampler")
    entry = comfy_server.run(prompt, timeout=1800)
    check_outputs(comfy_server, entry, "mvdiffusion/panorama_sd2")


def test_an_interrupted_run_leaves_the_server_able_to_run_the_next_prompt(comfy_server, sd2_models):
    info = comfy_server.object_info()
    long = small(ui_to_api(load_workflow("text_to_panorama_sd2.json"), info), "KSampler", steps=500)
    with comfy_server.events() as events:
        prompt_id = comfy_server.queue(long, client_id=events.client_id)
        # the second step's progress, or the prompt's failure (which must not leave this test waiting)
        step = events.wait_for(lambda kind, data: data.get("prompt_id") == prompt_id and (
            kind == "execution_error" or (kind == "progress" and data["value"] >= 2)), timeout=900)
        comfy_server.interrupt()
    entry = comfy_server.wait(prompt_id, timeout=600)
    assert "exception_message" not in step, step
    assert step["max"] == 500
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, entry["status"]
    after = comfy_server.run(small(ui_to_api(load_workflow("text_to_panorama_sd2.json"), info), "KSampler"),
                             timeout=900)
    check_outputs(comfy_server, after, "mvdiffusion/panorama_sd2")
