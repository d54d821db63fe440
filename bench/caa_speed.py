"""What MVDiffusion's correspondence-aware attention (CAA) costs inside ComfyUI's own SD2-base UNet.

Builds, in the real ComfyUI host, an SD2-base-size UNet (``comfy.supported_models.SD20`` with the real
SD2-base config: 320 channels, mult 1/2/4/4, 2 res blocks, linear transformers, context 1024; ~866 M
parameters) and the nine CAA blocks at the SD2 widths (``CAASet``, ``comfy.ops.manual_cast`` layers in their
own ModelPatcher, as the nodes load them), every parameter initialised explicitly with random values (the CAA
output layers are NOT zero, so the blocks do real work). Then, for m views (8) of each size:

* one batched UNet forward (cond only, batch m) through ``BaseModel.apply_model`` with the clone's
  ``transformer_options``: plain, patched with the fast CAA path, patched with the reference path. The
  configurations are interleaved round by round so that background load hits all of them alike; times are
  medians over the rounds, and the patched/plain ratio is the median of the rounds' own ratios (each round
  runs plain and patched back to back, so slow phases of a shared machine cancel out), with its range;
* the nine CAA blocks alone (``MultiViewPatch.run`` on random features of the UNet's level sizes): fast vs
  reference, the speed-up factor;
* the sampling plans: ``geometry.sampling_plan.build_level_plan`` for all levels (cold), plus the fast path's
  bilinear tap tables (``caa.fast.tap_plan``). Both are built once per run and kept for the run;
* matmul/conv work counted by ``torch.utils.flop_counter`` in the warm-up forwards: the arithmetic floor of
  the patched/plain ratio;
* peak memory above the loaded model, each configuration in a fresh subprocess: on CPU the peak resident set
  (``VmHWM``, reset through ``/proc/self/clear_refs`` after the model is built and loaded), on CUDA
  ``torch.cuda.max_memory_allocated``.

Prints a markdown table (with the machine) that the README quotes. Usage::

    .venv/bin/python bench/caa_speed.py [--sizes 256 512] [--repeats 3] [--device auto|cpu|cuda]
    .venv/bin/python bench/caa_speed.py --quick      # 128 px, 1 round: a smoke check (< 1 min)

Performance is measured here only; the test suite checks equivalence, never time.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import comfy_host  # noqa: E402
from random_weights import init_parameters  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import report  # noqa: E402

# SD2-base (stabilityai/stable-diffusion-2-base) as ComfyUI describes it (model_detection's SD21 entry for a
# diffusers UNet; the same config detect_unet_config reads off the real checkpoint). Checked at run time to be
# detected by ComfyUI as SD20.
SD2_BASE_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": True, "context_dim": 1024, "num_head_channels": 64,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
CONFIGS = ("plain", "fast", "reference")
CONTEXT_TOKENS = 77


# ---- host -------------------------------------------------------------------------------------------------
def import_host(device: str):
    """ComfyUI in this process; the CPU is forced unless a CUDA device is asked for (or 'auto' finds one)."""
    comfy_host.import_host(cpu=device == "cpu" or (device == "auto" and not torch.cuda.is_available()))
    import comfy.model_management as mm

    pack = comfy_host.import_pack()
    if device == "cuda" and mm.get_torch_device().type != "cuda":
        raise RuntimeError(f"--device cuda but ComfyUI picked {mm.get_torch_device()}")
    return mm, pack


def machine(mm) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    try:
        from comfyui_version import __version__ as comfy_version
    except ImportError:
        comfy_version = "?"
    device = mm.get_torch_device()
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"ComfyUI {comfy_version}, device {device}{gpu}")


def load_average() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


# ---- models -----------------------------------------------------------------------------------------------
def plain_unet(mm, seed: int = 0, dtype=torch.float32, **unet_config):
    """ComfyUI's SD2 UNet (SD20; ``unet_config`` overrides, e.g. in_channels=5), random weights: (patcher, params)."""
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.model_detection.model_config_from_unet_config(dict(SD2_BASE_UNET, **unet_config))
    if not isinstance(config, comfy.supported_models.SD20):
        raise RuntimeError(f"ComfyUI detects the SD2 config as {type(config).__name__}, not SD20")
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    init_parameters(model.diffusion_model, seed)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return patcher, sum(p.numel() for p in model.diffusion_model.parameters())


