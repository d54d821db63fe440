"""The main job: a headless ComfyUI with this pack runs ``workflows/text_to_panorama.json`` through its HTTP API
and writes the equirectangular panorama (and the 8 views) to ``output/``.

Real weights: put the official ``pano.ckpt`` into ``models/mvdiffusion/`` (this repository's ``models/``
folder; see the README for the download page). Without real weights, ``DEMO_RANDOM_WEIGHTS=1`` synthesises
a random checkpoint in the official layout and runs the same graph at 64-px views with 2 steps, to prove the
whole graph runs.

    make demo                          # real weights
    DEMO_RANDOM_WEIGHTS=1 make demo    # random weights, small
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
WORKFLOW = REPO / "workflows" / "text_to_panorama.json"
OFFICIAL = "https://github.com/Tangshitao/MVDiffusion#model-zoo"
PANO_DROPBOX = "https://www.dropbox.com/scl/fi/yx9e0lj4fwtm9xh2wlhhg/pano.ckpt?rlkey=kowqygw7vt64r3maijk8klfl0&dl=0"


# the converter, as run from this repository (the demo's models/ folder is here)
CONVERT_COMMAND = ".venv/bin/python scripts/convert.py models/mvdiffusion/pano.ckpt"


def missing_weights_message() -> str:
    return (f"No MVDiffusion weights: {MODELS / 'mvdiffusion' / 'pano.ckpt'} does not exist.\n\n"
            "Download the official panorama model (about 5 GB; it contains SD2-base, its text encoder and VAE,\n"
            "and the correspondence-aware attention):\n"
            f"    pano.ckpt  from {PANO_DROPBOX}\n"
            f"    (listed at {OFFICIAL})\n"
            f"and put it at {MODELS / 'mvdiffusion' / 'pano.ckpt'}.\n\n"
            "The SD2 workflow (workflows/text_to_panorama_sd2.json) instead uses the host's SD2-base checkpoint:\n"
            "    512-base-ema.safetensors from https://huggingface.co/stabilityai/stable-diffusion-2-base\n"
            f"    -> {MODELS / 'checkpoints' / '512-base-ema.safetensors'}\n"
            "plus the CAA weights converted from pano.ckpt:\n"
            f"    {CONVERT_COMMAND}\n\n"
            "To check that the whole graph runs without any real weights: DEMO_RANDOM_WEIGHTS=1 make demo")


def prepare_random_models(base_models: Path) -> None:
    """Random official-layout pano.ckpt in a models folder of the demo's own (never in ./models)."""
    import official_layouts
    import random_weights

    print("[demo] DEMO_RANDOM_WEIGHTS=1: synthesising a random checkpoint in the official pano.ckpt layout "
          "(about 5 GB, once; cached)", flush=True)
    ckpt = official_layouts.official_checkpoint(random_weights.models_dir(), kind="pano")
    target = base_models / "mvdiffusion" / "pano.ckpt"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(ckpt)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", type=Path, default=WORKFLOW, help="UI-format workflow to run")
    parser.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait for the result")
    args = parser.parse_args(argv)
    random_weights_mode = os.environ.get("DEMO_RANDOM_WEIGHTS", "") == "1"
    OUTPUT.mkdir(exist_ok=True)

    if random_weights_mode:
        base = comfy_host.cache_dir() / "demo-random"
        (base / "models").mkdir(parents=True, exist_ok=True)
        prepare_random_models(base / "models")
        models = None
    else:
        for sub in ("checkpoints", "mvdiffusion"):
            (MODELS / sub).mkdir(parents=True, exist_ok=True)
        if args.workflow == WORKFLOW and not (MODELS / "mvdiffusion" / "pano.ckpt").exists():
            print(missing_weights_message(), file=sys.stderr)
            return 2
        base = comfy_host.cache_dir() / "demo-base"
        models = MODELS

    workflow = json.loads(args.workflow.read_text())
    if models is not None:
        comfy_host.make_base_directory(base, models=models)
    print(f"[demo] starting ComfyUI ({comfy_host.host_root()}) on 127.0.0.1", flush=True)
    with ComfyServer(base, output=OUTPUT) as server:
        prompt = ui_to_api(workflow, server.object_info())
        if random_weights_mode:
            prompt = set_inputs(prompt, "MVDiffusionPanoramaCameras", width=64, height=64)
            prompt = set_inputs(prompt, "MVDiffusionKSampler", steps=2)
            prompt = set_inputs(prompt, "MVDiffusionEquirectStitch", width=1024, height=512)
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
