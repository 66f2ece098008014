"""The local control channel: a Unix socket beside the outbox, owner-only (0600).

For people on site with a shell on the Pi: ``curbside status`` and the maintainers'
``curbside calibrate``. One JSON object per line each way: a request
``{"op": NAME, ...}``, then the reply ``{"ok": true, ...}`` or ``{"ok": false, "error"}``,
then the connection closes. The socket's permissions are the first gate (only the
agent's user, or root, can connect); authority for a calibration is the maintainer's
badge in the request, verified like a scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 10.0
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(ValueError):
    """A request that cannot be served; the message goes back in the reply."""


class ControlServer:
    """Serves ``handlers`` by op name on the Unix socket at ``path``."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self._handlers = handlers

    async def run(self) -> None:
        """Serve until cancelled; the socket file is removed on exit."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a crash
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = os.umask(0o177)  # created 0600: owner only, from the first instant
        try:
            server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                     limit=MAX_REQUEST_BYTES)
        except OSError as exc:  # the lockers matter more than the local channel
            log.error("control socket %s not available: %s", self.path, exc)
            return
        finally:
            os.umask(old)
        try:
            async with server:
                await server.serve_forever()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = _peer_uid(writer)
            if uid not in (os.getuid(), 0):  # the file mode already says so: and again
                log.warning("control socket: refused a connection from uid %s", uid)
                reply: dict[str, Any] = {"ok": False, "error": "not the agent's user"}
            else:
                reply = await self._answer(reader)
            writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):  # not wait_for: see edge/link.py
                line = await reader.readline()
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ControlError('expected {"op": NAME, ...}')
            handler = self._handlers.get(request["op"])
            if handler is None:
                raise ControlError(f"unknown op {request['op']!r} "
                                   f"(known: {', '.join(sorted(self._handlers))})")
            return {"ok": True, **await handler(request)}
        except (ControlError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}
        except TimeoutError:
            return {"ok": False, "error": "no request within 10 s"}
        except Exception as exc:  # one bad request must never stop the agent
            log.exception("control request failed")
            return {"ok": False, "error": f"internal error: {type(exc).__name__}"}


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    """The connecting process's user (SO_PEERCRED), None if the system will not say."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


async def request(path: Path, body: dict[str, Any], *, timeout_s: float = 30.0) -> dict[str, Any]:
    """Client side: send ``body`` to the agent's control socket, return its reply."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout_s)
    try:
        writer.write(json.dumps(body).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout_s)
        reply: dict[str, Any] = json.loads(line)
        return reply
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
