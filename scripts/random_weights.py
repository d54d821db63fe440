"""Random-weight models for the tests and the demo (no model hub, no real weights needed).

* :func:`sd2_checkpoint`: an SD2 checkpoint (UNet, CLIP, VAE) built with ComfyUI's own classes and saved with
  ComfyUI's own ``save_checkpoint``, so that ``CheckpointLoaderSimple`` detects it as SD2 (eps). The UNet is
  320 wide but shallow (one res block per level, widths 320/320/640/640) to keep tests fast; CLIP and VAE
  have their real sizes (ComfyUI builds them from fixed configs). Stored as fp16 safetensors.
* :func:`caa_weights`: CAA weights in this pack's safetensors format, matching that UNet's widths.
* :func:`controlnet`: a ControlNet for that UNet in the original ``control_model.`` layout, which the host's
  ``ControlNetLoader`` recognises from its keys.
* :func:`lora`: a LoRA for that UNet in kohya's key format (``lora_unet_<diffusers name>.lora_down/lora_up/
  alpha``) over every attention and projection layer, which ``LoraLoader(ModelOnly)`` reads.

Random checkpoints in the layout of the official MVDiffusion releases are in ``official_layouts.py``.

Comfy's layers skip weight initialisation, so every parameter is initialised here explicitly (seeded).
Files are written once into a cache folder and reused (the name carries a format version).
Needs ComfyUI importable with the CPU forced (see :func:`import_host`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_host  # noqa: E402


def atomic_write(path, write):
    """The pack's atomic writer (``caa.checkpoint.writing.atomic_write``): ``write(tmp)``, then renamed."""
    from importlib import import_module

    return import_module(f"{comfy_host.import_pack().__name__}.caa.checkpoint").atomic_write(path, write)

VERSION = 1


def models_dir() -> Path:
    """Where random models are cached (shared by the tests and the demo: each is built once)."""
    return comfy_host.cache_dir() / "test-models"


# the shallow SD2-like UNet of the tests: 4 levels like SD2 (so 64-px views reach a 1x1 deepest level)
TEST_UNET = dict(channel_mult=[1, 1, 2, 2], num_res_blocks=[1, 1, 1, 1], transformer_depth=[1, 1, 1, 0])


