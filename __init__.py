"""comfyui-mvdiffusion: MVDiffusion (arXiv 2307.01097) multi-view / 360° panorama nodes for ComfyUI.

ComfyUI imports this file as the pack's module and calls :func:`comfy_entrypoint` (the V3 extension API,
present in ComfyUI 0.3.75 and in every newer release). Everything that touches ComfyUI is imported inside
that function, so ``geometry`` and ``caa`` stay importable (and testable) without ComfyUI installed.
"""

MODEL_FOLDER = "mvdiffusion"
# the frontend extension (the 360° viewer of Preview Panorama), served by ComfyUI under /extensions/
WEB_DIRECTORY = "./web"
MODEL_EXTENSIONS = {".ckpt", ".safetensors", ".pt", ".pth"}


def register_model_folder():
    """Register ``models/mvdiffusion`` with ComfyUI's folder_paths (idempotent)."""
    import os

    import folder_paths

    path = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    folder_paths.add_model_folder_path(MODEL_FOLDER, path)
    paths, extensions = folder_paths.folder_names_and_paths[MODEL_FOLDER]
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, set(extensions) | MODEL_EXTENSIONS)


async def comfy_entrypoint():
    register_model_folder()
    from .nodes import MVDiffusionExtension

    return MVDiffusionExtension()
