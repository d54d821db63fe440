"""A real ComfyUI server (main.py, 127.0.0.1, free port) with this pack installed, for the whole session."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import comfy_host  # noqa: E402
import official_layouts  # noqa: E402
import random_weights  # noqa: E402
from comfy_server import ComfyServer  # noqa: E402


def start_server(base: Path, root: Path, extra_args: tuple = (), env: dict | None = None) -> ComfyServer:
    """A started server; a server that does not start fails the test with the host's own log."""
    server = ComfyServer(base, root=root, extra_args=extra_args, env=env)
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - report the host's own log
        pytest.fail(f"the ComfyUI server did not start: {e}", pytrace=False)
    return server


@pytest.fixture(scope="session")
def return_freed_memory() -> dict:
    """The environment that makes a server's resident size the memory it really holds (glibc options)."""
    return dict(RETURN_FREED_MEMORY)


@pytest.fixture(scope="session")
def server_starter():
    """``server_starter(base, root, extra_args=(), env=None)``: :func:`start_server`, for tests that need a server of their own."""
    return start_server


# the host's own options to store the weights in fp16 (computed in float32 on the CPU): the 5 GB official-layout
# model takes half the memory, and the workflows run through ComfyUI's fp16-weight path
HALF_WEIGHTS = ("--fp16-unet", "--fp16-text-enc")
# glibc hands every freed block of 64 KiB or more back to the system at once (its adaptive mmap threshold would
# otherwise keep gigabytes of freed model weights in the server's heap)
RETURN_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def street_view(path: Path, yaw: float = 0.0, size: int = 96) -> None:
    """A photo for the image workflow: the street panorama's 90° view at ``yaw``, written to ``path``."""
    import numpy as np
    import torch
    from PIL import Image

    from comfyui_mvdiffusion.geometry import equirect_to_views, intrinsics, rotation

    street = Path(__file__).resolve().parents[1] / "fixtures" / "panoramas" / "street_2048x1024.jpg"
    pano = torch.from_numpy(np.asarray(Image.open(street).convert("RGB"), dtype=np.float32) / 255)
    pano = pano.permute(2, 0, 1)[None]
    view = equirect_to_views(pano, intrinsics(90.0, size, size)[None], rotation(yaw)[None], size, size)[0, 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((view.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()).save(path)


_SESSION_SERVERS: list = []


@pytest.fixture(scope="session")
def comfy_server(comfy_root, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("server_base"), comfy_root, extra_args=HALF_WEIGHTS,
                          env=RETURN_FREED_MEMORY)
    _SESSION_SERVERS.append(server)
    yield server
    _SESSION_SERVERS.remove(server)
    server.stop()


@pytest.fixture(autouse=True, scope="module")
def free_the_session_servers_models():
    """After each e2e module the session server drops its models and cached outputs (POST /free), so the
    gigabytes of a finished workflow are not held while later tests run."""
    yield
    for server in _SESSION_SERVERS:
        server.free_models(settle=0.0)


def install_model(server, src: Path, folder: str, name: str | None = None) -> str:
    """Link a model file into the server's models/<folder>; returns the name the loaders list."""
    return comfy_host.link_model(server.base, src, folder, name)


@pytest.fixture(scope="session")
def workflow_models(cache_dir):
    """Installers of the random test models that the example workflows load, under the names they use:
    ``pano(server)`` the full-size official-layout ``pano.ckpt`` (5 GB, built once: about 30 s and 5.5 GB of
    memory), ``pano_outpaint(server)`` the same for ``pano_outpaint.ckpt`` plus the ``photo.png`` that
    ``image_to_panorama.json`` loads, ``sd2(server)`` the SD2 test checkpoint and the CAA weights of ``text_to_panorama_sd2.json``,
    ``sd2_inpainting(server)`` the SD2-inpainting test checkpoint and outpaint CAA weights, ``depth(server)`` the
    host route of the depth workflow, ``depth_gen(server)`` the official-layout depth_gen.ckpt."""
    def pano(server) -> str:
        return install_model(server, official_layouts.official_checkpoint(cache_dir, "pano"), "mvdiffusion",
                             "pano.ckpt")

    def pano_outpaint(server) -> str:
        street_view(server.base / "input" / "photo.png")
        return install_model(server, official_layouts.official_checkpoint(cache_dir, "pano_outpaint"), "mvdiffusion",
                             "pano_outpaint.ckpt")

    def sd2(server) -> None:
        install_model(server, random_weights.sd2_checkpoint(cache_dir), "checkpoints", "512-base-ema.safetensors")
        install_model(server, random_weights.caa_weights(cache_dir), "mvdiffusion", "pano.caa.safetensors")

    def sd2_inpainting(server) -> None:
        install_model(server, random_weights.sd2_inpainting(cache_dir), "checkpoints",
                      "512-inpainting-ema.safetensors")
        install_model(server, random_weights.caa_outpaint(cache_dir), "mvdiffusion", "pano_outpaint.caa.safetensors")

    def depth(server) -> None:
        """The host route of scene_texturing.json: the SD2 test checkpoint (CLIP, VAE), the SD2-depth test UNet
        and random depth CAA weights."""
        install_model(server, random_weights.sd2_checkpoint(cache_dir), "checkpoints", "512-base-ema.safetensors")
        install_model(server, random_weights.depth_unet(cache_dir), "diffusion_models", "512-depth-unet.safetensors")
        install_model(server, random_weights.caa_depth(cache_dir), "mvdiffusion", "depth_gen.caa.safetensors")

    def depth_gen(server) -> str:
        """The official-layout depth_gen.ckpt (fp16 weights, 3.3 GB; built once)."""
        return install_model(server, random_weights.official_depth(cache_dir), "mvdiffusion", "depth_gen.ckpt")

    return types.SimpleNamespace(pano=pano, pano_outpaint=pano_outpaint, sd2=sd2, sd2_inpainting=sd2_inpainting,
                                 depth=depth, depth_gen=depth_gen)
