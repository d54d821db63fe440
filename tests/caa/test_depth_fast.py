"""The fast depth CAA path equals the reference depth block (the oracle) at every level of 192x256 views."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from comfyui_mvdiffusion.caa import fast as fast_module
from comfyui_mvdiffusion.caa.depth_block import DepthCorrespondenceAttention, DepthCPBlock
from comfyui_mvdiffusion.caa.depth_fast import (depth_centred_encoding, depth_cp_fast_forward, depth_fast_forward,
                                                depth_key_terms)
from comfyui_mvdiffusion.caa.fast import bytes_per_query

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_depth_block import features, make_plan  # noqa: E402  (the depth block's hand-built plans)

CPU = torch.device("cpu")
# 12 views with 1 to 11 neighbours (odd counts included: the pairing then crosses pixels)
LISTS = [[j for j in range(12) if j != i and abs(j - i) <= 1 + i % 6] for i in range(12)]
LISTS[5] = [j for j in range(12) if j != 5]  # 11 neighbours


def relative_error(fast, ref, x):
    """max |fast - ref| relative to the scale of the block's output change."""
    return float((fast - ref).abs().max() / (ref - x).abs().max())


def depth_block(dim: int, randomised, seed: int = 0) -> DepthCorrespondenceAttention:
    return randomised(DepthCorrespondenceAttention(dim).eval(), seed=seed)


@pytest.mark.parametrize("h,w,width", [(24, 32, 320), (12, 16, 640), (6, 8, 1280), (3, 4, 1280)])
def test_fast_equals_the_reference_at_every_level_of_192x256_views(h, w, width, randomised):
    """12 views, 1 to 11 neighbours (padding slots filled with junk), ~30 % invalid keys, 2 groups."""
    counts = sorted({len(l) for l in LISTS})
    assert counts[0] == 1 and counts[-1] == 11 and len(counts) > 5
    block = depth_block(width, randomised, seed=h)
    plan = make_plan(LISTS, h, w, seed=h, junk_padding=True)
    x = features(24, width, h, w, seed=h)
    with torch.no_grad():
        ref, fast = block(x, plan), depth_fast_forward(block, x, plan)
    assert torch.isfinite(fast).all()
    assert relative_error(fast, ref, x) <= 1e-4


def wall_scene(views: int = 12, height: int = 48, width: int = 64):
    """Cameras 0.25 m apart sliding along a tilted wall ~2 m away (Z = 2 + 0.1 X), a depth-less strip on view 3."""
    from comfyui_mvdiffusion.geometry.scene import SceneCameras

    f = 40.0
    K = torch.tensor([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]]).expand(views, 3, 3)
    c2w = torch.eye(4).repeat(views, 1, 1)
    c2w[:, 0, 3] = 0.25 * torch.arange(views)
    ray_x = (torch.arange(width) - (width - 1) / 2) / f  # X / Z of each column
    depths = ((2 + 0.1 * c2w[:, 0, 3, None]) / (1 - 0.1 * ray_x)).reshape(views, 1, width).repeat(1, height, 1)
    depths[3, :, :10] = 0.0
    return SceneCameras(K.clone(), c2w, height, width), depths


def test_plans_built_from_a_synthetic_scene_give_the_references_result(randomised):
    from comfyui_mvdiffusion.geometry.depth_correspondences import (depth_correspondences, depth_neighbours,
                                                                     depth_overlap)
    from comfyui_mvdiffusion.geometry.depth_plan import build_depth_level_plan

    cameras, depths = wall_scene()
    corr = depth_correspondences(depths, cameras)
    neighbours = depth_neighbours(depth_overlap(depths, cameras))
    assert len({len(l) for l in neighbours}) > 2  # variable neighbour counts
    for (h, w), width in (((6, 8), 320), ((3, 4), 640)):
        plan = build_depth_level_plan(corr, depths, neighbours, h, w)
        assert plan.valid[plan.present].any() and not plan.valid[plan.present].all()
        block = depth_block(width, randomised, seed=w)
        x = features(24, width, h, w, seed=w)
        with torch.no_grad():
            ref, fast = block(x, plan), depth_fast_forward(block, x, plan)
        assert relative_error(fast, ref, x) <= 1e-4, (h, w)


def test_the_key_encodings_are_the_references_paired_encodings_minus_their_channel_mean():
    block = DepthCorrespondenceAttention(320)
    plan = make_plan(LISTS, 6, 8, seed=3, junk_padding=True)
    pe = depth_centred_encoding(depth_key_terms(plan, CPU, torch.float32), block.pe.freq_bands, torch.float32)
    direct = block.key_pe(plan)  # (m, h, w, n, C), zeros on padding slots
    direct = (direct - direct.mean(dim=-1, keepdim=True)) * plan.present[:, None, None, :, None]
    assert pe.shape == (12 * 48, 11, 320)
    assert torch.allclose(pe, direct.reshape(pe.shape), atol=1e-6)


