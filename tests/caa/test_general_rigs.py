"""CAA on general rigs: neighbour lists of different lengths (padding keys take no part in the attention, in the
reference and the fast path alike) and correspondences only in front of the neighbour (positive depth)."""
from __future__ import annotations

import torch

from comfyui_mvdiffusion.caa.fast import fast_forward
from comfyui_mvdiffusion.geometry import level_plan, rig_cameras, unet_level_sizes
from comfyui_mvdiffusion.geometry.sphere import sphere_rig

YAWS, PITCHES, FOVS = [0.0, 60.0, 120.0, 180.0], [0.0, 10.0, 0.0, -10.0], [100.0, 100.0, 100.0, 100.0]


def _rig(neighbours, size=64):
    return rig_cameras(YAWS, PITCHES, FOVS, size, size, neighbours=neighbours)


def test_a_view_attends_to_exactly_its_own_neighbours_whatever_the_others_have(random_block, features):
    # view 0 lists one neighbour in both rigs; in the first, other views list three, so view 0 gets two padding
    # slots (18 absent keys). Its output must be the one it has when nobody is padded.
    padded = _rig([(1,), (0, 2, 3), (1, 3, 0), (2, 0, 1)])
    plain = _rig([(1,), (0,), (1,), (2,)])
    block = random_block(320, seed=3)
    x = features(4, 320, 8, seed=4)
    plan_padded, plan_plain = level_plan(padded, 8, 8), level_plan(plain, 8, 8)
    assert plan_padded.present is not None and plan_padded.present[0].tolist() == [True] * 9 + [False] * 18
    assert plan_plain.present is None
    with torch.no_grad():
        out_padded, out_plain = block(x, plan_padded), block(x, plan_plain)
    torch.testing.assert_close(out_padded[0], out_plain[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out_padded[1], out_plain[1], atol=1e-3)  # views 1-3 do see their extra neighbours


def test_padding_keys_are_invalid_with_finite_zeros():
    plan = level_plan(_rig([(1,), (0, 2), (1, 3), (2, 0)]), 8, 8)
    absent = ~plan.present[0]
    assert not plan.valid[0, absent].any()
    assert plan.grid[0, absent].abs().max() == 0 and plan.displacement[0, absent].abs().max() == 0


def test_the_fast_path_equals_the_reference_on_a_padded_rig_at_every_level(random_block, features):
    rig = sphere_rig(8, 90.0, 64, 64, pole_fov_deg=120.0)  # poles list 8 neighbours, ring views 4
    for level, (h, w) in enumerate(unet_level_sizes(64, 64)):
        width = [320, 640, 1280, 1280][level]
        plan = level_plan(rig, h, w)
        block = random_block(width, seed=level)
        x = features(2 * rig.num_views, width, h, seed=level)  # two groups, like cond and uncond
        with torch.no_grad():
            ref, fast = block(x, plan), fast_forward(block, x, plan)
        assert torch.isfinite(fast).all()
        assert float((fast - ref).abs().max() / (ref - x).abs().max()) <= 1e-4, level


def test_a_key_is_valid_only_where_the_query_ray_lies_in_front_of_the_neighbour():
    rig = sphere_rig(8, 90.0, 64, 64, pole_fov_deg=120.0)
    plan = level_plan(rig, 8, 8)  # level 0: 8x8 queries, scale 8
    ys, xs = torch.meshgrid(torch.arange(8) * 8 + 4, torch.arange(8) * 8 + 4, indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).double().reshape(-1, 3).T  # (3, 64) query pixels
    K, R = rig.K.double(), rig.R.double()
    behind_but_inside = 0
    for i in range(rig.num_views):
        rays = R[i] @ torch.linalg.inv(K[i]) @ pix  # world rays of view i's query pixels
        for n, j in enumerate(rig.neighbours[i]):
            cam = R[j].T @ rays  # in view j's camera frame
            ahead = (cam[2] > 0).reshape(8, 8)
            valid = plan.valid[i, 9 * n:9 * n + 9]  # (9, 8, 8)
            assert not (valid & ~ahead).any(), (i, j)
            uv = K[j] @ cam
            x, y = uv[0] / uv[2], uv[1] / uv[2]
            mirrored = (~ahead.reshape(-1)) & (x > 0) & (x < 63) & (y > 0) & (y < 63)
            behind_but_inside += int(mirrored.sum())
    assert behind_but_inside > 0  # the check matters: without it those mirrored points would count as valid
