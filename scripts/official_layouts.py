"""Random checkpoints in the exact layout of the official MVDiffusion releases (pano.ckpt, pano_outpaint.ckpt,
depth_gen.ckpt, depth_single_view.ckpt), for the tests and the demo.

The key lists are generated here (no fixture file needed at run time, so the demo works anywhere);
tests/caa/test_checkpoint_layout.py checks them against the layouts measured from the official modules
(tests/fixtures/checkpoint-layouts/*.json): same keys, order, shapes and dtypes. Tensors are seeded by
(seed, name), so any subset of a checkpoint is reproducible. Needs torch only (no ComfyUI).
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path

import torch

OFFICIAL_VERSION = 1
OFFICIAL_KINDS = ("pano", "pano_outpaint", "depth", "depth_single_view")
_OFFICIAL_UNET_IN = {"pano": 4, "pano_outpaint": 9, "depth": 5, "depth_single_view": 5}
_OFFICIAL_MODEL_ID = {"pano": "stabilityai/stable-diffusion-2-base",
                      "pano_outpaint": "stabilityai/stable-diffusion-2-inpainting",
                      "depth": "stabilityai/stable-diffusion-2-depth",
                      "depth_single_view": "stabilityai/stable-diffusion-2-depth"}


def _official_text_encoder(dtype):
    """transformers 4.28 CLIPTextModel of SD2 (OpenCLIP-H, 23 of its 24 layers), prefix ``text_encoder.``."""
    p, h = "text_encoder.text_model.", 1024
    keys = [(p + "embeddings.position_ids", (1, 77), torch.int64),
            (p + "embeddings.token_embedding.weight", (49408, h), dtype),
            (p + "embeddings.position_embedding.weight", (77, h), dtype)]
    for i in range(23):
        q = f"{p}encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            keys += [(f"{q}self_attn.{proj}.weight", (h, h), dtype), (f"{q}self_attn.{proj}.bias", (h,), dtype)]
        keys += [(q + "layer_norm1.weight", (h,), dtype), (q + "layer_norm1.bias", (h,), dtype),
                 (q + "mlp.fc1.weight", (4 * h, h), dtype), (q + "mlp.fc1.bias", (4 * h,), dtype),
                 (q + "mlp.fc2.weight", (h, 4 * h), dtype), (q + "mlp.fc2.bias", (h,), dtype),
                 (q + "layer_norm2.weight", (h,), dtype), (q + "layer_norm2.bias", (h,), dtype)]
    return keys + [(p + "final_layer_norm.weight", (h,), dtype), (p + "final_layer_norm.bias", (h,), dtype)]


def _conv(name, cout, cin, k, dtype=torch.float32):
    return [(name + ".weight", (cout, cin, k, k), dtype), (name + ".bias", (cout,), dtype)]


def _norm(name, c, dtype=torch.float32):
    return [(name + ".weight", (c,), dtype), (name + ".bias", (c,), dtype)]


def _linear(name, cout, cin, bias=True, dtype=torch.float32):
    return [(name + ".weight", (cout, cin), dtype)] + ([(name + ".bias", (cout,), dtype)] if bias else [])


def _official_vae():
    """diffusers 0.16 AutoencoderKL of SD2 (old attention names query/key/value/proj_attn), prefix ``vae.``."""

    def resnet(name, cin, cout):
        keys = _norm(name + ".norm1", cin) + _conv(name + ".conv1", cout, cin, 3) + _norm(name + ".norm2", cout) \
            + _conv(name + ".conv2", cout, cout, 3)
        return keys + (_conv(name + ".conv_shortcut", cout, cin, 1) if cin != cout else [])

    def mid(name, c):
        a = name + ".attentions.0"
        keys = _norm(a + ".group_norm", c)
        for proj in ("query", "key", "value", "proj_attn"):
            keys += _linear(f"{a}.{proj}", c, c)
        return keys + resnet(name + ".resnets.0", c, c) + resnet(name + ".resnets.1", c, c)

    def blocks(prefix, chans, cin, resnets, resampler):
        """The resolution levels: ``resnets`` ResNet blocks each, then a resampler (not after the last level)."""
        keys = []
        for i, c in enumerate(chans):
            for j in range(resnets):
                keys += resnet(f"{prefix}.{i}.resnets.{j}", cin if j == 0 else c, c)
            if i < len(chans) - 1:
                keys += _conv(f"{prefix}.{i}.{resampler}.0.conv", c, c, 3)
            cin = c
        return keys

    chans = [128, 256, 512, 512]
    keys = _conv("vae.encoder.conv_in", 128, 3, 3) + blocks("vae.encoder.down_blocks", chans, 128, 2, "downsamplers")
    keys += mid("vae.encoder.mid_block", 512) + _norm("vae.encoder.conv_norm_out", 512) \
        + _conv("vae.encoder.conv_out", 8, 512, 3)
    keys += _conv("vae.decoder.conv_in", 512, 4, 3) + blocks("vae.decoder.up_blocks", chans[::-1], 512, 3, "upsamplers")
    keys += mid("vae.decoder.mid_block", 512) + _norm("vae.decoder.conv_norm_out", 128) \
        + _conv("vae.decoder.conv_out", 3, 128, 3)
    return keys + _conv("vae.quant_conv", 8, 8, 1) + _conv("vae.post_quant_conv", 4, 4, 1)


def _official_unet(in_channels, model_channels=320, context_dim=1024):
    """diffusers 0.16 UNet2DConditionModel of SD2 (linear projections), prefix ``mv_base_model.unet.``."""
    p = "mv_base_model.unet."
    chans = [model_channels * m for m in (1, 2, 4, 4)]
    temb = 4 * model_channels

    def resnet(name, cin, cout):
        keys = _norm(name + ".norm1", cin) + _conv(name + ".conv1", cout, cin, 3) \
            + _linear(name + ".time_emb_proj", cout, temb) + _norm(name + ".norm2", cout) \
            + _conv(name + ".conv2", cout, cout, 3)
        return keys + (_conv(name + ".conv_shortcut", cout, cin, 1) if cin != cout else [])

    def transformer(name, c):
        t = name + ".transformer_blocks.0"
        keys = _norm(name + ".norm", c) + _linear(name + ".proj_in", c, c) + _norm(t + ".norm1", c)
        keys += [(f"{t}.attn1.{x}.weight", (c, c), torch.float32) for x in ("to_q", "to_k", "to_v")]
        keys += _linear(t + ".attn1.to_out.0", c, c) + _norm(t + ".norm2", c)
        keys += _linear(t + ".attn2.to_q", c, c, bias=False) + _linear(t + ".attn2.to_k", c, context_dim, bias=False) \
            + _linear(t + ".attn2.to_v", c, context_dim, bias=False) + _linear(t + ".attn2.to_out.0", c, c)
        keys += _norm(t + ".norm3", c) + _linear(t + ".ff.net.0.proj", 8 * c, c) + _linear(t + ".ff.net.2", c, 4 * c)
        return keys + _linear(name + ".proj_out", c, c)

    keys = _conv(p + "conv_in", model_channels, in_channels, 3) \
        + _linear(p + "time_embedding.linear_1", temb, model_channels) \
        + _linear(p + "time_embedding.linear_2", temb, temb)
    skips, cin = [model_channels], model_channels
    for i, c in enumerate(chans):
        b = f"{p}down_blocks.{i}"
        if i < 3:
            for j in range(2):
                keys += transformer(f"{b}.attentions.{j}", c)
        for j in range(2):
            keys += resnet(f"{b}.resnets.{j}", cin if j == 0 else c, c)
            skips.append(c)
        if i < 3:
            keys += _conv(f"{b}.downsamplers.0.conv", c, c, 3)
            skips.append(c)
        cin = c
    for i, c in enumerate(chans[::-1]):
        b = f"{p}up_blocks.{i}"
        if i > 0:
            for j in range(3):
                keys += transformer(f"{b}.attentions.{j}", c)
        for j in range(3):
            keys += resnet(f"{b}.resnets.{j}", cin + skips.pop(), c)
            cin = c
        if i < 3:
            keys += _conv(f"{b}.upsamplers.0.conv", c, c, 3)
    c = chans[-1]
    keys += transformer(p + "mid_block.attentions.0", c) + resnet(p + "mid_block.resnets.0", c, c) \
        + resnet(p + "mid_block.resnets.1", c, c)
    return keys + _norm(p + "conv_norm_out", model_channels) + _conv(p + "conv_out", 4, model_channels, 3)


def _official_caa(widths, depth=False):
    """The CAA blocks, prefix ``mv_base_model.``: pano ``CPAttn`` (pe width dim/4) or depth ``CPBlock``
    (its ``attn1`` is a CPAttn with pe width dim/2, plus a zero-initialised ResNet block)."""

    def cpattn(name, c, pe):
        t = name + ".transformer"
        keys = [(f"{t}.attn1.{x}.weight", (c, c), torch.float32) for x in ("to_q", "to_k", "to_v")]
        keys += _linear(t + ".attn1.to_out", c, c) + _linear(t + ".ff.net.0.proj", 8 * c, c) \
            + _linear(t + ".ff.net.2", c, 4 * c) + _norm(t + ".norm1", c) + _norm(t + ".norm2", c)
        return keys + [(name + ".pe.freq_bands", (1, 1, pe), torch.float32)]

    def block(name, c):
        if not depth:
            return cpattn(name, c, c // 4)
        r = name + ".resnet"
        return cpattn(name + ".attn1", c, c // 2) + [(r + ".conv1.weight", (c, c, 3, 3), torch.float32)] \
            + _norm(r + ".bn1", c) + [(r + ".conv2.weight", (c, c, 3, 3), torch.float32)] + _norm(r + ".bn2", c)

    keys = []
    for k, c in enumerate(widths["encoder"]):
        keys += block(f"mv_base_model.cp_blocks_encoder.{k}", c)
    keys += block("mv_base_model.cp_blocks_mid", widths["mid"])
    for k, c in enumerate(widths["decoder"]):
        keys += block(f"mv_base_model.cp_blocks_decoder.{k}", c)
    return keys


def _official_condition_encoders(model_channels=320):
    """depth_gen's key-frame condition encoders (``ImageEncodingBlock``s), prefix ``mv_base_model.``."""
    m = model_channels
    keys = _conv("mv_base_model.condition_conv_in", m, 5, 3)
    for part, outs in (("condition_downblocks", (m, m, 2 * m, 4 * m)),
                       ("condition_upblocks", (4 * m, 4 * m, 4 * m, 2 * m))):
        for i, c in enumerate(outs):
            name = f"mv_base_model.{part}.{i}"
            keys += _norm(name + ".norm1", m) + _conv(name + ".conv1", c, m, 3) + _norm(name + ".norm2", c) \
                + _conv(name + ".conv2", c, c, 1)
    return keys


