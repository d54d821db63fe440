"""Panorama Prompts: a prompt shared by all views is CLIP Text Encode's conditioning; per-view prompts reach the
right views."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.host


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


def test_prompts_of_different_lengths_share_one_batch(graph, sd2, cameras):
    long = " ".join(["a very long description of a wooden kitchen with many details"] * 12)
    text = "\n".join([long] + ["a short one"] * 7)
    (cond,) = graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text=text)
    assert cond[0][0].shape[0] == 8 and cond[0][0].shape[1] % 77 == 0 and cond[0][0].shape[1] > 77
    out = graph.ksample(sd2.model, cond, cond, graph.latent(cameras))
    assert torch.isfinite(out).all()


def test_a_wrong_number_of_lines_is_refused_naming_the_node(graph, sd2, cameras):
    with pytest.raises(ValueError, match=r"Panorama Prompts: 3 prompt lines for 8 camera views"):
        graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text="a\nb\nc")
