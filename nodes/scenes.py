"""Scene nodes of the depth half (issue 11): load a scanned scene or build one from tensors, pick key frames, build
the depth correspondences, save a coloured point cloud. Thin glue over ``scenes/`` and ``geometry/``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import folder_paths
from comfy_api.latest import io

from ..geometry.cameras import intrinsics
from ..geometry.depth_correspondences import (KEY_FRAME_OVERLAP, NEIGHBOUR_OVERLAP, depth_overlap, in_between_frames,
                                              select_key_frames)
from ..geometry import pointcloud
from ..scenes import (POSE_KINDS, SCENE_FORMATS, frames_from_tensors, load_scene_frames, parse_poses,
                      resize_images, scene_correspondences)
from .io_types import CATEGORY, DepthScene, Scene, named
from .scene_previews import depth_preview, overlap_image

PREVIEW_SIDE = 64  # the overlap heat map of Select Key Frames is measured on frames at most this many pixels wide


def input_path(text: str) -> Path:
    """A path typed by the user: absolute, or relative to ComfyUI's input folder (``~`` expanded)."""
    path = Path(os.path.expanduser(text.strip()))
    return path if path.is_absolute() else Path(folder_paths.get_input_directory()) / path


def check_multiple_of_8(node: str, width: int, height: int) -> None:
    if width % 8 or height % 8 or width < 16 or height < 16:
        raise ValueError(f"{node}: width and height must be multiples of 8 (at least 16), got {width}x{height}")


def colour_of(frames) -> torch.Tensor:
    """The frames' colour as an IMAGE batch, mid-grey when the scene has none."""
    if frames.images is not None:
        return frames.images
    return torch.full((frames.num_frames, frames.height, frames.width, 3), 0.5)


def size_inputs(width: int, height: int, keep: bool) -> list:
    what = " (0: keep the depth's size)" if keep else ""
    low = 0 if keep else 16
    return [io.Int.Input("width", default=width, min=low, max=4096, step=8,
                         tooltip=f"Width of the frames in pixels, a multiple of 8{what}. Depth is resized by "
                                 "nearest neighbour (no new depth values), colour bilinearly, K scaled."),
            io.Int.Input("height", default=height, min=low, max=4096, step=8,
                         tooltip=f"Height of the frames in pixels, a multiple of 8{what}.")]


class LoadSceneFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionLoadSceneFrames", display_name="Load Scene Frames", category=CATEGORY,
            description="Frames of a depth scan (depth, cameras, colour) from a ScanNet folder, a nerfstudio / "
                        "Instant-NGP transforms.json with depth images, or a COLMAP text model with dense depth "
                        "maps, resized to the generation size (official: 256 x 192).",
            inputs=[io.String.Input("path", default="",
                                    tooltip="A ScanNet scene folder (color/, depth/, pose/, intrinsic/), a "
                                            "transforms.json (or its folder), or a COLMAP model folder (cameras.txt, "
                                            "images.txt; or its workspace). Absolute, or relative to ComfyUI's "
                                            "input folder."),
                    io.Combo.Input("format", options=list(SCENE_FORMATS), default="auto",
                                   tooltip="auto: transforms.json -> nerfstudio, depth/ + pose/ -> ScanNet, "
                                           "cameras.txt + images.txt -> COLMAP."),
                    io.Float.Input("depth_scale", default=0.0, min=0.0, max=1e6, step=0.0001,
                                   tooltip="Metres per depth unit. 0: the format's default (ScanNet 0.001: "
                                           "millimetre PNGs; nerfstudio 0.001 for PNG, 1 for .npy; COLMAP 1). For "
                                           "COLMAP it also scales the camera positions."),
                    io.Int.Input("start", default=0, min=0, max=1 << 20, tooltip="First frame (in file order)."),
                    io.Int.Input("stride", default=1, min=1, max=10000, tooltip="Take every stride-th frame."),
                    io.Int.Input("count", default=0, min=0, max=100000, tooltip="At most this many frames (0: all).")]
            + size_inputs(256, 192, keep=False)
            + [io.String.Input("depth_path", default="", optional=True,
                               tooltip="COLMAP only: the folder of the dense depth maps (<name>.geometric.bin or "
                                       "<name>.npy). Empty: stereo/depth_maps next to the model.")],
            outputs=[Scene.Output(display_name="scene"),
                     io.Image.Output(display_name="images",
                                     tooltip="The colour frames at width x height; mid-grey when the scan has no "
                                             "colour."),
                     io.Image.Output(display_name="depth",
                                     tooltip="The depth maps to look at: each frame divided by its largest depth "
                                             "(brighter = farther, black = no depth).")],
        )

    @classmethod
    def execute(cls, path, format, depth_scale, start, stride, count, width, height,
                depth_path="") -> io.NodeOutput:
        node = "Load Scene Frames"
        check_multiple_of_8(node, width, height)
        if not path.strip():
            raise ValueError(f"{node}: give the path of a scene (a ScanNet folder, a transforms.json or a COLMAP "
                             "model folder)")
        with named(node):
            frames = load_scene_frames(input_path(path), format, depth_scale or None, start, stride, count or None,
                                       input_path(depth_path) if depth_path and depth_path.strip() else None)
            frames = frames.resize(height, width)
        return io.NodeOutput(frames, colour_of(frames), depth_preview(frames.depths))


