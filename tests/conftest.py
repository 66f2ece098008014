"""Shared fixtures: a real Mosquitto per test, an issuer, a virtual site, leak checks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning.issuer import Issuer, init_issuer
from simulators.badge_reader import PtyBadgeReader
from simulators.broker import MosquittoBroker, find_mosquitto, free_port
from simulators.site import VirtualSite, write_site


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private Mosquitto on a free loopback port, stopped after the test."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: the README's test command installs it")
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return init_issuer(tmp_path / "issuer", name="test-coop")


@pytest.fixture
def reader() -> Iterator[PtyBadgeReader]:
    with PtyBadgeReader() as pty_reader:
        yield pty_reader


@pytest.fixture
def site(tmp_path: Path, broker: MosquittoBroker, reader: PtyBadgeReader) -> VirtualSite:
    """The virtual site's files, wired to this test's broker and reader."""
    return write_site(tmp_path / "site", broker_port=broker.port, reader_url=reader.path)


@pytest.fixture
def offline_site(tmp_path: Path, reader: PtyBadgeReader) -> VirtualSite:
    """A virtual site whose broker port has nothing listening."""
    return write_site(tmp_path / "site", broker_port=free_port(), reader_url=reader.path)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread of its own running (serial readers, timers...)."""
    before = set(threading.enumerate())
    yield
    deadline_join = 2.0
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for thread in leaked:
        thread.join(timeout=deadline_join)
    still = [t.name for t in leaked if t.is_alive() and not t.name.startswith("asyncio_")]
    assert not still, f"threads left running: {still}"
