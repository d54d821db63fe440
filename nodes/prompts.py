"""The views' prompts as one CONDITIONING: one row shared by all views (exactly CLIP Text Encode's), or one row
per view in view order."""
from __future__ import annotations

import math

import torch
from comfy_api.latest import io

from .io_types import CATEGORY, Cameras


def view_prompts(text: str, num_views: int) -> list[str]:
    """One prompt per view from one line (repeated) or one line per view; blank lines are ignored."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) <= 1:
        return [lines[0] if lines else ""] * num_views
    if len(lines) != num_views:
        raise ValueError(f"Panorama Prompts: {len(lines)} prompt lines for {num_views} camera views: write one line "
                         f"(used for every view) or exactly {num_views} lines (one per view, in view order)")
    return lines


def stack_tokens(conds: list[torch.Tensor]) -> torch.Tensor:
    """Stack [1, T_i, C] encodings into [n, T, C]; shorter ones are repeated up to the least common multiple
    of the lengths, which leaves cross-attention unchanged (ComfyUI batches conds of different lengths so)."""
    target = math.lcm(*[c.shape[1] for c in conds])
    return torch.cat([c.repeat(1, target // c.shape[1], 1) for c in conds], dim=0)


DESCRIPTION = (
    "Encodes the views' prompts. One line (or the same line for every view) gives one conditioning shared by all "
    "views, exactly what CLIP Text Encode gives. One line per view (view 0 first) gives one row per view, in "
    "camera order. Per-view rows work with Conditioning (Combine), Conditioning (Average), "
    "ConditioningSetTimestepRange, ConditioningZeroOut, Conditioning (Set Mask) (without mask bounds), Apply "
    "ControlNet, and Conditioning (Concat) of two per-view conditionings. Conditioning (Concat) cannot join "
    "per-view rows with a one-row conditioning such as CLIP Text Encode's (\"Sizes of tensors must match\"): "
    "connect that conditioning to this node's 'append' input instead. Area conditioning (Conditioning (Set Area), "
    "Set Mask with mask bounds) would cut the views apart and is refused when sampling.")
APPEND_TOOLTIP = (
    "Optional: a conditioning whose tokens are added after every view's prompt, as Conditioning (Concat) does. "
    "Use it to join a one-row conditioning (e.g. CLIP Text Encode) with per-view prompts, which Conditioning "
    "(Concat) cannot do; it may also hold one row per view.")


def encode_per_view(clip, prompts: list[str]) -> list:
    """A conditioning whose row i encodes ``prompts[i]`` (each distinct prompt is encoded once)."""
    encoded = {}
    for prompt in dict.fromkeys(prompts):
        encoded[prompt] = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True, return_dict=True)
    cond = stack_tokens([encoded[p]["cond"] for p in prompts])
    extra = {}
    pooled = [encoded[p].get("pooled_output") for p in prompts]
    if all(p is not None for p in pooled):
        extra["pooled_output"] = torch.cat(pooled, dim=0)
    return [[cond, extra]]


def check_append(node: str, append: list, num_views: int) -> None:
    """``append`` must be one conditioning of one row (shared by all views) or one row per view."""
    if len(append) != 1:
        raise ValueError(f"{node}: the append input holds {len(append)} conditionings (combined ones); connect a "
                         "single conditioning (its tokens are added to every view's prompt)")
    rows = append[0][0].shape[0]
    if rows not in (1, num_views):
        raise ValueError(f"{node}: {rows} rows in the append conditioning for {num_views} camera views; only one "
                         f"row (shared by all views) or {num_views} rows (one per view, in view order) can be joined")


def concat_to_views(conditioning: list, append: list) -> list:
    """``conditioning`` with ``append``'s tokens after each row's tokens (what ConditioningConcat does); a side
    with one row is repeated for every view when the other has one row per view."""
    tokens = append[0][0]
    out = []
    for cond, options in conditioning:
        rows = max(cond.shape[0], tokens.shape[0])
        joined = torch.cat([cond.expand(rows, -1, -1), tokens.to(cond).expand(rows, -1, -1)], dim=1)
        out.append([joined, options.copy()])
    return out


class PanoramaPrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionPanoramaPrompts",
            display_name="Panorama Prompts",
            category=CATEGORY,
            description=DESCRIPTION,
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder (from the checkpoint loader)."),
                Cameras.Input("cameras", tooltip="From Panorama Cameras or Sphere Cameras (gives the number of views)."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="One line for all views (the same conditioning as CLIP Text Encode), or "
                                        "one line per view (view 0 first), which gives one row per view."),
                io.Conditioning.Input("append", optional=True, tooltip=APPEND_TOOLTIP),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, cameras, text, append=None) -> io.NodeOutput:
        node = "Panorama Prompts"
        if clip is None:
            raise ValueError(f"{node}: the clip input is empty (does the checkpoint contain a text encoder?)")
        prompts = view_prompts(text, cameras.num_views)
        if append is not None:
            check_append(node, append, cameras.num_views)
        if len(set(prompts)) == 1:  # one prompt for every view: exactly CLIP Text Encode's conditioning
            conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(prompts[0]))
        else:
            conditioning = encode_per_view(clip, prompts)
        if append is not None:
            conditioning = concat_to_views(conditioning, append)
        return io.NodeOutput(conditioning)
