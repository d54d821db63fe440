"""Loader nodes: an official MVDiffusion checkpoint (everything in one file), or CAA weights alone.

The caa output carries :class:`~nodes.caa_weights.CAAWeights` (panorama blocks), ``DepthCAAWeights``
(depth_gen.ckpt's blocks and condition encoders) or ``NoCAA`` (depth_single_view.ckpt, which has none).
"""
from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from .caa_weights import CAAWeights, DepthCAAWeights, NoCAA
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


def caa_weights(caa_sd: dict | None, info: dict):
    """What the caa socket carries for the CAA weights of a file (``caa_sd`` None: a model without blocks)."""
    if caa_sd is None:
        return NoCAA(info)
    return (DepthCAAWeights if info["kind"] == "depth" else CAAWeights)(caa_sd, info)


class LoadMVDiffusionCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionCheckpointLoader",
            display_name="Load MVDiffusion Checkpoint",
            category=CATEGORY,
            description="Loads an official MVDiffusion checkpoint (pano.ckpt, pano_outpaint.ckpt, depth_gen.ckpt, "
                        "depth_single_view.ckpt, or its whole .safetensors conversion) from models/mvdiffusion: "
                        "the SD2 model, text encoder and VAE it contains, and its correspondence-aware attention "
                        "weights (none in depth_single_view.ckpt). One file, ready to sample. The two depth "
                        "models take their depth channel from 'Depth Conditioning'. CAA-only files go to "
                        "'Load CAA Weights'.",
            inputs=[io.Combo.Input("ckpt_name", options=model_files(),
                                   tooltip="An official MVDiffusion .ckpt in models/mvdiffusion (pano.ckpt, "
                                           "pano_outpaint.ckpt, depth_gen.ckpt, depth_single_view.ckpt), or the "
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
        return io.NodeOutput(model, clip, vae, caa_weights(caa_sd, info))


class LoadCAAWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MVDiffusionCAALoader",
            display_name="Load CAA Weights",
            category=CATEGORY,
            description="Loads only the correspondence-aware attention weights (a converted .safetensors or an "
                        "official pano.ckpt, pano_outpaint.ckpt or depth_gen.ckpt) to pair with the host's own "
                        "SD2 checkpoint loader.",
            inputs=[io.Combo.Input("caa_name", options=model_files(),
                                   tooltip="CAA weights in models/mvdiffusion (.safetensors from the converter, "
                                           "or an official .ckpt with CAA blocks or its whole .safetensors).")],
            outputs=[CAA.Output(display_name="caa")],
        )

    @classmethod
    def execute(cls, caa_name) -> io.NodeOutput:
        node = "Load CAA Weights"
        try:
            caa_sd, info = load_caa_weights_file(model_path(node, caa_name))
        except ValueError as e:
            raise ValueError(f"{node}: {e}") from None
        return io.NodeOutput(caa_weights(caa_sd, info))
