"""How long building the CAA sampling plans takes: the official rig (8 views, 90°, 512 px) at the 4 levels of an SD2
UNet (64, 32, 16, 8), cold (``geometry.sampling_plan.build_level_plan``, no cache), median of several runs.

    .venv/bin/python scripts/plan_timing.py [--runs 5] [--threads N]

Needs only torch (no ComfyUI). The first run also pays one-time costs (lazy library initialisation), so it is
reported separately; the median is over all runs.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_host  # noqa: E402


def build_all_levels(geometry) -> float:
    """Seconds to build the plans of all 4 levels for a freshly made rig (K and R included)."""
    start = time.perf_counter()
    rig = geometry.pano_rig(8, 90.0, 512, 512)
    for height, width in geometry.unet_level_sizes(rig.height, rig.width):
        geometry.build_level_plan(rig, height, width)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    comfy_host.import_pack()
    geometry = importlib.import_module(f"{comfy_host.PACK_MODULE}.geometry")
    times = [build_all_levels(geometry) for _ in range(args.runs)]
    levels = geometry.unet_level_sizes(512, 512)
    print(f"sampling plans, 8 views x 512 px, levels {', '.join(f'{h}x{w}' for h, w in levels)} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"first run {times[0] * 1000:.1f} ms; median of {args.runs}: {statistics.median(times) * 1000:.1f} ms "
          f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})")


if __name__ == "__main__":
    main()
