"""Scene nodes in the in-process host: Load Scene Frames on each format written by tests/scenes/scene_files.py,
Scene Frames From Tensors, Select Key Frames, Depth Correspondences and Save Scene Point Cloud on a flat wall seen
by a camera sliding sideways (known overlaps), and their errors naming the node and the frame."""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenes"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "geometry"))
from scene_files import make_scene, write_colmap, write_nerfstudio, write_scannet  # noqa: E402
from test_pointcloud import read_ply  # noqa: E402

from comfyui_mvdiffusion.geometry.depth_correspondences import (depth_correspondences, depth_neighbours,  # noqa: E402
                                                                in_between_frames, overlap_ratios, select_key_frames,
                                                                symmetric_overlap)
from comfyui_mvdiffusion.geometry.depth_plan import build_depth_level_plan  # noqa: E402
from comfyui_mvdiffusion.geometry.scene import SceneCameras  # noqa: E402
from comfyui_mvdiffusion.scenes import load_colmap, load_nerfstudio, load_scannet  # noqa: E402

pytestmark = pytest.mark.host

WALL = 2.0  # metres
FOV = 60.0


@pytest.fixture(scope="module")
def scene():
    return make_scene()


def wall_poses(shifts) -> list[list[list[float]]]:
    """Camera-to-world (OpenCV) poses looking down +z, at x = each shift (metres)."""
    poses = []
    for x in shifts:
        pose = np.eye(4)
        pose[0, 3] = x
        poses.append(pose.tolist())
    return poses


def wall(graph, shifts, rows: int, cols: int, **extra):
    """A scene of a flat wall WALL metres in front of cameras sliding along x (Scene Frames From Tensors), depth
    maps of rows x cols."""
    n = len(shifts)
    inputs = dict(depth=torch.full((n, rows, cols), WALL), poses=json.dumps(wall_poses(shifts)),
                  pose_kind="c2w_opencv", fov=FOV, fx=0.0, fy=0.0, cx=0.0, cy=0.0, depth_scale=1.0, inverse=False,
                  width=0, height=0)
    inputs.update(extra)
    return graph.run("MVDiffusionSceneFromTensors", **inputs)[0]


def pure_cameras(frames) -> SceneCameras:
    """The node's cameras (the host's module tree) as this tree's SceneCameras."""
    c = frames.cameras
    return SceneCameras(c.K, c.c2w, c.height, c.width, c.frame_names)


def load(graph, path, **extra):
    inputs = dict(path=str(path), format="auto", depth_scale=0.0, start=0, stride=1, count=0, width=64, height=48)
    inputs.update(extra)
    return graph.run("MVDiffusionLoadSceneFrames", **inputs)


def assert_same_frames(frames, expected):
    assert frames.names == expected.names
    assert torch.equal(frames.depths, expected.depths)
    assert torch.equal(frames.cameras.K, expected.cameras.K) and torch.equal(frames.cameras.c2w, expected.cameras.c2w)


# --- Load Scene Frames ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["scannet", "nerfstudio", "colmap"])
def test_load_scene_frames_detects_each_format_and_resizes_depth_colour_and_intrinsics(graph, tmp_path, scene, fmt):
    if fmt == "scannet":
        path = write_scannet(tmp_path / "s", scene)
        expected = load_scannet(path)
    elif fmt == "nerfstudio":
        path = write_nerfstudio(tmp_path / "n", scene) / "transforms.json"
        expected = load_nerfstudio(path)
    else:
        root = write_colmap(tmp_path / "c", scene)
        path, expected = root / "sparse", load_colmap(root / "sparse", root / "stereo" / "depth_maps", root / "images")
    frames, images, depth = load(graph, path)
    assert_same_frames(frames, expected.resize(48, 64))
    assert (frames.height, frames.width) == (48, 64) and frames.depths.max() < 5  # metres
    assert float(frames.cameras.K[0, 0, 0]) == pytest.approx(float(expected.cameras.K[0, 0, 0]) * 2, rel=1e-6)
    assert images.shape == depth.shape == (3, 48, 64, 3)
    assert torch.allclose(images, expected.resize(48, 64).images)
    assert float(depth.amax()) == 1.0 and float(depth.amin()) == 0.0  # normalised per frame; row 0 has no depth


