"""The random official-layout checkpoints of scripts/official_layouts.py are the official layouts.

The reference is the layout measured from the official Lightning modules (diffusers 0.16.1, transformers
4.28.1, pytorch-lightning 1.5.0; JSON files in ``tests/fixtures/checkpoint-layouts``, see its README).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import official_layouts as layouts  # noqa: E402

from comfyui_mvdiffusion.caa.positional_encoding import frequency_bands  # noqa: E402

LAYOUTS = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint-layouts"
FIXTURES = {"pano": "pano.json", "pano_outpaint": "pano_outpaint.json", "depth": "depth_gen.json",
            "depth_single_view": "depth_single_view.json"}


def fixture(kind: str) -> dict:
    return json.loads((LAYOUTS / FIXTURES[kind]).read_text())


@pytest.mark.parametrize("kind", sorted(FIXTURES))
def test_generated_keys_are_the_official_keys_in_order_with_shapes_and_dtypes(kind):
    layout = fixture(kind)
    want = [(name, tuple(shape), dtype) for name, shape, dtype in layout["keys"]]
    got = [(name, tuple(shape), str(dtype).removeprefix("torch."))
           for name, shape, dtype in layouts.official_keys(kind)]
    assert got == want
    assert sum(math.prod(shape) for _, shape, _ in got) == layout["n_elements"]


@pytest.mark.parametrize("kind", sorted(FIXTURES))
def test_bookkeeping_has_lightnings_top_level_entries_and_the_official_hyper_parameters(kind):
    layout = fixture(kind)
    entries = layouts.official_bookkeeping(kind)
    top = layout["lightning_checkpoint"]["top_level_keys"]
    assert sorted(entries) == sorted(k for k in top if k != "state_dict")
    if isinstance(layout["lightning_checkpoint"]["hyper_parameters"], dict):
        assert entries["hyper_parameters"] == layout["lightning_checkpoint"]["hyper_parameters"]
    groups = entries["optimizer_states"][0]["param_groups"]
    official = layout["trainable_param_groups"]
    assert [len(g["params"]) for g in groups] == [g["n_params"] for g in official]
    assert [g["initial_lr"] for g in groups] == [2e-4 * g["lr_scale"] for g in official]


def test_the_first_trainable_parameters_are_in_the_official_optimizer_order():
    layout = fixture("pano")
    names = layouts._trainable_groups("pano", layouts.official_keys("pano"))[0][1]
    first = layout["trainable_param_groups"][0]["first_keys"]
    assert names[:len(first)] == first


def test_a_saved_checkpoint_loads_with_weights_only_and_has_lightnings_structure(tmp_path):
    structure = json.loads((LAYOUTS / "lightning_ckpt_structure.json").read_text())
    sd = layouts.official_state_dict("pano", select=lambda k: k.startswith("mv_base_model.cp_blocks_mid."))
    path = layouts.save_lightning_checkpoint(tmp_path / "x.ckpt", sd, "pano")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert list(loaded) == structure["top_level_keys"]
    assert loaded["pytorch-lightning_version"] == "1.5.0" and loaded["hparams_name"] == "kwargs"
    assert isinstance(loaded["epoch"], int) and isinstance(loaded["global_step"], int)
    (callback,) = loaded["callbacks"].values()
    assert callback["monitor"] == "train_loss" and callback["best_model_score"].dtype == torch.float32
    assert loaded["lr_schedulers"][0]["T_max"] == 10
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in sd.items())


def test_random_values_are_sane_for_sampling():
    pick = {"mv_base_model.unet.conv_in.weight", "mv_base_model.unet.conv_in.bias",
            "mv_base_model.unet.up_blocks.3.attentions.2.transformer_blocks.0.norm1.bias",
            "mv_base_model.unet.up_blocks.3.attentions.2.transformer_blocks.0.norm1.weight",
            "text_encoder.text_model.embeddings.position_ids",
            "text_encoder.text_model.embeddings.position_embedding.weight",
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight",
            "mv_base_model.cp_blocks_encoder.0.pe.freq_bands", "mv_base_model.cp_blocks_mid.pe.freq_bands",
            "mv_base_model.cp_blocks_mid.transformer.attn1.to_out.weight",
            "mv_base_model.cp_blocks_mid.transformer.ff.net.2.weight"}
    sd = layouts.official_state_dict("pano", select=pick.__contains__)
    conv = sd["mv_base_model.unet.conv_in.weight"]
    assert abs(float(conv.std()) - 0.5 / 36 ** 0.5) < 0.01  # N(0, 0.5 / sqrt(fan_in)), fan_in 4*3*3
    assert not sd["mv_base_model.unet.conv_in.bias"].any()
    # zero norm biases keep ComfyUI's SD2 v-prediction heuristic (std of this bias > 0.09) on eps
    assert not sd["mv_base_model.unet.up_blocks.3.attentions.2.transformer_blocks.0.norm1.bias"].any()
    assert torch.equal(sd["mv_base_model.unet.up_blocks.3.attentions.2.transformer_blocks.0.norm1.weight"],
                       torch.ones(320))
    assert torch.equal(sd["text_encoder.text_model.embeddings.position_ids"], torch.arange(77)[None])
    assert sd["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight"].dtype == torch.float16
    assert float(sd["text_encoder.text_model.embeddings.position_embedding.weight"].float().std()) < 0.03
    assert torch.equal(sd["mv_base_model.cp_blocks_encoder.0.pe.freq_bands"], frequency_bands(80))
    assert torch.equal(sd["mv_base_model.cp_blocks_mid.pe.freq_bands"], frequency_bands(320))
    assert sd["mv_base_model.cp_blocks_mid.transformer.attn1.to_out.weight"].count_nonzero() > 0
    assert sd["mv_base_model.cp_blocks_mid.transformer.ff.net.2.weight"].count_nonzero() > 0


def test_any_subset_of_tensors_is_reproducible_from_the_seed_and_the_name():
    name = "mv_base_model.cp_blocks_encoder.1.transformer.attn1.to_k.weight"
    one = layouts.official_state_dict("pano", seed=3, select=lambda k: k == name)[name]
    more = layouts.official_state_dict("pano", seed=3, select=lambda k: k.startswith("mv_base_model.cp_blocks_encoder"))
    assert torch.equal(one, more[name])
    assert not torch.equal(one, layouts.official_state_dict("pano", seed=4, select=lambda k: k == name)[name])
