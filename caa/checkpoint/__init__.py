"""MVDiffusion checkpoints: reading files safely, telling their layouts apart, this pack's file formats.

* :mod:`.reading`: ``read_checkpoint`` (never runs code from a file) and :class:`CheckpointError`, whose
  message names the file, what is wrong and what to do (``checkpoint_error`` builds them all).
* :mod:`.layouts`: the table of layouts (official pano/outpaint/depth checkpoints, this pack's CAA files, and
  what users mistake for them) and ``classify``; adding a layout is one entry there.
* :mod:`.caa_file`: validating and loading CAA weights (panorama blocks, or depth blocks with their condition
  encoders) from any file that holds them, the CAA-only .safetensors format and whole checkpoints as
  .safetensors.
* :mod:`.writing`: the atomic writer and the streaming safetensors writer.

Nothing here imports ComfyUI; ``nodes/checkpoint_loading.py`` builds the host's MODEL/CLIP/VAE from the parts
``split_official`` cuts out of an official checkpoint. This module re-exports the public names.
"""
from .caa_file import (FORMAT, FORMAT_VERSION, FREQ_SUFFIX, SET_CLASSES, WHOLE_FORMAT, caa_state_dict_from,
                       check_caa_state_dict, check_freq_bands, is_caa_key, load_caa, load_caa_state_dict, model_info,
                       save_caa_file, save_whole_file)
from .layouts import (CAA, CAA_KINDS, PARTS, DEPTH, DEPTH_SINGLE_VIEW, DIFFUSERS_UNET, KINDS, LAYOUTS, PANO, PANO_OUTPAINT,
                      SINGLE_VIEW, STABLE_DIFFUSION, UNKNOWN, Layout, LayoutSpec, check_whole_model, classify,
                      describe_widths, refusal_error, split_official, unet_widths)
from .reading import OFFICIAL_HINT, CheckpointError, CheckpointFile, checkpoint_error, read_checkpoint
from .writing import atomic_write, write_safetensors

__all__ = [
    "CheckpointError", "CheckpointFile", "checkpoint_error", "read_checkpoint", "OFFICIAL_HINT",
    "Layout", "LayoutSpec", "LAYOUTS", "PARTS", "KINDS", "CAA_KINDS", "PANO", "PANO_OUTPAINT", "DEPTH", "DEPTH_SINGLE_VIEW",
    "SINGLE_VIEW", "CAA", "STABLE_DIFFUSION", "DIFFUSERS_UNET", "UNKNOWN", "classify", "split_official",
    "unet_widths", "describe_widths", "refusal_error", "check_whole_model",
    "FORMAT", "FORMAT_VERSION", "WHOLE_FORMAT", "FREQ_SUFFIX", "check_freq_bands", "check_caa_state_dict",
    "SET_CLASSES", "model_info", "caa_state_dict_from", "load_caa_state_dict", "is_caa_key", "load_caa",
    "save_caa_file", "save_whole_file",
    "atomic_write", "write_safetensors",
]
