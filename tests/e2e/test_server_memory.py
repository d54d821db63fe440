"""Nothing a run builds outlives it: 20 consecutive prompts through the real server keep its memory at the
level of the first ones.

Every prompt changes the cameras (yaw offset) and the seed, so ComfyUI re-runs Apply MVDiffusion (a new patched
MODEL, new cameras) and the sampler each time: a per-run cache that were not freed, or a global cache keyed by
the cameras, would add what one run builds (here 128-px views: the plans, tap tables, folded
weights and positional encodings; measured: 85 MiB) at every prompt, or hold it until the next one.
The server's C allocator is told to return freed memory at once, so its resident size is what it holds.
"""
from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import random_weights  # noqa: E402

pytestmark = [pytest.mark.host, pytest.mark.server]

PROMPTS = 20
VIEW = 128


def graph(seed: int, yaw: float, patched: bool = True) -> dict:
    """Random SD2 test model + CAA weights, 8 views of 128 px, one sampling step, the latent saved."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "512-base-ema.safetensors"}},
        "2": {"class_type": "MVDiffusionCAALoader", "inputs": {"caa_name": "pano.caa.safetensors"}},
        "3": {"class_type": "MVDiffusionPanoramaCameras", "inputs": {
            "views": 8, "fov": 90.0, "pitch": 0.0, "width": VIEW, "height": VIEW, "yaw_offset": yaw}},
        "4": {"class_type": "MVDiffusionEmptyLatent", "inputs": {"cameras": ["3", 0], "scenes": 1}},
        "5": {"class_type": "MVDiffusionPanoramaPrompts", "inputs": {
            "clip": ["1", 1], "cameras": ["3", 0], "text": "a cosy kitchen"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "7": {"class_type": "MVDiffusionApply", "inputs": {"model": ["1", 0], "caa": ["2", 0], "cameras": ["3", 0]}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["7" if patched else "1", 0], "positive": ["5", 0], "negative": ["6", 0], "latent_image": ["4", 0], "seed": seed,
            "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "memory/run"}},
    }


@pytest.fixture(scope="module")
def exact_server(comfy_root, tmp_path_factory, server_starter, return_freed_memory):
    """A server of its own whose C allocator returns every freed block of 64 KiB or more to the system at
    once (glibc's MALLOC_MMAP_THRESHOLD_), so that its resident size is the memory it really holds."""
    server = server_starter(tmp_path_factory.mktemp("memory_server"), comfy_root, env=return_freed_memory)
    yield server
    server.stop()


def test_twenty_prompts_with_new_cameras_keep_the_servers_memory_at_its_baseline(exact_server, workflow_models,
                                                                                     cache_dir):
    comfy_server = exact_server
    workflow_models.sd2(comfy_server)
    process = psutil.Process(comfy_server.proc.pid)
    for seed in range(2):  # the same graph without MVDiffusion: the SD2 model and CLIP loaded, allocator warm
        comfy_server.run(graph(seed=seed, yaw=0.0, patched=False), timeout=900)
    plain = process.memory_info().rss
    rss = []
    for i in range(PROMPTS):
        comfy_server.run(graph(seed=i, yaw=7.5 * i), timeout=900)
        rss.append(process.memory_info().rss)
    mib = [round((r - plain) / 2 ** 20, 1) for r in rss]
    # what the MVDiffusion prompts add to the plain one: the CAA weights, loaded in float32 on the CPU
    caa = sum(t.numel() for t in load_file(random_weights.caa_weights(cache_dir)).values()) * 4
    assert max(rss) - min(rss) < 4 * 2 ** 20, f"RSS after each prompt, MiB above the plain run: {mib}"
    assert max(rss) - plain < caa + 16 * 2 ** 20, (f"RSS after each prompt, MiB above the plain run: {mib}; "
                                                   f"the CAA weights are {caa / 2 ** 20:.1f} MiB")