class Bench:
    """The UNet, the CAA blocks and the three configurations (ModelPatchers) for one view size."""

    concat = None  # extra input channels (views, C, h, w) passed as c_concat (the depth model's depth channel)

    def __init__(self, mm, pack, size: int, views: int, seed: int = 0, dtype=torch.float32):
        import comfy.model_patcher
        import comfy.ops

        from comfyui_mvdiffusion.caa.blockset import CAASet
        from comfyui_mvdiffusion.caa.patch import patch_model
        from comfyui_mvdiffusion.geometry import pano_rig

        self.mm, self.size, self.views, self.dtype = mm, size, views, dtype
        self.device = mm.get_torch_device()
        offload = mm.unet_offload_device()
        self.plain, self.unet_parameters = plain_unet(mm, seed, dtype)

        self.caa = CAASet(operations=comfy.ops.manual_cast, dtype=dtype).eval()
        init_parameters(self.caa, seed + 1)
        self.caa_parameters = sum(p.numel() for p in self.caa.parameters())
        self.caa_patcher = comfy.model_patcher.ModelPatcher(self.caa, load_device=self.device, offload_device=offload)
        self.rig = pano_rig(views, 90, size, size)
        self.patched = {impl: patch_model(self.plain, self.caa, self.rig, weights=self.caa_patcher,
                                          implementation=impl, free_memory=mm.get_free_memory)
                        for impl in ("fast", "reference")}
        for impl in self.patched:  # the benchmark is one long run (a sampling run keeps its cache as long)
            self.patch(impl).begin_run()
        gen = torch.Generator().manual_seed(seed + 2)
        self.x = torch.randn(views, 4, size // 8, size // 8, generator=gen)
        self.sigma = torch.full((views,), 1.0)
        self.context = torch.randn(views, CONTEXT_TOKENS, 1024, generator=gen)

    def patcher(self, config: str):
        return self.plain if config == "plain" else self.patched[config]

    def patch(self, config: str):
        return self.patched[config].model_options["transformer_options"]["patches"]["input_block_patch_after_skip"][0]

    def load(self, config: str):
        self.mm.load_models_gpu([self.patcher(config)])

    @torch.no_grad()
    def forward(self, config: str) -> torch.Tensor:
        """One UNet forward of the m views (cond only) with ``config`` loaded."""
        patcher = self.patcher(config)
        options = patcher.model_options.get("transformer_options", {})
        x, sigma, ctx = (t.to(self.device) for t in (self.x, self.sigma, self.context))
        out = patcher.model.apply_model(x, sigma, c_concat=None if self.concat is None else self.concat.to(self.device),
                                        c_crossattn=ctx, transformer_options=options)
        synchronize(self.device)
        return out

    @torch.no_grad()
    def caa_alone(self, config: str, features: dict) -> None:
        """The nine CAA blocks of ``config`` on ``features`` (site -> tensor), exactly as the patch runs them."""
        patch = self.patch(config)
        for site in patch.sites:
            patch.run(site, features[site])
        synchronize(self.device)

    def caa_features(self, seed: int = 3) -> dict:
        gen = torch.Generator().manual_seed(seed)
        patch = self.patch("fast")
        return {site: torch.randn(self.views, site.width, *patch.level_sizes[site.level], generator=gen)
                .to(self.device, self.dtype) for site in patch.sites}


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def counted_flops(fn, *args) -> float:
    """Matmul/conv/attention FLOPs of one call (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return float(counter.get_total_flops())


def caa_flops(bench) -> float:
    """The fast path's arithmetic per UNet forward: per query pixel and block 14 C² (query/output projections,
    feed-forward) + 2 C² (r_h = W̃_k,hᵀ q_h and the value projection) + 2 K C²/32 (the per-query logits and
    weighted key sums), as multiply-adds; times 2 for FLOPs."""
    patch = bench.patch("fast")
    keys = 9 * bench.rig.max_neighbours
    macs = 0
    for site in patch.sites:
        h, w = patch.level_sizes[site.level]
        macs += bench.views * h * w * (16 + 2 * keys / 32) * site.width ** 2
    return 2.0 * macs


# ---- sampling plans ---------------------------------------------------------------------------------------
def plan_build_times(rig, size: int, repeats: int) -> dict:
    """Cold build of the level plans (all 4 levels) and of the fast path's tap tables, median of ``repeats``."""
    from comfyui_mvdiffusion.caa.fast import tap_plan
    from comfyui_mvdiffusion.geometry import build_level_plan, unet_level_sizes

    sizes = unet_level_sizes(size, size)
    plans_t, taps_t = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        plans = [build_level_plan(rig, h, w) for h, w in sizes]
        plans_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        for plan in plans:
            tap_plan(plan)
        taps_t.append(time.perf_counter() - start)
    return {"plans": statistics.median(plans_t), "taps": statistics.median(taps_t)}


# ---- peak memory (one fresh process per configuration) ------------------------------------------------------
def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def child_memory(args) -> dict:
    mm, pack = import_host(args.device)
    torch.manual_seed(0)
    bench = Bench(mm, pack, args.size, args.views)
    bench.load(args.config)
    gc.collect()
    device = bench.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
        base = _status_kib("VmRSS") * 1024
    for _ in range(args.memory_forwards):
        bench.forward(args.config)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _status_kib("VmHWM") * 1024
    return {"config": args.config, "size": args.size, "peak_bytes": peak - base, "base_bytes": base}