class SceneFromTensors(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionSceneFromTensors", display_name="Scene Frames From Tensors", category=CATEGORY,
            description="Scene frames from depth already in the graph (e.g. a depth estimator's output) and "
                        "per-frame poses. Monocular depth is relative: set depth_scale so that it is in metres "
                        "(or in the unit of the poses' translations).",
            inputs=[io.MultiType.Input("depth", types=[io.Image, io.Mask],
                                       tooltip="Depth maps, one per frame: a MASK batch, or an IMAGE batch (its "
                                               "first channel is used). 0 = no depth."),
                    io.String.Input("poses", default="", multiline=True,
                                    tooltip="One pose per frame: a JSON list of 4x4 or 3x4 matrices, or the path of "
                                            "a .json / .npy file holding them (relative to the input folder)."),
                    io.Combo.Input("pose_kind", options=list(POSE_KINDS), default="c2w_opencv",
                                   tooltip="c2w_opencv: camera-to-world, x right y down z forward (ScanNet); "
                                           "c2w_opengl: camera-to-world, y up z backward (NeRF, nerfstudio); "
                                           "w2c_opencv: world-to-camera [R | t] (COLMAP, Depth Anything 3)."),
                    io.Float.Input("fov", default=60.0, min=1.0, max=179.0, step=0.5,
                                   tooltip="Horizontal field of view in degrees, used when fx is 0."),
                    io.Float.Input("fx", default=0.0, min=0.0, max=1e6, step=0.01,
                                   tooltip="Focal length in pixels of the depth image (0: from fov)."),
                    io.Float.Input("fy", default=0.0, min=0.0, max=1e6, step=0.01, tooltip="0: the same as fx."),
                    io.Float.Input("cx", default=0.0, min=0.0, max=1e6, step=0.01,
                                   tooltip="Principal point x in pixels, pixel centres at integers (0: the "
                                           "centre, (width - 1) / 2)."),
                    io.Float.Input("cy", default=0.0, min=0.0, max=1e6, step=0.01,
                                   tooltip="Principal point y in pixels (0: the centre, (height - 1) / 2)."),
                    io.Float.Input("depth_scale", default=1.0, min=1e-6, max=1e6, step=0.001,
                                   tooltip="Metres per depth unit (after the inversion when inverse is on)."),
                    io.Boolean.Input("inverse", default=False,
                                     tooltip="On: the depth input is inverse depth / disparity-like (most "
                                             "monocular estimators, brighter = nearer): depth = depth_scale / value.")]
            + size_inputs(0, 0, keep=True)
            + [io.Image.Input("images", optional=True,
                              tooltip="Colour frames (one per depth map), resized to the depth size.")],
            outputs=[Scene.Output(display_name="scene")],
        )

    @classmethod
    def execute(cls, depth, poses, pose_kind, fov, fx, fy, cx, cy, depth_scale, inverse, width, height,
                images=None) -> io.NodeOutput:
        node = "Scene Frames From Tensors"
        values = (depth[..., 0] if depth.ndim == 4 else depth).detach().cpu().float()
        if values.ndim != 3:
            raise ValueError(f"{node}: depth must be an IMAGE or MASK batch, got shape {tuple(depth.shape)}")
        n, H, W = values.shape
        if inverse:
            values = torch.where(values > 0, 1.0 / values.clamp_min(1e-12), torch.zeros_like(values))
        with named(node):
            pose = parse_poses(poses, Path(folder_paths.get_input_directory()))
            if pose.shape[0] != n:
                raise ValueError(f"{n} depth maps but {pose.shape[0]} poses: give one pose per frame")
            K = intrinsics(fov, H, W).double()
            if fx:
                K[0, 0], K[1, 1] = fx, fy or fx
            K[0, 2], K[1, 2] = cx or K[0, 2], cy or K[1, 2]
            frames = frames_from_tensors(values, K, pose, pose_kind, None if images is None else images.cpu(),
                                         depth_scale)
            if width or height:
                check_multiple_of_8(node, width or W, height or H)
                frames = frames.resize(height or H, width or W)
        return io.NodeOutput(frames)


class SelectKeyFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionSelectKeyFrames", display_name="Select Key Frames", category=CATEGORY,
            description="Key frames of a long sequence by overlap (official rule: a new key frame when the overlap "
                        "with the last key frame drops below 0.6) and the in-between frames of each key pair, with "
                        "the overlap matrix of all frames as an image.",
            inputs=[Scene.Input("scene", tooltip="Frames in capture order (Load Scene Frames)."),
                    io.Float.Input("threshold", default=KEY_FRAME_OVERLAP, min=0.0, max=1.0, step=0.01,
                                   tooltip="A frame becomes a key frame when its overlap with the last key frame "
                                           "is below this (official 0.6)."),
                    io.Int.Input("max_between", default=10, min=1, max=1000,
                                 tooltip="At most this many in-between frames per group (the 12-view model: 10); "
                                         "longer gaps are split into several groups with the same two key frames."),
                    io.Boolean.Input("include_last", default=True,
                                     tooltip="Also make the last frame a key frame, so the groups cover the whole "
                                             "sequence.")],
            outputs=[Scene.Output(display_name="key_frames"),
                     io.String.Output(display_name="groups",
                                      tooltip="JSON: key_frames (indices into the input scene), groups (each: key "
                                              "frame, in-betweens, key frame) and the frame names."),
                     io.Image.Output(display_name="overlap",
                                     tooltip="Overlap of every pair of frames (row i, column j; measured on "
                                             f"frames at most {PREVIEW_SIDE} px wide), key frames marked in red.")],
        )

    @classmethod
    def execute(cls, scene, threshold, max_between, include_last) -> io.NodeOutput:
        with named("Select Key Frames"):
            keys = select_key_frames(scene.depths, scene.cameras, threshold, include_last)
            groups = in_between_frames(keys, scene.num_frames, max_between)
            scale = min(1.0, PREVIEW_SIDE / max(scene.height, scene.width))
            small = scene.resize(max(1, round(scene.height * scale)), max(1, round(scene.width * scale)))
            overlap = depth_overlap(small.depths, small.cameras)
        text = json.dumps({"key_frames": list(keys), "groups": [list(g) for g in groups],
                           "key_frame_names": [scene.names[k] for k in keys]})
        return io.NodeOutput(scene.select(keys), text, overlap_image(overlap, keys))


