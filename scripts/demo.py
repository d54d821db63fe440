"""The main job: a headless ComfyUI with this pack runs ``workflows/text_to_panorama.json`` (or
``DEMO_WORKFLOW=image_to_panorama`` / ``text_to_full_panorama``) through its HTTP API and writes the
equirectangular panorama (and the 8 views) to ``output/``.

Real weights: put the official ``pano.ckpt`` (``pano_outpaint.ckpt`` for image_to_panorama, both for
text_to_full_panorama) into ``models/mvdiffusion/`` (this repository's ``models/`` folder; see the README for the
download page). The photo
of image_to_panorama is ``DEMO_PHOTO`` (a path), by default a view cut from the street panorama in
``tests/fixtures/panoramas/``. Without real weights, ``DEMO_RANDOM_WEIGHTS=1`` synthesises a random checkpoint
in the official layout and runs the same graph at 64-px views with 2 steps, to prove the whole graph runs.

    make demo                                                    # real weights
    DEMO_RANDOM_WEIGHTS=1 make demo                              # random weights, small
    DEMO_WORKFLOW=image_to_panorama DEMO_RANDOM_WEIGHTS=1 make demo
    DEMO_WORKFLOW=text_to_full_panorama DEMO_RANDOM_WEIGHTS=1 make demo
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_host  # noqa: E402
from comfy_server import ComfyServer  # noqa: E402
from workflow_api import set_inputs, ui_to_api  # noqa: E402

REPO = comfy_host.REPO
MODELS = REPO / "models"
OUTPUT = REPO / "output"
WORKFLOWS = REPO / "workflows"
# workflow -> the official checkpoints it loads: (file name, its kind in official_layouts)
CHECKPOINTS = {"text_to_panorama": [("pano.ckpt", "pano")],
               "image_to_panorama": [("pano_outpaint.ckpt", "pano_outpaint")],
               "text_to_full_panorama": [("pano.ckpt", "pano"), ("pano_outpaint.ckpt", "pano_outpaint")]}
# workflows the demo does not run, and why
NOT_DEMOS = {"scene_texturing": "textures a depth scan of yours: put the scan in ComfyUI's input folder and open "
                                "the workflow in ComfyUI (README: Workflows); the tests run it on a synthetic room"}
# the random-weights run: 64-px views, 2 steps, a 1024x512 panorama, a short orbit (node -> inputs)
SMALL = {"MVDiffusionPanoramaCameras": dict(width=64, height=64),
         "MVDiffusionSphereCameras": dict(width=64, height=64), "MVDiffusionKSampler": dict(steps=2), "MVDiffusionEquirectStitch": dict(width=1024, height=512),
         "MVDiffusionPanoramaOrbit": dict(frames=24, width=256, height=256)}
STREET = REPO / "tests" / "fixtures" / "panoramas" / "street_2048x1024.jpg"
OFFICIAL = "https://github.com/Tangshitao/MVDiffusion#model-zoo"
PANO_DROPBOX = "https://www.dropbox.com/scl/fi/yx9e0lj4fwtm9xh2wlhhg/pano.ckpt?rlkey=kowqygw7vt64r3maijk8klfl0&dl=0"
OUTPAINT_DROPBOX = ("https://www.dropbox.com/scl/fi/3mtj06qx6mxt4eme1oz2r/pano_outpaint.ckpt"
                    "?rlkey=xat6cwt47lzfjawum05xa5ftq&dl=0")


# the converter, as run from this repository (the demo's models/ folder is here)
CONVERT_COMMAND = ".venv/bin/python scripts/convert.py models/mvdiffusion/pano.ckpt"


def missing_weights_message(name: str = "pano.ckpt", workflow: str = "text_to_panorama") -> str:
    what = {"pano.ckpt": ("panorama model", PANO_DROPBOX),
            "pano_outpaint.ckpt": ("panorama outpainting model", OUTPAINT_DROPBOX)}[name]
    return (f"No MVDiffusion weights: {MODELS / 'mvdiffusion' / name} does not exist.\n\n"
            f"Download the official {what[0]} (about 5 GB; it contains the SD2 model, its text encoder and VAE,\n"
            "and the correspondence-aware attention):\n"
            f"    {name}  from {what[1]}\n"
            f"    (listed at {OFFICIAL})\n"
            f"and put it at {MODELS / 'mvdiffusion' / name}.\n\n"
            "The SD2 workflow (workflows/text_to_panorama_sd2.json) instead uses the host's SD2-base checkpoint:\n"
            "    512-base-ema.safetensors from https://huggingface.co/stabilityai/stable-diffusion-2-base\n"
            f"    -> {MODELS / 'checkpoints' / '512-base-ema.safetensors'}\n"
            "plus the CAA weights converted from pano.ckpt:\n"
            f"    {CONVERT_COMMAND}\n\n"
            "To check that the whole graph runs without any real weights: "
            + (f"DEMO_WORKFLOW={workflow} " if workflow != "text_to_panorama" else "") + "DEMO_RANDOM_WEIGHTS=1 make demo")


def prepare_random_models(base_models: Path, name: str = "pano.ckpt", kind: str = "pano") -> None:
    """A random checkpoint in an official layout (``kind``) as ``name`` in a models folder of the demo's own
    (never in ./models)."""
    import official_layouts
    import random_weights

    print(f"[demo] DEMO_RANDOM_WEIGHTS=1: synthesising a random checkpoint in the official {name} layout "
          "(about 5 GB, once; cached)", flush=True)
    ckpt = official_layouts.official_checkpoint(random_weights.models_dir(), kind=kind)
    target = base_models / "mvdiffusion" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(ckpt)


def prepare_photo(base: Path, source: str | None) -> None:
    """``base/input/photo.png`` (the name image_to_panorama.json loads): ``source``, or else the street
    panorama's view at yaw 0 (512 px, 90°)."""
    from PIL import Image

    target = base / "input" / "photo.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    if source:
        if not Path(source).is_file():
            raise SystemExit(f"[demo] DEMO_PHOTO={source}: no such file")
        Image.open(source).convert("RGB").save(target)
        return
    import numpy as np
    import torch

    pack = comfy_host.import_pack()
    from importlib import import_module

    geometry = import_module(f"{pack.__name__}.geometry")
    pano = torch.from_numpy(np.asarray(Image.open(STREET).convert("RGB"), dtype=np.float32) / 255)
    K, R = geometry.intrinsics(90.0, 512, 512)[None], geometry.rotation(0.0)[None]
    view = geometry.equirect_to_views(pano.permute(2, 0, 1)[None], K, R, 512, 512)[0, 0]
    Image.fromarray((view.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()).save(target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = WORKFLOWS / (os.environ.get("DEMO_WORKFLOW", "").strip() or "text_to_panorama")
    parser.add_argument("--workflow", type=Path, default=default.with_suffix(".json"),
                        help="UI-format workflow to run (default: $DEMO_WORKFLOW in workflows/, else "
                             "text_to_panorama)")
    parser.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait for the result")
    args = parser.parse_args(argv)
    random_weights_mode = os.environ.get("DEMO_RANDOM_WEIGHTS", "") == "1"
    if not args.workflow.is_file():
        names = ", ".join(sorted(p.stem for p in WORKFLOWS.glob("*.json") if p.stem not in NOT_DEMOS))
        print(f"[demo] no workflow {args.workflow} (DEMO_WORKFLOW is one of: {names})", file=sys.stderr)
        return 2
    if args.workflow.stem in NOT_DEMOS:
        print(f"[demo] {args.workflow.name} {NOT_DEMOS[args.workflow.stem]}", file=sys.stderr)
        return 2
    checkpoints = CHECKPOINTS.get(args.workflow.stem, [])
    OUTPUT.mkdir(exist_ok=True)

    if random_weights_mode:
        base = comfy_host.cache_dir() / "demo-random"
        (base / "models").mkdir(parents=True, exist_ok=True)
        for ckpt_name, kind in checkpoints or [("pano.ckpt", "pano")]:
            prepare_random_models(base / "models", ckpt_name, kind)
        models = None
    else:
        for sub in ("checkpoints", "mvdiffusion"):
            (MODELS / sub).mkdir(parents=True, exist_ok=True)
        for ckpt_name, _ in checkpoints:
            if not (MODELS / "mvdiffusion" / ckpt_name).exists():
                print(missing_weights_message(ckpt_name, args.workflow.stem), file=sys.stderr)
                return 2
        base = comfy_host.cache_dir() / "demo-base"
        models = MODELS
    if args.workflow.stem == "image_to_panorama":
        prepare_photo(base, os.environ.get("DEMO_PHOTO"))

    workflow = json.loads(args.workflow.read_text())
    if models is not None:
        comfy_host.make_base_directory(base, models=models)
    print(f"[demo] starting ComfyUI ({comfy_host.host_root()}) on 127.0.0.1", flush=True)
    with ComfyServer(base, output=OUTPUT) as server:
        prompt = ui_to_api(workflow, server.object_info())
        if random_weights_mode:
            for node, values in SMALL.items():
                if any(n["class_type"] == node for n in prompt.values()):
                    prompt = set_inputs(prompt, node, **values)
        print(f"[demo] running {args.workflow.name} (server log: {server.log_path})", flush=True)
        start = time.time()
        entry = server.run(prompt, timeout=args.timeout)
        files = server.output_files(entry)
    print(f"[demo] done in {time.time() - start:.0f} s:")
    for path in files:
        print(f"    {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
