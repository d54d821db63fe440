"""What all node files share: the pack's custom socket types, the category, and node-named errors."""
from contextlib import contextmanager

from comfy_api.latest import io

# a geometry.Rig: the cameras of the views (sizes, yaw/pitch/fov, neighbour lists)
Cameras = io.Custom("MVDIFFUSION_CAMERAS")
# a nodes.caa_weights.CAAWeights: the CAA blocks in their own ModelPatcher
CAA = io.Custom("MVDIFFUSION_CAA")

CATEGORY = "MVDiffusion"
# a scenes.SceneFrames: depth maps (metres), cameras (K, camera-to-world, OpenCV axes), optional colour, names
Scene = io.Custom("MVDIFFUSION_SCENE")
# a scenes.SceneCorrespondences: the frames, overlap matrix, neighbour lists and depth level plans of their size
DepthScene = io.Custom("MVDIFFUSION_DEPTH_CORRESPONDENCES")
# a nodes.depth.KeyFrameLatents: key frames' latents and their places among the frames of a group
KeyFrames = io.Custom("MVDIFFUSION_KEY_FRAMES")


@contextmanager
def named(node: str):
    """Re-raise a ValueError of the libraries with the node's display name in front."""
    try:
        yield
    except ValueError as err:
        raise ValueError(f"{node}: {err}") from None
