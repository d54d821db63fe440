"""Panorama Prompts: a prompt shared by all views is CLIP Text Encode's conditioning; per-view prompts reach the
right views."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.host

# a prompt of two 77-token chunks: views with one-chunk prompts are repeated up to 154 tokens (nodes/prompts.py)
LONG = " ".join(["a very long description of a wooden kitchen with many details"] * 12)
SHORT = "a short one"
MIXED = "\n".join([LONG] + [SHORT] * 7)  # view 0 long, views 1-7 short


def assert_same_conditioning(a: list, b: list) -> None:
    """Two CONDITIONING lists hold the same entries: equal tensors and equal options."""
    assert len(a) == len(b)
    for (cond_a, options_a), (cond_b, options_b) in zip(a, b):
        assert torch.equal(cond_a, cond_b)
        assert options_a.keys() == options_b.keys()
        for key, value in options_a.items():
            assert torch.equal(value, options_b[key]) if torch.is_tensor(value) else value == options_b[key]


@pytest.mark.parametrize("text", ["a cosy kitchen\n\n", "\n".join(["a cosy kitchen"] * 8)],
                         ids=["one line", "the same line for every view"])
def test_a_prompt_shared_by_all_views_is_clip_text_encodes_one_row_conditioning(comfy, graph, sd2, cameras, text):
    (ours,) = graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text=text)
    with torch.inference_mode():
        (host,) = comfy.nodes.CLIPTextEncode().encode(sd2.clip, "a cosy kitchen")
    assert ours[0][0].shape[0] == 1
    assert_same_conditioning(ours, host)


def test_one_line_per_view_is_encoded_in_view_order(comfy, graph, sd2, cameras):
    lines = [f"view number {i}" for i in range(8)]
    (cond,) = graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text="\n".join(lines))
    for i, line in enumerate(lines):
        (single,) = comfy.nodes.CLIPTextEncode().encode(sd2.clip, line)
        assert torch.equal(cond[0][0][i], single[0][0][0])


@pytest.mark.parametrize("with_caa", [False, True])
def test_a_prompt_that_differs_only_for_view_3_changes_view_3_most(graph, sd2, caa, cameras, prompts, with_caa):
    same = "\n".join(["a cosy kitchen"] * 8)
    lines = ["a cosy kitchen"] * 8
    lines[3] = "a red sports car on a racetrack"
    (base,) = graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text=same)
    (diff,) = graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text="\n".join(lines))
    model = graph.run("MVDiffusionApply", model=sd2.model, caa=caa, cameras=cameras)[0] if with_caa else sd2.model
    lat = graph.latent(cameras)
    change = (graph.ksample(model, diff, prompts.neg, lat) - graph.ksample(model, base, prompts.neg, lat))
    per_view = change.flatten(1).abs().mean(dim=1)
    assert int(per_view.argmax()) == 3, per_view
    if not with_caa:  # without CAA the views are independent: only view 3 changes at all
        assert torch.count_nonzero(per_view) == 1


def test_repeated_tokens_leave_the_models_cross_attention_unchanged(comfy, graph, sd2, cameras):
    """Repeating every key/value token the same number of times scales the softmax's numerator and denominator
    alike: the host's cross-attention over the padded tokens equals that over the view's own tokens."""
    (cond,) = graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text=MIXED)
    (alone,) = comfy.nodes.CLIPTextEncode().encode(sd2.clip, SHORT)
    padded, own, long = cond[0][0][1:2], alone[0][0], cond[0][0][0:1]
    assert padded.shape[1] == 2 * own.shape[1] == 154
    attn2 = next(m for name, m in sd2.model.model.diffusion_model.named_modules() if name.endswith("attn2"))
    dtype = attn2.to_q.weight.dtype
    x = torch.randn(1, 64, attn2.to_q.in_features, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.inference_mode():
        over_padded, over_own = attn2(x, context=padded.to(dtype)), attn2(x, context=own.to(dtype))
        over_long = attn2(x, context=long.to(dtype))
    assert graph.max_rel(over_padded, over_own) < 1e-5
    assert graph.max_rel(over_long, over_own) > 1e-2  # the attention does tell the prompts apart


def test_views_whose_tokens_were_repeated_sample_as_if_their_prompt_was_encoded_alone(graph, sd2, cameras, prompts):
    """Views 1-7 share a batch with view 0's longer prompt and are padded to its length; without CAA the views
    are independent, so they must come out as when every view has the short prompt at its own length."""
    (mixed,) = graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text=MIXED)
    (short,) = graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text=SHORT)
    assert mixed[0][0].shape[1] == 154 and short[0][0].shape[1] == 77
    lat = graph.latent(cameras)
    out_mixed = graph.ksample(sd2.model, mixed, prompts.neg, lat)
    out_short = graph.ksample(sd2.model, short, prompts.neg, lat)
    assert graph.max_rel(out_mixed[1:], out_short[1:]) < 1e-4  # float rounding (3e-6 here); zero padding: 0.2
    assert graph.max_rel(out_mixed[:1], out_short[:1]) > 1e-2  # view 0's own prompt does change view 0


def test_a_wrong_number_of_lines_is_refused_naming_the_node(graph, sd2, cameras):
    with pytest.raises(ValueError, match=r"Panorama Prompts: 3 prompt lines for 8 camera views"):
        graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text="a\nb\nc")


def test_prompt_from_image_reads_a1111_parameters_and_comfyuis_embedded_prompt(comfy, graph):
    import json
    from pathlib import Path

    from PIL import Image, PngImagePlugin

    import folder_paths

    def png(name: str, **chunks) -> str:
        meta = PngImagePlugin.PngInfo()
        for key, value in chunks.items():
            meta.add_text(key, value)
        Image.new("RGB", (8, 8)).save(Path(folder_paths.get_input_directory()) / name, pnginfo=meta)
        return name

    a1111 = png("a1111.png", parameters="a red barn in a field,\nat dusk\nNegative prompt: blurry, text\n"
                                        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1")
    assert graph.run("MVDiffusionPromptFromImage", image=a1111, fallback="") == (
        "a red barn in a field,\nat dusk", "blurry, text")
    api = {"3": {"class_type": "KSampler", "inputs": {"positive": ["6", 0], "negative": ["7", 0]}},
           "6": {"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["8", 0]}},
           "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["4", 1]}},
           "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "watermark", "clip": ["4", 1]}}}
    comfyui = png("comfyui.png", prompt=json.dumps(api))
    assert graph.run("MVDiffusionPromptFromImage", image=comfyui, fallback="") == ("a lighthouse", "watermark")
    bare = png("bare.png")
    assert graph.run("MVDiffusionPromptFromImage", image=bare, fallback=" a beach ") == ("a beach", "")
    with pytest.raises(ValueError, match="Prompt From Image: bare.png carries no generation parameters"):
        graph.run("MVDiffusionPromptFromImage", image=bare, fallback="")
