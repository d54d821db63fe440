"""The fast CAA path equals the reference block (the oracle) at every SD2 level."""
from __future__ import annotations

import pytest
import torch

from comfyui_mvdiffusion.caa import fast as fast_module
from comfyui_mvdiffusion.caa.block import sample_keys
from comfyui_mvdiffusion.caa.blockset import CAASet
from comfyui_mvdiffusion.caa.fast import (bytes_per_query, centred_positional_encoding, fast_forward, fold_weights,
                                          tap_plan)
from comfyui_mvdiffusion.caa.patch import MultiViewPatch
from comfyui_mvdiffusion.caa.placement import Site
from comfyui_mvdiffusion.caa.run_cache import RunCache, pe_candidates, pe_selection
from comfyui_mvdiffusion.caa.positional_encoding import frequency_bands, positional_encoding
from comfyui_mvdiffusion.geometry import level_plan, pano_rig, unet_level_sizes


def relative_error(fast, ref, x):
    """max |fast - ref| relative to the scale of the block's output change."""
    return float((fast - ref).abs().max() / (ref - x).abs().max())


# SD2 at 512 px: the encoder/decoder widths at the four levels (64, 32, 16, 8)
SD2_LEVELS = [(320, 0), (640, 1), (1280, 2), (1280, 3)]


@pytest.mark.parametrize("width,level", SD2_LEVELS)
def test_fast_equals_the_reference_at_every_sd2_level_at_512px(width, level, random_block, features):
    rig = pano_rig(8, 90, 512, 512)
    h, w = unet_level_sizes(512, 512)[level]
    plan = level_plan(rig, h, w)
    block = random_block(width, seed=level)
    x = features(8, width, h, seed=level)
    with torch.no_grad():
        ref = block(x, plan)
        fast = fast_forward(block, x, plan)
    assert relative_error(fast, ref, x) <= 1e-4


@pytest.mark.parametrize("size", [64, 96])
def test_fast_equals_the_reference_on_small_views_down_to_one_pixel_maps(size, random_block, features):
    rig = pano_rig(8, 90, size, size)
    for level, (h, w) in enumerate(unet_level_sizes(size, size)):
        width = [320, 640, 1280, 1280][level]
        plan = level_plan(rig, h, w)
        block = random_block(width, seed=level)
        x = features(16, width, h, seed=level)
        with torch.no_grad():
            ref = block(x, plan)
            fast = fast_forward(block, x, plan)
        assert torch.isfinite(fast).all()
        assert relative_error(fast, ref, x) <= 1e-4, (size, level)


