"""The pack's custom socket types (shared by all node files)."""
from comfy_api.latest import io

# a geometry.Rig: the cameras of the views (sizes, yaw/pitch/fov, neighbour lists)
Cameras = io.Custom("MVDIFFUSION_CAMERAS")
# a nodes.caa_weights.CAAWeights: the CAA blocks in their own ModelPatcher
CAA = io.Custom("MVDIFFUSION_CAA")

CATEGORY = "MVDiffusion"
