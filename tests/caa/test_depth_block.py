"""The depth CAA block (official depth ``CPBlock``) on hand-checkable cases and against a per-view loop."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from comfyui_mvdiffusion.caa.depth_block import (DepthCPBlock, DepthCorrespondenceAttention,
                                                 depth_positional_encoding, query_positional_encoding)
from comfyui_mvdiffusion.caa.positional_encoding import frequency_bands
from comfyui_mvdiffusion.geometry.depth_plan import DepthLevelPlan

LAYOUT = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint-layouts" / "depth_gen.json"


def make_plan(lists: list[list[int]], h: int, w: int, seed: int = 0, junk_padding: bool = False) -> DepthLevelPlan:
    """A plan with random correspondences for the neighbour ``lists`` (padded with the first neighbour):
    grid in [-1.2, 1.2], ~70 % valid keys, depth differences in [0, 3) and 1e6 on ~15 % of the keys (no depth
    there, as the official). ``junk_padding`` fills the padding slots with random values instead of zeros."""
    gen = torch.Generator().manual_seed(seed)
    m, n = len(lists), max(map(len, lists))
    neighbours = torch.tensor([l + [l[0]] * (n - len(l)) for l in lists])
    present = torch.tensor([[k < len(l) for k in range(n)] for l in lists])
    grid = torch.rand(m, n, h, w, 2, generator=gen) * 2.4 - 1.2
    valid = torch.rand(m, n, h, w, generator=gen) < 0.7
    diff = torch.rand(m, n, h, w, generator=gen) * 3
    diff = torch.where(torch.rand(m, n, h, w, generator=gen) < 0.15, torch.full_like(diff, 1e6), diff)
    pad = ~present[:, :, None, None]
    valid &= ~pad
    if not junk_padding:
        grid = grid.masked_fill(pad[..., None], 0)
        diff = diff.masked_fill(pad, 0)
    return DepthLevelPlan(neighbours, present, grid, valid, diff, h, w, 8 * h, 8 * w)


def per_view_loop(block: DepthCorrespondenceAttention, x: torch.Tensor, plan: DepthLevelPlan) -> torch.Tensor:
    """The oracle, written from the spec: every group and view on its own, its l real neighbours only, the
    positional encodings token by token."""
    m, (C, h, w) = plan.num_views, x.shape[1:]
    f = block.pe.freq_bands[0, 0]
    out = torch.empty_like(x)
    for g in range(x.shape[0] // m):
        for i in range(m):
            slots = [k for k in range(plan.neighbours.shape[1]) if plan.present[i, k]]
            samples = [F.grid_sample(x[g * m + int(plan.neighbours[i, k])][None], plan.grid[i, k][None],
                                     mode="bilinear", padding_mode="zeros", align_corners=True)[0] for k in slots]
            keys = torch.stack(samples).permute(2, 3, 0, 1).reshape(h * w, len(slots), C)
            values = plan.depth_difference[i, slots].permute(1, 2, 0).reshape(-1)  # pixel-major, neighbour-minor
            pe = torch.empty(values.numel(), C)
            for t in range(values.numel()):
                first, second = values[t - t % 2], values[t - t % 2 + 1]
                fn = torch.sin if t % 2 == 0 else torch.cos
                pe[t] = torch.cat([fn(first * f), fn(second * f)])
            valid = plan.valid[i, slots].permute(1, 2, 0).reshape(h * w, len(slots), 1)
            kv = (keys + pe.reshape(h * w, len(slots), C)) * valid
            query = x[g * m + i].permute(1, 2, 0).reshape(h * w, 1, C)
            query_pe = torch.tensor([float(p % 2) for p in range(h * w)])[:, None, None].expand(h * w, 1, C)
            o = block.transformer(query, kv, query_pe)
            out[g * m + i] = o.reshape(h, w, C).permute(2, 0, 1)
    return out


def features(n: int, dim: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, dim, h, w, generator=torch.Generator().manual_seed(seed)) * 2 + 0.3


@pytest.mark.parametrize("prefix", ["cp_blocks_encoder.0.", "cp_blocks_encoder.2.", "cp_blocks_mid.",
                                    "cp_blocks_decoder.3."])
def test_the_state_dict_has_the_official_cp_block_names_and_shapes(prefix):
    prefix = "mv_base_model." + prefix
    keys = {name[len(prefix):]: tuple(shape) for name, shape, _ in json.loads(LAYOUT.read_text())["keys"]
            if name.startswith(prefix)}
    dim = keys["resnet.bn1.weight"][0]
    block = DepthCPBlock(dim, device="meta")
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == keys
    assert keys["attn1.pe.freq_bands"] == (1, 1, dim // 2)


def test_a_state_dict_in_the_official_layout_loads_strictly(randomised):
    source = randomised(DepthCPBlock(320), seed=3)
    block = DepthCPBlock(320)
    block.load_state_dict(source.state_dict(), strict=True)
    assert torch.equal(block.attn1.pe.freq_bands, frequency_bands(160))
    assert torch.equal(block.resnet.conv1.weight, source.resnet.conv1.weight)
    assert block.resnet.conv1.bias is None and block.resnet.conv2.bias is None
    assert block.resnet.bn1.eps == 1e-5 and block.resnet.bn1.num_groups == 32


def test_consecutive_depth_differences_pair_into_a_sine_token_and_a_cosine_token():
    """One neighbour on a 2x2 map: the values of pixels 0 and 1 pair up, then those of pixels 2 and 3."""
    f = torch.tensor([[[1.0, 2.0]]])
    a, b, c, d = 0.5, 1.25, 0.75, 2.0
    pe = depth_positional_encoding(torch.tensor([[[[a, b], [c, d]]]]), torch.tensor([[True]]), f)
    assert pe.shape == (1, 2, 2, 1, 4)
    s, co = math.sin, math.cos
    expected = [[s(a), s(2 * a), s(b), s(2 * b)], [co(a), co(2 * a), co(b), co(2 * b)],
                [s(c), s(2 * c), s(d), s(2 * d)], [co(c), co(2 * c), co(d), co(2 * d)]]
    assert torch.allclose(pe.reshape(4, 4), torch.tensor(expected), atol=1e-6)


def test_with_three_neighbours_the_pairing_crosses_pixels_and_padding_does_not_shift_it():
    """View 0: 3 neighbours on a 1x2 map, values v[p][k] flattened p-major: (v00 v01) (v02 v10) (v11 v12).
    View 1: 1 neighbour padded to 3 slots: its own pair (u0 u1), whatever sits in the padding."""
    f = torch.tensor([[[1.0]]])
    v = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]
    u = [0.7, 0.8]
    diff = torch.tensor([[[[v[0][k], v[1][k]]] for k in range(3)],
                         [[[u[0], u[1]]], [[9.0, 9.5]], [[3.0, 4.0]]]])  # (m=2, n=3, h=1, w=2)
    present = torch.tensor([[True, True, True], [True, False, False]])
    pe = depth_positional_encoding(diff, present, f)  # (m, h, w, n, 2)
    s, c = (lambda *x: [math.sin(t) for t in x]), (lambda *x: [math.cos(t) for t in x])
    expected0 = [[s(v[0][0], v[0][1]), c(v[0][0], v[0][1]), s(v[0][2], v[1][0])],
                 [c(v[0][2], v[1][0]), s(v[1][1], v[1][2]), c(v[1][1], v[1][2])]]
    assert torch.allclose(pe[0, 0], torch.tensor(expected0), atol=1e-6)
    assert torch.allclose(pe[1, 0, :, 0], torch.tensor([s(*u), c(*u)]), atol=1e-6)
    assert torch.equal(pe[1, 0, :, 1:], torch.zeros(2, 2, 2))


def test_the_query_encoding_alternates_all_zeros_and_all_ones_over_the_pixels():
    pe = query_positional_encoding(3, 4, frequency_bands(160))
    assert pe.shape == (12, 1, 320)
    for p in range(12):
        assert torch.equal(pe[p, 0], torch.full((320,), float(p % 2))), p
    block_pe = DepthCorrespondenceAttention(64).query_pe(2, 3)
    assert torch.equal(block_pe, query_positional_encoding(2, 3, frequency_bands(32)))


def test_an_odd_number_of_encoded_values_is_refused_as_the_official_reshape_fails():
    with pytest.raises(ValueError, match="odd number"):
        query_positional_encoding(3, 3, frequency_bands(32))
    with pytest.raises(ValueError, match="view 1 with 1 neighbours on a 3x3"):
        depth_positional_encoding(torch.zeros(2, 2, 3, 3), torch.tensor([[True, True], [True, False]]),
                                  frequency_bands(32))


def test_each_neighbour_gives_one_key_its_bilinear_sample_at_the_correspondence(randomised):
    """Query pixel (0, 0) of view 0 looks at pixel (y=1, x=2) of view 1 exactly: changing view 1 elsewhere
    leaves that output alone, changing that pixel moves it (no neighbourhood of keys around it)."""
    block = randomised(DepthCorrespondenceAttention(64).eval())
    plan = make_plan([[1], [0]], 4, 4)
    grid = plan.grid.clone()
    grid[0, 0, 0, 0] = torch.tensor([2 / 3 * 2 - 1, 1 / 3 * 2 - 1])  # x = 2, y = 1 in a 4x4 map
    valid = plan.valid.clone()
    valid[0, 0, 0, 0] = True
    plan = dataclasses.replace(plan, grid=grid, valid=valid)
    x = features(2, 64, 4, 4)
    with torch.no_grad():
        out = block(x, plan)
        elsewhere, there = x.clone(), x.clone()
        elsewhere[1] += features(1, 64, 4, 4, seed=7)[0]  # not a constant shift: LayerNorm would remove it
        elsewhere[1, :, 1, 2] = x[1, :, 1, 2]
        there[1, :, 1, 2] += features(1, 64, 1, 1, seed=7)[0, :, 0, 0]
        assert torch.allclose(block(elsewhere, plan)[0, :, 0, 0], out[0, :, 0, 0], atol=1e-6)
        assert not torch.allclose(block(there, plan)[0, :, 0, 0], out[0, :, 0, 0], atol=1e-3)


def test_a_query_whose_keys_are_all_invalid_attends_only_to_the_norm1_bias_key(randomised,
                                                                                 all_keys_invalid):
    block = randomised(DepthCorrespondenceAttention(64).eval())
    plan = make_plan([[1, 2], [0], [0, 1]], 4, 4)
    valid = plan.valid.clone()
    valid[0, :, 2, 3] = False  # view 0, query pixel (x=3, y=2): both keys invalid (but still in the softmax)
    plan = dataclasses.replace(plan, valid=valid)
    x = features(3, 64, 4, 4)
    with torch.no_grad():
        out = block(x, plan)
        expected = all_keys_invalid(block.transformer, x[0, :, 2, 3])
    assert torch.allclose(out[0, :, 2, 3], expected, atol=1e-5, rtol=1e-5)


def test_a_views_output_does_not_depend_on_other_views_having_more_neighbours(randomised):
    """Views 1 and 3 have one neighbour in both plans; in the first the others have 3 and 2 (padding slots
    filled with junk), in the second 1."""
    block = randomised(DepthCorrespondenceAttention(64).eval())
    padded = make_plan([[1, 2, 3], [0], [0, 3], [2]], 4, 6, junk_padding=True)
    single = make_plan([[1], [0], [3], [2]], 4, 6)
    keep = [1, 3]
    single = dataclasses.replace(single, **{name: torch.stack([getattr(padded, name)[i, :1] if i in keep else
                                                               getattr(single, name)[i] for i in range(4)])
                                            for name in ("grid", "valid", "depth_difference")})
    x = features(8, 64, 4, 6)
    with torch.no_grad():
        a, b = block(x, padded).reshape(2, 4, 64, 4, 6), block(x, single).reshape(2, 4, 64, 4, 6)
    assert torch.allclose(a[:, keep], b[:, keep], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-3)


def test_the_vectorised_block_equals_the_per_view_loop(randomised):
    block = randomised(DepthCorrespondenceAttention(64).eval(), seed=2)
    plan = make_plan([[1, 2, 3], [0], [0, 1, 3, 4], [2, 4], [2]], 4, 6, seed=5)
    x = features(10, 64, 4, 6)
    with torch.no_grad():
        out, expected = block(x, plan), per_view_loop(block, x, plan)
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - x).abs().max() > 1  # the block does something


def test_the_two_cfg_halves_of_a_batch_never_mix(randomised):
    block = randomised(DepthCorrespondenceAttention(64).eval())
    plan = make_plan([[1, 2], [0], [0, 1]], 4, 4)
    x = features(6, 64, 4, 4)
    x2 = x.clone()
    x2[3:] = features(3, 64, 4, 4, seed=9)
    with torch.no_grad():
        out, out2, alone = block(x, plan), block(x2, plan), block(x[:3], plan)
    assert torch.equal(out[:3], out2[:3])
    assert not torch.allclose(out[3:], out2[3:])
    assert torch.allclose(out[:3], alone, atol=1e-5)


def test_with_the_official_zero_init_the_cp_block_is_the_identity(randomised):
    block = randomised(DepthCPBlock(64).eval()).zero_()
    plan = make_plan([[1, 2], [0], [0, 1]], 4, 4)
    x = features(6, 64, 4, 4)
    with torch.no_grad():
        out = block(x, plan)
    assert torch.equal(out, x) and out.stride() == x.stride()


def test_the_resnet_adds_its_zero_init_conv_branch_onto_the_attention_output(randomised):
    """With only the resnet's conv2 zero (the official init of ``BasicResNetBlock(zero_init=True)``) the block
    is the attention alone; with conv2 random it adds conv2(relu(bn2(conv1(relu(bn1(a)))))) to it."""
    block = randomised(DepthCPBlock(64).eval())
    plan = make_plan([[1], [0, 2], [1]], 4, 4)
    x = features(3, 64, 4, 4)
    r = block.resnet
    with torch.no_grad():
        attended = block.attn1(x, plan)
        branch = r.conv2(F.relu(r.bn2(r.conv1(F.relu(r.bn1(attended))))))
        assert torch.allclose(block(x, plan), attended + branch, atol=1e-5)
        r.conv2.weight.zero_()
        assert torch.equal(block(x, plan), attended)


def test_a_3x4_level_with_unmatched_pixels_gives_finite_values(randomised):
    block = randomised(DepthCPBlock(320).eval())
    plan = make_plan([[1, 2, 3], [0], [0, 1, 3], [0, 2]], 3, 4)
    valid = plan.valid.clone()
    valid[:, :, 1] = False  # a whole row of queries without a valid key
    diff = plan.depth_difference.masked_fill(~valid & plan.present[:, :, None, None], 1e6)
    plan = dataclasses.replace(plan, valid=valid, depth_difference=diff)
    with torch.no_grad():
        out = block(features(8, 320, 3, 4), plan)
    assert torch.isfinite(out).all()


def test_the_frequency_buffer_stays_float32_when_the_block_is_cast(randomised):
    block = randomised(DepthCPBlock(64).eval()).to(torch.bfloat16)
    assert block.attn1.pe.freq_bands.dtype == torch.float32
    assert block.resnet.conv1.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = block(features(3, 64, 4, 4).to(torch.bfloat16), make_plan([[1], [0, 2], [1]], 4, 4))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_plans_built_from_real_depths_and_poses_drive_the_block_like_the_per_view_loop(randomised):
    # the builder (geometry) and the block (caa) agree on the plan: three cameras sliding along a flat wall 2 m
    # away, correspondences from the depths and poses, neighbours by overlap, every level of 64x64 views
    from comfyui_mvdiffusion.geometry.depth_correspondences import (depth_correspondences, depth_neighbours,
                                                                     depth_overlap)
    from comfyui_mvdiffusion.geometry.depth_plan import build_depth_level_plan
    from comfyui_mvdiffusion.geometry.scene import SceneCameras

    size, f = 64, 40.0
    K = torch.tensor([[f, 0.0, (size - 1) / 2], [0.0, f, (size - 1) / 2], [0.0, 0.0, 1.0]]).expand(3, 3, 3)
    c2w = torch.eye(4).repeat(3, 1, 1)
    c2w[:, 0, 3] = torch.tensor([0.0, 0.3, 0.6])  # 0.3 m steps sideways
    cameras = SceneCameras(K.clone(), c2w, size, size)
    depths = torch.full((3, size, size), 2.0)
    depths[2, :8] = 0.0  # a strip without depth
    corr = depth_correspondences(depths, cameras)
    neighbours = depth_neighbours(depth_overlap(depths, cameras))
    assert neighbours == ((1, 2), (0, 2), (0, 1))
    block = randomised(DepthCorrespondenceAttention(320).eval(), seed=5)
    for h in (8, 4, 2):
        plan = build_depth_level_plan(corr, depths, neighbours, h, h)
        assert plan.valid.any() and (h < 8 or not plan.valid.all())  # the depth-less strip shows at level 0
        x = features(6, 320, h, h, seed=h)
        with torch.no_grad():
            out, oracle = block(x, plan), per_view_loop(block, x, plan)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, oracle, rtol=1e-5, atol=1e-5)