def test_small_chunks_give_the_same_result_as_one_chunk(random_block, features):
    rig = pano_rig(8, 90, 128, 128)
    plan = level_plan(rig, 16, 16)
    block = random_block(320)
    x = features(16, 320, 16)
    one_chunk = 10 * 16 * 8 * 16 * 16 * bytes_per_query(320, 18, 4)
    with torch.no_grad():
        whole = fast_forward(block, x, plan, max_bytes=one_chunk)
        chunked = fast_forward(block, x, plan, max_bytes=bytes_per_query(320, 18, 4) * 100)
    assert torch.allclose(chunked, whole, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_stays_close_to_float32(dtype, random_block, features):
    rig = pano_rig(8, 90, 128, 128)
    block = random_block(640)
    x = features(16, 640, 8)
    with torch.no_grad():
        ref = block(x, level_plan(rig, 8, 8))
        half = block.to(dtype)
        out = fast_forward(half, x.to(dtype), level_plan(rig, 8, 8, None, dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert relative_error(out.float(), ref, x) < 0.05


def test_the_taps_reproduce_grid_sample(features):
    """4-tap bilinear weights from the plan equal grid_sample(align_corners=True, zeros padding)."""
    rig = pano_rig(8, 90, 128, 128)
    plan = level_plan(rig, 16, 16)
    taps = tap_plan(plan)
    x = features(8, 4, 16)
    rows = x.permute(0, 2, 3, 1).reshape(-1, 4)
    sampled = sum(taps.weight[..., t, None] * rows[taps.index[..., t]] for t in range(4))  # (m h w, K, C)
    reference = sample_keys(x, plan)[0]  # (m, K, C, h, w)
    reference = reference.permute(0, 3, 4, 1, 2).reshape(-1, 18, 4)
    assert torch.allclose(sampled, reference, atol=1e-5)


def test_folded_weights_are_norm1_folded_into_the_key_and_value_projections(random_block):
    block = random_block(320)
    folded = fold_weights(block, torch.device("cpu"), torch.float32)
    t = block.transformer
    n = torch.randn(5, 320)
    normed = t.norm1(n)
    k = t.attn1.to_k(normed).reshape(5, 10, 32)
    mu, var = n.mean(-1, keepdim=True), n.var(-1, unbiased=False, keepdim=True)
    via_fold = torch.einsum("hdc,nc->nhd", folded.wk, (n - mu) / torch.sqrt(var + folded.eps)) + folded.bk
    assert torch.allclose(via_fold, k, atol=1e-5)


def test_precomputed_positional_encodings_give_the_result_of_the_chunk_by_chunk_ones(random_block, features):
    rig = pano_rig(8, 90, 256, 256)
    plan = level_plan(rig, 16, 16)
    block = random_block(640, seed=3)
    x = features(16, 640, 16, seed=3)
    pe = centred_positional_encoding(plan, block.pe.freq_bands, x.device, x.dtype)
    with torch.no_grad():
        ref = block(x, plan)
        on_the_fly = fast_forward(block, x, plan)
        cached = fast_forward(block, x, plan, pe=pe)
    assert torch.allclose(cached, on_the_fly, atol=1e-5, rtol=1e-5)
    assert relative_error(cached, ref, x) <= 1e-4


def test_the_centred_positional_encoding_is_the_encoding_minus_its_channel_mean():
    rig = pano_rig(8, 90, 128, 128)
    plan = level_plan(rig, 8, 8)
    freq = frequency_bands(80)
    pe = centred_positional_encoding(plan, freq, torch.device("cpu"), torch.float32)
    direct = positional_encoding(tap_plan(plan).displacement, freq)  # (m h w, K, C), the reference's encoding
    assert pe.shape == direct.shape
    assert torch.allclose(pe, direct - direct.mean(dim=-1, keepdim=True), atol=1e-6)


def test_the_sparse_and_the_embedding_bag_gathers_agree(monkeypatch, random_block, features):
    """On CPUs the 4-tap samples are a sparse matrix product; elsewhere (and for half types) embedding_bag."""
    rig = pano_rig(8, 90, 128, 128)
    plan = level_plan(rig, 8, 8)
    block = random_block(320, seed=4)
    x = features(8, 320, 8, seed=4)
    with torch.no_grad():
        assert fast_module._sparse_gather_works("cpu", torch.float32)
        sparse = fast_forward(block, x, plan)
        monkeypatch.setattr(fast_module, "_sparse_gather_works", lambda device_type, dtype: False)
        bag = fast_forward(block, x, plan)
    assert torch.allclose(sparse, bag, atol=1e-5, rtol=1e-5)


def test_channels_last_features_give_the_same_values_in_their_own_layout(random_block, features):
    rig = pano_rig(8, 90, 128, 128)
    plan = level_plan(rig, 8, 8)
    block = random_block(320, seed=5)
    x = features(8, 320, 8, seed=5)
    with torch.no_grad():
        contiguous = fast_forward(block, x, plan)
        cl = fast_forward(block, x.to(memory_format=torch.channels_last), plan)
    assert cl.stride() == x.to(memory_format=torch.channels_last).stride()
    assert torch.allclose(cl, contiguous, atol=1e-6, rtol=1e-6)


def sd2_sites(levels: int = 4):
    """The nine SD2 CAA sites as ``caa.placement.unet_sites`` finds them (targets are not used here)."""
    widths = [320, 640, 1280, 1280][:levels]
    sites = [Site("encoder", k, "after_input_block", 3 * k + 2, widths[k], k) for k in range(levels)]
    sites.append(Site("mid", 0, "after_layer", "middle_block.0", widths[-1], levels - 1))
    sites += [Site("decoder", k, "before_layer", f"output_blocks.{3 * k + 2}", widths[levels - 1 - k], levels - 1 - k)
              for k in range(levels)]
    return sites


def test_a_runs_cache_builds_each_levels_encodings_once_and_gives_the_uncached_result(random_block):
    rig = pano_rig(8, 90, 128, 128)
    caa = CAASet()
    for _, _, block in caa.named_blocks():
        block.load_state_dict(random_block(block.dim, seed=block.dim).state_dict())
    cached = MultiViewPatch(caa, rig, sd2_sites())
    uncached = MultiViewPatch(caa, rig, sd2_sites(), free_memory=lambda device: 0)  # no room for the cache
    for patch in (cached, uncached):
        patch.run_cache = RunCache(rig, patch.sites, patch.level_sizes, patch.free_memory)
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for site in cached.sites:
            h = torch.randn(16, site.width, *cached.level_sizes[site.level], generator=gen)
            assert torch.allclose(cached.run(site, h), uncached.run(site, h), atol=1e-5, rtol=1e-5), site
    # blocks of one width at one level share the encodings: level 3 (mid, encoder 3, decoder 0) is one entry
    assert set(cached.run_cache.encodings) == {(level, width, torch.device("cpu"), torch.float32)
                                               for level, width in [(0, 320), (1, 640), (2, 1280), (3, 1280)]}
    assert not uncached.run_cache.encodings
    cached.end_run()
    assert cached.run_cache is None


def test_the_encodings_cache_saves_the_most_evaluations_within_its_budget():
    patch = MultiViewPatch(CAASet(), pano_rig(8, 90, 512, 512), sd2_sites())
    candidates = pe_candidates(patch.sites, patch.level_sizes, 8, 18, 4)
    sizes = {key: size for key, (size, _) in candidates.items()}
    # 512 px, float32: 755 MB (64x64, 320 wide), 377 MB, 189 MB, 47 MB (8x8, three blocks)
    assert sizes[(0, 320)] == 8 * 64 * 64 * 18 * 320 * 4
    assert candidates[(3, 1280)][1] == 3
    assert pe_selection(candidates, 1 << 30) == {(0, 320), (2, 1280), (3, 1280)}
    assert pe_selection(candidates, 700 << 20) == {(1, 640), (2, 1280), (3, 1280)}
    assert pe_selection(candidates, 10 << 20) == set()
    everything = sum(sizes.values())
    assert pe_selection(candidates, everything) == set(sizes)
