"""The scene nodes as a user wires them, in a real ComfyUI server: a ScanNet folder loaded, key frames and depth
correspondences built, and the point cloud saved and handed to the core Preview3D node by its model_file."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenes"))
from scene_files import make_scene, write_scannet  # noqa: E402

pytestmark = [pytest.mark.host, pytest.mark.server]


def test_a_scan_goes_through_the_scene_nodes_and_its_point_cloud_into_preview3d(comfy_server, tmp_path):
    folder = write_scannet(tmp_path / "scan", make_scene())
    prompt = {
        "1": {"class_type": "MVDiffusionLoadSceneFrames",
              "inputs": {"path": str(folder), "format": "auto", "depth_scale": 0.0, "start": 0, "stride": 1,
                         "count": 0, "width": 256, "height": 192}},
        "2": {"class_type": "MVDiffusionSelectKeyFrames",
              "inputs": {"scene": ["1", 0], "threshold": 0.6, "max_between": 10, "include_last": True}},
        "3": {"class_type": "MVDiffusionDepthCorrespondences", "inputs": {"scene": ["2", 0], "threshold": 0.3}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
        "5": {"class_type": "MVDiffusionSavePointCloud",
              "inputs": {"scene": ["1", 0], "every": 2, "y_up": True, "filename_prefix": "e2e/scan"}},
        "6": {"class_type": "Preview3D", "inputs": {"model_file": ["5", 0]}},
    }
    entry = comfy_server.run(prompt)
    saved = entry["outputs"]["5"]["3d"][0]
    assert saved["subfolder"] == "e2e" and saved["filename"].endswith(".ply")
    model_file = entry["outputs"]["6"]["result"][0]
    assert model_file == f"e2e/{saved['filename']}"
    assert (comfy_server.output / model_file).read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")
    assert entry["outputs"]["4"]["images"]