def official_keys(kind: str = "pano", model_channels: int = 320) -> list:
    """``[(name, shape, dtype)]`` of an official checkpoint's ``state_dict``, in the official order.

    ``model_channels`` < 320 shrinks the UNet and the CAA blocks (same names, for fast naming tests; the
    real checkpoints are 320). The text encoder is fp16 in the pano models and fp32 in the depth ones.
    """
    if kind not in OFFICIAL_KINDS:
        raise ValueError(f"kind must be one of {OFFICIAL_KINDS}, not {kind!r}")
    chans = [model_channels * m for m in (1, 2, 4, 4)]
    widths = {"encoder": chans, "mid": chans[-1], "decoder": chans[::-1]}
    unet = _official_unet(_OFFICIAL_UNET_IN[kind], model_channels)
    if kind in ("pano", "pano_outpaint"):
        return _official_text_encoder(torch.float16) + _official_vae() + unet + _official_caa(widths)
    keys = _official_vae() + _official_text_encoder(torch.float32) + unet
    if kind == "depth":
        keys += _official_caa(widths, depth=True) + _official_condition_encoders(model_channels)
    return keys


def official_tensor(name: str, shape, dtype, seed: int = 0, gain: float = 0.5) -> torch.Tensor:
    """One tensor of a random official checkpoint, seeded by (seed, name) so any subset is reproducible.

    Weights ~ N(0, gain / sqrt(fan_in)); norm scales 1; biases 0 (zero norm biases keep ComfyUI's SD2
    v-prediction heuristic on eps); embeddings N(0, 0.02); ``pe.freq_bands`` = frequency_bands(N);
    ``position_ids`` = arange. The CAA output layers are random too (not the official zero init), so the
    blocks do something.
    """
    shape = tuple(shape)
    if name.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=dtype).reshape(shape)
    if name.endswith("pe.freq_bands"):
        base = 2 if shape[-1] <= 80 else 5000 ** (1 / (shape[-1] / 2.5))  # = positional_encoding.frequency_bands
        return (base ** torch.linspace(0, shape[-1] - 1, shape[-1])).reshape(shape).to(dtype)
    if len(shape) == 1:
        return (torch.zeros if name.endswith("bias") else torch.ones)(shape, dtype=dtype)
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFF_FFFF_FFFF_FFFF)
    std = 0.02 if "embedding" in name else gain / math.prod(shape[1:]) ** 0.5
    return torch.randn(shape, generator=gen).mul_(std).to(dtype)


