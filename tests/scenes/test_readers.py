"""Readers of scanned scenes: each format, written by the test from known cameras and depths, reads back to the
same depths (metres), K and c2w (OpenCV axes), and a known world point projects where the test put it; bad
inputs give a ValueError naming the frame and the fix."""
from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scene_files import (COLMAP_NAMES, DEPTHS, FX, PIXELS, POINT, H, W, make_scene, write_colmap,  # noqa: E402
                         write_nerfstudio, write_scannet)

from comfyui_mvdiffusion.scenes import (frames_from_tensors, frames_without_depth, load_colmap,  # noqa: E402
                                        load_nerfstudio, load_scannet, read_colmap_cameras)


@pytest.fixture(scope="module")
def scene():
    return make_scene()


def project(frames, i: int, point=POINT) -> tuple[float, float, float]:
    """(x, y, z) of a world point in frame i with the returned cameras: OpenCV axes, x = fx X/Z + cx."""
    c2w = frames.cameras.c2w[i].double()
    X = torch.linalg.inv(c2w) @ torch.tensor([*point, 1.0], dtype=torch.float64)
    K = frames.cameras.K[i].double()
    return (float(K[0, 0] * X[0] / X[2] + K[0, 2]), float(K[1, 1] * X[1] / X[2] + K[1, 2]), float(X[2]))


def assert_scene(frames, scene, order=(0, 1, 2)):
    """Depths, K, c2w as written; the known point at its pixel, at the depth the test wrote there."""
    assert frames.depths.shape == (len(order), H, W) and frames.depths.dtype == torch.float32
    assert (frames.cameras.height, frames.cameras.width) == (H, W)
    for i, j in enumerate(order):
        assert torch.allclose(frames.depths[i].double(), torch.from_numpy(scene.depths[j]), atol=1e-6)
        assert torch.allclose(frames.cameras.K[i].double(), torch.from_numpy(scene.K), atol=1e-5)
        assert torch.allclose(frames.cameras.c2w[i].double(), torch.from_numpy(scene.c2w[j]), atol=1e-5)
        x, y, z = project(frames, i)
        assert (x, y) == pytest.approx(PIXELS[j], abs=1e-3)
        assert z == pytest.approx(DEPTHS[j], abs=1e-5)
        assert float(frames.depths[i, PIXELS[j][1], PIXELS[j][0]]) == pytest.approx(z, abs=1e-5)


def assert_colours(frames, scene, order=(0, 1, 2), atol=1e-6):
    assert frames.images is not None and frames.images.shape == (len(order), H, W, 3)
    expected = torch.from_numpy(scene.colours[list(order)]).float() / 255
    assert (frames.images - expected).abs().mean() <= atol


# --- ScanNet ----------------------------------------------------------------------------------------------------

def test_scannet_reads_millimetre_pngs_as_metres_with_its_poses_and_depth_intrinsics(tmp_path, scene):
    frames = load_scannet(write_scannet(tmp_path / "s", scene))
    assert frames.names == ("0", "2", "10")  # numeric order: 2 before 10
    assert_scene(frames, scene)
    assert_colours(frames, scene, atol=0.05)  # JPEG


def test_scannet_selects_frames_by_start_stride_and_count(tmp_path, scene):
    root = write_scannet(tmp_path / "s", scene)
    frames = load_scannet(root, start=1, stride=1, count=1, load_colour=False)
    assert frames.names == ("2",) and frames.images is None
    assert_scene(frames, scene, order=(1,))
    assert load_scannet(root, stride=2).names == ("0", "10")


def test_scannet_missing_depth_names_the_frame(tmp_path, scene):
    root = write_scannet(tmp_path / "s", scene)
    (root / "depth" / "2.png").unlink()
    with pytest.raises(ValueError, match=r"frame 2: its depth image .*2\.png is missing: .*leave the frame out"):
        load_scannet(root)


def test_scannet_unreadable_pose_names_the_frame_and_the_fix(tmp_path, scene):
    root = write_scannet(tmp_path / "s", scene)
    (root / "pose" / "10.txt").write_text("tracking lost\n")
    with pytest.raises(ValueError, match=r"frame 10: its pose .*10\.txt is not a matrix of numbers.*re-export"):
        load_scannet(root)