def measure_memory(args, size: int, config: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-memory", config, "--size", str(size),
           "--views", str(args.views), "--device", args.device, "--memory-forwards", str(args.memory_forwards)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"memory child for {config} at {size} px printed no result:\n{out.stdout}\n{out.stderr}")


# ---- one size ---------------------------------------------------------------------------------------------
def run_size(args, mm, pack, size: int) -> dict:
    log(f"[{size} px] building the SD2-base UNet and the CAA blocks ...")
    bench = Bench(mm, pack, size, args.views)
    res = {"size": size, "views": args.views, "unet_parameters": bench.unet_parameters,
           "caa_parameters": bench.caa_parameters}
    res.update({f"plan_{k}_s": v for k, v in plan_build_times(bench.rig, size, max(3, args.repeats)).items()})

    configs = [c for c in CONFIGS if c != "reference" or (not args.no_reference and not args.quick)]
    flops, cold = {}, {}
    outputs = {}
    for config in configs:  # warm-up rounds (the patched ones build and cache the plans)
        bench.load(config)
        start = time.perf_counter()
        if config == "plain":
            flops[config] = counted_flops(bench.forward, config)
        else:
            bench.forward(config)
        cold[config] = time.perf_counter() - start
        log(f"[{size} px] warm-up {config}: {cold[config]:.2f} s")
    times = {c: [] for c in configs}
    for r in range(args.repeats):
        for config in configs:
            bench.load(config)
            start = time.perf_counter()
            out = bench.forward(config)
            times[config].append(time.perf_counter() - start)
            if r == 0:
                outputs[config] = out
            elif config == "plain" and not torch.equal(out, outputs["plain"]):
                raise RuntimeError("the plain UNet's output changed after a patched run: a patch leaked")
        log(f"[{size} px] round {r + 1}: " + ", ".join(f"{c} {times[c][-1]:.2f} s" for c in configs))
    for config in configs[1:]:
        res[f"effect_{config}"] = float((outputs[config] - outputs["plain"]).abs().max()
                                        / outputs["plain"].abs().max())
    if "reference" in outputs:
        res["fast_vs_reference"] = float((outputs["fast"] - outputs["reference"]).abs().max()
                                         / (outputs["reference"] - outputs["plain"]).abs().max())
    del outputs
    res.update({f"unet_{c}_s": statistics.median(v) for c, v in times.items()})
    res.update({f"unet_{c}_all_s": v for c, v in times.items()})
    res.update({f"cold_{c}_s": v for c, v in cold.items()})
    res["pe_cache_bytes"] = sum(entry[1].numel() * entry[1].element_size()
                                for entry in bench.patch("fast").run_cache.encodings.values())
    res["flops_plain"] = flops["plain"]
    res["flops_caa_fast"] = caa_flops(bench)

    # the nine blocks alone
    features = bench.caa_features()
    caa_configs = ["fast"] + ([] if args.no_reference else ["reference"])
    caa_times = {c: [] for c in caa_configs}
    for config in caa_configs:
        bench.load(config)
        bench.caa_alone(config, features)  # warm
    for _ in range(args.repeats):
        for config in caa_configs:
            bench.load(config)
            caa_times[config].append(timed(bench.caa_alone, config, features))
    res.update({f"caa_{c}_s": statistics.median(v) for c, v in caa_times.items()})
    del features, bench
    gc.collect()

    if not args.no_memory:
        for config in [c for c in CONFIGS if c == "fast" or c == "plain" or args.reference_memory]:
            log(f"[{size} px] peak memory of {config} (fresh process) ...")
            res[f"memory_{config}_bytes"] = measure_memory(args, size, config)["peak_bytes"]
    return res


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="view sizes in pixels (square)")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (medians)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: 128 px, 1 round, no reference UNet forward, no memory subprocesses")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference CAA path")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--reference-memory", action="store_true", help="also measure the reference path's memory")
    parser.add_argument("--memory-forwards", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the raw numbers to this file")
    parser.add_argument("--from-json", type=Path, help="print the table of a run saved with --json")
    parser.add_argument("--child-memory", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_memory:
        args.config = args.child_memory
        print(json.dumps(child_memory(args)), flush=True)
        return 0
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        for key in ("load", "repeats", "views", "reference_memory"):
            if saved.get(key) is not None:
                setattr(args, key, saved[key])
        args.load = args.load or "not recorded"
        print(report(saved["results"], saved["machine"], args))
        return 0
    if args.quick:
        args.sizes, args.repeats, args.no_memory = [128], 1, True
    mm, pack = import_host(args.device)
    machine_line = machine(mm)
    args.load_before = load_average()
    log(f"{machine_line}; load average {args.load_before}")
    results = [run_size(args, mm, pack, size) for size in args.sizes]
    args.load = f"{args.load_before} before, {load_average()} after the run"
    print(report(results, machine_line, args))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line, "load": args.load, "repeats": args.repeats,
                                         "views": args.views, "reference_memory": args.reference_memory,
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
