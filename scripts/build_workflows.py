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


BUILDERS = {"text_to_panorama.json": text_to_panorama, "text_to_panorama_sd2.json": text_to_panorama_sd2,
            "image_to_panorama.json": image_to_panorama}


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
