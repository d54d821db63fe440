"""Small checkpoints in the official layouts for the checkpoint tests (imported by them; not a test module)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import official_layouts as layouts  # noqa: E402

SMALL = 64
SMALL_WIDTHS = {"encoder": [64, 128, 256, 256], "mid": 256, "decoder": [256, 256, 128, 64]}
FEW = {"text_encoder.text_model.embeddings.position_ids", "text_encoder.text_model.embeddings.token_embedding.weight",
       "text_encoder.text_model.final_layer_norm.weight", "vae.encoder.conv_in.weight", "vae.post_quant_conv.weight",
       "vae.decoder.up_blocks.0.resnets.0.norm1.weight"}
_UNET_SHAPE_KEYS = re.compile(r"^mv_base_model\.unet\.(conv_in\.weight|.*resnets\.\d+\.conv2\.weight)$")


def official_subset(kind: str = "pano", model_channels: int = SMALL, seed: int = 0) -> dict:
    """The official layout of ``kind`` restricted to CAA/condition blocks, UNet shape keys and a few others."""
    def select(name):
        return (name.startswith(("mv_base_model.cp_blocks_", "mv_base_model.condition_")) or name in FEW
                or bool(_UNET_SHAPE_KEYS.match(name)))
    return layouts.official_state_dict(kind, seed, select, model_channels)


def write_official(path: Path, kind: str = "pano", sd: dict | None = None, **kw) -> Path:
    return layouts.save_lightning_checkpoint(path, sd if sd is not None else official_subset(kind, **kw), kind)


def caa_part(sd: dict) -> dict:
    return {k[len("mv_base_model."):]: v for k, v in sd.items() if k.startswith("mv_base_model.cp_blocks_")}


def assert_names_file(excinfo, path: Path, *fragments: str):
    text = str(excinfo.value)
    assert str(path) in text, text
    for fragment in fragments:
        assert fragment.lower() in text.lower(), text
