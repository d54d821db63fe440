"""One entry point over the readers: the format detected from the layout, COLMAP's workspace folders found, poses
parsed from text or files, and the scene correspondences built from the libraries."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scene_files import make_scene, write_colmap, write_nerfstudio, write_scannet  # noqa: E402

from comfyui_mvdiffusion.geometry.depth_correspondences import depth_neighbours, depth_overlap  # noqa: E402
from comfyui_mvdiffusion.scenes import (detect_scene_format, frames_from_tensors, load_colmap,  # noqa: E402
                                        load_scene_frames, load_scannet, parse_poses, scene_correspondences)


@pytest.fixture(scope="module")
def scene():
    return make_scene()


def test_the_format_is_detected_from_the_layout(tmp_path, scene):
    assert detect_scene_format(write_scannet(tmp_path / "s", scene)) == "scannet"
    nerf = write_nerfstudio(tmp_path / "n", scene)
    assert detect_scene_format(nerf) == detect_scene_format(nerf / "transforms.json") == "nerfstudio"
    colmap = write_colmap(tmp_path / "c", scene)
    assert detect_scene_format(colmap) == detect_scene_format(colmap / "sparse") == "colmap"
    with pytest.raises(ValueError, match="is not a scene folder"):
        detect_scene_format(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        detect_scene_format(tmp_path / "nothing")


def test_a_colmap_workspace_finds_its_model_depth_maps_and_images(tmp_path, scene):
    root = write_colmap(tmp_path / "c", scene)
    want = load_colmap(root / "sparse", root / "stereo" / "depth_maps", root / "images")
    for path in (root, root / "sparse"):
        got = load_scene_frames(path)
        assert got.names == want.names and torch.equal(got.depths, want.depths) and got.images is not None
    with pytest.raises(ValueError, match="no depth folder given"):
        (root / "stereo" / "depth_maps").rename(root / "elsewhere")
        load_scene_frames(root)
    assert load_scene_frames(root, "colmap", depth_path=root / "elsewhere").num_frames == 3


def test_the_depth_scale_defaults_to_the_formats(tmp_path, scene):
    path = write_scannet(tmp_path / "s", scene)
    assert torch.equal(load_scene_frames(path).depths, load_scannet(path).depths)  # millimetres
    with pytest.raises(ValueError, match="looks like millimetres"):
        load_scene_frames(path, "scannet", depth_scale=1.0)


def test_poses_parse_from_json_text_json_files_and_npy(tmp_path):
    poses = np.stack([np.eye(4), np.eye(4) * 2])
    assert torch.equal(parse_poses(json.dumps(poses.tolist())), torch.from_numpy(poses))
    (tmp_path / "p.json").write_text(json.dumps({"poses": poses[:, :3].tolist()}))
    assert parse_poses("p.json", base=tmp_path).shape == (2, 3, 4)
    np.save(tmp_path / "p.npy", poses)
    assert torch.equal(parse_poses(str(tmp_path / "p.npy")), torch.from_numpy(poses))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 3\)"):
        parse_poses(json.dumps(np.zeros((2, 3, 3)).tolist()))
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_poses("[[1, 2")


def test_scene_correspondences_use_the_libraries_neighbours_and_refuse_other_sizes():
    n, H, W = 3, 128, 128
    poses = torch.eye(4).repeat(n, 1, 1)
    poses[:, 0, 3] = torch.tensor([0.0, 0.3, 50.0])
    K = torch.tensor([[100.0, 0, 63.5], [0, 100.0, 63.5], [0, 0, 1]])
    frames = frames_from_tensors(torch.full((n, H, W), 2.0), K, poses)
    result = scene_correspondences(frames, 0.3)
    overlap = depth_overlap(frames.depths, frames.cameras)
    assert torch.equal(result.overlap, overlap) and result.neighbours == depth_neighbours(overlap, 0.3)
    assert result.without_overlap == (2,) and list(result.plans) == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert "fallback" in result.report()
    small = frames_from_tensors(torch.full((2, 20, 20), 2.0), K * torch.tensor([[0.1], [0.1], [1]]), poses[:2])
    with pytest.raises(ValueError, match="multiples of 8"):
        scene_correspondences(small)
