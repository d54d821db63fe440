"""A real ComfyUI server (main.py, 127.0.0.1, free port) with this pack installed, for the whole session."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from comfy_server import ComfyServer  # noqa: E402


def start_server(base: Path, root: Path, extra_args: tuple = ()) -> ComfyServer:
    """A started server; a server that does not start fails the test with the host's own log."""
    server = ComfyServer(base, root=root, extra_args=extra_args)
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - report the host's own log
        pytest.fail(f"the ComfyUI server did not start: {e}", pytrace=False)
    return server


@pytest.fixture(scope="session")
def server_starter():
    """``server_starter(base, root, extra_args=())``: :func:`start_server`, for tests that need a server of their own."""
    return start_server


@pytest.fixture(scope="session")
def comfy_server(comfy_root, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("server_base"), comfy_root)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def install():
    return install_model


def install_model(server, src: Path, folder: str, name: str | None = None) -> str:
    """Link a model file into the server's models/<folder>; returns the name the loaders list."""
    dst = server.base / "models" / folder / (name or src.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        try:
            dst.symlink_to(src)
        except OSError:
            shutil.copy(src, dst)
    return dst.name