def test_load_scene_frames_reads_paths_relative_to_the_input_folder_and_selects_frames(graph, comfy, scene):
    folder = Path(comfy.folder_paths.get_input_directory()) / "scans" / "scene_rel"
    shutil.rmtree(folder, ignore_errors=True)
    write_scannet(folder, scene)
    frames, images, _ = load(graph, "scans/scene_rel", start=1, stride=1, count=2, width=32, height=24)
    assert frames.names == ("2", "10") and images.shape == (2, 24, 32, 3)


def test_load_scene_frames_without_colour_gives_mid_grey(graph, tmp_path, scene):
    path = write_scannet(tmp_path / "s", scene)
    shutil.rmtree(path / "color")
    frames, images, _ = load(graph, path)
    assert frames.images is None and torch.all(images == 0.5)


def test_load_scene_frames_errors_name_the_node_and_the_frame(graph, tmp_path, scene):
    path = write_scannet(tmp_path / "s", scene)
    with pytest.raises(ValueError, match="Load Scene Frames: frame 0: its median depth is .* millimetres"):
        load(graph, path, depth_scale=1.0)
    with pytest.raises(ValueError, match="Load Scene Frames: width and height must be multiples of 8"):
        load(graph, path, width=60)
    (path / "depth" / "2.png").unlink()
    with pytest.raises(ValueError, match="Load Scene Frames: frame 2: its depth image .* is missing"):
        load(graph, path)
    np.savetxt(path / "pose" / "10.txt", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="Load Scene Frames: frame 10: its pose is not invertible"):
        load(graph, path, count=1, start=2)
    with pytest.raises(ValueError, match="Load Scene Frames: .* is not a scene folder"):
        load(graph, tmp_path)


# --- Scene Frames From Tensors ----------------------------------------------------------------------------------

def test_scene_from_tensors_takes_a_mask_or_an_image_batch_and_the_pose_kinds(graph):
    frames = wall(graph, [0.0, 0.5], 24, 32)
    assert torch.all(frames.depths == WALL) and frames.names == ("0", "1")
    assert float(frames.cameras.K[0, 0, 0]) == pytest.approx(16 / math.tan(math.radians(30)), rel=1e-6)
    assert float(frames.cameras.K[0, 0, 2]) == 15.5 and float(frames.cameras.c2w[1, 0, 3]) == 0.5
    image = torch.rand(2, 24, 32, 3) * 0.9 + 0.1
    disparity = wall(graph, [0.0, 0.5], 24, 32, depth=image, inverse=True, depth_scale=3.0, fx=30.0, cx=16.0,
                     cy=12.0, images=image, width=64, height=48)
    assert (disparity.height, disparity.width) == (48, 64)
    assert torch.allclose(disparity.depths[:, ::2, ::2], 3.0 / image[..., 0])
    assert disparity.cameras.K[0].tolist() == [[60.0, 0.0, 32.0], [0.0, 60.0, 24.0], [0.0, 0.0, 1.0]]
    w2c = wall(graph, [0.0, 0.5], 24, 32, pose_kind="w2c_opencv")
    assert float(w2c.cameras.c2w[1, 0, 3]) == -0.5


def test_scene_from_tensors_reads_poses_from_a_file(graph, tmp_path):
    np.save(tmp_path / "poses.npy", np.array(wall_poses([0.0, 0.25]))[:, :3])
    frames = wall(graph, [0.0, 0.0], 24, 32, poses=str(tmp_path / "poses.npy"))
    assert float(frames.cameras.c2w[1, 0, 3]) == 0.25


