"""ComfyUI nodes of the pack (thin glue over ``geometry`` and ``caa``), registered as a V3 extension."""
from comfy_api.latest import ComfyExtension, io

from .cameras import EmptyPanoramaLatent, PanoramaCameras, SphereCameras
from .depth import ApplyMVDiffusionDepth, DepthConditioning, KeyFrameConditioning
from .equirect import EquirectangularStitch, EquirectangularToViews
from .loaders import LoadCAAWeights, LoadMVDiffusionCheckpoint
from .outpaint import OutpaintConditioning, PartialPanorama, PasteKnownPixels, PlacePhoto
from .panorama_tools import PanoramaConsistency, PanoramaOrbit, PanoramaView, PreviewPanorama, SavePanorama
from .png_prompt import PromptFromImage
from .prompts import PanoramaPrompts
from .sampling import ApplyMVDiffusion, MVDiffusionKSampler
from .scene_sampling import InBetweenFrames
from .scenes import DepthCorrespondences, LoadSceneFrames, SavePointCloud, SceneFromTensors, SelectKeyFrames

NODES = [LoadMVDiffusionCheckpoint, LoadCAAWeights, PanoramaCameras, SphereCameras, EmptyPanoramaLatent, PanoramaPrompts,
         ApplyMVDiffusion, MVDiffusionKSampler, EquirectangularStitch, EquirectangularToViews,
         PlacePhoto, PartialPanorama, OutpaintConditioning, PasteKnownPixels, PromptFromImage,
         PanoramaView, PanoramaOrbit, PanoramaConsistency, SavePanorama, PreviewPanorama,
         LoadSceneFrames, SceneFromTensors, SelectKeyFrames, DepthCorrespondences, SavePointCloud,
         DepthConditioning, ApplyMVDiffusionDepth, KeyFrameConditioning, InBetweenFrames]


class MVDiffusionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
