"""The reference CAA block on hand-checkable cases (no ComfyUI needed)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from comfyui_mvdiffusion.caa.block import CorrespondenceAttention, sample_keys
from comfyui_mvdiffusion.caa.blockset import CAASet, SD2_WIDTHS
from comfyui_mvdiffusion.caa.positional_encoding import frequency_bands, positional_encoding
from comfyui_mvdiffusion.geometry import build_level_plan, level_plan, pano_rig


def test_the_state_dict_has_the_official_names_and_shapes():
    block = CorrespondenceAttention(320)
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    assert shapes == {
        "transformer.attn1.to_q.weight": (320, 320), "transformer.attn1.to_k.weight": (320, 320),
        "transformer.attn1.to_v.weight": (320, 320), "transformer.attn1.to_out.weight": (320, 320),
        "transformer.attn1.to_out.bias": (320,), "transformer.ff.net.0.proj.weight": (2560, 320),
        "transformer.ff.net.0.proj.bias": (2560,), "transformer.ff.net.2.weight": (320, 1280),
        "transformer.ff.net.2.bias": (320,), "transformer.norm1.weight": (320,), "transformer.norm1.bias": (320,),
        "transformer.norm2.weight": (320,), "transformer.norm2.bias": (320,), "pe.freq_bands": (1, 1, 80)}
    assert CAASet().widths == SD2_WIDTHS


def test_frequency_bands_are_powers_of_two_up_to_80_and_5000_based_above():
    assert torch.equal(frequency_bands(80)[0, 0], 2.0 ** torch.arange(80, dtype=torch.float32))
    f = frequency_bands(320)[0, 0]
    assert f[0] == 1 and abs(float(f[-1]) - (5000 ** (1 / 128)) ** 319) / 5000 ** (319 / 128) < 1e-4


def test_the_positional_encoding_of_zero_is_zeros_then_ones():
    block = CorrespondenceAttention(320)
    pe = block.query_pe()
    assert pe.shape == (1, 1, 320)
    assert torch.equal(pe[0, 0, :160], torch.zeros(160)) and torch.equal(pe[0, 0, 160:], torch.ones(160))


def test_the_positional_encoding_layout_is_sin_x_sin_y_cos_x_cos_y():
    freq = torch.tensor([[[1.0, 2.0, 4.0]]])
    v = torch.tensor([[0.3, -0.7]])
    pe = positional_encoding(v, freq)[0]
    x, y = 0.3 * freq[0, 0], -0.7 * freq[0, 0]
    assert torch.allclose(pe, torch.cat([x.sin(), y.sin(), x.cos(), y.cos()]))


def test_the_frequency_buffer_stays_float32_when_the_block_is_cast():
    block = CorrespondenceAttention(320).half()
    assert block.pe.freq_bands.dtype == torch.float32
    assert block.transformer.attn1.to_q.weight.dtype == torch.float16
    assert torch.isfinite(block.pe.freq_bands).all()


def test_with_the_official_zero_init_the_block_is_the_identity(random_block, features):
    rig = pano_rig(8, 90, 64, 64)
    block = random_block(320)
    caa = CAASet([320], 320, [320])
    caa.cp_blocks_encoder[0].load_state_dict(block.state_dict())
    caa.zero_()
    x = features(16, 320, 8)
    with torch.no_grad():
        assert torch.equal(caa.cp_blocks_encoder[0](x, level_plan(rig, 8, 8)), x)


def test_a_query_whose_keys_are_all_invalid_attends_only_to_the_norm1_bias_key(random_block, features,
                                                                                 all_keys_invalid):
    rig = pano_rig(8, 90, 64, 64)
    plan = build_level_plan(rig, 8, 8)
    valid = plan.valid.clone()
    valid[2, :, 3, 5] = False  # view 2, query pixel (x=5, y=3): every key invalid
    plan = dataclasses.replace(plan, valid=valid)
    block = random_block(320)
    x = features(8, 320, 8)
    with torch.no_grad():
        out = block(x, plan)
        expected = all_keys_invalid(block.transformer, x[2, :, 3, 5])
    assert torch.allclose(out[2, :, 3, 5], expected, atol=1e-5, rtol=1e-5)


def test_the_two_cfg_halves_of_a_batch_never_mix(random_block, features):
    rig = pano_rig(8, 90, 64, 64)
    block = random_block(640)
    x = features(16, 640, 4)
    x2 = x.clone()
    x2[:8] = torch.randn(8, 640, 4, 4)
    with torch.no_grad():
        out, out2 = block(x, level_plan(rig, 4, 4)), block(x2, level_plan(rig, 4, 4))
        alone = block(x[8:], level_plan(rig, 4, 4))
    assert not torch.allclose(out[:8], out2[:8])
    assert torch.equal(out[8:], out2[8:])
    assert torch.allclose(out[8:], alone, atol=1e-5)


def test_permuting_the_views_of_a_ring_rotates_the_output_the_same_way(random_block, features):
    """Rolling the views by one equals rotating the rig by one step (low PE frequencies, so the float32
    differences between the views' rotation matrices stay below the tolerance)."""
    rig = pano_rig(8, 90, 128, 128)
    block = random_block(320, freq_scale=1.0)
    x = features(8, 320, 16)
    with torch.no_grad():
        out = block(x, level_plan(rig, 16, 16))
        rolled = block(torch.roll(x, shifts=1, dims=0), level_plan(rig, 16, 16))
    assert torch.allclose(rolled, torch.roll(out, shifts=1, dims=0), atol=2e-4, rtol=1e-4)
    assert not torch.allclose(out, x, atol=1e-2)


def test_the_positional_encoding_depends_on_the_exact_float32_displacement():
    """Why the geometry must be float32 in the official order: one ulp moves the high-frequency channels."""
    d = torch.tensor([[0.37, -1.21]], dtype=torch.float32)
    nudged = torch.nextafter(d, torch.full_like(d, 10.0))
    pe, pe2 = positional_encoding(d, frequency_bands(80)), positional_encoding(nudged, frequency_bands(80))
    assert torch.allclose(pe[:, :10], pe2[:, :10], atol=1e-5)  # low frequencies: smooth
    assert (pe[:, 70:80] - pe2[:, 70:80]).abs().max() > 0.1  # 2^70..2^79: unrelated values


def test_keys_sampled_from_one_pixel_maps_are_the_pixel_times_its_zero_padded_bilinear_weight(features):
    """On a 1x1 map (64-px views at the deepest SD level) the sample at key-map point p of neighbour j is, as for
    bilinear interpolation with zero padding, ``x_j * max(0, 1 - |p_x|) * max(0, 1 - |p_y|)``. Here p is worked
    out independently of the plan: the query pixel (32, 32) mapped by ``K_j R_j^T R_i K_i^-1`` in float64,
    divided by the key scale 64, minus 0.5, plus the offset (dx, dy)."""
    rig = pano_rig(8, 90, 64, 64)
    plan = level_plan(rig, 1, 1)
    K, R = rig.K.double(), rig.R.double()
    query = torch.tensor([32.0, 32.0, 1.0], dtype=torch.float64)  # s_q // 2 with s_q = 64
    weight = torch.zeros(8, 18, dtype=torch.float64)
    source = torch.zeros(8, 18, dtype=torch.long)
    for i in range(8):
        for n, j in enumerate([(i - 1) % 8, (i + 1) % 8]):  # the official ring, in this order
            xyz = K[j] @ R[j].T @ R[i] @ torch.linalg.inv(K[i]) @ query
            centre = xyz[:2] / xyz[2] / 64 - 0.5
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    k = 9 * n + 3 * (dx + 1) + (dy + 1)
                    px, py = float(centre[0]) + dx, float(centre[1]) + dy
                    weight[i, k] = max(0.0, 1 - abs(px)) * max(0.0, 1 - abs(py))
                    source[i, k] = j
    assert ((weight > 0.1) & (weight < 0.9)).any() and (weight == 0).any()  # partial and empty taps both occur
    assert torch.allclose(plan.sample_weight[:, :, 0, 0].double(), weight, atol=1e-5)
    x = features(16, 32, 1)  # two groups of 8 views
    sampled = sample_keys(x, plan)  # (2, 8, 18, 32, 1, 1)
    expected = x.reshape(2, 8, 32)[:, source] * weight.float()[None, :, :, None]  # (2, 8, 18, 32)
    assert torch.allclose(sampled[..., 0, 0], expected, atol=1e-5)


def test_a_block_on_one_pixel_feature_maps_gives_finite_values(random_block, features):
    """The official forward divides by zero there and returns NaN."""
    rig = pano_rig(8, 90, 64, 64)
    block = random_block(1280)
    with torch.no_grad():
        out = block(features(16, 1280, 1), level_plan(rig, 1, 1))
    assert torch.isfinite(out).all()


def test_feature_maps_of_the_wrong_size_or_view_count_are_refused(random_block, features):
    rig = pano_rig(8, 90, 64, 64)
    block = random_block(320)
    with pytest.raises(ValueError, match="not a multiple of the rig's 8 views"):
        block(features(5, 320, 8), level_plan(rig, 8, 8))
    with pytest.raises(ValueError, match="plan is for 8x8"):
        block(features(8, 320, 4), level_plan(rig, 8, 8))
    with pytest.raises(ValueError, match="width 320 got 640-channel"):
        block(features(8, 640, 8), level_plan(rig, 8, 8))
