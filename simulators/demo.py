"""``curbside demo``: a complete virtual site plays a short scene, then keeps running.

Issuer keys, a site config, a badge reader on a pty, MockFactory pins with door physics,
a private Mosquitto on loopback (when installed) and a platform recorder, all around the
real, unchanged agent. Every step is narrated: what the member did, the decision and its
reason, the solenoid, the door, the outbox depth and the link state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.agent import Agent
from edge.config import load_config
from edge.outbox import StoredEvent
from provisioning.badges import BADGE_TYP
from provisioning.tokens import sign_token
from simulators.badge_reader import PtyBadgeReader
from simulators.broker import MosquittoBroker, find_mosquitto, free_port
from simulators.gpio_world import LockerWorld, world_pin_factory
from simulators.platform import PlatformRecorder
from simulators.site import DOORS, SITE, VirtualSite, write_site

STEP_TIMEOUT_S = 15.0


def register(subparsers: Any) -> None:
    """Add ``demo`` to the ``curbside`` command line (entry point ``curbside.commands``)."""
    demo = subparsers.add_parser("demo", help="run a virtual site and play a short scene")
    demo.add_argument("--dir", type=Path, help="keep the site here (default: a temporary dir)")
    demo.add_argument("--duration", type=float, default=None,
                      help="seconds to keep running after the scene (default: until Ctrl-C)")
    demo.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        if any(args.dir.iterdir()):
            print(f"curbside: {args.dir} is not empty; give a new or empty directory",
                  file=sys.stderr)
            return 2
        return _play_logged(args.dir, args.duration)
    with tempfile.TemporaryDirectory(prefix="curbside-demo-") as tmp:
        return _play_logged(Path(tmp), args.duration)


def _play_logged(directory: Path, duration: float | None) -> int:
    """Play with the agent's log in ``directory/agent.log``, keeping the terminal for the story."""
    handler = logging.FileHandler(directory / "agent.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [handler]
    try:
        return asyncio.run(play(directory, duration, sys.stdout))
    finally:
        root.handlers[:] = saved
        handler.close()


class Narrator:
    """Prints the live account, one timestamped line per happening."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._t0 = time.monotonic()
        self.agent: Agent | None = None
        self.events: list[StoredEvent] = []
        self._news = asyncio.Event()  # set on every agent event; waiters re-check

    def say(self, topic: str, text: str) -> None:
        elapsed = time.monotonic() - self._t0
        print(f"[{elapsed:6.2f}s] {topic:<9} {text}", file=self.out, flush=True)

    def heading(self, text: str) -> None:
        print(f"\n── {text} ──", file=self.out, flush=True)

    def gauges(self) -> str:
        if self.agent is None:
            return ""
        return f"outbox {self.agent.outbox.depth} · link {self.agent.link.state.value}"

    async def until(self, check: Callable[[StoredEvent], bool], what: str,
                    *, start: int | None = None) -> None:
        """Wait until the agent records an event that passes ``check``.

        Only events from now on count, or from index ``start`` of :attr:`events`.
        """
        start = len(self.events) if start is None else start
        try:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                while not any(check(e) for e in self.events[start:]):
                    self._news.clear()
                    await self._news.wait()
        except TimeoutError as exc:
            raise TimeoutError(f"waited {STEP_TIMEOUT_S:g}s for {what}") from exc

    def event(self, stored: StoredEvent) -> None:
        """Observer of the agent: every event, once durable."""
        self.events.append(stored)
        self._news.set()
        f = stored.fields
        seq = f"seq {stored.seq}"
        if stored.type in ("access.granted", "access.denied"):
            verdict = "GRANTED" if stored.type == "access.granted" else "DENIED "
            extra = (" missing " + ", ".join(f"{k}>={v}" for k, v in f["missing_badges"].items())
                     if "missing_badges" in f else "")
            self.say("decision", f"{verdict} {f['compartment']}  reason={f['reason']}{extra}  "
                                 f"({seq}, on disk before any coil)   {self.gauges()}")
        elif stored.type.startswith("door."):
            self.say("door", f"{f['compartment']} {stored.type[5:]}  ({seq})   {self.gauges()}")
        elif stored.type == "locker.unlocked":
            self.say("lock", f"{f['compartment']} unlocked, {f['pulse_ms']} ms pulse  ({seq})")
        elif stored.type.startswith("link."):
            self.say("link", f"{stored.type[5:]}  ({seq} queued)   {self.gauges()}")
        elif stored.type == "agent.started":
            self.say("agent", f"started, boot {f['boot_id']}  ({seq})")
        elif stored.type == "lockers.boot_state":
            doors = ", ".join(f"{k} {v['door']}" for k, v in f["compartments"].items())
            self.say("lockers", f"read before any alarm is armed: {doors}  ({seq})")

    def world(self, compartment: str, what: str) -> None:
        """Observer of the GPIO world: what physically happened."""
        if what in ("energised", "released"):
            self.say("solenoid", f"{compartment} coil {what}")


async def play(directory: Path, duration: float | None, out: TextIO) -> int:
    """Build the site in ``directory``, play the scene, run for ``duration`` (None: Ctrl-C)."""
    narrator = Narrator(out)
    broker = MosquittoBroker(directory / "broker") if find_mosquitto() else None
    with PtyBadgeReader() as reader:
        site = write_site(directory, broker_port=broker.port if broker else free_port(),
                          reader_url=reader.path)
        factory = world_pin_factory()
        world = LockerWorld(factory, DOORS, asyncio.get_running_loop(),
                            on_change=narrator.world)
        agent = Agent(load_config(site.config_path), pin_factory=factory,
                      observer=narrator.event)
        narrator.agent = agent
        scene = Scene(agent, site, broker, reader, narrator)
        scene.introduce()
        if broker is not None:
            broker.start()
        try:
            return await scene.run(duration)
        finally:
            await world.aclose()
            if broker is not None:
                broker.stop()


@dataclass
class Scene:
    """The demo's script, played against a running agent."""

    agent: Agent
    site: VirtualSite
    broker: MosquittoBroker | None
    reader: PtyBadgeReader
    n: Narrator
    platform: PlatformRecorder | None = None

    def introduce(self) -> None:
        def line(text: str) -> None:
            print(text, file=self.n.out, flush=True)

        line("Curbside demo: a virtual tool-library site")
        line(f"  site dir   {self.site.directory}  (site.toml, outbox.db, agent.log)")
        if self.broker is not None:
            line(f"  broker     mosquitto on {self.broker.host}:{self.broker.port} "
                 "(private, loopback)")
        else:
            line("  broker     none: mosquitto is not installed, so the agent runs offline "
                 "and queues every event (apt-get install mosquitto)")
        line(f"  reader     {self.reader.path} (pty, line protocol)")
        line("  lockers    A1 hand tools, B1 battery bay (needs battery-handling); "
             "gpiozero MockFactory pins")

    async def run(self, duration: float | None) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self.broker is not None:  # subscribed before the agent says a word
                    self.platform = await stack.enter_async_context(
                        PlatformRecorder(self.broker.host, self.broker.port, SITE))
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.agent.run(stop), name="agent")
                    play = tg.create_task(self._play_then_idle(duration, stop), name="scene")
                    await stop.wait()
                    play.cancel()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        depth = self.agent.outbox.depth
        self.n.say("agent", "stopped cleanly: outputs off, outbox closed"
                   + (f" with {depth} event(s) kept for next start" if depth else ", empty"))
        return 0

    async def _play_then_idle(self, duration: float | None, stop: asyncio.Event) -> None:
        await asyncio.wait_for(self.agent.reader_ready.wait(), STEP_TIMEOUT_S)
        try:
            await self.play()
        except TimeoutError as exc:
            self.n.say("scene", f"stopped: {exc}")
            stop.set()
            raise
        if duration is None:
            self.n.heading("scene complete: the site keeps running; press Ctrl-C to stop")
            await stop.wait()
        else:
            self.n.heading(f"scene complete: running {duration:g}s more")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
        stop.set()

    async def visit(self, who: str, compartment: str, token: str, until: str) -> None:
        """A member presents a badge; wait for the agent to record ``until`` there."""
        self.n.say("member", f"{who} scans a badge at {compartment}")
        waiting = asyncio.ensure_future(self.n.until(
            lambda e: e.type == until and e.fields.get("compartment") == compartment,
            f"{until} at {compartment}"))
        self.reader.present(compartment, token)
        await waiting

    async def play(self) -> None:
        site, n = self.site, self.n
        if self.broker is not None:
            await n.until(lambda e: e.type == "link.up", "link up", start=0)

        n.heading("1. Ada's badge grants the hand-tool group: A1 opens")
        await self.visit("Ada", "A1", site.badge("ada", groups=("hand-tools",)), "door.closed")

        n.heading("2. A forged badge (right kid, wrong key) is denied")
        await self.visit("Mallory", "A1", _forged(site), "access.denied")

        n.heading("3. An expired badge is denied")
        old = int(time.time()) - 3 * 86400
        expired = site.badge("dan", groups=("hand-tools",), not_before=old, lifetime_s=86400)
        await self.visit("Dan", "A1", expired, "access.denied")

        n.heading("4. Ben may borrow batteries but lacks the battery-handling skill badge")
        await self.visit("Ben", "B1", site.badge("ben", groups=("batteries",)), "access.denied")

        if self.broker is None or self.platform is None:
            n.heading("5. Offline all along: every event waits in the outbox")
            n.say("outbox", f"{self.agent.outbox.depth} event(s) queued, none lost")
            return
        await self._outage(self.broker, self.platform)

    async def _outage(self, broker: MosquittoBroker, platform: PlatformRecorder) -> None:
        n = self.n
        await _within(self.agent.outbox.wait_empty(), "the outbox to drain")
        sent = {e.seq for e in n.events}
        await _within(platform.wait_for(lambda p: sent <= {e["seq"] for e in p.events},
                                        STEP_TIMEOUT_S), "the platform to have every event")
        n.say("platform", f"received {len(platform.events)} events so far")

        n.heading("5. The broker drops out; Cleo still opens B1; the queue drains on return")
        link_down = asyncio.ensure_future(n.until(lambda e: e.type == "link.down", "link down"))
        broker.stop()
        n.say("broker", "stopped")
        await link_down
        cleo = self.site.badge("cleo", groups=("batteries",), skills=("battery-handling",))
        await self.visit("Cleo", "B1", cleo, "door.closed")
        n.say("outbox", f"{self.agent.outbox.depth} event(s) queued while offline")
        broker.start()
        n.say("broker", "back")
        await _within(self.agent.outbox.wait_empty(), "the outbox to drain after the outage")
        recorded = {e.seq for e in n.events}
        await _within(platform.wait_for(lambda p: recorded <= {e["seq"] for e in p.events},
                                        STEP_TIMEOUT_S), "the platform to have every event")
        seqs = sorted(int(e["seq"]) for e in platform.events)
        gaps = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))
        ordered = platform.in_order_per_class()
        n.say("platform", f"{len(seqs)} events, seq {seqs[0]}..{seqs[-1]}, "
                          f"{'in order per class' if ordered else 'OUT OF ORDER'}, "
                          f"{'no gaps' if not gaps else f'gaps {gaps}'}, "
                          f"{platform.duplicates} duplicate(s) dropped")


async def _within(step: Awaitable[None], what: str) -> None:
    """Await ``step`` for at most STEP_TIMEOUT_S; a timeout names what did not happen."""
    try:
        await asyncio.wait_for(step, STEP_TIMEOUT_S)
    except TimeoutError as exc:
        raise TimeoutError(f"waited {STEP_TIMEOUT_S:g}s for {what}") from exc


def _forged(site: VirtualSite) -> str:
    """A badge that claims the site issuer's kid but is signed by another key."""
    now = int(time.time())
    claims = {"iss": site.issuer.name, "sub": "mallory", "aud": SITE, "iat": now, "nbf": now,
              "exp": now + 3600, "jti": "forged-1", "grp": ["hand-tools"]}
    return sign_token(claims, Ed25519PrivateKey.generate(), kid=site.issuer.kid, typ=BADGE_TYP)
