"""What the depth model's correspondence-aware attention costs inside ComfyUI's SD2 UNet, and its fast path vs
the reference.

Builds, in the real ComfyUI host, an SD2-depth-size UNet (``bench/caa_speed.plain_unet``: the real SD2 config
with 5 input channels, ComfyUI's own ``SD20`` class, random weights, ``concat_keys = ()``: a depth model whose
5th channel comes from 'Depth Conditioning') and the depth CAA (``DepthCAASet``: nine CPBlocks and the key-frame
condition encoders, which stay idle here (no key frames), ``comfy.ops.manual_cast`` layers in their own
ModelPatcher as 'Load MVDiffusion CAA' gives them; every parameter random, the output layers NOT zero, so the
blocks do real work). Then, per view size:

* a scene: m views (12) of a camera turning on the spot inside a cylindrical room (radius 3 m, 90° horizontal
  field of view, yaw steps of 12°), made into a ``SceneCorrespondences`` by ``scenes.scene_correspondences``
  (what 'Depth Correspondences' does: overlaps, neighbours (overlap > 0.3: 7 to 10 per view), the four level
  plans);
* one batched UNet forward (cond only, batch m) through ``BaseModel.apply_model`` with the clone's
  ``transformer_options`` and ``c_concat`` = the (m, 1, h, w) inverse-depth channel (what the host makes of the
  ``noise_concat`` of 'Depth Conditioning'): plain, patched by ``caa/depth_patch.patch_depth_model`` with the fast
  path, and with the reference path (``bench/caa_speed.Bench.forward``). Each patched clone keeps one run cache
  over the whole benchmark (as a sampling run does over its steps); its first forward builds it (reported). The
  UNet's own attention is ComfyUI's ``attention_pytorch`` (set through ``optimized_attention_override``; its
  default on NVIDIA GPUs), unless ``--attention host``: the host's CPU default, sub-quadratic attention, sizes
  its chunks by the free memory and made the plain forward alone peak at ~10.7 GB at 384x512;
* the nine CPBlocks alone, exactly as the patch runs them (``Bench.caa_alone``, random features of the UNet's
  level sizes), fast and reference, and their nine resnets alone: the official resnet inside each CPBlock is
  the same in both paths and the fast path cannot remove it, so subtracting it gives the attention's own
  speed-up, and "resnets alone / plain UNet" is the part of the UNet ratio that they account for;
* FLOPs: the plain forward's counted by ``torch.utils.flop_counter``, the CPBlocks' (fast) from their formula:
  the arithmetic floor of the UNet ratio.

The six configurations are interleaved round by round (background load hits them alike); times are medians over
the rounds and every ratio is the median of the rounds' own ratios (with its range in the table). Targets (issue
11): depth-CAA UNet / plain UNet <= 1.15, fast vs reference >= 3x; the table says whether they are met. Prints a
markdown table (with the machine and the load average) and writes the raw numbers as JSON (``--json``; by
default under ``bench/results/`` except with ``--quick``). Usage::

    .venv/bin/python bench/depth_caa_speed.py [--sizes 192x256 384x512] [--repeats 3] [--device auto|cpu|cuda]
    .venv/bin/python bench/depth_caa_speed.py --quick      # 192x256, 1 round: a smoke check
    .venv/bin/python bench/depth_caa_speed.py --no-reference-at 384x512   # the reference where it fits (< 8 GB)

Performance is measured here only; the test suite checks equivalence, never time.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import math
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from caa_speed import CONFIGS, CONTEXT_TOKENS, Bench, counted_flops, import_host, init_parameters, load_average, \
    log, machine, plain_unet, synchronize  # noqa: E402
from report import overhead_speedup, round_ratios, table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO, TARGET_SPEEDUP = 1.15, 3.0  # issue 11: patched / plain UNet forward, CPBlocks fast vs reference
ATTENTION = {"pytorch": "ComfyUI's attention_pytorch (as --use-pytorch-cross-attention)",
             "host": "the host's default for the device"}


# ---- the scene ----------------------------------------------------------------------------------------------
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


# ---- the models -------------------------------------------------------------------------------------------
def pytorch_attention(func, *args, **kwargs):
    """ComfyUI's ``optimized_attention_override``: its ``attention_pytorch`` (``--use-pytorch-cross-attention``)."""
    from comfy.ldm.modules.attention import attention_pytorch

    return attention_pytorch(*args, **kwargs)


