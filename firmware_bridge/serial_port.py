"""The pyserial transport: the one module where serial reads cross into asyncio.

Ports are always opened by URL (``serial_for_url``), so configuration alone picks a real
UART (``/dev/ttyUSB0``), a pty, ``loop://`` or ``socket://host:port``. A daemon thread
blocks in ``read()`` and hands each chunk to the event loop; reads end with
:class:`SerialPortClosed` when the device goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from types import TracebackType

import serial

_READ_TIMEOUT_S = 0.2  # how often the reader thread looks at its stop flag


def _waiting(port: serial.SerialBase) -> int:
    """Bytes already buffered; URL handlers (loop://, socket://) all provide in_waiting."""
    return int(getattr(port, "in_waiting", 0))


class SerialPortError(OSError):
    """The serial port could not be opened."""


class SerialPortClosed(ConnectionError):
    """The serial port went away (unplugged, pty closed) while reading."""


class AsyncSerialPort:
    """An open serial port: ``async for chunk in port`` yields received bytes."""

    def __init__(self, url: str, *, baudrate: int = 9600) -> None:
        self.url = url
        self._baudrate = baudrate
        self._serial: serial.SerialBase | None = None
        self._queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def __aenter__(self) -> AsyncSerialPort:
        loop = asyncio.get_running_loop()
        try:
            self._serial = await loop.run_in_executor(None, self._open)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise SerialPortError(f"cannot open serial port {self.url}: {exc}") from exc
        self._thread = threading.Thread(
            target=self._read_loop, args=(loop,), name=f"serial:{self.url}", daemon=True
        )
        self._thread.start()
        return self

    def _open(self) -> serial.SerialBase:
        return serial.serial_for_url(self.url, baudrate=self._baudrate, timeout=_READ_TIMEOUT_S)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the reader thread and close the port. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None
        if self._serial is not None:
            self._serial.close()
            self._serial = None

    def write(self, data: bytes) -> None:
        """Write ``data`` (small control writes only; the port buffers them)."""
        if self._serial is None:
            raise SerialPortClosed(f"{self.url} is closed")
        try:
            self._serial.write(data)
        except (serial.SerialException, OSError) as exc:  # unplugged: EIO, ENXIO...
            raise SerialPortClosed(f"{self.url}: write failed: {exc}") from exc

    def _read_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        port = self._serial
        assert port is not None
        while not self._stop.is_set():
            try:
                chunk = port.read(max(1, _waiting(port)))
            except (serial.SerialException, OSError, TypeError) as exc:
                # TypeError: pyserial's posix read() on a port closed under it.
                self._deliver(loop, SerialPortClosed(f"{self.url}: {exc}"))
                return
            if chunk:
                self._deliver(loop, chunk)

    def _deliver(self, loop: asyncio.AbstractEventLoop, item: bytes | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody is listening
            loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Received bytes as they arrive; raises :class:`SerialPortClosed` at the end."""
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks()
