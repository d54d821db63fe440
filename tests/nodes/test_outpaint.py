"""Image -> 360° through the in-process host: the 9-channel UNet input the host's KSampler really builds from
Outpaint Conditioning, checked against the official construction written here from the spec
(../shared/docs/mvdiffusion-outpaint-depth.md §1), the host's own InpaintModelConditioning on the patched model,
the loaders' refusals, and partial-panorama completion that keeps the known pixels.
"""
from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

import random_weights

pytestmark = pytest.mark.host

SIZE = 64  # the cameras fixture's view size

SCALE = 0.18215  # SD2's latent scale: the official masked-image latents are vae.encode(x) * 0.18215


@pytest.fixture(scope="module")
def inpaint(comfy, graph, install, cache_dir, fp16_weights):
    """The random SD2-inpainting test checkpoint (host loader, weights stored in fp16 as with the host's
    --fp16-unet --fp16-text-enc) + random outpaint CAA weights (Load CAA Weights)."""
    name = install(random_weights.sd2_inpainting(cache_dir), "checkpoints")
    with torch.inference_mode(), fp16_weights():
        model, clip, vae = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]
    (caa,) = graph.run("MVDiffusionCAALoader", caa_name=install(random_weights.caa_outpaint(cache_dir), "mvdiffusion"))
    with torch.inference_mode():
        pos = comfy.nodes.CLIPTextEncode().encode(clip, "a street")[0]
        neg = comfy.nodes.CLIPTextEncode().encode(clip, "")[0]
    return types.SimpleNamespace(model=model, clip=clip, vae=vae, caa=caa, pos=pos, neg=neg)


