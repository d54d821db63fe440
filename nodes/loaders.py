"""Loader nodes: an official MVDiffusion checkpoint (everything in one file), or CAA weights alone."""
from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from .caa_weights import CAAWeights
from .checkpoint_loading import load_caa_weights_file, load_mvdiffusion_checkpoint
from .io_types import CATEGORY, CAA

MODEL_FOLDER = "mvdiffusion"


def model_files() -> list[str]:
    return folder_paths.get_filename_list(MODEL_FOLDER)


def model_path(node: str, name: str) -> str:
    path = folder_paths.get_full_path(MODEL_FOLDER, name)
    if path is None:
        raise ValueError(f"{node}: {name!r} is not in models/{MODEL_FOLDER} "
                         f"({', '.join(folder_paths.get_folder_paths(MODEL_FOLDER))})")
    return path


class LoadMVDiffusionCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionCheckpointLoader",
            display_name="Load MVDiffusion Checkpoint",
            category=CATEGORY,
            description="Loads an official MVDiffusion checkpoint (pano.ckpt, pano_outpaint.ckpt, or its "
                        "whole .safetensors conversion) from models/mvdiffusion: the SD2 model, text encoder "
                        "and VAE it contains, and its correspondence-aware attention weights. One file, ready "
                        "to sample. CAA-only files go to 'Load CAA Weights'.",
            inputs=[io.Combo.Input("ckpt_name", options=model_files(),
                                   tooltip="An official MVDiffusion .ckpt in models/mvdiffusion, or the "
                                           ".safetensors written from it by the converter's --whole option.")],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output(), CAA.Output(display_name="caa")],
        )

    @classmethod
    def execute(cls, ckpt_name) -> io.NodeOutput:
        node = "Load MVDiffusion Checkpoint"
        try:
            model, clip, vae, caa_sd, info = load_mvdiffusion_checkpoint(model_path(node, ckpt_name))
        except ValueError as e:
            raise ValueError(f"{node}: {e}") from None
        return io.NodeOutput(model, clip, vae, CAAWeights(caa_sd, info))


class LoadCAAWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionCAALoader",
            display_name="Load CAA Weights",
            category=CATEGORY,
            description="Loads only the correspondence-aware attention weights (a converted .safetensors or an "
                        "official .ckpt) to pair with the host's own SD2 checkpoint loader.",
            inputs=[io.Combo.Input("caa_name", options=model_files(),
                                   tooltip="CAA weights in models/mvdiffusion (.safetensors from the converter, "
                                           "or an official .ckpt or its whole .safetensors).")],
            outputs=[CAA.Output(display_name="caa")],
        )

    @classmethod
    def execute(cls, caa_name) -> io.NodeOutput:
        node = "Load CAA Weights"
        try:
            caa_sd, info = load_caa_weights_file(model_path(node, caa_name))
        except ValueError as e:
            raise ValueError(f"{node}: {e}") from None
        return io.NodeOutput(CAAWeights(caa_sd, info))