@torch.no_grad()
def init_parameters(module: torch.nn.Module, seed: int, gain: float = 0.5) -> None:
    """Seeded init of every parameter: weights ~ N(0, gain / sqrt(fan_in)), norm scales 1, biases 0."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=gen) * (gain / fan_in ** 0.5))
        elif name.endswith("bias"):
            p.zero_()
        else:  # norm scales, 1-d embeddings, logit scales
            p.fill_(1.0)


def test_unet_config(in_channels: int = 4) -> dict:
    """The UNet config of the shallow SD2-like test model (ComfyUI ``UNetModel`` keyword arguments)."""
    levels = len(TEST_UNET["channel_mult"])
    depth_in, depth_out = [], []
    for level in range(levels):
        depth_in += [TEST_UNET["transformer_depth"][level]] * TEST_UNET["num_res_blocks"][level]
        depth_out += [TEST_UNET["transformer_depth"][level]] * (TEST_UNET["num_res_blocks"][level] + 1)
    return {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "in_channels": in_channels, "out_channels": 4, "model_channels": 320,
        "num_res_blocks": TEST_UNET["num_res_blocks"], "channel_mult": TEST_UNET["channel_mult"],
        "transformer_depth": depth_in, "transformer_depth_output": depth_out, "transformer_depth_middle": 1,
        "use_linear_in_transformer": True, "context_dim": 1024, "num_head_channels": 64, "num_heads": -1,
        "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def test_unet_widths() -> dict:
    """CAA widths for the test UNet: encoder per level, mid, decoder per level (deepest first)."""
    widths = [320 * c for c in TEST_UNET["channel_mult"]]
    return {"encoder": widths, "mid": widths[-1], "decoder": widths[::-1]}


def sd2_checkpoint(out_dir: Path, seed: int = 0, in_channels: int = 4) -> Path:
    """Build (once) and return the path of the random SD2 test checkpoint (``in_channels=9``: the
    SD2-inpainting variant, which ComfyUI detects as an inpainting model)."""
    suffix = "" if in_channels == 4 else f"_in{in_channels}"
    path = Path(out_dir) / f"mvd_test_sd2_v{VERSION}_s{seed}{suffix}.safetensors"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy_host.import_host()
    import comfy.ldm.models.autoencoder
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import comfy.utils

    cpu = torch.device("cpu")
    config = comfy.supported_models.SD20(test_unet_config(in_channels))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    init_parameters(model.diffusion_model, seed)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)

    clip = comfy.sd.CLIP(config.clip_target({}))
    init_parameters(clip.cond_stage_model, seed + 1)
    # token and position embeddings like CLIP's own init (small), so prompts stay distinguishable
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for name, p in clip.cond_stage_model.named_parameters():
            if "embedding" in name and p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    vae_model = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    init_parameters(vae_model, seed + 3)
    vae = comfy.sd.VAE(sd=vae_model.state_dict())

    def write(tmp: str) -> None:
        from safetensors.torch import load_file

        comfy.sd.save_checkpoint(tmp, patcher, clip, vae)
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(tmp).items()}
        comfy.utils.save_torch_file(sd, tmp)

    return atomic_write(path, write)


def test_condition_widths(widths: dict | None = None) -> dict:
    """The depth model's condition-encoder widths for the test UNet (or given CAA widths): C0 = the first level's
    width; down level i: the width entering it; up level i: the width entering it (the mid's, then the decoder's)."""
    widths = widths or test_unet_widths()
    base = widths["encoder"][0]
    return {"base": base, "down": [base] + widths["encoder"][:-1], "up": [widths["mid"]] + widths["decoder"][:-1]}


def caa_weights(out_dir: Path, seed: int = 0, widths: dict | None = None, scale: float = 1.0,
                model_kind: str = "pano") -> Path:
    """Build (once) random CAA weights for the test UNet (or given widths) in this pack's format, labelled
    ``model_kind`` ("pano", "pano_outpaint" for the inpainting UNet, or "depth": depth CPBlocks and condition
    encoders for the 5-channel UNet)."""
    widths = widths or test_unet_widths()
    tag = "-".join(map(str, widths["encoder"])) + f"_{widths['mid']}_" + "-".join(map(str, widths["decoder"]))
    kind = "" if model_kind == "pano" else f"_{model_kind}"
    path = Path(out_dir) / f"mvd_test_caa_v{VERSION}_{tag}_s{seed}_x{scale:g}{kind}.safetensors"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    pack = comfy_host.import_pack()
    from importlib import import_module

    checkpoint = import_module(f"{pack.__name__}.caa.checkpoint")
    if model_kind == "depth":
        sets = import_module(f"{pack.__name__}.caa.depth_blockset")
        caa = sets.DepthCAASet(widths["encoder"], widths["mid"], widths["decoder"], test_condition_widths(widths))
    else:
        caa = import_module(f"{pack.__name__}.caa.blockset").CAASet(widths["encoder"], widths["mid"],
                                                                    widths["decoder"])
    init_parameters(caa, seed, gain=0.5 * scale)
    return checkpoint.save_caa_file(caa.state_dict(), path, source="random (tests)", model_kind=model_kind,
                                    dtype=torch.float16)  # written atomically


def _save_once(path: Path, state_dict: dict) -> Path:
    """Save ``state_dict`` (floating tensors as fp16) with ComfyUI's writer to a temporary file renamed to
    ``path``, so an interrupted build never leaves a truncated file in the cache."""
    import comfy.utils

    return atomic_write(path, lambda tmp: comfy.utils.save_torch_file(
        {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}, tmp))


def controlnet(out_dir: Path, seed: int = 0) -> Path:
    """Build (once) a random ControlNet for the test UNet (same widths, levels and attention layout), in the
    original ControlNet file layout (``control_model.`` + ComfyUI's ``cldm.ControlNet`` names): the host's
    loader detects its UNet config from the keys. The zero convolutions are random too (not zero), so the
    ControlNet changes the result."""
    path = Path(out_dir) / f"mvd_test_controlnet_v{VERSION}_s{seed}.safetensors"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy_host.import_host()
    import comfy.cldm.cldm

    config = {k: v for k, v in test_unet_config().items() if k != "out_channels"}
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=torch.float32, device=torch.device("cpu"), **config)
    init_parameters(net, seed)
    return _save_once(path, {f"control_model.{k}": v for k, v in net.state_dict().items()})


def lora(out_dir: Path, seed: int = 0, rank: int = 4, gain: float = 0.1) -> Path:
    """Build (once) a random LoRA for the test UNet in kohya's format: for every linear layer of its
    transformers (attention q/k/v/out, feed-forward, proj_in/out), ``lora_unet_<diffusers name>.lora_down``
    (rank x in), ``.lora_up`` (out x rank) and ``.alpha`` (= rank, scale 1). Its update ``up @ down`` has
    entries of about ``gain / sqrt(in)`` (the test UNet's own weights: 0.5 / sqrt(in))."""
    path = Path(out_dir) / f"mvd_test_lora_v{VERSION}_s{seed}_r{rank}_x{gain:g}.safetensors"
    if path.exists():
        return path
    comfy_host.import_host()
    import comfy.utils
    from safetensors import safe_open

    layers = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
              "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
    gen = torch.Generator().manual_seed(seed)
    state = {}
    with safe_open(sd2_checkpoint(out_dir), framework="pt") as unet:  # the shapes of the test UNet's layers
        for name, ldm in sorted(comfy.utils.unet_to_diffusers(test_unet_config()).items()):
            if not name.endswith(tuple(f"{layer}.weight" for layer in layers)):
                continue
            out_features, in_features = unet.get_slice(f"model.diffusion_model.{ldm}").get_shape()
            key = "lora_unet_" + name.removesuffix(".weight").replace(".", "_")
            state[f"{key}.lora_down.weight"] = torch.randn(rank, in_features, generator=gen) / in_features ** 0.5
            state[f"{key}.lora_up.weight"] = torch.randn(out_features, rank, generator=gen) * (gain / rank ** 0.5)
            state[f"{key}.alpha"] = torch.tensor(float(rank))
    return _save_once(path, state)


def official_pano(out_dir: Path, seed: int = 0) -> Path:
    """The full-size random checkpoint in the official pano.ckpt layout (``official_layouts``; 5 GB)."""
    import official_layouts

    return official_layouts.official_checkpoint(out_dir, "pano", seed)


def official_pano_outpaint(out_dir: Path, seed: int = 0) -> Path:
    """The full-size random checkpoint in the official pano_outpaint.ckpt layout (9-channel UNet; 5 GB)."""
    import official_layouts

    return official_layouts.official_checkpoint(out_dir, "pano_outpaint", seed)


def official_depth(out_dir: Path, seed: int = 0) -> Path:
    """The full-size random checkpoint in the official depth_gen.ckpt layout (5-channel UNet, depth CPBlocks,
    condition encoders) with fp16 weights (3.3 GB instead of 6.5 GB; freq_bands float32, names and shapes
    official). Its single-view sibling is ``official_layouts.derived_checkpoint(..., "depth_single_view")``."""
    import official_layouts

    return official_layouts.official_checkpoint(out_dir, "depth", seed, weights_dtype=torch.float16)


def depth_unet(out_dir: Path, seed: int = 0) -> Path:
    """Build (once) the random SD2-depth test UNet (the test UNet with 5 input channels) as a UNet-only file in
    ComfyUI's names, for the host's UNETLoader (Load Diffusion Model)."""
    path = Path(out_dir) / f"mvd_test_depth_unet_v{VERSION}_s{seed}.safetensors"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    comfy_host.import_host()
    import comfy.supported_models

    config = comfy.supported_models.SD20(test_unet_config(in_channels=5))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    init_parameters(model.diffusion_model, seed + 5)
    return _save_once(path, model.diffusion_model.state_dict())


def caa_depth(out_dir: Path, seed: int = 0) -> Path:
    """Random depth CAA weights (CPBlocks and condition encoders) for the test UNet, in this pack's format."""
    return caa_weights(out_dir, seed, model_kind="depth")


def sd2_inpainting(out_dir: Path, seed: int = 0) -> Path:
    """The random SD2-inpainting test checkpoint (9-channel test UNet, host format)."""
    return sd2_checkpoint(out_dir, seed, in_channels=9)


def caa_outpaint(out_dir: Path, seed: int = 0) -> Path:
    """Random CAA weights for the test UNet labelled as pano_outpaint weights."""
    return caa_weights(out_dir, seed, model_kind="pano_outpaint")


BUILDERS = {"pano": official_pano, "pano_outpaint": official_pano_outpaint, "depth": official_depth,
            "sd2": sd2_checkpoint, "sd2_inpainting": sd2_inpainting, "caa": caa_weights, "caa_outpaint": caa_outpaint,
            "depth_unet": depth_unet, "caa_depth": caa_depth, "controlnet": controlnet, "lora": lora}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="+", choices=sorted(BUILDERS), help="the models to build (each once)")
    parser.add_argument("--out", type=Path, default=models_dir())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for what in args.what:
        print(BUILDERS[what](args.out, seed=args.seed), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

