"""Fixtures for the composition tests: the host's own nodes (LoRA and ControlNet loaders, samplers, guiders,
conditioning nodes) run in-process on the pack's patched MODEL, with the 64-px, 8-view rig of tests/nodes.

Sampling runs are kept cheap (CPU): euler, normal schedule, cfg 5, seed 0 and ONE step (a whole UNet
evaluation of every view with cond and uncond) for the properties of a model (LoRA, ControlNet, guidance
patches); two steps where the sampler or schedule is the subject. ``patched_sample`` is the one-step run on the
patched model, shared by the tests that compare against it.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
import random_weights  # noqa: E402

PER_VIEW_TEXT = "\n".join(["a cosy kitchen", "a quiet garden at night"] * 4)


def declared_default(default, options):
    """What an input holds when left alone: its default, or a combo's first option (None for sockets)."""
    return default if default is not None else (options[0] if options else None)


def declared_inputs(cls) -> dict:
    """The required inputs of a host node (V1 ``INPUT_TYPES`` or V3 ``define_schema``) at their defaults."""
    if hasattr(cls, "define_schema"):
        return {spec.id: declared_default(getattr(spec, "default", None), getattr(spec, "options", None))
                for spec in cls.define_schema().inputs if not spec.optional}
    inputs = {}
    for name, (kind, *options) in cls.INPUT_TYPES()["required"].items():
        inputs[name] = declared_default((options or [{}])[0].get("default"), kind if isinstance(kind, list) else None)
    return inputs


@pytest.fixture(scope="session")
def host(comfy):
    """host(node_id, **inputs) -> result tuple: runs one of the host's own nodes (V1 or V3) as the executor does
    (in inference mode); inputs not given keep the node's declared defaults, so the call does not depend on
    inputs a host version added or renamed."""

    def run(node_id: str, **inputs):
        cls = comfy.nodes.NODE_CLASS_MAPPINGS[node_id]
        values = {**declared_inputs(cls), **inputs}
        with torch.inference_mode():
            if hasattr(cls, "define_schema"):
                return cls.execute(**values).result
            return getattr(cls(), cls.FUNCTION)(**values)

    return run


@pytest.fixture(scope="session")
def patched(graph, sd2, caa, cameras):
    """The test SD2 model with MVDiffusion applied (Apply MVDiffusion)."""
    return graph.run("MVDiffusionApply", model=sd2.model, caa=caa, cameras=cameras)[0]


@pytest.fixture(scope="session")
def patched_sample(graph, patched, prompts, cameras):
    """The host's KSampler on the patched model (euler, normal, 1 step, cfg 5, seed 0): the reference the tests
    compare to."""
    return graph.ksample(patched, prompts.pos, prompts.neg, graph.latent(cameras), steps=1)


@pytest.fixture(scope="session")
def per_view(graph, sd2, cameras):
    """A per-view conditioning from Panorama Prompts (8 rows, two different prompts in turn)."""
    return graph.run("MVDiffusionPanoramaPrompts", clip=sd2.clip, cameras=cameras, text=PER_VIEW_TEXT)[0]


@pytest.fixture(scope="session")
def lora_file(cache_dir):
    """The random LoRA for the test UNet (kohya keys), built once into the test cache."""
    return random_weights.lora(cache_dir)


@pytest.fixture(scope="session")
def controlnet(host, install, cache_dir):
    """The random ControlNet for the test UNet, loaded by the host's ControlNetLoader."""
    name = install(random_weights.controlnet(cache_dir), "controlnet")
    (net,) = host("ControlNetLoader", control_net_name=name)
    return types.SimpleNamespace(net=net, name=name)