def stored_dtype(name: str, dtype, weights_dtype=None):
    """The dtype a tensor is written in: ``weights_dtype`` (when given) for floating weights; the positional-
    encoding frequencies and integer buffers always as in the official file."""
    if weights_dtype is None or not dtype.is_floating_point or name.endswith("pe.freq_bands"):
        return dtype
    return weights_dtype


def official_state_dict(kind: str = "pano", seed: int = 0, select=None, model_channels: int = 320,
                        weights_dtype=None) -> dict:
    """The random ``state_dict`` of an official checkpoint (or the keys for which ``select(name)`` is true);
    ``weights_dtype`` (e.g. torch.float16) stores the floating weights in that dtype (see :func:`stored_dtype`)."""
    return {name: official_tensor(name, shape, stored_dtype(name, dtype, weights_dtype), seed)
            for name, shape, dtype in official_keys(kind, model_channels) if select is None or select(name)}


_HYPER = {
    "pano": {"dataset": {"name": "mp3d", "image_root_dir": "data/mp3d_skybox", "fov": 90, "rot": 45,
                         "resolution": 512, "crop_size": 512, "seed": 0},
             "train": {"lr": 0.0002, "max_epochs": 10, "batch_size": 1},
             "model": {"model_type": "pano_generation", "guidance_scale": 9.0,
                       "model_id": "stabilityai/stable-diffusion-2-base", "single_image_ft": False,
                       "diff_timestep": 50}},
    "depth": {"dataset": {"name": "scannet", "num_views": 12, "image_dir": "data/scannet/train",
                          "resolution_h": 192, "resolution_w": 256, "data_load_mode": "fix_frame",
                          "test_interval": -1, "gen_data_ratio": 0.5},
              "train": {"lr": 0.0002, "max_epochs": 5, "batch_size": 1},
              "model": {"model_id": "stabilityai/stable-diffusion-2-depth",
                        "depth_config": "configs/depth_preprocessor_config.json", "guidance_scale": 9.0,
                        "diff_timestep": 50, "model_type": "depth", "overlap_filter": 0.3}},
}


