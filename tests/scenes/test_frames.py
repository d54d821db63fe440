"""SceneFrames: resizing as the official dataset (OpenCV nearest for depth, K scaled), and its own checks."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scene_files import H, W, make_scene  # noqa: E402

from comfyui_mvdiffusion.geometry.scene import SceneCameras  # noqa: E402
from comfyui_mvdiffusion.scenes import (SceneFrames, check_depth_units, frames_from_tensors,  # noqa: E402
                                        nearest_indices, resize_depths)


@pytest.fixture(scope="module")
def frames():
    scene = make_scene()
    return frames_from_tensors(torch.from_numpy(scene.depths).float(), torch.from_numpy(scene.K).float(),
                               torch.from_numpy(scene.c2w).float(), "c2w_opencv",
                               images=torch.from_numpy(scene.colours).float() / 255, names=["a", "b", "c"])


def test_nearest_picks_the_source_pixel_floor_of_dst_times_scale_as_opencv():
    # ScanNet 480x640 depth -> the official 192x256: x -> floor(2.5 x)
    assert nearest_indices(480, 192).tolist() == [int(np.floor(2.5 * x)) for x in range(192)]
    assert nearest_indices(640, 256).tolist() == [int(np.floor(2.5 * x)) for x in range(256)]
    assert nearest_indices(24, 12).tolist() == list(range(0, 24, 2))
    assert nearest_indices(3, 7).tolist() == [0, 0, 0, 1, 1, 2, 2]  # upscaling: floor(x * 3 / 7)
    assert nearest_indices(5, 5).tolist() == list(range(5))


def test_resized_depth_only_holds_source_depths_at_the_nearest_pixels():
    depth = torch.arange(24 * 32, dtype=torch.float32).reshape(1, 24, 32)
    small = resize_depths(depth, 10, 13)
    rows, cols = nearest_indices(24, 10), nearest_indices(32, 13)
    assert torch.equal(small[0], depth[0][rows][:, cols])


def test_resize_scales_intrinsics_and_keeps_names_colour_and_poses(frames):
    small = frames.resize(12, 16)
    assert small.depths.shape == (3, 12, 16) and small.images.shape == (3, 12, 16, 3)
    assert torch.equal(small.depths, frames.depths[:, ::2, ::2])
    K = frames.cameras.K.clone()
    K[:, :2] *= 0.5
    assert torch.allclose(small.cameras.K, K)
    assert torch.equal(small.cameras.c2w, frames.cameras.c2w) and small.names == frames.names
    area = frames.resize(12, 16, colour_mode="area")
    assert torch.allclose(area.images[0, 0, 0], frames.images[0, :2, :2].mean((0, 1)), atol=1e-6)
    with pytest.raises(ValueError, match="colour resize mode"):
        frames.resize(12, 16, colour_mode="lanczos")


def test_select_keeps_the_frames_in_the_order_given(frames):
    picked = frames.select([2, 0])
    assert picked.names == ("c", "a")
    assert torch.equal(picked.depths, frames.depths[[2, 0]])
    assert torch.equal(picked.cameras.c2w, frames.cameras.c2w[[2, 0]])


def test_scene_frames_refuse_cameras_of_another_size_and_bad_depth(frames):
    cams = frames.cameras
    with pytest.raises(ValueError, match=r"cameras are for 12x16 images but the depth maps are 24x32"):
        SceneFrames(frames.depths, cams.resized(12, 16))
    bad = frames.depths.clone()
    bad[1, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"frame b: its depth holds NaN"):
        SceneFrames(bad, cams)
    with pytest.raises(ValueError, match=r"images must be \(n, H, W, 3\)"):
        SceneFrames(frames.depths, cams, frames.images[:, :12])
    assert SceneFrames(frames.depths, SceneCameras(cams.K, cams.c2w, H, W)).names == ("0", "1", "2")


def test_depth_units_check_says_which_scale_fixes_it():
    depth = torch.full((2, 4, 4), 2.5)
    check_depth_units(depth, ["x", "y"], 1.0)
    with pytest.raises(ValueError, match=r"frame y: .*millimetres: set depth_scale to 0\.001"):
        check_depth_units(torch.stack([depth[0], depth[1] * 1000]), ["x", "y"], 1.0)
    with pytest.raises(ValueError, match=r"frame x: .*scaled twice.*set depth_scale to 1\b"):
        check_depth_units(depth * 1e-3 * 1e-3, ["x", "y"], 0.001)
    check_depth_units(torch.zeros(1, 4, 4), ["empty"], 1.0)  # no valid depth: nothing to judge
