"""The benchmark's markdown table (``bench/caa_speed.py``; ``--from-json`` prints it from a saved run)."""
from __future__ import annotations

import statistics

def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def table(lines: list, results: list, columns: list):
    """Appends a markdown table's head (one column per result) to ``lines``; returns ``row(name, fn)``, which
    appends the row of ``fn(result)`` ("–" where a number is missing)."""
    lines += ["| | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]

    def row(name, fn):
        cells = []
        for r in results:
            try:
                cells.append(fn(r))
            except (KeyError, ZeroDivisionError):
                cells.append("–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    return row


def report(results: list, machine_line: str, args) -> str:
    lines = [f"Machine: {machine_line}; load average (1/5/15 min) {args.load}",
             f"Model: SD2-base UNet in ComfyUI ({results[0]['unet_parameters'] / 1e6:.0f} M parameters, random "
             f"weights, float32) + 9 CAA blocks ({results[0]['caa_parameters'] / 1e6:.0f} M), {args.views} views "
             f"of a 90° pano ring, one forward of batch {args.views} (cond only); medians of {args.repeats} "
             "interleaved rounds.", ""]
    row = table(lines, results, [f"{r['size']} px" for r in results])

    row("UNet forward, plain", lambda r: f"{r['unet_plain_s']:.2f} s")
    row("UNet forward, CAA fast", lambda r: f"{r['unet_fast_s']:.2f} s")
    row("**patched/plain (fast), median of the rounds' ratios**", lambda r: f"**{round_ratios(r, 'fast')}**")
    row("patched/plain estimated from the blocks alone: 1 + CAA fast / plain",
        lambda r: f"{1 + r['caa_fast_s'] / r['unet_plain_s']:.3f}")
    row("first patched forward (builds the plans and the per-run cache)", lambda r: f"{r['cold_fast_s']:.2f} s")
    row("arithmetic floor: 1 + CAA FLOPs / plain UNet FLOPs",
        lambda r: f"{1 + r['flops_caa_fast'] / r['flops_plain']:.3f}")
    row("UNet forward, CAA reference", lambda r: f"{r['unet_reference_s']:.2f} s")
    row("patched/plain (reference), median of the rounds' ratios", lambda r: round_ratios(r, "reference"))
    row("9 CAA blocks alone: fast / reference", lambda r: f"{r['caa_fast_s']:.2f} s / {r['caa_reference_s']:.2f} s")
    row("**speed-up fast vs reference (blocks alone)**",
        lambda r: f"**{r['caa_reference_s'] / r['caa_fast_s']:.2f}×**")
    row("speed-up fast vs reference (UNet overhead: patched − plain)", lambda r: overhead_speedup(r))
    row("**sampling plans, cold build (4 levels)**", lambda r: f"**{r['plan_plans_s']:.3f} s**")
    row("fast path tap tables, cold (4 levels)", lambda r: f"{r['plan_taps_s']:.3f} s")
    row("fast path's per-run cache (positional encodings)", lambda r: gib(r["pe_cache_bytes"]))
    row("peak memory above the loaded model, plain", lambda r: gib(r["memory_plain_bytes"]))
    row("peak memory above the loaded model, CAA fast", lambda r: gib(r["memory_fast_bytes"]))
    row("**peak memory patched/plain (fast)**",
        lambda r: f"**{r['memory_fast_bytes'] / r['memory_plain_bytes']:.3f}**")
    if args.reference_memory:
        row("peak memory, CAA reference", lambda r: gib(r["memory_reference_bytes"]))
    row("CAA's effect on the output: max \\|fast − plain\\| / max \\|plain\\|", lambda r: f"{r['effect_fast']:.2f}")
    row("max \\|fast − reference\\| / max \\|reference − plain\\|", lambda r: f"{r['fast_vs_reference']:.1e}")
    return "\n".join(lines)


def round_ratios(r: dict, config: str) -> str:
    """The median of patched/plain over the rounds (each round runs the configurations back to back), and the
    range."""
    ratios = [p / q for p, q in zip(r[f"unet_{config}_all_s"], r["unet_plain_all_s"])]
    if len(ratios) == 1:
        return f"{ratios[0]:.3f}"
    return f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})"


def overhead_speedup(r: dict) -> str:
    fast, reference = r["unet_fast_s"] - r["unet_plain_s"], r["unet_reference_s"] - r["unet_plain_s"]
    return f"{reference / fast:.2f}×" if fast > 0 else "– (fast overhead within the noise)"