def test_scene_from_tensors_errors_name_the_node_and_the_frame(graph):
    poses = wall_poses([0.0, 0.5])
    poses[1][1][1] = 0.0  # singular rotation
    with pytest.raises(ValueError, match="Scene Frames From Tensors: frame 1: its pose is not invertible"):
        wall(graph, [0, 0], 24, 32, poses=json.dumps(poses))
    with pytest.raises(ValueError, match="Scene Frames From Tensors: 3 depth maps but 2 poses"):
        wall(graph, [0, 0, 0], 24, 32, poses=json.dumps(wall_poses([0, 0])))
    with pytest.raises(ValueError, match="Scene Frames From Tensors: frame 0: the intrinsics .* principal point"):
        wall(graph, [0, 0], 24, 32, cx=100.0)
    with pytest.raises(ValueError, match="Scene Frames From Tensors: .* neither a JSON list"):
        wall(graph, [0, 0], 24, 32, poses="nowhere.npy")


# --- Select Key Frames ------------------------------------------------------------------------------------------

def test_select_key_frames_follows_the_overlap_rule_and_marks_them_on_the_overlap_image(graph, comfy):
    shifts = [0.25 * k for k in range(12)]  # the 64 px view spans 2.31 m: overlap 1 - 0.108 k
    frames = wall(graph, shifts, 48, 64)
    keys_scene, groups, image = graph.run("MVDiffusionSelectKeyFrames", scene=frames, threshold=0.6, max_between=2,
                                          include_last=True)
    keys = select_key_frames(frames.depths, pure_cameras(frames), 0.6, include_last=True)
    assert keys == (0, 4, 8, 11)
    report = json.loads(groups)
    assert report["key_frames"] == list(keys)
    assert report["groups"] == [list(g) for g in in_between_frames(keys, 12, 2)]
    assert report["groups"][:2] == [[0, 1, 2, 4], [0, 3, 4]]
    assert keys_scene.names == ("0", "4", "8", "11")
    assert torch.equal(keys_scene.cameras.c2w, frames.cameras.c2w[list(keys)])
    previews = comfy.module("nodes.scene_previews")
    cell, margin = previews.cell_size(12), previews.MARGIN
    assert image.shape == (1, margin + 12 * cell, margin + 12 * cell, 3) and float(image.std()) > 0.1
    red = torch.tensor(previews.KEY_MARK) / 255
    marked = [k for k in range(12) if torch.equal(image[0, margin - 4, margin + k * cell + cell // 2], red)]
    assert marked == list(keys)
    left = [k for k in range(12) if torch.equal(image[0, margin + k * cell + cell // 2, margin - 4], red)]
    assert left == list(keys)


# --- Depth Correspondences --------------------------------------------------------------------------------------

def test_depth_correspondences_are_the_libraries_neighbours_and_level_plans_and_report_isolated_views(graph):
    frames = wall(graph, [0.0, 0.3, 0.6, 1.2, 100.0], 192, 256)  # the last one sees another part of the wall
    result, image, report = graph.run("MVDiffusionDepthCorrespondences", scene=frames, threshold=0.3)
    cameras = pure_cameras(frames)
    corr = depth_correspondences(frames.depths, cameras)
    overlap = symmetric_overlap(overlap_ratios(corr))
    assert torch.equal(result.overlap, overlap)
    assert result.neighbours == depth_neighbours(overlap, 0.3)
    assert result.neighbours[4] == (3,) and result.without_overlap == (4,)  # the official fallback
    assert list(result.plans) == [(24, 32), (12, 16), (6, 8), (3, 4)]
    for (h, w), plan in result.plans.items():
        want = build_depth_level_plan(corr, frames.depths, result.neighbours, h, w)
        for field in ("neighbours", "present", "grid", "valid", "depth_difference"):
            assert torch.equal(getattr(plan, field), getattr(want, field)), (h, w, field)
    assert "overlapping no other view: 4" in report and "view 4 (4): 3 (overlaps nothing" in report
    assert image.shape[0] == 1 and float(image.std()) > 0.1


def test_depth_correspondences_report_frames_without_depth(graph):
    depth = torch.full((3, 128, 128), WALL)
    depth[2] = 0
    frames = wall(graph, [0.0, 0.2, 0.4], 128, 128, depth=depth)
    result, _, report = graph.run("MVDiffusionDepthCorrespondences", scene=frames, threshold=0.3)
    assert result.without_depth == ("2",) and "without any valid depth: 2" in report


def test_depth_correspondences_refuse_sizes_the_unet_levels_cannot_tile(graph):
    with pytest.raises(ValueError, match="Depth Correspondences: the frames are 100x100: .* multiples of 8"):
        graph.run("MVDiffusionDepthCorrespondences", scene=wall(graph, [0, 0.1], 100, 100), threshold=0.3)
    with pytest.raises(ValueError, match="Depth Correspondences: a 13x13 feature map does not tile 200x200"):
        graph.run("MVDiffusionDepthCorrespondences", scene=wall(graph, [0, 0.1], 200, 200), threshold=0.3)


# --- Save Scene Point Cloud -------------------------------------------------------------------------------------

def test_the_point_cloud_is_the_closed_form_back_projection_with_the_image_colours(graph, comfy):
    depth = torch.full((1, 24, 32), WALL)
    depth[0, 0] = 0  # no depth on the first row: no points there
    colours = torch.rand(1, 24, 32, 3)
    frames = wall(graph, [0.5], 24, 32, depth=depth, images=colours)
    node = comfy.mvd_nodes["MVDiffusionSavePointCloud"]
    with torch.inference_mode():
        out = node.execute(scene=frames, every=1, y_up=False, filename_prefix="scene_tests/wall")
    (model_file,) = out.result
    output = Path(comfy.folder_paths.get_output_directory())
    assert model_file.startswith("scene_tests/") and model_file.endswith(".ply")
    assert out.ui["3d"] == [{"filename": Path(model_file).name, "subfolder": "scene_tests", "type": "output"}]
    points, rgb = read_ply((output / model_file).read_bytes())
    f = 16 / math.tan(math.radians(FOV / 2))
    ys, xs = np.mgrid[1:24, 0:32]
    expected = np.stack([WALL * (xs - 15.5) / f + 0.5, WALL * (ys - 11.5) / f, np.full(xs.shape, WALL)], -1)
    assert points.shape == (23 * 32, 3) and np.allclose(points, expected.reshape(-1, 3), atol=1e-6)
    assert np.array_equal(rgb, np.round(colours[0, 1:].numpy().reshape(-1, 3) * 255).astype(np.uint8))
    (flipped,) = graph.run("MVDiffusionSavePointCloud", scene=frames, every=2, y_up=True,
                           filename_prefix="scene_tests/wall")
    points, _ = read_ply((output / flipped).read_bytes())
    assert flipped != model_file and points.shape == (11 * 16, 3) and np.all(points[:, 2] == -WALL)
    grey, rgb = read_ply((output / graph.run("MVDiffusionSavePointCloud", scene=wall(graph, [0.0], 24, 32), every=4,
                                             y_up=True, filename_prefix="scene_tests/grey")[0]).read_bytes())
    assert np.all(rgb == 128)


def test_save_point_cloud_errors_name_the_node(graph):
    frames = wall(graph, [0.0, 0.5], 24, 32)
    with pytest.raises(ValueError, match="Save Scene Point Cloud: 1 images for 2 frames"):
        graph.run("MVDiffusionSavePointCloud", scene=frames, images=torch.rand(1, 24, 32, 3), every=1, y_up=True,
                  filename_prefix="x")
    empty = wall(graph, [0.0], 24, 32, depth=torch.zeros(1, 24, 32))
    with pytest.raises(ValueError, match="Save Scene Point Cloud: no frame has a pixel with depth"):
        graph.run("MVDiffusionSavePointCloud", scene=empty, every=1, y_up=True, filename_prefix="x")
