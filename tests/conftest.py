"""Test harness: the pack imported as ``comfyui_mvdiffusion``, and a real ComfyUI host.

* ``comfy``: ComfyUI imported in this process with the CPU forced and this pack loaded through ComfyUI's own
  custom-node loader (fast node-level tests).
* ``comfy_server``: a real ``main.py`` server on 127.0.0.1 with this pack installed (end-to-end tests).

With ``CI=true`` a missing host fails the tests that need it instead of skipping them.
"""
from __future__ import annotations

import asyncio
import importlib
import os
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import comfy_host  # noqa: E402
import random_weights  # noqa: E402

PACK = comfy_host.PACK_MODULE
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


comfy_host.import_pack()


def missing_host(reason: str):
    """Fail under CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing host is a failure)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def require_host():
    """``require_host(reason)``: fail under CI, skip elsewhere (for host parts checked inside a test module)."""
    return missing_host


@pytest.fixture(scope="session")
def comfy_root() -> Path:
    root = comfy_host.host_root(install=False)
    if root is None:
        missing_host("no ComfyUI host: run `make test` or set COMFYUI_PATH")
    return root


@pytest.fixture(scope="session")
def comfy(comfy_root, tmp_path_factory):
    """ComfyUI in this process (CPU), with this pack loaded by ComfyUI's custom-node loader.

    Returns a namespace with the host modules tests need, ``mvd_nodes`` (our node classes by id) and
    ``module(name)``: the pack's submodule ``name`` (e.g. "caa.patch") as ComfyUI loaded it (ComfyUI imports the
    pack under its folder's path, a different module tree from the ``comfyui_mvdiffusion`` the unit tests import).
    """
    base = comfy_host.make_base_directory(tmp_path_factory.mktemp("comfy_base"))
    comfy_host.import_host(comfy_root, base_directory=base)
    import folder_paths  # noqa: F401  (reads base_directory)
    import comfy.model_management
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import comfy.utils
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    ours = {name: cls for name, cls in nodes.NODE_CLASS_MAPPINGS.items()
            if getattr(cls, "RELATIVE_PYTHON_MODULE", "").endswith(PACK)}
    if not ours:
        pytest.fail(f"ComfyUI did not load the pack from {base / 'custom_nodes'}")
    # ComfyUI imports a pack under a name derived from its folder's path: the pack as the host runs it
    loaded = next(iter(ours.values())).__module__.rsplit(".nodes.", 1)[0]
    return types.SimpleNamespace(root=comfy_root, base=base, nodes=nodes, comfy=comfy, folder_paths=folder_paths,
                                 mm=comfy.model_management, mvd_nodes=ours,
                                 module=lambda name: importlib.import_module(f"{loaded}.{name}"))


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    path = random_weights.models_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def fp16_weights(comfy):
    """``with fp16_weights(): ...``: the in-process host as if started with ``--fp16-unet --fp16-text-enc`` (its
    own options: weights stored in fp16, computed in float32 on the CPU), so the full-size 5 GB models take
    half the memory."""
    import contextlib

    import comfy.cli_args

    @contextlib.contextmanager
    def options():
        args = comfy.cli_args.args
        saved = args.fp16_unet, args.fp16_text_enc
        args.fp16_unet = args.fp16_text_enc = True
        try:
            yield
        finally:
            args.fp16_unet, args.fp16_text_enc = saved

    return options


def _free_memory() -> None:
    """Collect garbage and hand the C allocator's free memory back to the system (glibc keeps freed blocks of
    its arenas otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


@pytest.fixture(scope="session")
def free_memory():
    """``free_memory()``: what happens after every module (below), for a test that drops a big model before
    the next one is loaded in the same module."""
    return _free_memory


@pytest.fixture(autouse=True, scope="module")
def release_memory_between_modules():
    """After each test module: :func:`_free_memory`, so that one module's models do not stay in the process's
    memory for the next ones."""
    yield
    _free_memory()
