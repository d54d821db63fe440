"""Per-view prompts: one CONDITIONING whose batch holds the views' prompts in view order."""
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


class PanoramaPrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionPanoramaPrompts",
            display_name="Panorama Prompts",
            category=CATEGORY,
            description="Encodes one prompt for every view, or one prompt per line for each view in camera order, "
                        "into one CONDITIONING whose batch holds the views' prompts (combinable with the host's "
                        "conditioning nodes).",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder (from the checkpoint loader)."),
                Cameras.Input("cameras", tooltip="From Panorama Cameras (gives the number of views)."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="One line for all views, or one line per view (view 0 first)."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, cameras, text) -> io.NodeOutput:
        if clip is None:
            raise ValueError("Panorama Prompts: the clip input is empty (does the checkpoint contain a text encoder?)")
        prompts = view_prompts(text, cameras.num_views)
        encoded = {}
        for prompt in dict.fromkeys(prompts):
            encoded[prompt] = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True, return_dict=True)
        cond = stack_tokens([encoded[p]["cond"] for p in prompts])
        extra = {}
        pooled = [encoded[p].get("pooled_output") for p in prompts]
        if all(p is not None for p in pooled):
            extra["pooled_output"] = torch.cat(pooled, dim=0)
        return io.NodeOutput([[cond, extra]])
