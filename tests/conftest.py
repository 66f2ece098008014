"""Shared fixtures: a real Mosquitto per test, an issuer, a virtual site, leak checks."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
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


STUCK_AFTER_S = 100.0  # before pytest-timeout's 120 s: say where every task waits
_current: dict[str, object] = {}  # the running async test's loop and start time


def _dump_tasks(loop: asyncio.AbstractEventLoop) -> None:
    out = sys.__stderr__
    print(f"\n--- asyncio tasks still pending {STUCK_AFTER_S:g} s into the test ---", file=out)
    for task in asyncio.all_tasks(loop):
        task.print_stack(limit=15, file=out)
    out.flush()


def _watch_loops() -> None:
    while True:
        time.sleep(5.0)
        loop, started = _current.get("loop"), _current.get("started")
        if isinstance(loop, asyncio.AbstractEventLoop) and isinstance(started, float) and (
                time.monotonic() - started > STUCK_AFTER_S) and not loop.is_closed():
            _current.clear()
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_dump_tasks, loop)


# One watcher for the whole run, started before any test (so no test sees it as its own).
threading.Thread(target=_watch_loops, name="asyncio_watch", daemon=True).start()


@pytest.fixture(autouse=True)
async def stuck_tasks_are_shown() -> None:
    """An async test whose loop is still busy STUCK_AFTER_S after it started (in the test,
    or closing the loop: cancelling what the test left) prints every asyncio task's stack
    to the real stderr; pytest-timeout's dump shows threads only."""
    _current.update(loop=asyncio.get_running_loop(), started=time.monotonic())
