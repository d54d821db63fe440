"""A ComfyUI server that dies is reported as dead ("ComfyUI exited with code N" and the end of its log) by every
call of the test client (scripts/comfy_server.py), not as the socket error the call happens to see.

A real ``main.py`` is started and killed with SIGKILL (as the OOM killer would); the calls are made right after
the kill, without waiting for the process to be reaped.
"""
from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from comfy_server import ComfyServer, ServerExited  # noqa: E402

pytestmark = [pytest.mark.host, pytest.mark.server]

KILLED = "ComfyUI exited with code -9 (killed by SIGKILL)"


@pytest.fixture(scope="module")
def killed(comfy_root, tmp_path_factory, server_starter):
    """A server killed while a websocket client listened to it: (server, the open websocket)."""
    server = server_starter(tmp_path_factory.mktemp("killed_base"), comfy_root)
    events = server.events().__enter__()
    os.kill(server.proc.pid, signal.SIGKILL)
    yield server, events
    events.__exit__(None, None, None)
    server.stop()


CALLS = {
    "get": lambda server, events: server.get("/object_info/KSampler"),
    "object_info": lambda server, events: server.object_info(),
    "post": lambda server, events: server.post("/prompt", {"prompt": {}}),
    "queue": lambda server, events: server.queue({}),
    "wait": lambda server, events: server.wait(str(uuid.uuid4()), timeout=60),
    "run": lambda server, events: server.run({}, timeout=60),
    "interrupt": lambda server, events: server.interrupt(),
    "events": lambda server, events: server.events().__enter__(),
    "websocket_wait": lambda server, events: events.wait_for(lambda kind, data: False, timeout=60),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_a_killed_server_is_reported_with_its_exit_code_and_the_end_of_its_log(killed, call):
    server, events = killed
    with pytest.raises(ServerExited) as info:
        CALLS[call](server, events)
    message = str(info.value)
    assert message.startswith(KILLED), message[:500]
    log = server.log_path.read_text(errors="replace")
    assert f"To see the GUI go to: http://127.0.0.1:{server.port}" in log  # the server had started
    assert log[-300:] in message, "the end of the server's log is not in the message"


def test_a_server_that_exits_while_starting_is_reported_with_its_exit_code_and_log(comfy_root, tmp_path):
    server = ComfyServer(tmp_path / "base", root=comfy_root, extra_args=("--no-such-option",))
    with pytest.raises(ServerExited) as info:
        server.start(timeout=120)
    message = str(info.value)
    assert message.startswith("ComfyUI exited with code 2;"), message[:500]  # argparse's usage error
    assert "unrecognized arguments: --no-such-option" in message