def official_hyper_parameters(kind: str) -> dict:
    """``hyper_parameters`` as the official Lightning module saved them (``save_hyperparameters()``)."""
    import copy

    config = copy.deepcopy(_HYPER["depth" if kind.startswith("depth") else "pano"])
    if kind == "pano_outpaint":
        config["model"]["model_type"] = "pano_generation_outpaint"
        config["model"]["model_id"] = _OFFICIAL_MODEL_ID[kind]
    return {"config": config}


def _trainable_groups(kind: str, keys: list) -> list:
    """(lr_scale, parameter names) per optimizer group, in the official order."""
    params = [k for k, _, _ in keys if not k.endswith(("freq_bands", "position_ids"))]
    if kind == "depth_single_view":
        return [(0.01, [k for k in params if k.startswith("mv_base_model.unet.")])]
    if kind == "depth":
        return [(1.0, [k for k in params if k.startswith("mv_base_model.cp_blocks_")]),
                (1.0, [k for k in params if k.startswith("mv_base_model.condition_")])]
    order = ("mv_base_model.cp_blocks_mid.", "mv_base_model.cp_blocks_decoder.", "mv_base_model.cp_blocks_encoder.")
    return [(1.0, [k for prefix in order for k in params if k.startswith(prefix)])]


def official_bookkeeping(kind: str, keys: list | None = None) -> dict:
    """The top-level entries a pytorch-lightning 1.5 checkpoint carries besides ``state_dict`` (all loadable
    with ``weights_only=True``); the optimizer state is left empty (the real one would double the size)."""
    keys = keys if keys is not None else official_keys(kind)
    hyper = official_hyper_parameters(kind)
    lr, epochs = hyper["config"]["train"]["lr"], hyper["config"]["train"]["max_epochs"]
    groups, start = [], 0
    for scale, names in _trainable_groups(kind, keys):
        groups.append({"lr": 1e-7, "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0.01, "amsgrad": False,
                       "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                       "fused": None, "decoupled_weight_decay": True, "initial_lr": lr * scale,
                       "params": list(range(start, start + len(names)))})
        start += len(names)
    callback = ("ModelCheckpoint{'monitor': 'train_loss', 'mode': 'min', 'every_n_train_steps': 0, "
                "'every_n_epochs': 1, 'train_time_interval': None, 'save_on_train_epoch_end': True}")
    return {
        "epoch": epochs - 1,
        "global_step": 1000 * epochs,
        "pytorch-lightning_version": "1.5.0",
        "callbacks": {callback: {"monitor": "train_loss", "best_model_score": torch.tensor(0.05),
                                 "best_model_path": f"logs/tb_logs/{kind}/version_0/checkpoints/last.ckpt",
                                 "current_score": torch.tensor(0.05),
                                 "dirpath": f"logs/tb_logs/{kind}/version_0/checkpoints"}},
        "optimizer_states": [{"state": {}, "param_groups": groups}],
        "lr_schedulers": [{"T_max": epochs, "eta_min": 1e-07, "base_lrs": [lr * s for s, _ in
                                                                          _trainable_groups(kind, keys)],
                           "last_epoch": epochs, "_step_count": epochs + 1, "_is_initial": False,
                           "_get_lr_called_within_step": False, "_last_lr": [1e-07] * len(groups)}],
        "hparams_name": "kwargs",
        "hyper_parameters": hyper,
    }


