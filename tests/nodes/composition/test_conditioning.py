"""Panorama Prompts with the host's conditioning nodes: a shared prompt is one row (CLIP Text Encode's), per-view
prompts are one row per view; which core nodes keep per-view rows, and the append input for the wiring that
Conditioning (Concat) cannot do."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.host

VIEWS = 8


@pytest.fixture(scope="module")
def style(host, sd2):
    """A one-row conditioning from the host's CLIP Text Encode."""
    return host("CLIPTextEncode", clip=sd2.clip, text="a watercolor painting")[0]


@pytest.fixture(scope="module")
def other_per_view(graph, sd2, cameras):
    """A second per-view conditioning: the same two prompts as ``per_view`` in the other order."""
    text = "\n".join(["a quiet garden at night", "a cosy kitchen"] * 4)
    return graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text=text)[0]


def half_mask() -> torch.Tensor:
    mask = torch.zeros(1, 64, 64)
    mask[..., :32] = 1.0
    return mask


@pytest.mark.parametrize("shared_first", [True, False], ids=["shared prompt first", "CLIP Text Encode first"])
def test_conditioning_concat_joins_a_shared_panorama_prompt_and_clip_text_encode(host, prompts, style,
                                                                                  shared_first):
    to, source = (prompts.pos, style) if shared_first else (style, prompts.pos)
    (joined,) = host("ConditioningConcat", conditioning_to=to, conditioning_from=source)
    assert joined[0][0].shape[0] == 1
    assert torch.equal(joined[0][0], torch.cat([to[0][0], source[0][0]], dim=1))


@pytest.mark.parametrize("per_view_first", [True, False], ids=["per-view rows first", "one row first"])
def test_core_conditioning_concat_cannot_join_per_view_rows_with_one_row(host, per_view, style, per_view_first):
    """The limitation the Panorama Prompts description names (and for which it offers its append input)."""
    to, source = (per_view, style) if per_view_first else (style, per_view)
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        host("ConditioningConcat", conditioning_to=to, conditioning_from=source)


def row(conditioning: list, i: int) -> list:
    """View i's row of a per-view conditioning (one-row conditionings are shared by every view)."""
    return [[c[i:i + 1] if c.shape[0] == VIEWS else c,
             {k: (v[i:i + 1] if torch.is_tensor(v) and v.shape[:1] == (VIEWS,) else v) for k, v in o.items()}]
            for c, o in conditioning]


# core node -> its inputs for a per-view conditioning ``pv`` and the other conditionings ``o``
CORE_NODES = {
    "Concat of two per-view": ("ConditioningConcat",
                               lambda pv, o: {"conditioning_to": pv, "conditioning_from": o["other_per_view"]}),
    "Combine": ("ConditioningCombine", lambda pv, o: {"conditioning_1": pv, "conditioning_2": o["style"]}),
    "Average with one row": ("ConditioningAverage", lambda pv, o: {"conditioning_to": pv, "conditioning_from":
                                                                    o["style"], "conditioning_to_strength": 0.75}),
    "SetTimestepRange": ("ConditioningSetTimestepRange", lambda pv, o: {"conditioning": pv, "start": 0.0,
                                                                        "end": 0.5}),
    "ZeroOut": ("ConditioningZeroOut", lambda pv, o: {"conditioning": pv}),
    "SetMask": ("ConditioningSetMask", lambda pv, o: {"conditioning": pv, "mask": half_mask(),
                                                      "set_cond_area": "default", "strength": 1.0}),
}


def run_core_node(host, case: str, per_view: list, others: dict) -> list:
    node, inputs = CORE_NODES[case]
    return host(node, **inputs(per_view, others))[0]


@pytest.mark.parametrize("case", sorted(CORE_NODES))
def test_a_core_conditioning_node_treats_each_per_view_row_as_that_views_prompt(host, per_view, other_per_view,
                                                                                 style, case):
    """The node's output row i is what the node gives for view i's row alone: the rows stay one per view."""
    others = {"other_per_view": other_per_view, "style": style}
    out = run_core_node(host, case, per_view, others)
    for i in range(VIEWS):
        alone = run_core_node(host, case, row(per_view, i), {k: row(v, i) for k, v in others.items()})
        assert len(out) == len(alone)
        for (cond, options), (cond_i, options_i) in zip(out, alone):
            assert cond.shape[0] in (1, VIEWS) and options.keys() == options_i.keys()
            assert torch.equal(cond[i if cond.shape[0] == VIEWS else 0], cond_i[0])