def test_scannet_singular_pose_names_the_frame_and_the_fix(tmp_path, scene):
    root = write_scannet(tmp_path / "s", scene)
    np.savetxt(root / "pose" / "2.txt", np.diag([0.0, 0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"frame 2: its pose is not invertible.*re-export the pose"):
        load_scannet(root)


def test_scannet_untracked_inf_pose_is_an_error_or_skipped_on_request(tmp_path, scene):
    root = write_scannet(tmp_path / "s", scene)
    np.savetxt(root / "pose" / "2.txt", np.full((4, 4), -np.inf))
    with pytest.raises(ValueError, match=r"frame 2: .*infinite.*skip_invalid_poses"):
        load_scannet(root)
    frames = load_scannet(root, skip_invalid_poses=True)
    assert frames.names == ("0", "10")
    assert_scene(frames, scene, order=(0, 2))


def test_scannet_intrinsics_of_another_image_size_are_refused(tmp_path, scene):
    root = write_scannet(tmp_path / "s", scene)
    shutil.copy(root / "intrinsic" / "intrinsic_color.txt", root / "intrinsic" / "intrinsic_depth.txt")
    with pytest.raises(ValueError, match=r"frame 0: the intrinsics \(intrinsic/intrinsic_depth.txt\) .*another "
                                         r"size.*intrinsics of the depth images"):
        load_scannet(root)


def test_millimetres_read_as_metres_say_which_depth_scale_to_set(tmp_path, scene):
    root = write_scannet(tmp_path / "s", scene)
    with pytest.raises(ValueError, match=r"frame 0: .*looks like millimetres: set depth_scale to 0\.001"):
        load_scannet(root, depth_scale=1.0)


def test_a_frame_without_valid_depth_is_read_and_reported(tmp_path, scene):
    root = write_scannet(tmp_path / "s", scene)
    from PIL import Image
    Image.fromarray(np.zeros((H, W), dtype=np.uint16)).save(root / "depth" / "10.png")
    frames = load_scannet(root)
    assert frames_without_depth(frames) == ["10"]
    assert frames_without_depth(load_scannet(root, count=2)) == []


# --- nerfstudio / Instant-NGP -----------------------------------------------------------------------------------

@pytest.mark.parametrize("npy, per_frame", [(False, False), (True, True)])
def test_nerfstudio_opengl_poses_and_depths_read_back_in_opencv_metres(tmp_path, scene, npy, per_frame):
    root = write_nerfstudio(tmp_path / "n", scene, npy=npy, per_frame=per_frame)
    frames = load_nerfstudio(root / "transforms.json")
    assert frames.names == tuple(f"images/frame_{i:04d}.png" for i in range(3))
    assert_scene(frames, scene)
    assert_colours(frames, scene)


def test_negative_control_transforms_json_read_as_opencv_misplaces_the_point(tmp_path, scene):
    frames = load_nerfstudio(write_nerfstudio(tmp_path / "n", scene), axes="opencv")
    for i in range(3):
        x, y, z = project(frames, i)
        assert z < 0 or abs(x - PIXELS[i][0]) + abs(y - PIXELS[i][1]) > 2


def test_nerfstudio_intrinsics_for_another_size_than_the_depth_are_refused(tmp_path, scene):
    root = write_nerfstudio(tmp_path / "n", scene)
    text = (root / "transforms.json").read_text().replace(f'"w": {W}', f'"w": {2 * W}')
    (root / "transforms.json").write_text(text.replace(f'"h": {H}', f'"h": {2 * H}'))
    with pytest.raises(ValueError, match=rf"frame images/frame_0000.png: the intrinsics \(w, h in transforms.json\)"
                                         rf" are for {2 * H}x{2 * W} images but its depth image is {H}x{W}"):
        load_nerfstudio(root)


def test_nerfstudio_frame_without_depth_names_the_frame(tmp_path, scene):
    root = write_nerfstudio(tmp_path / "n", scene)
    (root / "depths" / "frame_0001.png").unlink()
    with pytest.raises(ValueError, match=r"frame images/frame_0001.png: its depth map .* is missing: add "
                                         r"depth_file_path"):
        load_nerfstudio(root)


def test_nerfstudio_unreadable_transform_matrix_names_the_frame(tmp_path, scene):
    root = write_nerfstudio(tmp_path / "n", scene)
    text = (root / "transforms.json").read_text()
    (root / "transforms.json").write_text(text.replace('"transform_matrix"', '"transform"', 1))
    with pytest.raises(ValueError, match=r"frame images/frame_0000.png: its transform_matrix is missing.*fix"):
        load_nerfstudio(root)


# --- COLMAP -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("npy", [False, True])
def test_colmap_world_to_camera_quaternions_and_dense_depth_read_back(tmp_path, scene, npy):
    root = write_colmap(tmp_path / "c", scene, npy=npy)
    frames = load_colmap(root / "sparse", root / "stereo" / "depth_maps", root / "images")
    assert frames.names == ("a.jpg", "b.jpg", "c.jpg")  # sorted by name; written b, a, c
    order = tuple(COLMAP_NAMES.index(name) for name in frames.names)
    assert_scene(frames, scene, order=order)
    assert_colours(frames, scene, order=order, atol=0.05)


def test_colmap_depth_scale_turns_its_units_into_metres_for_depth_and_poses(tmp_path, scene):
    root = write_colmap(tmp_path / "c", scene, unit=0.25)  # one COLMAP unit = 0.25 m
    frames = load_colmap(root / "sparse", root / "stereo" / "depth_maps", depth_scale=0.25, check_units=True)
    assert_scene(frames, scene, order=(1, 0, 2))


def test_colmap_missing_depth_map_names_the_image(tmp_path, scene):
    root = write_colmap(tmp_path / "c", scene)
    (root / "stereo" / "depth_maps" / "c.jpg.geometric.bin").unlink()
    with pytest.raises(ValueError, match=r"frame c.jpg: its depth map is missing .*patch_match_stereo"):
        load_colmap(root / "sparse", root / "stereo" / "depth_maps")


def test_colmap_truncated_depth_map_is_refused(tmp_path, scene):
    root = write_colmap(tmp_path / "c", scene)
    path = root / "stereo" / "depth_maps" / "a.jpg.geometric.bin"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"frame a.jpg: .* not a COLMAP dense array"):
        load_colmap(root / "sparse", root / "stereo" / "depth_maps")


def test_colmap_camera_of_another_size_than_the_depth_maps_is_refused(tmp_path, scene):
    root = write_colmap(tmp_path / "c", scene)
    text = (root / "sparse" / "cameras.txt").read_text().replace(f"PINHOLE {W} {H}", f"PINHOLE {W + 8} {H}")
    (root / "sparse" / "cameras.txt").write_text(text)
    with pytest.raises(ValueError, match=rf"frame a.jpg: the intrinsics \(camera 1 in cameras.txt\) are for "
                                         rf"{H}x{W + 8} images"):
        load_colmap(root / "sparse", root / "stereo" / "depth_maps")


def test_colmap_camera_models_and_ignored_distortion(tmp_path):
    path = tmp_path / "cameras.txt"
    path.write_text("# c\n1 SIMPLE_PINHOLE 32 24 30 16 12\n2 OPENCV 32 24 30 28 16 12 0.1 0 0 0\n")
    cameras = read_colmap_cameras(path)
    as_K = lambda fx, fy: torch.tensor([[fx, 0, 15.5], [0, fy, 11.5], [0, 0, 1]], dtype=torch.float64)  # noqa: E731
    assert torch.equal(cameras[1]["K"], as_K(30.0, 30.0))  # cx, cy - 0.5: COLMAP's pixel centres at + 0.5
    assert torch.equal(cameras[2]["K"], as_K(30.0, 28.0))
    assert cameras[2]["distortion"] == [0.1, 0.0, 0.0, 0.0]
    path.write_text("1 FULL_OPENCV 32 24 30 28 16 12 0 0 0 0 0 0 0 0\n")
    with pytest.raises(ValueError, match="FULL_OPENCV.*image_undistorter"):
        read_colmap_cameras(path)


def test_colmap_distortion_is_ignored_with_a_warning(tmp_path, scene):
    root = write_colmap(tmp_path / "c", scene)
    text = (root / "sparse" / "cameras.txt").read_text().replace("PINHOLE", "OPENCV")
    (root / "sparse" / "cameras.txt").write_text(text.rstrip("\n") + " 0.05 0 0 0\n")
    with pytest.warns(UserWarning, match="distortion.*ignored"):
        frames = load_colmap(root / "sparse", root / "stereo" / "depth_maps")
    assert_scene(frames, scene, order=(1, 0, 2))


# --- tensors in memory ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["c2w_opencv", "c2w_opengl", "w2c_opencv"])
def test_frames_from_tensors_convert_each_pose_kind_and_scale_relative_depth(scene, kind):
    c2w = torch.from_numpy(scene.c2w)
    poses = {"c2w_opencv": c2w, "c2w_opengl": c2w @ torch.diag(torch.tensor([1.0, -1, -1, 1], dtype=torch.float64)),
             "w2c_opencv": torch.linalg.inv(c2w)[:, :3]}[kind].float()
    relative = torch.from_numpy(scene.depths).float() / 4  # an estimator's relative depth: 1 unit = 4 m
    images = torch.from_numpy(scene.colours).float() / 255
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frames = frames_from_tensors(relative, torch.from_numpy(scene.K).float(), poses, kind, images=images,
                                     depth_scale=4.0, names=["a", "b", "c"])
    assert frames.names == ("a", "b", "c")
    assert_scene(frames, scene)
    assert_colours(frames, scene)


def test_frames_from_tensors_refuse_an_unknown_pose_kind_and_intrinsics_of_another_size(scene):
    depths, K, c2w = (torch.from_numpy(a).float() for a in (scene.depths, scene.K, scene.c2w))
    with pytest.raises(ValueError, match="pose_kind must be one of"):
        frames_from_tensors(depths, K, c2w, "w2c_opengl")
    with pytest.raises(ValueError, match=r"frame 0: the intrinsics \(K\) .*another size"):
        frames_from_tensors(depths, K * torch.tensor([[2.0], [2.0], [1.0]]), c2w, "c2w_opencv")
    assert float(K[0, 0]) == FX


# --- smaller format details -------------------------------------------------------------------------------------

def test_scannet_colour_intrinsics_are_read_apart_and_8_bit_depth_is_refused(tmp_path, scene):
    from PIL import Image

    from comfyui_mvdiffusion.scenes import read_scannet_intrinsics
    root = write_scannet(tmp_path / "s", scene)
    assert torch.equal(read_scannet_intrinsics(root, "color"), torch.from_numpy(scene.K * np.array([2, 2, 1])[:, None]))
    Image.fromarray(np.full((H, W), 200, dtype=np.uint8)).save(root / "depth" / "2.png")
    with pytest.raises(ValueError, match=r"frame 2: its depth image .* is a L image: depth PNGs must be 16-bit"):
        load_scannet(root)


def test_nerfstudio_camera_angle_x_gives_the_focal_length(tmp_path, scene):
    import json
    import math
    root = write_nerfstudio(tmp_path / "n", scene)
    meta = json.loads((root / "transforms.json").read_text())
    for key in ("fl_x", "fl_y", "cx", "cy"):
        del meta[key]
    meta["camera_angle_x"] = 2 * math.atan(0.5 * W / 40.0)
    (root / "transforms.json").write_text(json.dumps(meta))
    K = load_nerfstudio(root, load_colour=False).cameras.K[0]
    assert torch.allclose(K, torch.tensor([[40.0, 0, (W - 1) / 2], [0, 40.0, (H - 1) / 2], [0, 0, 1]]))


def test_a_binary_colmap_model_asks_for_the_text_model(tmp_path):
    (tmp_path / "cameras.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match="binary COLMAP model: convert .*model_converter --output_type TXT"):
        load_colmap(tmp_path, tmp_path)
