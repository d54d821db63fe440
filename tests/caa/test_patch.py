"""The patch object on its own (no host): how it groups rows, what it refuses, and its memory estimate."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from comfyui_mvdiffusion.caa.blockset import CAASet
from comfyui_mvdiffusion.caa.patch import REFERENCE_SLACK, MultiViewError, MultiViewPatch, reference_peak_bytes
from comfyui_mvdiffusion.caa.placement import Site
from comfyui_mvdiffusion.geometry import pano_rig

ROOT = Path(__file__).resolve().parents[2]


def small_patch(views: int = 8) -> MultiViewPatch:
    sites = [Site("encoder", 0, "after_input_block", 2, 320, 0), Site("mid", 0, "after_layer", "m", 320, 0),
             Site("decoder", 0, "after_layer", "d", 320, 0)]
    return MultiViewPatch(CAASet([320], 320, [320]), pano_rig(views, 90, 64, 64), sites)


@pytest.mark.parametrize("rows, chunks", [(8, [0]), (16, [1, 0]), (24, [1, 0, 0]), (32, [1, 0]), (16, None)])
def test_calls_whose_chunks_hold_whole_scenes_are_accepted(rows, chunks):
    small_patch().check_grouping(rows, chunks)


@pytest.mark.parametrize("rows, chunks, message", [
    (24, [1, 0], r"2 cond/uncond chunks of 12 images, not a multiple of the 8 camera views"),
    (12, None, r"the UNet got 12 images, not a multiple of the 8 camera views"),
    (25, [1, 0], r"25 rows for 2 cond/uncond chunks"),
])
def test_calls_that_would_cut_a_scenes_views_apart_are_refused(rows, chunks, message):
    """Divisibility of the whole call is not enough: 24 rows in 2 chunks would put views of one scene in
    both the cond and the uncond chunk."""
    with pytest.raises(MultiViewError, match=message):
        small_patch().check_grouping(rows, chunks)


@pytest.mark.parametrize("rows, batch, ok", [(1, 8, True), (8, 8, True), (8, 16, True), (16, 16, True),
                                             (3, 8, False), (16, 8, False), (8, 24, True), (16, 24, False)])
def test_conditioning_rows_must_be_one_or_one_per_view(rows, batch, ok):
    import torch

    cond = torch.zeros(rows, 77, 4)
    if ok:
        small_patch().check_rows("positive", cond, batch)
    else:
        with pytest.raises(MultiViewError, match=f"the positive conditioning has {rows} rows"):
            small_patch().check_rows("positive", cond, batch)


MEASURE = r"""
import gc, json, re, sys
from pathlib import Path
import torch
sys.path.insert(0, sys.argv[1] + "/scripts")
import comfy_host
comfy_host.import_pack()
from comfyui_mvdiffusion.caa.block import CorrespondenceAttention
from comfyui_mvdiffusion.geometry import level_plan, pano_rig

def status(field):
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) * 1024

torch.set_num_threads(1)
rows, size, dim = (int(a) for a in sys.argv[2:5])
block = CorrespondenceAttention(dim).eval()
for p in block.parameters():
    torch.nn.init.normal_(p, std=0.02)
plan = level_plan(pano_rig(8, 90, 8 * size, 8 * size), size, size)
x = torch.randn(rows, dim, size, size)
with torch.no_grad():
    block(x[:8], plan)  # the allocator's first use
gc.collect()
Path("/proc/self/clear_refs").write_text("5")  # the peak resident set (VmHWM) restarts from here
base = status("VmRSS")
with torch.no_grad():
    block(x, plan)
print(json.dumps({"peak": status("VmHWM") - base}))
"""


@pytest.mark.parametrize("rows, size, dim", [(16, 16, 320), (8, 16, 640)])
def test_the_reference_blocks_memory_estimate_matches_its_measured_peak(rows, size, dim):
    """The estimate the host's memory manager gets for the reference path is computed from the shapes and
    within 35 % above the peak resident memory one block forward really takes (a fresh process, float32; the
    peak varies by about 10 % from one process to the next)."""
    out = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), str(rows), str(size), str(dim)],
                         capture_output=True, text=True, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
    estimate = reference_peak_bytes(rows, 8, 18, dim, size, size, 4)
    assert measured <= estimate <= 1.35 * measured, (measured / 2 ** 20, estimate / 2 ** 20)


def test_the_reference_estimate_grows_with_the_views_the_keys_and_the_map():
    patch = small_patch()
    patch.implementation = "reference"
    one = patch.extra_memory(8, 4) - REFERENCE_SLACK  # what grows with the shapes
    assert patch.extra_memory(16, 4) - REFERENCE_SLACK > 1.9 * one  # twice the latent rows
    assert one + REFERENCE_SLACK == reference_peak_bytes(16, 8, 18, 320, 8, 8, 4)  # cond + uncond rows, 8x8 latent
