"""The prompt a picture was made with, read from its PNG text chunks (the official demo reads the A1111 one).

Two formats: AUTOMATIC1111's ``parameters`` chunk (positive prompt, then ``Negative prompt: ...``, then a last
``Steps: ...`` line) and ComfyUI's ``prompt`` chunk (the API graph; the prompt is the text that reaches the
sampler's positive / negative input).
"""
from __future__ import annotations

import json
import os

import folder_paths
from comfy_api.latest import io

from .io_types import CATEGORY

NEGATIVE = "Negative prompt:"


def parse_a1111(text: str) -> tuple[str, str]:
    """(positive, negative) from an A1111 ``parameters`` text (the settings line ``Steps: ...`` is dropped)."""
    lines = text.strip().split("\n")
    if len(lines) > 1 and lines[-1].startswith("Steps:"):
        lines = lines[:-1]
    body = "\n".join(lines)
    positive, _, negative = body.partition(NEGATIVE) if NEGATIVE in body else (body, "", "")
    return positive.strip(), negative.strip()


def _text_behind(graph: dict, link, seen=()) -> str | None:
    """The first string ``text`` input upstream of a link ``[node_id, output]`` in a ComfyUI API graph."""
    if not isinstance(link, list) or len(link) != 2 or str(link[0]) in seen or str(link[0]) not in graph:
        return None
    inputs = graph[str(link[0])].get("inputs", {})
    if isinstance(inputs.get("text"), str):
        return inputs["text"]
    for name in ("conditioning", "conditioning_1", "conditioning_to", "positive", "text"):
        found = _text_behind(graph, inputs.get(name), (*seen, str(link[0])))
        if found is not None:
            return found
    return None


def parse_comfyui(prompt_json: str) -> tuple[str, str] | None:
    """(positive, negative) from ComfyUI's ``prompt`` chunk: the texts behind the first sampler's inputs."""
    graph = json.loads(prompt_json)
    for node_id in sorted(graph, key=lambda k: (len(k), k)):
        inputs = graph[node_id].get("inputs", {})
        if "positive" in inputs and "negative" in inputs:
            positive = _text_behind(graph, inputs["positive"])
            if positive is not None:
                return positive, _text_behind(graph, inputs["negative"]) or ""
    return None


def png_prompt(info: dict) -> tuple[str, str] | None:
    """(positive, negative) from a PIL image's ``info`` text chunks, or None when it carries neither format."""
    if isinstance(info.get("parameters"), str):
        return parse_a1111(info["parameters"])
    if isinstance(info.get("prompt"), str):
        try:
            return parse_comfyui(info["prompt"])
        except (ValueError, AttributeError, TypeError):
            return None
    return None


class PromptFromImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        input_dir = folder_paths.get_input_directory()
        files = sorted(f for f in os.listdir(input_dir) if f.lower().endswith(".png")) if os.path.isdir(input_dir) \
            else []
        return io.Schema(
            node_id="MVDiffusionPromptFromImage",
            display_name="Prompt From Image",
            category=CATEGORY,
            description="The prompt a PNG was generated with (AUTOMATIC1111 'parameters', as the official demo "
                        "reads, or ComfyUI's embedded workflow), to outpaint a generated picture with its own "
                        "prompt. Connect 'positive' to Panorama Prompts' text.",
            inputs=[
                io.Combo.Input("image", options=files, upload=io.UploadType.image,
                               tooltip="A PNG in ComfyUI's input folder."),
                io.String.Input("fallback", default="", multiline=True,
                                tooltip="Used when the PNG carries no prompt (empty: that is an error)."),
            ],
            outputs=[io.String.Output(display_name="positive"), io.String.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, image, fallback) -> io.NodeOutput:
        from PIL import Image

        node = "Prompt From Image"
        path = folder_paths.get_annotated_filepath(image)
        if not os.path.isfile(path):
            raise ValueError(f"{node}: {image!r} is not in the input folder")
        with Image.open(path) as picture:
            found = png_prompt(dict(picture.info))
        if found is None:
            if not fallback.strip():
                raise ValueError(f"{node}: {image} carries no generation parameters (no A1111 'parameters' or "
                                 "ComfyUI 'prompt' text chunk); write a fallback prompt")
            found = (fallback.strip(), "")
        return io.NodeOutput(*found)