def test_chunked_precomputed_and_on_the_fly_encodings_give_one_result(randomised):
    block = depth_block(320, randomised, seed=4)
    plan = make_plan(LISTS, 12, 16, seed=4)
    x = features(24, 320, 12, 16, seed=4)
    terms = depth_key_terms(plan, CPU, torch.float32)
    pe = depth_centred_encoding(terms, block.pe.freq_bands, torch.float32)
    with torch.no_grad():
        whole = depth_fast_forward(block, x, plan, max_bytes=1 << 34, key_chunk_bytes=1 << 34)
        chunked = depth_fast_forward(block, x, plan, max_bytes=bytes_per_query(320, 11, 4) * 70, terms=terms)
        cached = depth_fast_forward(block, x, plan, pe=pe, terms=terms, max_bytes=bytes_per_query(320, 11, 4) * 300)
    # float rounding only (the matrix products' blocking follows the chunk sizes)
    assert relative_error(chunked, whole, x) <= 1e-5 and relative_error(cached, whole, x) <= 1e-5
    with pytest.raises(ValueError, match="do not fit"):
        depth_fast_forward(block, x, plan, pe=pe[:, :5])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_stays_close_to_float32(dtype, randomised):
    block = depth_block(640, randomised, seed=5)
    plan = make_plan(LISTS, 6, 8, seed=5)
    x = features(24, 640, 6, 8, seed=5)
    with torch.no_grad():
        ref = block(x, plan)
        out = depth_fast_forward(block.to(dtype), x.to(dtype), plan)
        half_ref = block(x.to(dtype), plan)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert relative_error(out.float(), ref, x) < 0.05
    assert relative_error(out.float(), half_ref.float(), x) < 0.05


def test_queries_whose_keys_are_all_invalid_attend_only_to_the_norm1_bias_key(randomised, all_keys_invalid):
    block = depth_block(640, randomised, seed=6)
    plan = make_plan(LISTS, 3, 4, seed=6)
    plan = dataclasses.replace(plan, valid=plan.valid.clone().index_fill_(2, torch.tensor([1]), False))
    x = features(12, 640, 3, 4, seed=6)  # row 1 of every view: every key invalid (but still in the softmax)
    with torch.no_grad():
        out, ref = depth_fast_forward(block, x, plan), block(x, plan)
        for view, column in ((0, 0), (5, 3), (11, 2)):
            expected = all_keys_invalid(block.transformer, x[view, :, 1, column])
            assert torch.allclose(out[view, :, 1, column], expected, atol=1e-5, rtol=1e-5)
    assert relative_error(out, ref, x) <= 1e-4


def test_padding_slots_take_no_part_whatever_they_hold(randomised):
    """Views 1 and 3 have one neighbour; the junk in their padding slots (the others have 3 and 2) changes
    nothing: the same result as a plan without padding."""
    block = depth_block(64, randomised, seed=7)
    padded = make_plan([[1, 2, 3], [0], [0, 3], [2]], 4, 6, junk_padding=True)
    single = dataclasses.replace(padded, **{name: getattr(padded, name)[:, :1] for name in
                                            ("neighbours", "present", "grid", "valid", "depth_difference")})
    x = features(8, 64, 4, 6)
    with torch.no_grad():
        a = depth_fast_forward(block, x, padded).reshape(2, 4, 64, 4, 6)
        b = depth_fast_forward(block, x, single).reshape(2, 4, 64, 4, 6)
    assert torch.allclose(a[:, [1, 3]], b[:, [1, 3]], atol=1e-5, rtol=1e-5)


def test_the_sparse_and_the_embedding_bag_gathers_agree(monkeypatch, randomised):
    block = depth_block(320, randomised, seed=8)
    plan = make_plan(LISTS, 6, 8, seed=8)
    x = features(12, 320, 6, 8, seed=8)
    with torch.no_grad():
        assert fast_module._sparse_gather_works("cpu", torch.float32)
        sparse = depth_fast_forward(block, x, plan)
        monkeypatch.setattr(fast_module, "_sparse_gather_works", lambda device_type, dtype: False)
        bag = depth_fast_forward(block, x, plan)
    assert torch.allclose(sparse, bag, atol=1e-5, rtol=1e-5)


def test_the_fast_cp_block_equals_the_reference_in_the_features_own_layout(randomised):
    block = randomised(DepthCPBlock(320).eval(), seed=9)
    plan = make_plan(LISTS, 6, 8, seed=9)
    x = features(24, 320, 6, 8, seed=9)
    with torch.no_grad():
        for features_in in (x, x.to(memory_format=torch.channels_last)):
            ref, fast = block(features_in, plan), depth_cp_fast_forward(block, features_in, plan)
            assert fast.stride() == features_in.stride()
            assert relative_error(fast, ref, x) <= 1e-4
        assert torch.equal(depth_cp_fast_forward(block.zero_(), x, plan), x)  # the official init: the identity


def test_an_odd_number_of_paired_values_is_refused_like_the_reference(randomised):
    block = depth_block(64, randomised)
    x = features(2, 64, 3, 3)
    with pytest.raises(ValueError, match="3x3 query map gives an odd number"):
        depth_fast_forward(block, x, make_plan([[1], [0]], 3, 3))