def test_per_view_rows_through_the_core_nodes_and_a_controlnet_sample_on_the_patched_model(
        graph, host, controlnet, patched, per_view, other_per_view, style, cameras):
    others = {"other_per_view": other_per_view, "style": style}
    early = host("ConditioningSetTimestepRange", start=0.0, end=0.5,
                 conditioning=run_core_node(host, "Concat of two per-view", per_view, others))[0]
    late = host("ConditioningSetTimestepRange", start=0.5, end=1.0,
                conditioning=run_core_node(host, "Average with one row", per_view, others))[0]
    masked = run_core_node(host, "SetMask", per_view, others)
    (positive,) = host("ConditioningCombine", conditioning_1=host("ConditioningCombine", conditioning_1=early,
                                                                  conditioning_2=late)[0], conditioning_2=masked)
    hints = torch.rand(VIEWS, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    positive, negative = host("ControlNetApplyAdvanced", positive=positive, control_net=controlnet.net, image=hints,
                              negative=run_core_node(host, "ZeroOut", per_view, others), strength=1.0,
                              start_percent=0.0, end_percent=1.0)
    views = graph.ksample(patched, positive, negative, graph.latent(cameras))
    assert torch.isfinite(views).all() and views.shape == (VIEWS, 4, 8, 8)


def test_set_mask_with_mask_bounds_is_refused_before_sampling(graph, host, sd2, caa, cameras, prompts, monkeypatch):
    model = graph.run("MVDiffusionApply", model=sd2.model, caa=caa, cameras=cameras)[0]
    mask = torch.zeros(1, 64, 64)
    mask[..., :32] = 1.0
    (bounded,) = host("ConditioningSetMask", conditioning=prompts.pos, mask=mask, set_cond_area="mask bounds",
                      strength=1.0)
    calls = []
    monkeypatch.setattr(model.model.diffusion_model, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=r"area conditioning \(positive\) crops the latent"):
        graph.ksample(model, bounded, prompts.neg, graph.latent(cameras), steps=1)
    assert not calls


def test_append_adds_a_one_row_conditioning_to_every_views_tokens(graph, sd2, cameras, per_view, style):
    text = "\n".join(["a cosy kitchen", "a quiet garden at night"] * 4)
    (joined,) = graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text=text, append=style)
    assert joined[0][0].shape[0] == VIEWS
    for i in range(VIEWS):
        assert torch.equal(joined[0][0][i], torch.cat([per_view[0][0][i], style[0][0][0]]))


def test_append_to_a_shared_prompt_is_conditioning_concat(graph, host, sd2, cameras, prompts, style):
    (ours,) = graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text="a cosy kitchen",
                        append=style)
    (core,) = host("ConditioningConcat", conditioning_to=prompts.pos, conditioning_from=style)
    assert ours[0][0].shape[0] == 1 and torch.equal(ours[0][0], core[0][0])


def test_append_of_per_view_rows_to_a_shared_prompt_gives_one_row_per_view(graph, sd2, cameras, prompts, per_view):
    (joined,) = graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text="a cosy kitchen",
                          append=per_view)
    assert joined[0][0].shape[0] == VIEWS
    for i in range(VIEWS):
        assert torch.equal(joined[0][0][i], torch.cat([prompts.pos[0][0][0], per_view[0][0][i]]))


@pytest.mark.parametrize("append,message", [
    ([[torch.zeros(3, 77, 1024), {}]], "3 rows in the append conditioning for 8 camera views"),
    ([[torch.zeros(1, 77, 1024), {}]] * 2, "the append input holds 2 conditionings"),
], ids=["3 rows", "combined"])
def test_an_append_input_that_cannot_be_joined_is_refused_naming_the_node(graph, sd2, cameras, append, message):
    with pytest.raises(ValueError, match=f"Panorama Prompts: {message}"):
        graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text="a cosy kitchen",
                  append=append)
