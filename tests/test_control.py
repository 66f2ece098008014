"""The local control channel: owner-only socket, one JSON request and reply, errors."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from edge.control import ControlError, ControlServer, request


async def echo(body: dict[str, Any]) -> dict[str, Any]:
    return {"echo": body.get("value")}


async def refuse(body: dict[str, Any]) -> dict[str, Any]:
    raise ControlError("not allowed")


async def crash(body: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("boom")


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    path = tmp_path / "state" / "control.sock"
    control = ControlServer(path, {"echo": echo, "refuse": refuse, "crash": crash})
    task = asyncio.ensure_future(control.run())
    async with asyncio.timeout(5):
        while not path.exists():  # noqa: ASYNC110  # the socket file is the only signal
            await asyncio.sleep(0.01)
    yield path
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not path.exists()


async def test_owner_only_and_answers(server: Path) -> None:
    assert stat.S_IMODE(server.stat().st_mode) == 0o600
    assert await request(server, {"op": "echo", "value": 3}) == {"ok": True, "echo": 3}


@pytest.mark.parametrize(("body", "error"), [
    ({"op": "nope"}, "unknown op 'nope'"),
    ({"value": 1}, "expected"),
    ({"op": "refuse"}, "not allowed"),
    ({"op": "crash"}, "internal error: RuntimeError"),
])
async def test_bad_requests_get_a_clear_error(server: Path, body: dict[str, Any],
                                              error: str) -> None:
    reply = await request(server, body)
    assert reply["ok"] is False
    assert error in reply["error"]


async def test_garbage_does_not_stop_the_server(server: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(str(server))
    writer.write(b"{not json\n")
    await writer.drain()
    assert b"false" in await reader.readline()
    writer.close()
    assert (await request(server, {"op": "echo", "value": 1}))["ok"] is True


def test_another_user_cannot_connect(server: Path) -> None:
    """Owner-only: a process of another user is refused by the socket's mode."""
    if os.getuid() != 0:  # cannot become another user: check what protects the socket
        info = server.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.getuid(), 0o600)
        return
    child = os.fork()
    if child == 0:  # the child becomes nobody and tries
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.connect(str(server))
            code = 1  # connected: the mode did not protect it
        except PermissionError:
            code = 0
        except OSError:
            code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