def depth_models(mm, attention: str, seed: int = 0, dtype=torch.float32) -> dict:
    """The plain SD2-depth-size UNet (ModelPatcher; ``attention`` "pytorch": its attention overridden through the
    transformer options, which the patched clones copy) and the random depth CAA in its own ModelPatcher, built
    once for all sizes."""
    import comfy.model_patcher
    import comfy.ops

    from comfyui_mvdiffusion.caa.depth_blockset import DepthCAASet

    unet, unet_parameters = plain_unet(mm, seed, dtype, in_channels=5)
    unet.model.concat_keys = ()  # a depth model: the 5th channel is the conditioning's noise_concat
    if attention == "pytorch":
        unet.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = pytorch_attention
    caa = DepthCAASet(operations=comfy.ops.manual_cast, dtype=dtype).eval()
    init_parameters(caa, seed + 1)
    blocks = [caa.cp_blocks_mid, *caa.cp_blocks_encoder, *caa.cp_blocks_decoder]
    return {"unet": unet, "unet_parameters": unet_parameters, "caa": caa,
            "caa_parameters": sum(p.numel() for b in blocks for p in b.parameters()),
            "caa_patcher": comfy.model_patcher.ModelPatcher(caa, load_device=mm.get_torch_device(),
                                                            offload_device=mm.unet_offload_device())}