class DepthCorrespondences(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionDepthCorrespondences", display_name="Depth Correspondences", category=CATEGORY,
            description="What the depth correspondence-aware attention needs, built once: which views attend to "
                        "which (overlap above the threshold; views overlapping nothing get the previous / next view "
                        "as the official), and the per-level correspondences and depth differences of the UNet "
                        "levels at the frames' size. Any number of views; the size must be a multiple of 8.",
            inputs=[Scene.Input("scene", tooltip="The frames to generate together (e.g. a key-frame group)."),
                    io.Float.Input("threshold", default=NEIGHBOUR_OVERLAP, min=0.0, max=1.0, step=0.01,
                                   tooltip="A view attends to every view whose overlap with it is above this "
                                           "(official 0.3).")],
            outputs=[DepthScene.Output(display_name="correspondences"),
                     io.Image.Output(display_name="overlap",
                                     tooltip="Overlap matrix; white squares: the views each row attends to (orange: "
                                             "fallback neighbours of a view that overlaps nothing)."),
                     io.String.Output(display_name="report",
                                      tooltip="Neighbours per view, views overlapping nothing, frames without "
                                              "depth.")],
        )

    @classmethod
    def execute(cls, scene, threshold) -> io.NodeOutput:
        with named("Depth Correspondences"):
            result = scene_correspondences(scene, threshold)
        image = overlap_image(result.overlap, neighbours=result.neighbours, fallback=result.without_overlap)
        return io.NodeOutput(result, image, result.report())


class SavePointCloud(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionSavePointCloud", display_name="Save Scene Point Cloud", category=CATEGORY,
            description="Every pixel with depth back-projected into the world with its camera, coloured, saved as "
                        "a binary .ply in the output folder. model_file connects to the core Preview 3D node.",
            inputs=[Scene.Input("scene", tooltip="The frames (depth and cameras)."),
                    io.Image.Input("images", optional=True,
                                   tooltip="Colours, one image per frame (e.g. generated views; resized to the "
                                           "scene's size). Default: the scene's own colour, else grey."),
                    io.Int.Input("every", default=2, min=1, max=64,
                                 tooltip="Take every n-th pixel along each axis (1: all; 2: a quarter)."),
                    io.Boolean.Input("y_up", default=True,
                                     tooltip="On: negate y and z (OpenCV's y-down, z-forward world -> the y-up axes "
                                             "of 3D viewers; a 180° turn about x). Off: the scan's world coordinates "
                                             "unchanged (viewers may show them upside down)."),
                    io.String.Input("filename_prefix", default="mvdiffusion/scene",
                                    tooltip="File name prefix in the output folder (may contain a subfolder).")],
            outputs=[io.String.Output(display_name="model_file",
                                      tooltip="The .ply path relative to the output folder (Preview 3D's "
                                              "model_file).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, scene, every, y_up, filename_prefix, images=None) -> io.NodeOutput:
        node = "Save Scene Point Cloud"
        colours = colour_of(scene)
        if images is not None:
            if images.shape[0] != scene.num_frames:
                raise ValueError(f"{node}: {images.shape[0]} images for {scene.num_frames} frames: give one per frame")
            colours = resize_images(images.cpu().float()[..., :3], scene.height, scene.width)
        with named(node):
            points = pointcloud.backproject(scene.depths, scene.cameras.K, scene.cameras.c2w, every)
        valid = scene.depths[:, ::every, ::every] > 0
        if not bool(valid.any()):
            raise ValueError(f"{node}: no frame has a pixel with depth: nothing to save")
        points = points[valid]
        directory = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, directory)
        file = f"{name}_{counter:05}_.ply"
        points = pointcloud.y_up(points) if y_up else points
        with open(os.path.join(folder, file), "wb") as f:
            f.write(pointcloud.ply_bytes(points, colours[:, ::every, ::every][valid]))
        model_file = f"{subfolder}/{file}" if subfolder else file
        return io.NodeOutput(model_file, ui={"3d": [{"filename": file, "subfolder": subfolder, "type": "output"}]})