def save_lightning_checkpoint(path: Path, state_dict: dict, kind: str = "pano", keys: list | None = None) -> Path:
    """``torch.save`` a Lightning-1.5-style checkpoint (bookkeeping of :func:`official_bookkeeping` around
    ``state_dict``, top-level entries in Lightning's order) to a temporary file renamed to ``path``."""
    path = Path(path)
    extra = official_bookkeeping(kind, keys)
    checkpoint = {k: extra[k] for k in ("epoch", "global_step", "pytorch-lightning_version")}
    checkpoint["state_dict"] = state_dict
    checkpoint.update({k: v for k, v in extra.items() if k not in checkpoint})
    from random_weights import atomic_write

    return atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def official_checkpoint(out_dir: Path, kind: str = "pano", seed: int = 0, model_channels: int = 320,
                        weights_dtype=None) -> Path:
    """Build (once, cached by name) a random Lightning ``.ckpt`` in the exact layout of an official release.

    Full size (``model_channels=320``) it is ~5 GB (pano: 1.44 G elements, 5.07 GB; about 30 s here, peak
    RSS 5.5 GB): the tensors are generated one by one directly in their final dtype (no fp32 copy of the
    fp16 text encoder) and written with ``torch.save`` to a temporary file renamed into place.
    ``weights_dtype=torch.float16`` writes the same names and shapes with fp16 weights (half the size: the
    depth models, whose official text encoder is fp32, are tested that way; the readers do not care).
    """
    suffix = "" if model_channels == 320 else f"_c{model_channels}"
    if weights_dtype is not None:
        suffix += "_" + str(weights_dtype).removeprefix("torch.")
    path = Path(out_dir) / f"mvd_official_{kind}_v{OFFICIAL_VERSION}_s{seed}{suffix}.ckpt"
    if path.exists():
        return path
    keys = official_keys(kind, model_channels)
    state_dict = {}
    for name, shape, dtype in keys:
        state_dict[name] = official_tensor(name, shape, stored_dtype(name, dtype, weights_dtype), seed)
    return save_lightning_checkpoint(path, state_dict, kind, keys)


def derived_checkpoint(src: Path, dst: Path, kind: str) -> Path:
    """Write the official checkpoint of ``kind`` whose tensors are a subset of another random official
    checkpoint ``src`` of the same seed and width (e.g. depth_single_view.ckpt from depth_gen.ckpt: the same
    VAE, text encoder and UNet names), without generating them again. ``src`` is read memory-mapped, so this
    holds no copy of it; every tensor's shape is checked against the layout of ``kind``."""
    state = torch.load(src, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    width = int(state["mv_base_model.unet.conv_in.weight"].shape[0])
    keys = official_keys(kind, width)
    wrong = [name for name, shape, _ in keys if name not in state or tuple(state[name].shape) != tuple(shape)]
    if wrong:
        raise ValueError(f"{src} has no {kind} layout inside: {len(wrong)} tensors missing or of another shape "
                         f"(e.g. {', '.join(wrong[:3])})")
    return save_lightning_checkpoint(dst, {name: state[name] for name, _, _ in keys}, kind, keys)