class DepthBench(Bench):
    """``caa_speed.Bench`` for the depth model: the plain UNet, the clones patched by ``patch_depth_model`` (fast,
    reference) on the turning-camera scene, and the UNet's inputs (with the depth channel) for one view size."""

    def __init__(self, mm, models: dict, height: int, width: int, views: int, seed: int = 0, dtype=torch.float32):
        from comfyui_mvdiffusion.caa.depth_patch import patch_depth_model
        from comfyui_mvdiffusion.geometry.depth_condition import inverse_depth_condition
        from comfyui_mvdiffusion.scenes import SceneFrames, scene_correspondences

        self.mm, self.views, self.dtype, self.device = mm, views, dtype, mm.get_torch_device()
        self.plain = models["unet"]
        cameras, depths = turning_camera_scene(views, height, width)
        start = time.perf_counter()
        self.scene = scene_correspondences(SceneFrames(depths, cameras))
        self.scene_s = time.perf_counter() - start
        self.patched = {impl: patch_depth_model(self.plain, models["caa"], self.scene, weights=models["caa_patcher"],
                                                implementation=impl, free_memory=mm.get_free_memory)
                        for impl in ("fast", "reference")}
        for impl in self.patched:  # the benchmark is one long run (a sampling run keeps its cache as long)
            self.patch(impl).begin_run()
        gen = torch.Generator().manual_seed(seed + 2)
        self.x = torch.randn(views, 4, height // 8, width // 8, generator=gen)
        self.sigma = torch.full((views,), 1.0)
        self.context = torch.randn(views, CONTEXT_TOKENS, 1024, generator=gen)
        self.concat = inverse_depth_condition(depths)[:, None]  # (m, 1, h, w), as Depth Conditioning's noise_concat

    @torch.no_grad()
    def resnets_alone(self, features: dict) -> None:
        """The nine CPBlocks' resnets (the part both paths share) on ``features`` (site -> tensor)."""
        patch = self.patch("fast")
        for site in patch.sites:
            patch.block(site).resnet(features[site])
        synchronize(self.device)

    def end(self) -> None:
        for impl in self.patched:
            self.patch(impl).end_run()


def cp_block_flops(bench: DepthBench) -> dict:
    """The nine CPBlocks' arithmetic (FLOPs = 2 multiply-adds): per query pixel and block the fast attention's
    (16 + 2 K / 32) C² (caa/fast.py; K = a view's neighbours) and the resnet's two 3x3 convolutions, 18 C²."""
    patch, attention, resnet = bench.patch("fast"), 0.0, 0.0
    for site in patch.sites:
        plan = bench.scene.plans[patch.level_sizes[site.level]]
        pixels = plan.height * plan.width
        attention += 2 * pixels * sum(16 + 2 * k / 32 for k in plan.num_neighbours.tolist()) * site.width ** 2
        resnet += 2 * bench.views * pixels * 18 * site.width ** 2
    return {"flops_attention": attention, "flops_resnet": resnet}


def per_round(times: dict, fn) -> list:
    """``fn(round's times)`` for every round (each round ran all configurations back to back)."""
    return [fn({c: v[r] for c, v in times.items()}) for r in range(len(next(iter(times.values()))))]


# ---- one size ---------------------------------------------------------------------------------------------
def run_size(args, mm, models: dict, height: int, width: int) -> dict:
    log(f"[{height}x{width}] scene, correspondences and patched clones ...")
    bench = DepthBench(mm, models, height, width, args.views)
    counts = [len(nb) for nb in bench.scene.neighbours]
    features = bench.caa_features()
    skip = args.no_reference or f"{height}x{width}" in args.no_reference_at
    unet_configs = [c for c in CONFIGS if c != "reference" or not skip]
    runs = {f"unet_{c}": (c, functools.partial(bench.forward, c)) for c in unet_configs}
    runs.update({f"caa_{c}": (c, functools.partial(bench.caa_alone, c, features)) for c in unet_configs[1:]})
    runs["caa_resnet"] = ("fast", functools.partial(bench.resnets_alone, features))

    cold, flops = {}, cp_block_flops(bench)
    for name, (config, fn) in runs.items():  # warm-up (the patched forwards build the run cache)
        bench.load(config)
        start = time.perf_counter()
        if name == "unet_plain":
            flops["flops_plain"] = counted_flops(fn)
        else:
            fn()
        cold[name] = time.perf_counter() - start
        log(f"[{height}x{width}] warm-up {name}: {cold[name]:.2f} s")
    times, outputs = {name: [] for name in runs}, {}
    for r in range(args.repeats):
        for name, (config, fn) in runs.items():
            bench.load(config)
            start = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - start)
            if name.startswith("unet_") and r == 0:
                outputs[config] = out
            elif name == "unet_plain" and not torch.equal(out, outputs["plain"]):
                raise RuntimeError("the plain UNet's output changed after a patched run: a patch leaked")
        log(f"[{height}x{width}] round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in runs))

    res = {"height": height, "width": width, "views": args.views, "neighbours_min": min(counts),
           "neighbours_max": max(counts), "unet_parameters": models["unet_parameters"],
           "caa_parameters": models["caa_parameters"], "scene_s": bench.scene_s, **flops,
           "encoding_bytes": sum(entry[1].numel() * entry[1].element_size()
                                 for entry in bench.patch("fast").run_cache.encodings.values())}
    res.update({f"{n}_s": statistics.median(v) for n, v in times.items()})
    res.update({f"{n}_all_s": v for n, v in times.items()})
    res.update({f"cold_{n}_s": v for n, v in cold.items()})
    median = lambda fn: statistics.median(per_round(times, fn))  # noqa: E731
    res["ratio_fast"] = median(lambda t: t["unet_fast"] / t["unet_plain"])
    res["resnet_share"] = median(lambda t: t["caa_resnet"] / t["unet_plain"])
    res["blocks_fast_share"] = median(lambda t: t["caa_fast"] / t["unet_plain"])
    for config in unet_configs[1:]:
        res[f"effect_{config}"] = float((outputs[config] - outputs["plain"]).abs().max()
                                        / outputs["plain"].abs().max())
    if "reference" in outputs:
        res["ratio_reference"] = median(lambda t: t["unet_reference"] / t["unet_plain"])
        res["speedup_blocks"] = median(lambda t: t["caa_reference"] / t["caa_fast"])
        res["speedup_attention"] = median(lambda t: (t["caa_reference"] - t["caa_resnet"])
                                          / (t["caa_fast"] - t["caa_resnet"]))
        res["fast_vs_reference"] = float((outputs["fast"] - outputs["reference"]).abs().max()
                                         / (outputs["reference"] - outputs["plain"]).abs().max())
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process so far
    bench.end()
    return res


def seconds(r: dict, key: str) -> str:
    return f"{r[key]:.2f} s" if key in r else "not run"


def verdict(value: float, target: float, at_most: bool) -> str:
    met = value <= target if at_most else value >= target
    return f"target {'≤' if at_most else '≥'} {target:g}: {'met' if met else '**not met**'}"


def report(results: list, machine_line: str, args) -> str:
    r0 = results[0]
    lines = [f"Machine: {machine_line}; load average (1/5/15 min) {args.load}",
             f"{args.views} views of a camera turning in a cylindrical room; SD2-depth-size UNet in ComfyUI (SD20, "
             f"5 input channels, {r0['unet_parameters'] / 1e6:.0f} M parameters) + 9 depth CPBlocks "
             f"({r0['caa_parameters'] / 1e6:.0f} M), random weights, float32; one UNet forward of batch {args.views}"
             f" (cond only, depth channel as c_concat), UNet attention: {ATTENTION[args.attention]}; medians of "
             f"{args.repeats} interleaved rounds.", ""]
    row = table(lines, results, [f"{r['height']}×{r['width']}" for r in results])

    row("neighbours per view", lambda r: f"{r['neighbours_min']}–{r['neighbours_max']}")
    row("UNet forward: plain / depth CAA fast / depth CAA reference",
        lambda r: f"{r['unet_plain_s']:.2f} s / {r['unet_fast_s']:.2f} s / {seconds(r, 'unet_reference_s')}")
    row("**depth-CAA UNet / plain UNet, fast** (median of the rounds' ratios, range)",
        lambda r: f"**{round_ratios(r, 'fast')}**; {verdict(r['ratio_fast'], TARGET_RATIO, True)}")
    row("depth-CAA UNet / plain UNet, reference", lambda r: round_ratios(r, "reference"))
    row("of the fast ratio's excess over 1: the nine resnets (resnets alone / plain UNet)",
        lambda r: f"{r['resnet_share']:.3f} of {r['ratio_fast'] - 1:.3f}")
    row("fast ratio without the resnets (ratio − resnets / plain)",
        lambda r: f"{r['ratio_fast'] - r['resnet_share']:.3f}")
    row("1 + 9 CPBlocks fast alone / plain UNet (the blocks' own share)", lambda r: f"{1 + r['blocks_fast_share']:.3f}")
    row("9 depth CPBlocks alone: fast / reference",
        lambda r: f"{r['caa_fast_s']:.2f} s / {seconds(r, 'caa_reference_s')}")
    row("9 resnets alone (in both paths)", lambda r: f"{r['caa_resnet_s']:.2f} s")
    row("**speed-up fast vs reference (CPBlocks)**",
        lambda r: f"**{r['speedup_blocks']:.2f}×**; {verdict(r['speedup_blocks'], TARGET_SPEEDUP, False)}")
    row("speed-up of the attention alone (resnets subtracted)", lambda r: f"{r['speedup_attention']:.2f}×")
    row("speed-up fast vs reference of the UNet overhead (patched − plain)", overhead_speedup)
    row("arithmetic floor: 1 + CPBlock FLOPs (fast) / plain UNet FLOPs",
        lambda r: f"{1 + (r['flops_attention'] + r['flops_resnet']) / r['flops_plain']:.3f}")
    row("of which the resnets: FLOPs / plain UNet FLOPs", lambda r: f"{r['flops_resnet'] / r['flops_plain']:.3f}")
    row("first patched forward, fast (builds the run cache: key terms, encodings, folded weights)",
        lambda r: f"{r['cold_unet_fast_s']:.2f} s")
    row("key encodings kept for the run", lambda r: f"{r['encoding_bytes'] / 2**20:.0f} MiB")
    row("Depth Correspondences (overlaps, neighbours, 4 level plans), cold", lambda r: f"{r['scene_s']:.2f} s")
    row("CAA's effect on the output: max \\|fast − plain\\| / max \\|plain\\|", lambda r: f"{r['effect_fast']:.2f}")
    row("max \\|fast − reference\\| / max \\|reference − plain\\| (UNet output)",
        lambda r: f"{r['fast_vs_reference']:.1e}")
    row("peak resident memory of the process so far", lambda r: f"{r['peak_rss_bytes'] / 2**30:.2f} GiB")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["192x256", "384x512"], help="view sizes HxW in pixels")
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (medians)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quick", action="store_true", help="smoke check: 192x256, 1 round, no JSON by default")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference path")
    parser.add_argument("--no-reference-at", nargs="+", default=[], metavar="HxW",
                        help="sizes at which to skip the reference path (e.g. where it does not fit in memory: at "
                        "384x512 it adds ~2.8 GB to the process's peak, which then passes 9.5 GB)")
    parser.add_argument("--attention", choices=["pytorch", "host"], default="pytorch",
                        help="the UNet's own attention: ComfyUI's attention_pytorch (its default on NVIDIA GPUs; "
                        "memory-efficient SDPA on CPU) or the host's default for the device (on CPU sub-quadratic, "
                        "which sizes its chunks by the free memory: at 384x512 the plain forward alone peaked at "
                        "~10.7 GB on a 23 GB machine)")
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
    models = depth_models(mm, args.attention)
    results = []
    for h, w in sizes:
        results.append(run_size(args, mm, models, h, w))
        gc.collect()
    args.load = f"{load_before} before, {load_average()} after the run"
    print(report(results, machine_line, args))
    path = args.json or (None if args.quick else
                         RESULTS / f"depth-caa-unet-{mm.get_torch_device().type}-{torch.get_num_threads()}threads-"
                         f"{datetime.date.today().isoformat()}.json")
    if path is not None:
        path.write_text(json.dumps({"machine": machine_line, "load": args.load, "repeats": args.repeats,
                                    "views": args.views, "attention": args.attention, "results": results}, indent=1))
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
