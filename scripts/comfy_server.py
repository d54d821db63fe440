"""A real, headless ComfyUI server with this pack installed, and a client for its HTTP and websocket API.

:class:`ComfyServer` starts ``main.py`` of the host (see ``comfy_host.py``) with ``--base-directory`` pointing at
a scratch folder whose ``custom_nodes/`` holds a link to this pack, so the host checkout itself is never written
to. It listens on 127.0.0.1 only, on a free port, and logs to ``<base>/server.log``.

A server that dies (a crash, the OOM killer) is reported as :class:`ServerExited` ("ComfyUI exited with code N"
and the end of its log) by every call that talks to it, instead of the socket error the call happened to see.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from comfy_host import host_root, make_base_directory

# After a failed request, how long a server process that is going down gets to finish dying (so that the
# failure is reported as its exit, not as the connection error the request happened to see first).
EXIT_GRACE = 3.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerExited(RuntimeError):
    """The server process is gone: its exit code and the end of its log."""

    def __init__(self, code: int, log_path: Path, log_tail: str):
        how = ""
        if code < 0:
            try:
                how = f" (killed by {signal.Signals(-code).name})"
            except ValueError:
                how = f" (killed by signal {-code})"
        super().__init__(f"ComfyUI exited with code {code}{how}; the end of its log {log_path}:\n{log_tail}")
        self.code = code
        self.log_tail = log_tail


class ComfyServer:
    """A headless ComfyUI server on 127.0.0.1 with this pack installed; use as a context manager."""

    def __init__(self, base: Path, root: Path | None = None, port: int | None = None,
                 output: Path | None = None, python: str = sys.executable, extra_args: tuple = (),
                 log: Path | None = None, env: dict | None = None):
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
        self.env = dict(env or {})  # added to this process's environment
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0) -> "ComfyServer":
        cmd = [self.python, str(self.root / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base), "--output-directory", str(self.output),
               "--disable-api-nodes", "--database-url", "sqlite:///:memory:", *self.extra_args]
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                self._request("/object_info/KSampler", timeout=5, grace=0)
                return self
            except (OSError, http.client.HTTPException):
                time.sleep(0.5)  # not listening yet
            except ServerExited:
                self.stop()
                raise
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

    def raise_if_exited(self, grace: float = 0.0) -> None:
        """Raise :class:`ServerExited` when the server process has exited, or exits within ``grace`` seconds."""
        if self.proc is None:
            raise RuntimeError(f"the ComfyUI server on {self.url} is not running (not started, or stopped)")
        if self.proc.poll() is None and grace > 0:
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.returncode is not None:
            raise ServerExited(self.proc.returncode, self.log_path, self.log_tail())

    # ---- HTTP API -------------------------------------------------------------------------------------------
    def _request(self, path: str, data: bytes | None = None, timeout: float = 30, grace: float = EXIT_GRACE):
        """The response body of one request; a connection failure of a server that exited is a ServerExited."""
        headers = {"Content-Type": "application/json"} if data is not None else {}
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.read()
        except urllib.error.HTTPError:
            raise  # the server answered
        except (OSError, http.client.HTTPException):
            self.raise_if_exited(grace)
            raise

    def get(self, path: str, timeout: float = 30):
        return json.loads(self._request(path, timeout=timeout))

    def post(self, path: str, payload: dict | None, timeout: float = 30):
        data = json.dumps(payload).encode() if payload is not None else b""
        try:
            body = self._request(path, data, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise PromptRejected(e.code, e.read().decode(errors="replace")) from None
        return json.loads(body) if body else None

    def object_info(self) -> dict:
        return self.get("/object_info")

    def queue(self, prompt: dict, client_id: str | None = None, extra_data: dict | None = None) -> str:
        """Queue an API-format prompt; returns its prompt id (a UUID, as newer ComfyUI requires).
        ``extra_data``: what the frontend sends besides the prompt (e.g. ``{"extra_pnginfo": {"workflow": ...}}``)."""
        prompt_id = str(uuid.uuid4())
        body = {"prompt": prompt, "prompt_id": prompt_id, "client_id": client_id or "tests"}
        if extra_data:
            body["extra_data"] = extra_data
        self.post("/prompt", body)
        return prompt_id

    def wait(self, prompt_id: str, timeout: float = 900.0) -> dict:
        """Wait until the prompt has finished (successfully or not) and return its history entry."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.raise_if_exited()
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 900.0) -> dict:
        """Queue a prompt, wait for it and return its history entry; raise with the host's message on error."""
        entry = self.wait(self.queue(prompt), timeout)
        if entry["status"]["status_str"] != "success":
            raise PromptFailed(execution_error(entry) or json.dumps(entry["status"])[:4000])
        return entry

    def free_models(self, settle: float = 2.0) -> None:
        """Ask the server to drop its loaded models and cached outputs (the frontend's "Unload models" /
        "Free model and node cache": POST /free). The prompt worker acts on it as soon as it is idle; ``settle``
        seconds give it that time before the next prompt is queued."""
        self.post("/free", {"unload_models": True, "free_memory": True})
        time.sleep(settle)

    def interrupt(self) -> None:
        self.post("/interrupt", None)

    def events(self) -> "ServerEvents":
        """The server's websocket messages to one client id (use as a context manager)."""
        self.raise_if_exited()
        return ServerEvents(self.url.replace("http://", "ws://") + "/ws", self.raise_if_exited)

    def output_files(self, entry: dict) -> list[Path]:
        """Absolute paths of every image a finished prompt saved to the output folder."""
        files = []
        for node_out in entry.get("outputs", {}).values():
            for image in node_out.get("images", []):
                if image.get("type") == "output":
                    files.append(self.output / image.get("subfolder", "") / image["filename"])
        return files


class ServerEvents:
    """JSON messages of ComfyUI's ``/ws`` websocket for one client id, read by a background thread.

    ``raise_if_exited(grace)``: raises when the server process is gone (:meth:`ComfyServer.raise_if_exited`);
    checked while waiting and when the connection fails or closes, so a dead server is reported as such.
    """

    def __init__(self, ws_url: str, raise_if_exited=lambda grace=0.0: None):
        import queue

        self.client_id = str(uuid.uuid4())
        self.url = f"{ws_url}?clientId={self.client_id}"
        self.messages: "queue.Queue[tuple[str, dict]]" = queue.Queue()
        self.raise_if_exited = raise_if_exited
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
            self.raise_if_exited(EXIT_GRACE)
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
                try:
                    await self._receive(ws, stop)
                finally:
                    stop.cancel()
        except Exception as e:  # noqa: BLE001 - reported by __enter__ / wait_for
            self._error = e
            self._connected.set()

    async def _receive(self, ws, stop) -> None:
        """Queue the text messages until ``stop`` is done or the server closes the connection."""
        import asyncio

        import aiohttp

        while not self._stop.is_set():
            receive = asyncio.ensure_future(ws.receive())
            await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():
                receive.cancel()
                return
            msg = receive.result()
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                self.messages.put((data.get("type"), data.get("data") or {}))
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.ERROR):
                self._error = ConnectionError(f"the server closed the websocket ({msg.type.name})")
                return

    def wait_for(self, predicate, timeout: float = 600.0) -> dict:
        """The data of the first message ``(type, data)`` for which ``predicate(type, data)`` is true."""
        import queue

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                kind, data = self.messages.get(timeout=min(1.0, max(0.01, deadline - time.time())))
            except queue.Empty:
                if self._error:
                    self.raise_if_exited(EXIT_GRACE)
                    raise RuntimeError(f"websocket {self.url} failed: {self._error}") from None
                self.raise_if_exited()
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
