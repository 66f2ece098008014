"""A second MQTT implementation for interoperability tests: nats-server's MQTT endpoint
(MQTT 3.1.1, QoS 0/1, backed by JetStream), private to the test, on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from simulators.broker import BrokerError, free_port


def find_nats_server() -> str | None:
    found = shutil.which("nats-server")
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/bin", "/usr/bin"):
        candidate = Path(directory) / "nats-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


class NatsMqttBroker:
    """``with NatsMqttBroker(workdir) as broker:`` -> MQTT on ``broker.port``."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path) -> None:
        executable = find_nats_server()
        if executable is None:
            raise BrokerError("nats-server is not installed")
        self.executable = executable
        self.workdir = workdir
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NatsMqttBroker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "nats.conf"
        config.write_text(
            f'listen: "127.0.0.1:{free_port()}"\n'
            f'server_name: "curbside-interop"\n'
            f'jetstream {{ store_dir: "{self.workdir / "js"}" }}\n'
            f'mqtt {{ listen: "127.0.0.1:{self.port}" }}\n', encoding="utf-8")
        with (self.workdir / "nats.log").open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603  # our own fixed argv
                [self.executable, "-c", str(config)], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(f"nats-server exited; see {self.workdir / 'nats.log'}")
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.host, self.port), timeout=0.2):
                return self
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise BrokerError("nats-server's MQTT endpoint did not come up")

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
