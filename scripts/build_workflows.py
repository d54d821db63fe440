"""Regenerate the example workflows in ``workflows/`` (UI format) from a live server's ``/object_info``.

    .venv/bin/python scripts/build_workflows.py          # starts a headless ComfyUI with this pack

The graphs are described here once; widget order and socket types come from the server, so the files always
match the nodes' current definitions.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_host  # noqa: E402
from comfy_server import ComfyServer  # noqa: E402
from workflow_api import UIGraph  # noqa: E402

WORKFLOWS = comfy_host.REPO / "workflows"
KITCHEN = ("This kitchen is a charming blend of rustic and modern, featuring a large reclaimed wood island with "
           "marble countertop, a sink surrounded by cabinets. To the left of the island, a stainless-steel "
           "refrigerator stands tall. To the right of the sink, built-in wooden cabinets painted in a muted.")
STREET = "a busy shopping street in an asian city, colourful shop signs, parked scooters, overcast daylight"
PER_VIEW = "\n".join([
    "a sunlit living room, a large window with white curtains",
    "a sunlit living room, a grey fabric sofa with cushions",
    "a sunlit living room, a wooden bookshelf full of books",
    "a sunlit living room, a fireplace with a mirror above it",
    "a sunlit living room, a wooden door and a coat rack",
    "a sunlit living room, a dining table with four chairs",
    "a sunlit living room, a potted plant next to a lamp",
    "a sunlit living room, a television on a low cabinet",
])


def sample_and_save(g: UIGraph, x: int, ckpt, cams, positive, negative, latent, pano_prefix: str,
                    views_prefix: str) -> None:
    """MVDiffusion KSampler (official settings) -> VAE Decode -> stitch -> save the panorama and the views, in
    columns from ``x`` on (the checkpoint loader's MODEL, VAE and caa outputs)."""
    sampled = g.add("MVDiffusionKSampler", (x, 60), size=(320, 400), model=ckpt.out(0), caa=ckpt.out(3),
                    cameras=cams.out(0), positive=positive, negative=negative, latent_image=latent,
                    seed=0, steps=50, cfg=9.0, sampler_name="ddim", scheduler="ddim_uniform", denoise=1.0)
    views = g.add("VAEDecode", (x + 360, 60), samples=sampled.out(0), vae=ckpt.out(2))
    pano = g.add("MVDiffusionEquirectStitch", (x + 360, 180), images=views.out(0), cameras=cams.out(0), width=4096,
                 height=2048, blend="ramp")
    g.add("SaveImage", (x + 700, 60), size=(520, 320), images=pano.out(0), filename_prefix=pano_prefix)
    g.add("SaveImage", (x + 700, 420), size=(520, 320), images=views.out(0), filename_prefix=views_prefix)


def text_to_panorama(info: dict) -> dict:
    """Official checkpoint -> 8 views -> stitch -> save (the official pano.ckpt demo)."""
    g = UIGraph(info)
    ckpt = g.add("MVDiffusionCheckpointLoader", (40, 120), ckpt_name="pano.ckpt")
    cams = g.add("MVDiffusionPanoramaCameras", (40, 320), views=8, fov=90.0, pitch=0.0, width=512, height=512,
                 yaw_offset=0.0)
    pos = g.add("MVDiffusionPanoramaPrompts", (420, 60), size=(400, 200), title="Prompt (one line, or one per view)",
                clip=ckpt.out(1), cameras=cams.out(0), text=KITCHEN)
    neg = g.add("CLIPTextEncode", (420, 300), size=(400, 120), title="Negative prompt", clip=ckpt.out(1), text="")
    latent = g.add("MVDiffusionEmptyLatent", (420, 470), cameras=cams.out(0), scenes=1)
    sample_and_save(g, 860, ckpt, cams, pos.out(0), neg.out(0), latent.out(0), "mvdiffusion/panorama",
                    "mvdiffusion/view")
    g.note((40, 560), "Put pano.ckpt (MVDiffusion release) into models/mvdiffusion/. It holds the SD2-base model, "
                      "its text encoder and VAE, and the correspondence-aware attention. One prompt for all 8 views, "
                      "or one line per view (view 0 = panorama centre, then clockwise in 45° steps).")
    return g.to_ui()


def text_to_panorama_sd2(info: dict) -> dict:
    """The host's SD2-base checkpoint + CAA weights, per-view prompts, Apply MVDiffusion + the core KSampler."""
    g = UIGraph(info)
    ckpt = g.add("CheckpointLoaderSimple", (40, 60), ckpt_name="512-base-ema.safetensors")
    caa = g.add("MVDiffusionCAALoader", (40, 220), caa_name="pano.caa.safetensors")
    cams = g.add("MVDiffusionPanoramaCameras", (40, 340), views=8, fov=90.0, pitch=0.0, width=512, height=512,
                 yaw_offset=0.0)
    model = g.add("MVDiffusionApply", (420, 480), model=ckpt.out(0), caa=caa.out(0), cameras=cams.out(0))
    pos = g.add("MVDiffusionPanoramaPrompts", (420, 40), size=(460, 260), title="Per-view prompts (view 0 first)",
                clip=ckpt.out(1), cameras=cams.out(0), text=PER_VIEW)
    neg = g.add("CLIPTextEncode", (420, 330), size=(400, 110), title="Negative prompt", clip=ckpt.out(1), text="")
    latent = g.add("MVDiffusionEmptyLatent", (420, 650), cameras=cams.out(0), scenes=1)
    sampled = g.add("KSampler", (920, 60), size=(320, 320), model=model.out(0), positive=pos.out(0),
                    negative=neg.out(0), latent_image=latent.out(0), seed=0, steps=50, cfg=9.0, sampler_name="ddim",
                    scheduler="ddim_uniform", denoise=1.0)
    views = g.add("VAEDecode", (1280, 60), samples=sampled.out(0), vae=ckpt.out(2))
    pano = g.add("MVDiffusionEquirectStitch", (1280, 180), images=views.out(0), cameras=cams.out(0), width=4096,
                 height=2048, blend="feather")
    g.add("SaveImage", (1620, 60), size=(520, 320), images=pano.out(0), filename_prefix="mvdiffusion/panorama_sd2")
    g.note((40, 620), "SD2-base (512-base-ema.safetensors) in models/checkpoints/, and the CAA weights converted from "
                      "pano.ckpt (python custom_nodes/comfyui-mvdiffusion/scripts/convert.py models/mvdiffusion/pano.ckpt, "
                      "from the ComfyUI folder) in models/mvdiffusion/. "
                      "Apply MVDiffusion patches the model, so LoRAs and ControlNets on it keep working and any "
                      "sampler samples the 8 views together.", size=(330, 200))
    return g.to_ui()


def image_to_panorama(info: dict) -> dict:
    """Official pano_outpaint checkpoint + a photo -> Place Photo -> Outpaint Conditioning -> 8 views -> stitch."""
    g = UIGraph(info)
    ckpt = g.add("MVDiffusionCheckpointLoader", (40, 60), ckpt_name="pano_outpaint.ckpt")
    cams = g.add("MVDiffusionPanoramaCameras", (40, 240), views=8, fov=90.0, pitch=0.0, width=512, height=512,
                 yaw_offset=0.0)
    photo = g.add("LoadImage", (40, 480), size=(300, 340), image="photo.png")
    placed = g.add("MVDiffusionPlacePhoto", (380, 480), cameras=cams.out(0), photo=photo.out(0),
                   placement="official", fov=90.0, yaw=0.0, pitch=0.0)
    pos = g.add("MVDiffusionPanoramaPrompts", (380, 40), size=(420, 180), title="Prompt (one line, or one per view)",
                clip=ckpt.out(1), cameras=cams.out(0), text=STREET)
    neg = g.add("CLIPTextEncode", (380, 260), size=(400, 110), title="Negative prompt", clip=ckpt.out(1), text="")
    cond = g.add("MVDiffusionOutpaintConditioning", (840, 300), positive=pos.out(0), negative=neg.out(0),
                 vae=ckpt.out(2), cameras=cams.out(0), views=placed.out(0), mask=placed.out(1), guide=False)
    sample_and_save(g, 1180, ckpt, cams, cond.out(0), cond.out(1), cond.out(2), "mvdiffusion/outpaint_panorama",
                    "mvdiffusion/outpaint_view")
    g.note((840, 560), "Put pano_outpaint.ckpt (MVDiffusion release) into models/mvdiffusion/ and pick a photo. "
                       "official: the photo becomes view 0 (short side resized, centre crop), as the official "
                       "demo does; reproject: it is projected with its own field of view at any yaw and pitch. "
                       "The model regenerates the photo's view (official); add Paste Known Pixels after VAE "
                       "Decode to keep the photo's pixels, or switch 'guide' on.", size=(330, 220))
    return g.to_ui()


def text_to_full_panorama(info: dict) -> dict:
    """pano.ckpt: the 8-view ring from text -> its stitch as a partial sphere -> pano_outpaint.ckpt: the ring as known
    views and the two pole views generated with CAA to them (Sphere Cameras) -> a 2:1 panorama with no hole, shown in
    360, saved as a 360 photo and as an orbit video."""
    g = UIGraph(info)
    ring_ckpt = g.add("MVDiffusionCheckpointLoader", (40, 60), ckpt_name="pano.ckpt")
    ring = g.add("MVDiffusionPanoramaCameras", (40, 240), views=8, fov=90.0, pitch=0.0, width=512, height=512,
                 yaw_offset=0.0)
    pos = g.add("MVDiffusionPanoramaPrompts", (400, 40), size=(420, 180), title="Prompt of the ring",
                clip=ring_ckpt.out(1), cameras=ring.out(0), text=KITCHEN)
    neg = g.add("CLIPTextEncode", (400, 260), size=(400, 110), title="Negative prompt", clip=ring_ckpt.out(1), text="")
    latent = g.add("MVDiffusionEmptyLatent", (400, 410), cameras=ring.out(0), scenes=1)
    sampled = g.add("MVDiffusionKSampler", (860, 40), size=(320, 400), model=ring_ckpt.out(0), caa=ring_ckpt.out(3),
                    cameras=ring.out(0), positive=pos.out(0), negative=neg.out(0), latent_image=latent.out(0),
                    seed=0, steps=50, cfg=9.0, sampler_name="ddim", scheduler="ddim_uniform", denoise=1.0)
    ring_views = g.add("VAEDecode", (1220, 40), samples=sampled.out(0), vae=ring_ckpt.out(2))
    band = g.add("MVDiffusionEquirectStitch", (1220, 160), title="The ring's band", images=ring_views.out(0),
                 cameras=ring.out(0), width=2048, height=1024, blend="feather")
    missing = g.add("InvertMask", (1220, 420), title="Missing = not covered by the ring", mask=band.out(1))

    sphere = g.add("MVDiffusionSphereCameras", (40, 560), ring_views=8, ring_fov=90.0, poles="both", pole_fov=120.0,
                   rows="", width=512, height=512, min_overlap=0.1, max_neighbours=0)
    partial = g.add("MVDiffusionPartialPanorama", (400, 560), panorama=band.out(0), mask=missing.out(0),
                    cameras=sphere.out(0))
    pole_ckpt = g.add("MVDiffusionCheckpointLoader", (40, 880), ckpt_name="pano_outpaint.ckpt")
    pole_pos = g.add("MVDiffusionPanoramaPrompts", (400, 700), size=(420, 180), title="Prompt of the poles",
                     clip=pole_ckpt.out(1), cameras=sphere.out(0), text=KITCHEN)
    pole_neg = g.add("CLIPTextEncode", (400, 920), size=(400, 110), title="Negative prompt", clip=pole_ckpt.out(1),
                     text="")
    cond = g.add("MVDiffusionOutpaintConditioning", (860, 560), positive=pole_pos.out(0), negative=pole_neg.out(0),
                 vae=pole_ckpt.out(2), cameras=sphere.out(0), views=partial.out(0), mask=partial.out(1), guide=False)
    poles = g.add("MVDiffusionKSampler", (860, 760), size=(320, 400), model=pole_ckpt.out(0), caa=pole_ckpt.out(3),
                  cameras=sphere.out(0), positive=cond.out(0), negative=cond.out(1), latent_image=cond.out(2),
                  seed=0, steps=50, cfg=9.0, sampler_name="ddim", scheduler="ddim_uniform", denoise=1.0)
    sphere_views = g.add("VAEDecode", (1220, 560), samples=poles.out(0), vae=pole_ckpt.out(2))
    pasted = g.add("MVDiffusionPasteKnown", (1220, 680), images=sphere_views.out(0), views=partial.out(0),
                   mask=partial.out(1), feather=8)
    full = g.add("MVDiffusionEquirectStitch", (1220, 860), title="The whole sphere", images=pasted.out(0),
                 cameras=sphere.out(0), width=2048, height=1024, blend="feather", known_panorama=band.out(0),
                 known_mask=missing.out(0))

    g.add("MVDiffusionPreviewPanorama", (1560, 40), size=(520, 420), panorama=full.out(0))
    g.add("MVDiffusionSavePanorama", (1560, 500), panorama=full.out(0), filename_prefix="mvdiffusion/full_panorama",
          format="jpeg", full_sphere=True, quality=95)
    orbit = g.add("MVDiffusionPanoramaOrbit", (1560, 700), panorama=full.out(0), frames=120, start_yaw=0.0,
                  pitch=0.0, fov=90.0, width=512, height=512)
    g.add("SaveAnimatedWEBP", (1920, 700), size=(360, 360), images=orbit.out(0),
          filename_prefix="mvdiffusion/full_panorama_orbit", fps=24.0, lossless=False, quality=85, method="default")
    g.note((1920, 500), "Put pano.ckpt and pano_outpaint.ckpt (MVDiffusion release) into models/mvdiffusion/. The "
                        "ring of 8 views comes from the text; its stitch leaves the poles open. The outpainting "
                        "model then samples Sphere Cameras' 10 views: the ring views are known (mask 0), the pole "
                        "views are generated attending to the ring. The released weights were trained on the ring "
                        "only, so the pole views are an experiment. Without pano_outpaint.ckpt: an SD2-inpainting "
                        "checkpoint with KSampler (no CAA) after Outpaint Conditioning fills the poles too.",
           size=(360, 190))
    return g.to_ui()


ROOM = ("a cosy scandinavian living room, light oak floor, white walls, a grey sofa, green plants, warm evening "
        "light")


def scene_texturing(info: dict) -> dict:
    """depth_gen.ckpt on a depth scan: key frames generated together from depth + text, then the frames between
    each pair of key frames (the official two-stage mode), all frames saved in order and as a coloured point
    cloud shown in the core 3D preview."""
    g = UIGraph(info)
    frames = g.add("MVDiffusionLoadSceneFrames", (40, 60), size=(340, 330), path="scan", format="auto",
                   depth_scale=0.0, start=0, stride=1, count=0, width=256, height=192)
    keys = g.add("MVDiffusionSelectKeyFrames", (40, 440), scene=frames.out(0), threshold=0.6, max_between=10,
                 include_last=True)
    g.add("PreviewImage", (40, 720), size=(300, 300), title="Overlap of all frames (key frames red)",
          images=keys.out(2))
    ckpt = g.add("MVDiffusionCheckpointLoader", (420, 60), ckpt_name="depth_gen.ckpt")
    pos = g.add("CLIPTextEncode", (420, 220), size=(400, 160), title="Prompt", clip=ckpt.out(1), text=ROOM)
    neg = g.add("CLIPTextEncode", (420, 420), size=(400, 110), title="Negative prompt", clip=ckpt.out(1), text="")
    corr = g.add("MVDiffusionDepthCorrespondences", (420, 580), scene=keys.out(0), threshold=0.3)
    cond = g.add("MVDiffusionDepthConditioning", (860, 300), positive=pos.out(0), negative=neg.out(0),
                 scene=keys.out(0))
    model = g.add("MVDiffusionApplyDepth", (860, 60), model=ckpt.out(0), caa=ckpt.out(3), correspondences=corr.out(0))
    sampled = g.add("KSampler", (1200, 60), size=(320, 320), title="Key frames, together", model=model.out(0),
                    positive=cond.out(0), negative=cond.out(1), latent_image=cond.out(2), seed=0, steps=50, cfg=9.0,
                    sampler_name="ddim", scheduler="ddim_uniform", denoise=1.0)
    key_images = g.add("VAEDecode", (1560, 60), samples=sampled.out(0), vae=ckpt.out(2))
    g.add("SaveImage", (1580, 200), size=(400, 300), images=key_images.out(0),
          filename_prefix="mvdiffusion/scene_key_frame")
    frames_out = g.add("MVDiffusionInBetweenFrames", (1200, 440), size=(340, 420), model=ckpt.out(0), caa=ckpt.out(3),
                       vae=ckpt.out(2), scene=frames.out(0), groups=keys.out(1), key_images=key_images.out(0),
                       positive=pos.out(0), negative=neg.out(0), seed=0, steps=50, cfg=9.0, sampler_name="ddim",
                       scheduler="ddim_uniform", threshold=0.3)
    g.add("SaveImage", (1600, 560), size=(400, 300), images=frames_out.out(0), filename_prefix="mvdiffusion/scene_frame")
    cloud = g.add("MVDiffusionSavePointCloud", (1600, 900), scene=frames_out.out(1), images=frames_out.out(0), every=2,
                  y_up=True, filename_prefix="mvdiffusion/scene")
    g.add("Preview3D", (2040, 900), size=(400, 400), model_file=cloud.out(0))
    g.note((420, 760), "Put depth_gen.ckpt (MVDiffusion release) into models/mvdiffusion/ and a depth scan into "
                       "ComfyUI's input folder ('scan': a ScanNet folder with color/, depth/ in mm, pose/ and "
                       "intrinsic/; or a transforms.json, or a COLMAP model with depth maps). Key frames (overlap "
                       "below 0.6) are generated together from depth and text; then each group of frames between two "
                       "key frames, with the two key frames as the condition. The point cloud shows the textured "
                       "scan in 3D.", size=(400, 200))
    return g.to_ui()


BUILDERS = {"text_to_panorama.json": text_to_panorama, "text_to_panorama_sd2.json": text_to_panorama_sd2,
            "image_to_panorama.json": image_to_panorama, "text_to_full_panorama.json": text_to_full_panorama,
            "scene_texturing.json": scene_texturing}


def build_all(object_info: dict, out_dir: Path = WORKFLOWS) -> list[Path]:
    out_dir.mkdir(exist_ok=True)
    paths = []
    for name, build in BUILDERS.items():
        path = out_dir / name
        path.write_text(json.dumps(build(object_info), indent=1) + "\n")
        paths.append(path)
    return paths


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, ComfyServer(Path(tmp) / "base") as server:
        for path in build_all(server.object_info()):
            print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
