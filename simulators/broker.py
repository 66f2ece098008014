"""A private Mosquitto on a free loopback port, with its own config, started and stopped
on demand (the broker outage in the demo and the tests is a real stop and restart)."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

SEARCH_PATH = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/opt/homebrew/sbin")


@dataclass(frozen=True)
class BrokerTls:
    """The broker's side of mutual TLS: the CA that signs clients, its own cert and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


class BrokerError(RuntimeError):
    """Mosquitto is missing or did not start."""


def find_mosquitto() -> str | None:
    """The mosquitto executable, also where Debian puts it outside a user's PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for directory in SEARCH_PATH:
        candidate = Path(directory) / "mosquitto"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MosquittoBroker:
    """``with MosquittoBroker(workdir) as broker:`` -> a broker on ``broker.port``."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, port: int | None = None, *,
                 tls: BrokerTls | None = None) -> None:
        executable = find_mosquitto()
        if executable is None:
            raise BrokerError("mosquitto is not installed (Debian/Ubuntu: apt install mosquitto)")
        self.executable = executable
        self.workdir = workdir
        self.port = port or free_port()
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.tls = tls

    def _write_config(self) -> None:
        lines = [f"listener {self.port} {self.host}"]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                "require_certificate true",  # mutual TLS: no client certificate, no session
                "use_identity_as_username true",
            ]
        lines += [
            "allow_anonymous true",
            # Sessions and queued QoS 1 messages survive a restart, as on a real site
            # broker: a platform with a persistent session misses nothing in an outage.
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            lines.append(f"user {getpass.getuser()}")  # do not drop to the 'mosquitto' user
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start and return once the port accepts connections."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603  # our own fixed argv
                [self.executable, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(f"mosquitto exited at start; see {self.log_path}")
            with contextlib.suppress(OSError), socket.create_connection(
                (self.host, self.port), timeout=0.2
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.port} within {timeout_s}s")

    @property
    def persistence_file(self) -> Path:
        return self.workdir / "mosquitto.db"

    def kill(self) -> None:
        """SIGKILL the broker: no goodbye, no persistence written."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
