"""``workflows/scene_texturing.json`` through a real ComfyUI server: a scan of a room (ScanNet layout, depth rendered
in closed form: cameras turning inside a box) -> key frames generated together with the depth CAA -> the frames
between each pair of key frames -> every frame saved in order, and the textured scan as a point cloud in the
core 3D preview.

Random weights, 128-px frames, 1 step. The workflow's depth_gen.ckpt (6.5 GB, and about as much memory once
loaded) is swapped for the host route with small random models: the Load MVDiffusion Checkpoint node becomes the
host's UNETLoader (a random SD2-depth test UNet, 5 input channels) for the MODEL, CheckpointLoaderSimple (the
SD2 test checkpoint) for CLIP and VAE, and Load CAA Weights (random depth CAA in this pack's format) for the CAA.
Loading the official layout itself is tested in-process (tests/caa/test_depth_loading.py). Everything else runs
as the file says.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "scenes"))
sys.path.insert(0, str(ROOT / "tests" / "geometry"))
from scene_files import Scene, write_scannet  # noqa: E402
from test_depth_correspondences import K64, pose, render_depth  # noqa: E402
from workflow_api import set_inputs, ui_to_api  # noqa: E402

pytestmark = [pytest.mark.host, pytest.mark.server]

SIZE = 128
YAWS = (0, 20, 40, 60, 80, 100)  # degrees, from the room's centre: consecutive frames overlap ~0.8


def write_room_scan(folder: Path) -> Path:
    """The room scan in the ScanNet layout; colour: a smooth ramp per frame."""
    c2w = torch.stack([pose(yaw, (0.0, 0.0, 0.0)) for yaw in YAWS])
    depths = torch.stack([render_depth(c) for c in c2w]).numpy().round(3)
    h, w = depths.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w]
    colours = np.stack([np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), 40.0 * i)], -1)
                        for i in range(len(YAWS))]).astype(np.uint8)
    return write_scannet(folder, Scene(K64.numpy(), c2w.numpy(), depths, colours), ids=range(len(YAWS)))


def host_route(prompt: dict) -> dict:
    """The depth checkpoint loader -> UNETLoader (slot 0), CheckpointLoaderSimple (slots 1, 2), Load CAA Weights
    (slot 3)."""
    prompt = json.loads(json.dumps(prompt))
    (node_id,) = [k for k, n in prompt.items() if n["class_type"] == "MVDiffusionCheckpointLoader"]
    assert prompt[node_id]["inputs"]["ckpt_name"] == "depth_gen.ckpt"
    prompt[node_id] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "512-base-ema.safetensors"}}
    route = {0: ("9101", {"class_type": "UNETLoader", "inputs": {"unet_name": "512-depth-unet.safetensors",
                                                                  "weight_dtype": "default"}}),
             3: ("9102", {"class_type": "MVDiffusionCAALoader", "inputs": {"caa_name": "depth_gen.caa.safetensors"}})}
    for slot, (new_id, node) in route.items():
        prompt[new_id] = node
        for other in prompt.values():
            for name, value in other["inputs"].items():
                if value == [node_id, slot]:
                    other["inputs"][name] = [new_id, 0]
    return prompt


@pytest.fixture(scope="module")
def texturing_run(comfy_server, workflow_models):
    workflow_models.depth(comfy_server)
    write_room_scan(comfy_server.base / "input" / "scan")
    workflow = json.loads((ROOT / "workflows" / "scene_texturing.json").read_text())
    prompt = host_route(ui_to_api(workflow, comfy_server.object_info()))
    prompt = set_inputs(prompt, "MVDiffusionLoadSceneFrames", width=SIZE, height=SIZE)
    prompt = set_inputs(prompt, "KSampler", steps=1)
    prompt = set_inputs(prompt, "MVDiffusionInBetweenFrames", steps=1)
    entry = comfy_server.run(prompt, timeout=1800)
    files = {str(p.relative_to(comfy_server.output)): p for p in comfy_server.output_files(entry)}
    return prompt, entry, files


def test_the_scene_texturing_workflow_saves_every_frame_in_order_with_the_key_frames_kept(texturing_run):
    _, _, files = texturing_run
    keys = sorted(n for n in files if n.startswith("mvdiffusion/scene_key_frame"))
    frames = sorted(n for n in files if n.startswith("mvdiffusion/scene_frame"))
    assert len(frames) == len(YAWS) and 2 <= len(keys) < len(YAWS)
    loaded = [np.asarray(Image.open(files[n]).convert("RGB")) for n in frames]
    key_images = [np.asarray(Image.open(files[n]).convert("RGB")) for n in keys]
    assert all(image.shape == (SIZE, SIZE, 3) for image in loaded)
    kept = [i for i, image in enumerate(loaded) if any(np.array_equal(image, k) for k in key_images)]
    assert kept[0] == 0 and kept[-1] == len(YAWS) - 1 and len(kept) == len(keys)  # the key frames, in place
    between = [loaded[i] for i in range(len(YAWS)) if i not in kept]
    assert between and all(float(image.std()) > 1.0 for image in between)  # generated pixels, not a flat fill


def test_the_textured_scan_is_saved_as_a_point_cloud_and_shown_in_the_3d_preview(texturing_run, comfy_server):
    prompt, entry, _ = texturing_run
    (preview,) = [k for k, n in prompt.items() if n["class_type"] == "Preview3D"]
    model_file = entry["outputs"][preview]["result"][0]
    data = (comfy_server.output / model_file).read_bytes()
    assert data.startswith(b"ply\nformat binary_little_endian 1.0\n")
    count = int(data.split(b"element vertex ", 1)[1].split(b"\n", 1)[0])
    assert count == len(YAWS) * math.ceil(SIZE / 2) ** 2  # every 2nd pixel of every frame: all have depth
