"""Apply MVDiffusion and MVDiffusion KSampler in the real host (in-process, CPU, random weights, 64-px views)."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.host


def apply(graph, model, caa, cameras):
    return graph.run("MVDiffusionApply", model=model, caa=caa, cameras=cameras)[0]


def test_zero_caa_weights_give_the_hosts_plain_batched_result(comfy, graph, sd2, zero_caa, cameras, prompts):
    lat = graph.latent(cameras)
    plain = graph.ksample(sd2.model, prompts.pos, prompts.neg, lat)
    patched = graph.ksample(apply(graph, sd2.model, zero_caa, cameras), prompts.pos, prompts.neg, lat)
    assert torch.equal(patched, plain)


def test_caa_weights_change_the_views(graph, sd2, caa, cameras, prompts):
    lat = graph.latent(cameras)
    plain = graph.ksample(sd2.model, prompts.pos, prompts.neg, lat)
    patched = graph.ksample(apply(graph, sd2.model, caa, cameras), prompts.pos, prompts.neg, lat)
    assert torch.isfinite(patched).all()
    assert graph.max_rel(patched, plain) > 1e-2


def test_the_input_model_samples_exactly_as_before_after_apply(comfy, graph, sd2, caa, cameras, prompts):
    lat = graph.latent(cameras)
    before = graph.ksample(sd2.model, prompts.pos, prompts.neg, lat)
    object_patches = dict(sd2.model.object_patches)
    patches = {k: list(v) for k, v in sd2.model.model_options.get("transformer_options", {})
               .get("patches", {}).items()}
    patched = apply(graph, sd2.model, caa, cameras)
    graph.ksample(patched, prompts.pos, prompts.neg, lat)
    after = graph.ksample(sd2.model, prompts.pos, prompts.neg, lat)
    assert torch.equal(after, before)
    assert sd2.model.object_patches == object_patches
    assert {k: list(v) for k, v in sd2.model.model_options.get("transformer_options", {})
            .get("patches", {}).items()} == patches
    assert patched is not sd2.model and patched.object_patches  # the patch lives in the clone only


def test_applying_twice_replaces_the_patch_instead_of_stacking_it(graph, sd2, caa, cameras, prompts):
    lat = graph.latent(cameras)
    once = apply(graph, sd2.model, caa, cameras)
    twice = apply(graph, once, caa, cameras)
    patches = twice.model_options["transformer_options"]["patches"]["input_block_patch_after_skip"]
    assert len(patches) == 1
    assert torch.equal(graph.ksample(twice, prompts.pos, prompts.neg, lat),
                       graph.ksample(once, prompts.pos, prompts.neg, lat))


def test_mvdiffusion_ksampler_equals_apply_then_the_hosts_ksampler(graph, sd2, caa, cameras, prompts):
    lat = graph.latent(cameras)
    (ours,) = graph.run("MVDiffusionKSampler", model=sd2.model, caa=caa, cameras=cameras, positive=prompts.pos,
                        negative=prompts.neg, latent_image=lat, seed=3, steps=2, cfg=5.0, sampler_name="euler",
                        scheduler="normal", denoise=1.0)
    host = graph.ksample(apply(graph, sd2.model, caa, cameras), prompts.pos, prompts.neg, lat, seed=3)
    assert torch.equal(ours["samples"], host)


def test_fast_and_reference_attention_sample_the_same_views(comfy, graph, sd2, caa, cameras, prompts):
    patch = comfy.module("caa.patch")
    lat = graph.latent(cameras)
    fast = graph.ksample(patch.patch_model(sd2.model, caa.caa, cameras, caa.patcher, "fast"),
                         prompts.pos, prompts.neg, lat)
    reference = graph.ksample(patch.patch_model(sd2.model, caa.caa, cameras, caa.patcher, "reference"),
                              prompts.pos, prompts.neg, lat)
    assert graph.max_rel(fast, reference) < 1e-4


def test_scenes_of_one_batch_do_not_see_each_other(comfy, graph, sd2, caa, cameras, prompts):
    sample = comfy.comfy.sample
    model = apply(graph, sd2.model, caa, cameras)
    lat = graph.latent(cameras, scenes=2)["samples"]
    noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(5))
    both = sample.sample(model, noise, 2, 5.0, "euler", "normal", prompts.pos, prompts.neg, lat)
    second = sample.sample(model, noise[8:], 2, 5.0, "euler", "normal", prompts.pos, prompts.neg, lat[8:])
    assert graph.max_rel(both[8:], second) < 1e-5


def test_cond_and_uncond_chunks_never_mix(comfy, graph, sd2, caa, cameras):
    """In one UNet call, changing the first chunk's context leaves the second chunk's output unchanged."""
    model = apply(graph, sd2.model, caa, cameras)
    comfy.mm.load_models_gpu([model])
    x = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.full((16,), 0.5)
    ctx = torch.randn(16, 77, 1024, generator=torch.Generator().manual_seed(2))
    ctx2 = ctx.clone()
    ctx2[:8] = torch.randn(8, 77, 1024, generator=torch.Generator().manual_seed(3))
    options = {"transformer_options": model.model_options["transformer_options"]}
    with torch.no_grad():
        out = model.model.apply_model(x, t, c_crossattn=ctx, **options)
        out2 = model.model.apply_model(x, t, c_crossattn=ctx2, **options)
        alone = model.model.apply_model(x[8:], t[8:], c_crossattn=ctx[8:], **options)
    assert not torch.allclose(out[:8], out2[:8])
    assert torch.equal(out[8:], out2[8:])
    assert graph.max_rel(out[8:], alone) < 1e-5


def record_unet_calls(model, monkeypatch) -> list:
    """The batch size of every UNet call of ``model`` (appended as the host makes them)."""
    calls = []
    diffusion_model = model.model.diffusion_model
    real_forward = diffusion_model.forward

    def counting_forward(x, *args, **kwargs):
        calls.append(x.shape[0])
        return real_forward(x, *args, **kwargs)

    monkeypatch.setattr(diffusion_model, "forward", counting_forward)
    return calls


def low_memory(comfy, model, monkeypatch) -> None:
    """Make the host believe it has room for one chunk of 8 views per UNet call, not for two."""
    free = model.model.memory_required([12, 4, 8, 8])
    monkeypatch.setattr(comfy.mm, "get_free_memory",
                        lambda dev=None, torch_free_too=False: (free, free) if torch_free_too else free)


def test_cond_and_uncond_in_separate_calls_give_the_batched_result(comfy, graph, sd2, caa, cameras, prompts,
                                                                   monkeypatch):
    """Under memory pressure ComfyUI runs cond and uncond in separate UNet calls: same result."""
    model = apply(graph, sd2.model, caa, cameras)
    lat = graph.latent(cameras)
    together = graph.ksample(model, prompts.pos, prompts.neg, lat)
    calls = record_unet_calls(model, monkeypatch)
    low_memory(comfy, model, monkeypatch)
    separate = graph.ksample(model, prompts.pos, prompts.neg, lat)
    assert calls and set(calls) == {8}, calls
    assert graph.max_rel(separate, together) < 1e-5


def test_cfg_1_samples_the_cond_chunk_alone(graph, sd2, caa, zero_caa, cameras, prompts, monkeypatch):
    lat = graph.latent(cameras)
    model = apply(graph, sd2.model, caa, cameras)
    patch = model.model_options["transformer_options"]["patches"]["input_block_patch_after_skip"][0]
    seen = []  # what the host tells the patch about each UNet call: rows and its cond_or_uncond chunk list
    check = patch.check_grouping
    monkeypatch.setattr(patch, "check_grouping", lambda rows, chunks: seen.append((rows, chunks)) or check(rows, chunks))
    patched = graph.ksample(model, prompts.pos, prompts.neg, lat, cfg=1.0)
    assert (8, [0]) in seen and all(chunks in (None, [0]) for _, chunks in seen), seen
    identity = graph.ksample(apply(graph, sd2.model, zero_caa, cameras), prompts.pos, prompts.neg, lat, cfg=1.0)
    plain = graph.ksample(sd2.model, prompts.pos, prompts.neg, lat, cfg=1.0)
    assert torch.isfinite(patched).all()
    assert torch.equal(identity, plain)
    assert graph.max_rel(patched, plain) > 1e-2


def test_combined_conditionings_are_separate_chunks(comfy, graph, sd2, caa, cameras, prompts, monkeypatch):
    """ConditioningCombine adds a chunk to every UNet call: the result is the same whether the host batches the
    three chunks (two prompts, uncond) in one call or runs them one by one, so CAA never mixes them."""
    (other,) = graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text="a quiet garden")
    (combined,) = comfy.nodes.ConditioningCombine().combine(prompts.pos, other)
    model = apply(graph, sd2.model, caa, cameras)
    lat = graph.latent(cameras)
    calls = record_unet_calls(model, monkeypatch)
    together = graph.ksample(model, combined, prompts.neg, lat)
    assert calls and set(calls) == {24}, calls
    calls.clear()
    low_memory(comfy, model, monkeypatch)
    separate = graph.ksample(model, combined, prompts.neg, lat)
    assert calls and set(calls) == {8}, calls
    assert graph.max_rel(separate, together) < 1e-5


def test_weight_patches_on_the_model_keep_working(graph, sd2, caa, cameras, prompts):
    """A LoRA-style weight patch gives the same result whether added before or after Apply MVDiffusion."""
    key = "diffusion_model.input_blocks.1.0.in_layers.2.weight"
    weight = sd2.model.model.state_dict()[key]
    diff = torch.randn(weight.shape, generator=torch.Generator().manual_seed(4)) * 0.05
    lat = graph.latent(cameras)

    lora_first = sd2.model.clone()
    lora_first.add_patches({key: (diff,)}, 1.0)
    a = graph.ksample(apply(graph, lora_first, caa, cameras), prompts.pos, prompts.neg, lat)
    lora_last = apply(graph, sd2.model, caa, cameras)
    lora_last.add_patches({key: (diff,)}, 1.0)
    b = graph.ksample(lora_last, prompts.pos, prompts.neg, lat)
    without = graph.ksample(apply(graph, sd2.model, caa, cameras), prompts.pos, prompts.neg, lat)
    assert torch.equal(a, b)
    assert graph.max_rel(a, without) > 1e-3


def test_caa_working_memory_is_added_to_the_hosts_estimate(comfy, graph, sd2, caa, cameras, prompts, monkeypatch):
    seen = []
    real = comfy.mm.load_models_gpu

    def spy(models, memory_required=0, *args, **kwargs):
        seen.append(memory_required)
        return real(models, memory_required, *args, **kwargs)

    monkeypatch.setattr(comfy.mm, "load_models_gpu", spy)
    lat = graph.latent(cameras)
    graph.ksample(sd2.model, prompts.pos, prompts.neg, lat)
    plain = seen[-1]
    model = apply(graph, sd2.model, caa, cameras)
    graph.ksample(model, prompts.pos, prompts.neg, lat)
    patch = model.model_options["transformer_options"]["patches"]["input_block_patch_after_skip"][0]
    assert seen[-1] - plain >= patch.extra_memory(8, 4)


@pytest.mark.parametrize("scenes,views", [(1, 5), (1, 12)])
def test_a_latent_batch_that_is_not_a_multiple_of_the_views_is_refused(graph, sd2, caa, cameras, prompts, scenes,
                                                                         views):
    lat = {"samples": torch.zeros(views, 4, 8, 8)}
    with pytest.raises(ValueError, match=r"MVDiffusion KSampler: the latent batch holds \d+ images"):
        graph.run("MVDiffusionKSampler", model=sd2.model, caa=caa, cameras=cameras, positive=prompts.pos,
                  negative=prompts.neg, latent_image=lat, seed=0, steps=1, cfg=5.0, sampler_name="euler",
                  scheduler="normal", denoise=1.0)
    with pytest.raises(ValueError, match=f"the latent batch holds {views} images, but the cameras have 8 views"):
        graph.ksample(apply(graph, sd2.model, caa, cameras), prompts.pos, prompts.neg, lat)


def test_a_rig_of_another_size_than_the_latent_is_refused_before_sampling(graph, sd2, caa, prompts, monkeypatch):
    (big,) = graph.run("MVDiffusionPanoramaCameras", views=8, fov=90.0, pitch=0.0, width=512, height=512,
                       yaw_offset=0.0)
    model = apply(graph, sd2.model, caa, big)
    calls = []
    monkeypatch.setattr(model.model.diffusion_model, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=r"the latent is 64x64 px .* but the cameras are 512x512 px"):
        graph.ksample(model, prompts.pos, prompts.neg, {"samples": torch.zeros(8, 4, 8, 8)})
    assert not calls


def test_a_conditioning_with_rows_for_another_number_of_views_is_refused_before_sampling(graph, sd2, caa, cameras,
                                                                                      prompts, monkeypatch):
    (cond, extra), = prompts.neg
    three = [[cond[:1].repeat(3, 1, 1), {k: (v[:1].repeat(3, 1) if k == "pooled_output" else v)
                                          for k, v in extra.items()}]]
    model = apply(graph, sd2.model, caa, cameras)
    calls = record_unet_calls(model, monkeypatch)
    with pytest.raises(ValueError, match=r"the positive conditioning has 3 rows, but with 8 camera views"):
        graph.ksample(model, three, prompts.neg, graph.latent(cameras))
    assert not calls


def test_area_conditioning_is_refused(comfy, graph, sd2, caa, cameras, prompts):
    (area,) = comfy.nodes.ConditioningSetArea().append(prompts.pos, 32, 32, 0, 0, 1.0)
    with pytest.raises(ValueError, match="area conditioning"):
        graph.ksample(apply(graph, sd2.model, caa, cameras), area, prompts.neg, graph.latent(cameras))


def test_context_windows_over_the_batch_are_refused(comfy, graph, sd2, caa, cameras, prompts):
    windows = comfy.nodes.NODE_CLASS_MAPPINGS["ContextWindowsManual"]
    inputs = {}  # the node's defaults (its inputs differ between ComfyUI versions), windows of 4 over the batch
    for spec in windows.define_schema().inputs:
        default = getattr(spec, "default", None)
        inputs[spec.id] = default if default is not None else (getattr(spec, "options", None) or [None])[0]
    inputs.update(model=apply(graph, sd2.model, caa, cameras), context_length=4, context_overlap=1, dim=0)
    (model,) = windows.execute(**inputs).result
    with pytest.raises(ValueError, match="context windows"):
        graph.ksample(model, prompts.pos, prompts.neg, graph.latent(cameras))


def test_caa_weights_of_other_widths_are_refused_naming_the_node(comfy, graph, sd2, cameras):
    weights_cls = comfy.module("nodes.caa_weights").CAAWeights
    sd2_widths = comfy.module("caa.blockset").CAASet().state_dict()
    with pytest.raises(ValueError, match="Apply MVDiffusion: the CAA weights do not fit this model's UNet"):
        apply(graph, sd2.model, weights_cls(sd2_widths, {"source": "sd2 layout"}), cameras)


def test_the_multiview_ksampler_reports_progress_and_stops_on_interrupt(comfy, graph, sd2, caa, cameras, prompts):
    utils = comfy.comfy.utils
    steps_seen = []
    utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: steps_seen.append(value))
    try:
        graph.run("MVDiffusionKSampler", model=sd2.model, caa=caa, cameras=cameras, positive=prompts.pos,
                  negative=prompts.neg, latent_image=graph.latent(cameras), seed=0, steps=3, cfg=5.0,
                  sampler_name="euler", scheduler="normal", denoise=1.0)
        assert steps_seen[-1] == 3
        comfy.mm.interrupt_current_processing(True)
        with pytest.raises(comfy.mm.InterruptProcessingException):
            graph.run("MVDiffusionKSampler", model=sd2.model, caa=caa, cameras=cameras, positive=prompts.pos,
                      negative=prompts.neg, latent_image=graph.latent(cameras), seed=0, steps=3, cfg=5.0,
                      sampler_name="euler", scheduler="normal", denoise=1.0)
    finally:
        comfy.mm.interrupt_current_processing(False)
        utils.set_progress_bar_global_hook(None)


def test_multi_gpu_splitting_is_refused_before_sampling(graph, sd2, caa, cameras, prompts):
    model = apply(graph, sd2.model, caa, cameras)
    model.set_additional_models("multigpu", [sd2.model.clone()])  # what MultiGPU nodes attach (newer hosts)
    with pytest.raises(ValueError, match="multi-GPU splitting would send the views of one scene"):
        graph.ksample(model, prompts.pos, prompts.neg, graph.latent(cameras))


def another_unet_instance(comfy, model):
    """A new ComfyUI model object of the same class and config holding the same UNet weights (what newer hosts
    build for multi-GPU copies); built from the config, since newer model configs cannot be deep-copied."""
    config = model.model.model_config
    other = config.get_model({})
    other.diffusion_model.load_state_dict(model.model.diffusion_model.state_dict())
    return comfy.comfy.model_patcher.ModelPatcher(other, load_device=model.load_device,
                                                  offload_device=model.offload_device)


def test_a_clone_onto_another_unet_instance_runs_caa_on_that_unets_own_layers(comfy, graph, sd2, caa, cameras,
                                                                             prompts):
    """Our ON_CLONE callback, given a clone that holds another UNet instance with the object patches copied (as
    newer hosts make for multi-GPU copies and non-dynamic delegates), rebuilds the layer copies from that UNet's
    own layers, and that clone samples like the original."""
    import copy

    layers = comfy.module("caa.layers")
    model = apply(graph, sd2.model, caa, cameras)
    other = another_unet_instance(comfy, sd2.model)
    other.object_patches = dict(model.object_patches)
    other.model_options = copy.copy(model.model_options)
    other.wrappers, other.callbacks = model.wrappers, model.callbacks
    for callback in model.get_all_callbacks("on_clone"):
        callback(model, other)
    assert set(other.object_patches) == set(model.object_patches)
    own = lambda root, target: layers.unwrap_layer(layers.module_at(root, target))  # noqa: E731
    for target, layer in other.object_patches.items():
        assert layers.unwrap_layer(layer) is own(other.model, target)
        assert layers.unwrap_layer(layer) is not own(sd2.model.model, target)
    lat = graph.latent(cameras)
    assert torch.equal(graph.ksample(other, prompts.pos, prompts.neg, lat),
                       graph.ksample(model, prompts.pos, prompts.neg, lat))


def live_run_objects(comfy) -> int:
    """How many plans, tap tables, folded weights and run caches exist in this process."""
    import gc

    kinds = (comfy.module("geometry.sampling_plan").LevelPlan, comfy.module("caa.fast").TapPlan,
             comfy.module("caa.fast").DeviceTaps, comfy.module("caa.fast").FoldedWeights,
             comfy.module("caa.run_cache").RunCache)
    gc.collect()
    return sum(isinstance(o, kinds) for o in gc.get_objects())


def test_the_hosts_ksampler_run_leaves_no_plan_weight_or_encoding_behind(comfy, graph, sd2, caa, cameras, prompts):
    """Through the host's KSampler: during the run the cache holds the plans, folded weights and encodings;
    when the KSampler returns, nothing the run built is alive anywhere in the process (on every host: the
    sampling wrapper's finally and the host's ON_CLEANUP callback drop it; no global cache keeps it)."""
    utils = comfy.comfy.utils
    model = apply(graph, sd2.model, caa, cameras)
    patch = model.model_options["transformer_options"]["patches"]["input_block_patch_after_skip"][0]
    before = live_run_objects(comfy)
    during = []
    utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: during.append(
        (patch.run_cache.nbytes(), len(patch.run_cache.folded), len(patch.run_cache.encodings))))
    try:
        graph.ksample(model, prompts.pos, prompts.neg, graph.latent(cameras), steps=2)
    finally:
        utils.set_progress_bar_global_hook(None)
    assert during and all(nbytes > 0 and folded == 9 and encodings > 0 for nbytes, folded, encodings in during)
    assert patch.run_cache is None
    assert live_run_objects(comfy) == before


def test_an_interrupted_run_leaves_nothing_behind_either(comfy, graph, sd2, caa, cameras, prompts):
    model = apply(graph, sd2.model, caa, cameras)
    patch = model.model_options["transformer_options"]["patches"]["input_block_patch_after_skip"][0]
    before = live_run_objects(comfy)
    utils = comfy.comfy.utils
    utils.set_progress_bar_global_hook(lambda *args, **kwargs: comfy.mm.interrupt_current_processing(True))
    try:
        with pytest.raises(comfy.mm.InterruptProcessingException):
            graph.ksample(model, prompts.pos, prompts.neg, graph.latent(cameras), steps=5)
    finally:
        comfy.mm.interrupt_current_processing(False)
        utils.set_progress_bar_global_hook(None)
    assert patch.run_cache is None
    assert live_run_objects(comfy) == before


def test_sampling_plans_are_built_once_per_level_not_per_step(comfy, graph, sd2, caa, cameras, prompts, monkeypatch):
    plans = comfy.module("geometry.sampling_plan")
    built = []
    build = plans.build_level_plan
    monkeypatch.setattr(plans, "build_level_plan", lambda rig, h, w: built.append((h, w)) or build(rig, h, w))
    graph.ksample(apply(graph, sd2.model, caa, cameras), prompts.pos, prompts.neg, graph.latent(cameras), steps=3)
    assert sorted(built) == [(1, 1), (2, 2), (4, 4), (8, 8)]  # 64-px views: one plan per UNet level, 3 steps
