"""The pack's layering: geometry, caa and scenes import without ComfyUI; the root registers the pack lazily."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_geometry_caa_and_scenes_import_without_comfyui_on_the_path():
    code = textwrap.dedent(f"""
        import importlib, importlib.util, pkgutil, sys
        assert not any(p and __import__("os").path.exists(__import__("os").path.join(p, "comfy", "model_patcher.py"))
                       for p in sys.path), sys.path
        spec = importlib.util.spec_from_file_location("comfyui_mvdiffusion", {str(ROOT / '__init__.py')!r},
                                                      submodule_search_locations=[{str(ROOT)!r}])
        pack = importlib.util.module_from_spec(spec); sys.modules[spec.name] = pack; spec.loader.exec_module(pack)
        names = []
        for sub in ("geometry", "caa", "scenes"):
            pkg = importlib.import_module(f"comfyui_mvdiffusion.{{sub}}")
            for info in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(f"comfyui_mvdiffusion.{{sub}}.{{info.name}}")
                names.append(f"{{sub}}.{{info.name}}")
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("comfy", "folder_paths", "nodes", "comfy_api"))
        assert not leaked, leaked
        print(" ".join(names))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMFYUI_PATH")}
    out = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    modules = out.stdout.split()
    for expected in ("geometry.cameras", "geometry.sampling_plan", "caa.block", "caa.fast", "caa.patch",
                     "caa.checkpoint", "scenes.frames", "scenes.scannet", "scenes.nerfstudio", "scenes.colmap",
                     "scenes.tensors"):
        assert expected in modules, modules


def test_only_nodes_and_the_root_touch_comfyui():
    offenders = []
    for sub in ("geometry", "caa", "scenes"):
        for path in (ROOT / sub).rglob("*.py"):
            for line in path.read_text().splitlines():
                stripped = line.strip()
                if stripped.startswith(("import ", "from ")) and any(
                        f" {name}" in stripped.split(" import")[0] + " " or stripped.startswith(f"from {name}")
                        for name in ("comfy", "folder_paths", "comfy_api", "nodes")):
                    offenders.append(f"{path.relative_to(ROOT)}: {stripped}")
    assert not offenders, offenders


def test_the_registry_icon_is_a_file_of_this_repository():
    import tomllib

    comfy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]
    path = comfy["Icon"].split("/main/", 1)[1]
    from PIL import Image

    with Image.open(ROOT / path) as icon:
        assert icon.size[0] == icon.size[1] >= 256


def test_no_python_file_of_the_repository_is_over_400_lines():
    long = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if parts[0].startswith(".") or "__pycache__" in parts:
            continue
        lines = len(path.read_text().splitlines())
        if lines > 400:
            long[str(path.relative_to(ROOT))] = lines
    assert not long, long
