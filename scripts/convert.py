"""The pack's checkpoint converter, runnable from a plain clone (no pip install, no ComfyUI needed).

From your ComfyUI folder, with the Python that runs ComfyUI::

    python custom_nodes/comfyui-mvdiffusion/scripts/convert.py models/mvdiffusion/pano.ckpt
    python custom_nodes/comfyui-mvdiffusion/scripts/convert.py --help

(``pip install`` of the pack gives the same as the ``mvdiffusion-convert`` command.) See ``caa/convert.py``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_host  # noqa: E402

comfy_host.import_pack()  # this clone as the package comfyui_mvdiffusion, whatever its folder is called
from comfyui_mvdiffusion.caa.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog=f"python {sys.argv[0]}"))
