"""The host's samplers, schedulers and custom-sampling nodes (RandomNoise, KSamplerSelect, BasicScheduler,
CFGGuider, DualCFGGuider, SamplerCustomAdvanced) on the patched model, and img2img (VAEEncode, denoise < 1)."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.host


@pytest.mark.parametrize("sampler,scheduler", [("euler_ancestral", "karras"), ("dpmpp_2m_sde", "exponential"),
                                               ("euler_ancestral_cfg_pp", "beta")],
                         ids=["ancestral-karras", "sde-exponential", "cfg++-beta"])
def test_a_sampler_and_scheduler_run_the_patched_model_with_caa_active(comfy, graph, sd2, patched, prompts,
                                                                        cameras, sampler, scheduler):
    samplers = comfy.comfy.samplers.KSampler
    if sampler not in samplers.SAMPLERS or scheduler not in samplers.SCHEDULERS:
        pytest.skip(f"this ComfyUI has no {sampler} sampler or {scheduler} scheduler")
    lat = graph.latent(cameras)
    views = graph.ksample(patched, prompts.pos, prompts.neg, lat, sampler=sampler, scheduler=scheduler)
    plain = graph.ksample(sd2.model, prompts.pos, prompts.neg, lat, sampler=sampler, scheduler=scheduler)
    assert torch.isfinite(views).all()
    assert graph.max_rel(views, plain) > 1e-2


def sample_custom_advanced(host, model, guider, lat, steps: int, seed: int = 0):
    """SamplerCustomAdvanced with RandomNoise, euler (KSamplerSelect) and the normal schedule (BasicScheduler)."""
    (noise,) = host("RandomNoise", noise_seed=seed)
    (sampler,) = host("KSamplerSelect", sampler_name="euler")
    (sigmas,) = host("BasicScheduler", model=model, scheduler="normal", steps=steps, denoise=1.0)
    return host("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                latent_image=lat)[0]["samples"]


@pytest.mark.parametrize("which", ["plain", "patched"])
def test_cfg_guider_with_sampler_custom_advanced_equals_the_ksampler(graph, host, sd2, patched, prompts, cameras,
                                                                     which):
    """Same seed, euler, normal schedule, cfg 5, 2 steps: the custom-sampling graph is the KSampler's run, bit for
    bit (on the plain model, which shows the two host paths agree, and on the patched one)."""
    model = patched if which == "patched" else sd2.model
    lat = graph.latent(cameras)
    (guider,) = host("CFGGuider", model=model, positive=prompts.pos, negative=prompts.neg, cfg=5.0)
    custom = sample_custom_advanced(host, model, guider, lat, steps=2)
    assert torch.equal(custom, graph.ksample(model, prompts.pos, prompts.neg, lat, steps=2))


def test_dual_cfg_guider_whose_second_cond_is_the_negative_is_plain_cfg_on_the_patched_model(
        graph, host, patched, patched_sample, prompts, cameras):
    """cond2 = negative reduces DualCFGGuider to cfg_conds-scaled CFG; its UNet calls hold three chunks of 8
    views (negative, cond2, cond1), which the patch attends separately."""
    (guider,) = host("DualCFGGuider", model=patched, cond1=prompts.pos, cond2=prompts.neg, negative=prompts.neg,
                     cfg_conds=5.0, cfg_cond2_negative=3.0, style="regular")
    dual = sample_custom_advanced(host, patched, guider, graph.latent(cameras), steps=1)
    assert torch.isfinite(dual).all()
    assert graph.max_rel(dual, patched_sample) < 1e-5


def test_img2img_at_half_denoise_stays_closer_to_the_input_than_full_denoise(host, sd2, patched, prompts):
    images = torch.rand(8, 64, 64, 3, generator=torch.Generator().manual_seed(7))
    (encoded,) = host("VAEEncode", pixels=images, vae=sd2.vae)

    def sample(denoise):
        (out,) = host("KSampler", model=patched, seed=0, steps=1, cfg=5.0, sampler_name="euler", scheduler="normal",
                      positive=prompts.pos, negative=prompts.neg, latent_image=encoded, denoise=denoise)
        return out["samples"]

    half, full = sample(0.5), sample(1.0)
    distance = {name: float((views - encoded["samples"]).norm()) for name, views in (("half", half), ("full", full))}
    assert torch.isfinite(half).all() and half.shape == encoded["samples"].shape == (8, 4, 8, 8)
    assert 0 < distance["half"] < distance["full"], distance
