"""What the depth correspondence-aware attention blocks cost: fast path vs reference, and against the SD2 UNet.

The depth UNet patch does not exist yet, so this measures the nine depth ``CPBlock``s alone (issue 11's block
part) and estimates the UNet-level ratio from them, as ``bench/caa_speed.py`` does with "1 + CAA fast / plain":

* a scene: m views (12) of a camera turning on the spot inside a cylindrical room (radius 3 m, 90° horizontal
  field of view, yaw steps of 12°): depths, correspondences, neighbours (overlap > 0.3: 7 to 10 per view) and
  the depth level plans of every UNet level, with the package's own geometry (``geometry/depth_plan.py``);
* the nine depth CPBlocks at the SD2 sites (widths 320, 640, 1280, 1280 down, 1280 mid, 1280, 1280, 640, 320 up
  at their levels), ``torch.nn`` layers, every parameter random (output layers NOT zero, so the blocks do real
  work), on random features of batch m: the reference (``DepthCPBlock.forward``), the fast path
  (``caa.depth_fast.depth_cp_fast_forward`` with the per-run terms built once: tap tables and key pairs per
  level, folded weights per block, key encodings per level and width) and the nine resnets alone (the part
  both share, so that the attention's own speed-up can be read off);
* one plain SD2-base UNet forward in ComfyUI (``bench/caa_speed.plain_unet``: the real SD2-base config, random
  weights) of batch m at the latent size, cond only. The official depth UNet has 5 input channels; ComfyUI has
  no SD2-depth class, so the 4-channel SD2-base UNet stands in: they differ only in ``conv_in``'s input
  channels (one 3x3 convolution to 320 channels at the latent size: < 0.1 % of the forward).

The configurations are interleaved round by round (background load hits them alike); times are medians over the
rounds and the ratios are medians of the rounds' own ratios. Prints a markdown table (with the machine) and
writes the raw numbers as JSON (``--json``; by default under ``bench/results/`` except with ``--quick``).
Usage::

    .venv/bin/python bench/depth_caa_speed.py [--sizes 192x256 384x512] [--repeats 3] [--device auto|cpu|cuda]
    .venv/bin/python bench/depth_caa_speed.py --quick      # 192x256, 1 round: a smoke check

Performance is measured here only; the test suite checks equivalence, never time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from caa_speed import CONTEXT_TOKENS, counted_flops, import_host, init_parameters, load_average, log, machine, \
    plain_unet, synchronize  # noqa: E402
from report import table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# the nine CPBlock sites of SD2: (width, UNet level), down blocks, mid block, up blocks
SITES = [(320, 0), (640, 1), (1280, 2), (1280, 3), (1280, 3), (1280, 3), (1280, 2), (640, 1), (320, 0)]
CONFIGS = ("plain", "fast", "reference", "resnet")


# ---- the scene and its plans --------------------------------------------------------------------------------
def turning_camera_scene(views: int, height: int, width: int, radius: float = 3.0, step_degrees: float = 12.0):
    """A camera at the axis of a cylindrical room turning by ``step_degrees`` (yaw) per view, 90° horizontal
    field of view: (SceneCameras, depths (m, H, W) float32 metres; the depth of a ray (x, y, 1) is
    radius / sqrt(1 + x^2), whatever the yaw)."""
    from comfyui_mvdiffusion.geometry.scene import SceneCameras

    f = (width / 2) / math.tan(math.radians(45))
    K = torch.tensor([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]]).repeat(views, 1, 1)
    yaw = torch.deg2rad(step_degrees * torch.arange(views, dtype=torch.float64))
    c2w = torch.eye(4, dtype=torch.float64).repeat(views, 1, 1)
    c2w[:, 0, 0], c2w[:, 0, 2], c2w[:, 2, 0], c2w[:, 2, 2] = yaw.cos(), yaw.sin(), -yaw.sin(), yaw.cos()
    ray_x = (torch.arange(width) - (width - 1) / 2) / f
    depths = (radius / torch.sqrt(1 + ray_x ** 2)).expand(views, height, width).contiguous()
    return SceneCameras(K, c2w.float(), height, width), depths


def level_plans(views: int, height: int, width: int) -> list:
    """The depth plans of the four UNet levels (strides 8, 16, 32, 64) of the scene's views."""
    from comfyui_mvdiffusion.geometry.depth_correspondences import (depth_correspondences, depth_neighbours,
                                                                     depth_overlap)
    from comfyui_mvdiffusion.geometry.depth_plan import build_depth_level_plan

    cameras, depths = turning_camera_scene(views, height, width)
    corr = depth_correspondences(depths, cameras)
    neighbours = depth_neighbours(depth_overlap(depths, cameras))
    return [build_depth_level_plan(corr, depths, neighbours, height // s, width // s) for s in (8, 16, 32, 64)]


# ---- the blocks -------------------------------------------------------------------------------------------
class DepthBlocks:
    """The nine CPBlocks, their features and the fast path's per-run terms for one view size."""

    def __init__(self, plans: list, views: int, device, seed: int = 1, dtype=torch.float32):
        from comfyui_mvdiffusion.caa.depth_block import DepthCPBlock
        from comfyui_mvdiffusion.caa.depth_fast import depth_centred_encoding, depth_key_terms
        from comfyui_mvdiffusion.caa.fast import fold_weights
        from comfyui_mvdiffusion.caa.run_cache import CAA_WORK_BYTES

        self.plans = [p.to(device) for p in plans]
        self.blocks = [DepthCPBlock(width, device=device, dtype=dtype).eval() for width, _ in SITES]
        with torch.no_grad():
            for k, block in enumerate(self.blocks):
                init_parameters(block, seed + k)
        gen = torch.Generator().manual_seed(seed + 100)
        self.features = [torch.randn(views, width, plans[level].height, plans[level].width, generator=gen)
                         .to(device, dtype) for width, level in SITES]
        self.work_bytes = CAA_WORK_BYTES
        start = time.perf_counter()
        self.terms = {level: depth_key_terms(plans[level], device, dtype) for level in {lv for _, lv in SITES}}
        self.encodings = {}
        for block, (width, level) in zip(self.blocks, SITES):
            if (level, width) not in self.encodings:
                self.encodings[(level, width)] = depth_centred_encoding(self.terms[level],
                                                                        block.attn1.pe.freq_bands, dtype)
        self.folded = [fold_weights(block.attn1, device, dtype) for block in self.blocks]
        synchronize(device)
        self.cold_terms_s = time.perf_counter() - start
        self.encoding_bytes = sum(t.numel() * t.element_size() for t in self.encodings.values())

    @torch.no_grad()
    def run(self, config: str) -> list:
        """The nine blocks of ``config`` ("fast", "reference" or "resnet": the resnets alone) on their features."""
        from comfyui_mvdiffusion.caa.depth_fast import depth_cp_fast_forward

        outs = []
        for k, (block, x, (width, level)) in enumerate(zip(self.blocks, self.features, SITES)):
            plan = self.plans[level]
            if config == "fast":
                outs.append(depth_cp_fast_forward(block, x, plan, folded=self.folded[k], max_bytes=self.work_bytes,
                                                  pe=self.encodings[(level, width)], terms=self.terms[level]))
            elif config == "reference":
                outs.append(block(x, plan))
            else:
                outs.append(block.resnet(x))
        synchronize(x.device)
        return outs


def cp_block_flops(plans: list, views: int) -> dict:
    """The nine CPBlocks' arithmetic (FLOPs = 2 multiply-adds): per query pixel and block the fast attention's
    (16 + 2 K / 32) C² (caa/fast.py; K = a view's neighbours) and the resnet's two 3x3 convolutions, 18 C²."""
    attention = resnet = 0.0
    for width, level in SITES:
        plan = plans[level]
        pixels = plan.height * plan.width
        attention += 2 * pixels * sum(16 + 2 * k / 32 for k in plan.num_neighbours.tolist()) * width ** 2
        resnet += 2 * views * pixels * 18 * width ** 2
    return {"flops_attention": attention, "flops_resnet": resnet}


# ---- one size ---------------------------------------------------------------------------------------------
def run_size(args, mm, unet, height: int, width: int) -> dict:
    views, device = args.views, mm.get_torch_device()
    log(f"[{height}x{width}] scene, plans and blocks ...")
    start = time.perf_counter()
    plans = level_plans(views, height, width)
    plans_s = time.perf_counter() - start
    blocks = DepthBlocks(plans, views, device)
    counts = plans[0].num_neighbours.tolist()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(views, 4, height // 8, width // 8, generator=gen).to(device)
    sigma, context = torch.full((views,), 1.0).to(device), torch.randn(views, CONTEXT_TOKENS, 1024, generator=gen)
    context = context.to(device)

    @torch.no_grad()
    def plain():
        out = unet.model.apply_model(x, sigma, c_crossattn=context, transformer_options={})
        synchronize(device)
        return out

    configs = [c for c in CONFIGS if c != "reference" or not args.no_reference]
    run = {c: (plain if c == "plain" else (lambda c=c: blocks.run(c))) for c in configs}
    outputs = {c: run[c]() for c in configs if c != "plain"}  # warm-up (and the results compared below)
    flops = {"flops_plain": counted_flops(plain), **cp_block_flops(plans, views)}
    times = {c: [] for c in configs}
    for r in range(args.repeats):
        for config in configs:
            start = time.perf_counter()
            run[config]()
            times[config].append(time.perf_counter() - start)
        log(f"[{height}x{width}] round {r + 1}: " + ", ".join(f"{c} {times[c][-1]:.2f} s" for c in configs))

    res = {"height": height, "width": width, "views": views, "neighbours_min": min(counts),
           "neighbours_max": max(counts), "plans_s": plans_s, "cold_terms_s": blocks.cold_terms_s,
           "encoding_bytes": blocks.encoding_bytes, **flops}
    res.update({f"{c}_s": statistics.median(v) for c, v in times.items()})
    res.update({f"{c}_all_s": v for c, v in times.items()})
    res["unet_ratio_estimate"] = statistics.median(1 + f / p for f, p in zip(times["fast"], times["plain"]))
    if "reference" in outputs:
        res["speedup_blocks"] = statistics.median(r / f for r, f in zip(times["reference"], times["fast"]))
        res["speedup_attention"] = statistics.median((r - n) / (f - n) for r, f, n in
                                                     zip(times["reference"], times["fast"], times["resnet"]))
        res["max_relative_error"] = max(float((f - r).abs().max() / (r - x).abs().max()) for f, r, x in
                                        zip(outputs["fast"], outputs["reference"], blocks.features))
    return res


def report(results: list, machine_line: str, args) -> str:
    lines = [f"Machine: {machine_line}; load average (1/5/15 min) {args.load}",
             f"{args.views} views of a camera turning in a cylindrical room; the nine depth CPBlocks (random weights, "
             "float32) vs one plain SD2-base UNet forward (4-channel stand-in for the 5-channel depth UNet) of batch "
             f"{args.views}, cond only; medians of {args.repeats} interleaved rounds.", ""]
    row = table(lines, results, [f"{r['height']}×{r['width']}" for r in results])

    row("neighbours per view", lambda r: f"{r['neighbours_min']}–{r['neighbours_max']}")
    row("UNet forward, plain SD2", lambda r: f"{r['plain_s']:.2f} s")
    row("9 depth CPBlocks: fast / reference", lambda r: f"{r['fast_s']:.2f} s / {r['reference_s']:.2f} s")
    row("9 resnets alone (in both)", lambda r: f"{r['resnet_s']:.2f} s")
    row("**speed-up fast vs reference (CPBlocks)**", lambda r: f"**{r['speedup_blocks']:.2f}×**")
    row("speed-up of the attention alone (resnets subtracted)", lambda r: f"{r['speedup_attention']:.2f}×")
    row("**estimated UNet ratio: 1 + CPBlocks fast / plain**", lambda r: f"**{r['unet_ratio_estimate']:.3f}**")
    row("arithmetic floor: 1 + CPBlock FLOPs (fast) / plain UNet FLOPs",
        lambda r: f"{1 + (r['flops_attention'] + r['flops_resnet']) / r['flops_plain']:.3f}")
    row("of which the resnets: FLOPs / plain UNet FLOPs", lambda r: f"{r['flops_resnet'] / r['flops_plain']:.3f}")
    row("per-run terms, cold (taps, key pairs, encodings, folded weights)", lambda r: f"{r['cold_terms_s']:.2f} s")
    row("key encodings kept for the run", lambda r: f"{r['encoding_bytes'] / 2**20:.0f} MiB")
    row("level plans from depths and poses, cold", lambda r: f"{r['plans_s']:.2f} s")
    row("max \\|fast − reference\\| / max \\|reference − x\\| (9 blocks)", lambda r: f"{r['max_relative_error']:.1e}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["192x256", "384x512"], help="view sizes HxW in pixels")
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (medians)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quick", action="store_true", help="smoke check: 192x256, 1 round, no JSON by default")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference path")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 gives per-core ratios "
                        "that a busy shared CPU distorts less (OpenMP barriers stall when cores are taken)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here (default: bench/results/...)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = ["192x256"], 1
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    mm, _ = import_host(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine_line = machine(mm)
    load_before = load_average()
    log(f"{machine_line}; load average {load_before}")
    unet, _ = plain_unet(mm)
    mm.load_models_gpu([unet])
    results = [run_size(args, mm, unet, h, w) for h, w in sizes]
    args.load = f"{load_before} before, {load_average()} after the run"
    print(report(results, machine_line, args))
    path = args.json or (None if args.quick else
                         RESULTS / f"depth-caa-{mm.get_torch_device().type}-{torch.get_num_threads()}threads-"
                         f"{datetime.date.today().isoformat()}.json")
    if path is not None:
        path.write_text(json.dumps({"machine": machine_line, "load": args.load, "repeats": args.repeats,
                                    "views": args.views, "results": results}, indent=1))
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