def photo(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth random photo (1, h, w, 3) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, max(h // 8, 1), max(w // 8, 1), generator=g)
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear").permute(0, 2, 3, 1)


def unet_concat(comfy, graph, inpaint, cameras, pos, neg, latent, cfg=5.0) -> torch.Tensor:
    """The ``c_concat`` the host hands the patched UNet at the first step of a real KSampler run."""
    (patched,) = graph.run("MVDiffusionApply", model=inpaint.model, caa=inpaint.caa, cameras=cameras)
    spy, seen = patched.clone(), []

    def wrapper(apply_model, args):
        seen.append(args["c"]["c_concat"].detach().clone())
        return apply_model(args["input"], args["timestep"], **args["c"])

    spy.set_model_unet_function_wrapper(wrapper)
    graph.ksample(spy, pos, neg, latent, steps=1, cfg=cfg)
    return torch.cat(seen)


def official_concat(vae, views: torch.Tensor, generate: torch.Tensor) -> torch.Tensor:
    """Spec §1: mask per latent cell (1 = generate) then the masked-image latent, masked pixels mid-grey."""
    masked = views * (1 - generate[..., None]) + 0.5 * generate[..., None]
    with torch.inference_mode():
        latents = vae.encode(masked) * SCALE
    cells = generate[:, None].reshape(-1, 1, SIZE // 8, 8, SIZE // 8, 8).amax(dim=(3, 5))
    return torch.cat([cells, latents], dim=1)


def test_official_placement_gives_the_official_unet_input_on_cond_and_uncond(comfy, graph, inpaint, cameras):
    shot = photo(SIZE, 2 * SIZE)  # wide: the official fit keeps the short side and crops the centre
    views, mask = graph.run("MVDiffusionPlacePhoto", cameras=cameras, photo=shot, placement="official", fov=90.0,
                       yaw=0.0, pitch=0.0)
    pos, neg, latent = graph.run("MVDiffusionOutpaintConditioning", positive=inpaint.pos, negative=inpaint.neg,
                            vae=inpaint.vae, cameras=cameras, views=views, mask=mask, guide=False)
    expected_views = torch.full((8, SIZE, SIZE, 3), 0.5)
    expected_views[0] = shot[0, :, SIZE // 2:SIZE // 2 + SIZE]
    generate = torch.ones(8, SIZE, SIZE)
    generate[0] = 0  # 0 = keep on view 0, 1 = generate on views 1..7 (the code's polarity, not the paper's)
    torch.testing.assert_close(views, expected_views)
    assert torch.equal(mask, generate)
    assert torch.count_nonzero(latent["samples"]) == 0 and "noise_mask" not in latent  # pure noise start
    seen = unet_concat(comfy, graph, inpaint, cameras, pos, neg, latent)
    want = official_concat(inpaint.vae, expected_views, generate)
    assert seen.shape == (16, 5, SIZE // 8, SIZE // 8)  # cond and uncond rows, batched
    torch.testing.assert_close(seen[:8], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen[8:], want, atol=1e-5, rtol=1e-5)


def closed_form_footprint(view_yaw: float, photo_yaw: float, photo_fov: float, size: int, ph: int, pw: int):
    """Known pixels of a pitch-0 view (90° FoV, ``size`` px) for a pitch-0 photo (ph x pw px, ``photo_fov`` wide):
    the pixel's ray, turned into the photo's frame, lands inside the photo's pixel footprint."""
    f = 0.5 * size / math.tan(math.radians(45))
    fp = 0.5 * pw / math.tan(math.radians(photo_fov) / 2)
    y, x = np.meshgrid(np.arange(size) - (size - 1) / 2, np.arange(size) - (size - 1) / 2, indexing="ij")
    a = math.radians(view_yaw - photo_yaw)
    xr, zr = x * math.cos(a) + f * math.sin(a), -x * math.sin(a) + f * math.cos(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = fp * xr / zr + (pw - 1) / 2, fp * y / zr + (ph - 1) / 2
        return (zr > 0) & (u >= -0.5) & (u <= pw - 0.5) & (v >= -0.5) & (v <= ph - 0.5)


def test_reprojected_placement_masks_its_footprint_and_conditions_like_the_spec(comfy, graph, inpaint, cameras):
    shot = photo(48, 64, seed=1)
    views, mask = graph.run("MVDiffusionPlacePhoto", cameras=cameras, photo=shot, placement="reproject", fov=70.0,
                       yaw=20.0, pitch=0.0)
    for i in range(8):
        want = ~closed_form_footprint(45.0 * i, 20.0, 70.0, SIZE, 48, 64)
        assert float(((mask[i].numpy() > 0.5) != want).mean()) <= 0.002, i  # boundary rounding only
    assert 0 < float(mask[0].mean()) < 1 and float(mask[4].min()) == 1  # partly known / behind the photo
    pos, neg, latent = graph.run("MVDiffusionOutpaintConditioning", positive=inpaint.pos, negative=inpaint.neg,
                            vae=inpaint.vae, cameras=cameras, views=views, mask=mask, guide=False)
    seen = unet_concat(comfy, graph, inpaint, cameras, pos, neg, latent)
    want = official_concat(inpaint.vae, views, mask)
    torch.testing.assert_close(seen[:8], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen[8:], want, atol=1e-5, rtol=1e-5)


def test_guide_starts_from_the_known_views_with_the_hosts_noise_mask(comfy, graph, inpaint, cameras):
    views, mask = graph.run("MVDiffusionPlacePhoto", cameras=cameras, photo=photo(SIZE, SIZE),
                       placement="official", fov=90.0, yaw=90.0, pitch=0.0)
    assert float(mask[2].max()) == 0 and float(mask[0].min()) == 1  # yaw 90 = view 2
    _, _, latent = graph.run("MVDiffusionOutpaintConditioning", positive=inpaint.pos, negative=inpaint.neg,
                        vae=inpaint.vae, cameras=cameras, views=views, mask=mask, guide=True)
    want = official_concat(inpaint.vae, views, mask)
    torch.testing.assert_close(latent["samples"] * SCALE, want[:, 1:], atol=1e-5, rtol=1e-5)
    assert torch.equal(latent["noise_mask"], want[:, :1])


def test_the_hosts_inpaint_model_conditioning_feeds_the_patched_model_the_same_input(comfy, graph, inpaint,
                                                                                     cameras):
    views, mask = graph.run("MVDiffusionPlacePhoto", cameras=cameras, photo=photo(SIZE, SIZE, seed=3),
                       placement="official", fov=90.0, yaw=0.0, pitch=0.0)
    ours = graph.run("MVDiffusionOutpaintConditioning", positive=inpaint.pos, negative=inpaint.neg,
                vae=inpaint.vae, cameras=cameras, views=views, mask=mask, guide=False)
    with torch.inference_mode():
        host = comfy.nodes.InpaintModelConditioning().encode(inpaint.pos, inpaint.neg, views, inpaint.vae, mask,
                                                             noise_mask=False)
    empty = {"samples": torch.zeros_like(host[2]["samples"])}  # the official start; the host's is the photo
    seen_host = unet_concat(comfy, graph, inpaint, cameras, host[0], host[1], empty)
    seen_ours = unet_concat(comfy, graph, inpaint, cameras, ours[0], ours[1], ours[2])
    torch.testing.assert_close(seen_host, seen_ours, atol=1e-5, rtol=1e-5)
    sampled = graph.ksample(graph.run("MVDiffusionApply", model=inpaint.model, caa=inpaint.caa,
                                 cameras=cameras)[0], host[0], host[1], host[2])
    assert sampled.shape == (8, 4, SIZE // 8, SIZE // 8) and torch.isfinite(sampled).all()


def test_outpaint_caa_on_a_4_channel_unet_is_refused_with_the_fix(comfy, graph, install, sd2, cache_dir,
                                                                 cameras):
    (caa,) = graph.run("MVDiffusionCAALoader",
                  caa_name=install(random_weights.caa_outpaint(cache_dir), "mvdiffusion"))
    with pytest.raises(ValueError, match=r"Apply MVDiffusion: the CAA weights are pano_outpaint weights .* made "
                                         r"for 9-channel UNets, but the MODEL is a 4-channel \(SD2-base\) UNet: "
                                         r"connect an SD2-inpainting model"):
        graph.run("MVDiffusionApply", model=sd2.model, caa=caa, cameras=cameras)


def test_pano_caa_on_an_inpainting_unet_is_refused_with_the_fix(comfy, graph, caa, inpaint, cameras):
    with pytest.raises(ValueError, match=r"the CAA weights are pano weights .* made for 4-channel UNets, but the "
                                         r"MODEL is a 9-channel \(inpainting\) UNet: connect an SD2-base model"):
        graph.run("MVDiffusionApply", model=inpaint.model, caa=caa, cameras=cameras)


@pytest.mark.parametrize("node, inputs, message", [
    ("MVDiffusionPlacePhoto", dict(photo=None), "Place Photo: no photo"),
    ("MVDiffusionPlacePhoto", dict(photo=torch.zeros(2, 32, 32, 3)), "got a batch of 2 photos for one placement"),
    ("MVDiffusionPlacePhoto", dict(fov=179.0), "field of view must be between 1° and 179°, got 179°"),
    ("MVDiffusionPlacePhoto", dict(fov=1.0), "field of view must be between 1° and 179°, got 1°"),
    ("MVDiffusionPlacePhoto", dict(views=torch.zeros(8, SIZE, SIZE, 3)), "connect both 'views' and 'mask'"),
    ("MVDiffusionPlacePhoto", dict(views=torch.zeros(4, SIZE, SIZE, 3), mask=torch.ones(4, SIZE, SIZE)),
     r"the views are \(4, 64, 64, 3\); they must be scenes x 8 images of 64x64 px"),
    ("MVDiffusionPartialPanorama", dict(panorama=torch.zeros(1, 64, 128, 3), mask=torch.zeros(1, 64, 64)),
     "Partial Panorama: the mask is 64x64 but the panorama is 128x64"),
    ("MVDiffusionOutpaintConditioning", dict(mask=torch.ones(8, 32, 32)),
     r"Outpaint Conditioning: the mask is \(8, 32, 32\) but the views are \(8, 64, 64\)"),
])
def test_bad_outpaint_input_is_refused_before_sampling_naming_the_node(comfy, graph, inpaint, cameras, node, inputs,
                                                                      message):
    defaults = {
        "MVDiffusionPlacePhoto": dict(cameras=cameras, photo=photo(SIZE, SIZE), placement="reproject", fov=60.0,
                                      yaw=0.0, pitch=0.0),
        "MVDiffusionPartialPanorama": dict(cameras=cameras),
        "MVDiffusionOutpaintConditioning": dict(positive=inpaint.pos, negative=inpaint.neg, vae=inpaint.vae,
                                                cameras=cameras, views=torch.zeros(8, SIZE, SIZE, 3), guide=False),
    }[node]
    with pytest.raises(ValueError, match=message):
        graph.run(node, **{**defaults, **inputs})


def street(width: int = 256) -> torch.Tensor:
    """The real street panorama of tests/fixtures, resized to width x width/2: (1, H, W, 3) in [0, 1]."""
    from pathlib import Path

    from PIL import Image

    path = Path(__file__).resolve().parents[1] / "fixtures" / "panoramas" / "street_2048x1024.jpg"
    image = Image.open(path).convert("RGB").resize((width, width // 2), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def test_partial_panorama_completion_keeps_every_known_pixel_with_paste_and_in_the_stitch(comfy, graph, inpaint,
                                                                                           cameras):
    pano = street()
    missing = torch.zeros(1, 128, 256)
    missing[:, 40:90, 100:220] = 1  # a removed region across several views
    views, mask = graph.run("MVDiffusionPartialPanorama", panorama=pano, mask=missing, cameras=cameras)
    assert 0 < float(mask.mean()) < 1
    assert torch.all(views[mask > 0.5] == 0.5)  # what is to be filled is mid-grey
    pos, neg, latent = graph.run("MVDiffusionOutpaintConditioning", positive=inpaint.pos, negative=inpaint.neg,
                            vae=inpaint.vae, cameras=cameras, views=views, mask=mask, guide=False)
    (patched,) = graph.run("MVDiffusionApply", model=inpaint.model, caa=inpaint.caa, cameras=cameras)
    samples = graph.ksample(patched, pos, neg, latent)
    with torch.inference_mode():
        (decoded,) = comfy.nodes.VAEDecode().decode(inpaint.vae, {"samples": samples})
    (pasted,) = graph.run("MVDiffusionPasteKnown", images=decoded, views=views, mask=mask, feather=0)
    known = mask < 0.5
    assert torch.equal(pasted[known], views[known]) and torch.equal(pasted[~known], decoded[~known])
    (feathered,) = graph.run("MVDiffusionPasteKnown", images=decoded, views=views, mask=mask, feather=4)
    assert not torch.equal(feathered[known], views[known])  # the edge blends ...
    deep = torch.nn.functional.max_pool2d(mask[:, None], 9, stride=1, padding=4)[:, 0] < 0.5
    assert torch.equal(feathered[deep], views[deep])  # ... only within 4 px of what was generated
    stitched, _ = graph.run("MVDiffusionEquirectStitch", images=pasted, cameras=cameras, width=256, height=128,
                       blend="feather", known_panorama=pano, known_mask=missing)
    keep = missing[0] < 0.5
    assert torch.equal(stitched[0][keep], pano[0][keep])
    assert not torch.equal(stitched[0][~keep], pano[0][~keep])  # the hole was filled by the model


def test_without_outpaint_caa_an_inpainting_pass_fills_the_poles_of_a_ring_panorama(comfy, graph, inpaint, cameras):
    # the fallback of workflows/text_to_full_panorama.json: the ring's band as a partial sphere, the pole views
    # filled by the inpainting model alone through the host's KSampler (no CAA), the band kept exactly
    (ring_views,) = graph.run("MVDiffusionEquirectToViews", panorama=street(), cameras=cameras)
    band, covered = graph.run("MVDiffusionEquirectStitch", images=ring_views, cameras=cameras, width=256, height=128,
                              blend="feather")
    missing = 1.0 - covered
    assert 0.3 < float(missing.mean()) < 0.7  # the poles are open
    (sphere,) = graph.run("MVDiffusionSphereCameras", ring_views=8, ring_fov=90.0, poles="both", pole_fov=120.0,
                          rows="", width=SIZE, height=SIZE, min_overlap=0.1, max_neighbours=0)
    views, mask = graph.run("MVDiffusionPartialPanorama", panorama=band, mask=missing, cameras=sphere)
    assert float(mask[:8].mean()) < 0.05  # the ring views are known but for their outermost rows ...
    assert 0.2 < float(mask[8:].mean()) < 0.8  # ... the pole views partly: the band around their borders
    pos, neg, latent = graph.run("MVDiffusionOutpaintConditioning", positive=inpaint.pos, negative=inpaint.neg,
                                 vae=inpaint.vae, cameras=sphere, views=views, mask=mask, guide=False)
    samples = graph.ksample(inpaint.model, pos, neg, latent)
    with torch.inference_mode():
        (decoded,) = comfy.nodes.VAEDecode().decode(inpaint.vae, {"samples": samples})
    (pasted,) = graph.run("MVDiffusionPasteKnown", images=decoded, views=views, mask=mask, feather=4)
    full, coverage = graph.run("MVDiffusionEquirectStitch", images=pasted, cameras=sphere, width=256, height=128,
                               blend="feather", known_panorama=band, known_mask=missing)
    assert bool((coverage == 1).all())  # no hole
    keep = missing[0] < 0.5
    assert torch.equal(full[0][keep], band[0][keep])
    poles = full[0][~keep]
    assert float(poles.std()) > 0.01 and float((poles - 1.0).abs().max()) > 0.1  # filled, not the white fill
