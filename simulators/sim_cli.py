"""``curbside sim`` and ``curbside demo``: a whole site on a laptop, driven by hand or by
scenario files, watched live.

``curbside sim -c SITE.toml`` brings up every device of the configuration on the far side
of its interface (:mod:`simulators.sim_site`) and the real agent against them, then plays
the ``--scenario`` files given (:mod:`simulators.scenario`), and then, with
``--interactive`` (the default when no scenario is given and stdin is a terminal), reads
steps at a ``sim>`` prompt. ``--view live`` shows the live view (:mod:`simulators.live_view`)
while it runs; ``curbside demo`` is ``curbside sim`` on the built-in Elm Street site
playing the built-in demo scenario. docs/simulators.md is the tour.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TextIO

from edge.config import load_config
from edge.events import StoredEvent
from simulators.broker import find_mosquitto
from simulators.scenario import (
    Scenario,
    ScenarioError,
    ScenarioFailed,
    load,
    parse_line,
)
from simulators.scenario_player import Player
from simulators.sim_site import SimError, SimSite

PACKAGE = Path(__file__).resolve().parent
SITES = PACKAGE / "sites"
SCENARIOS = PACKAGE / "scenarios"
DEFAULT_SITE = SITES / "elm-street.toml"
_QUIET = frozenset({"battery.reading", "sensor.minute"})  # telemetry: the view shows it

PROMPT_HELP = """\
steps (as in scenario files; docs/simulators.md):
  badge A1 ada group=hand-tools     open A1 | close A1 | force A1 | take A1 | return A1
  leave-open A1 | walk-away A1       air pm-1 pm2_5=85 | battery bank-1 soc=15 temp=60
  broker cut|stall|restore|restart   mcu reboot | noise reader 64 | clock back 1h
  wait 2s | wait link up             expect access.granted compartment=A1 | check PATH OP V
and: status, events [N], help, quit"""


def register(subparsers: Any) -> None:
    """Add ``sim`` and ``demo`` to the ``curbside`` command line (entry points)."""
    sim = subparsers.add_parser("sim", help="run a whole site in simulation: drive it by "
                                "hand or with scenario files")
    sim.add_argument("-c", "--config", type=Path, default=DEFAULT_SITE,
                     help=f"site TOML file (default: the built-in {DEFAULT_SITE.stem} site; "
                          f"also: {', '.join(p.stem for p in sorted(SITES.glob('*.toml')))})")
    _common(sim)
    sim.add_argument("-s", "--scenario", action="append", default=[], metavar="FILE",
                     help="play this scenario file (or a built-in: "
                          f"{', '.join(p.stem for p in sorted(SCENARIOS.glob('*.scn')))}); "
                          "repeatable")
    sim.add_argument("-i", "--interactive", action="store_true", default=None,
                     help="a sim> prompt after the scenarios (default: when no scenario is "
                          "given and stdin is a terminal)")
    sim.add_argument("--no-broker", action="store_true",
                     help="use the configuration's broker instead of a private Mosquitto")
    sim.set_defaults(handler=_cmd_sim)

    demo = subparsers.add_parser("demo", help="the built-in site plays the demo scenario")
    _common(demo)
    demo.set_defaults(handler=_cmd_demo, config=DEFAULT_SITE, scenario=["demo"],
                      interactive=False, no_broker=False)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path,
                        help="keep the simulation's files here (default: a temporary dir)")
    parser.add_argument("--view", choices=("auto", "live", "plain", "off"), default="auto",
                        help="live: the live view; plain: a summary line a second; "
                             "auto: live on a terminal (not at the prompt), else off")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="seconds to keep running after the scenarios (default 0; "
                             "-1: until Ctrl-C)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the injected noise")


def _cmd_demo(args: argparse.Namespace) -> int:
    return _cmd_sim(args)


def _cmd_sim(args: argparse.Namespace) -> int:
    offline = not args.no_broker and find_mosquitto() is None
    names = ["offline" if offline and name == "demo" else name for name in args.scenario]
    try:
        scenarios = [resolve_scenario(name) for name in names]
    except ScenarioError as exc:
        print(f"curbside: {exc}", file=sys.stderr)
        return 2
    interactive = args.interactive
    if interactive is None:
        interactive = not scenarios and sys.stdin.isatty()
    config = load_config(args.config)
    with contextlib.ExitStack() as stack:
        directory = args.dir or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="curbside-sim-")))
        directory.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(directory / "agent.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        root = logging.getLogger()
        saved, level = root.handlers[:], root.level
        root.handlers[:] = [handler]
        root.setLevel(getattr(args, "log_level", "INFO"))
        stack.callback(handler.close)
        stack.callback(root.setLevel, level)
        stack.callback(root.handlers.__setitem__, slice(None), saved)
        # At the prompt the live view would redraw over what is typed: `status` shows it.
        view = "off" if interactive and args.view == "auto" else args.view
        run = Run(config_path=args.config, directory=directory, out=sys.stdout,
                  view=view, own_broker=not args.no_broker, offline=offline,
                  seed=args.seed)
        return asyncio.run(run.main(config, scenarios, interactive=interactive,
                                    duration=args.duration))


def resolve_scenario(name: str) -> Scenario:
    """A scenario file by path, or a built-in by name (``demo``)."""
    path = Path(name)
    if not path.exists() and (SCENARIOS / f"{name}.scn").exists():
        path = SCENARIOS / f"{name}.scn"
    try:
        return load(path)
    except OSError as exc:
        raise ScenarioError(f"{name}: cannot read the scenario: {exc.strerror}") from exc


class Run:
    """One ``curbside sim`` run: the site, the narration, the view and the prompt."""

    def __init__(self, *, config_path: Path, directory: Path, out: TextIO, view: str,
                 own_broker: bool, offline: bool = False, seed: int = 0) -> None:
        self.config_path, self.directory, self.out = config_path, directory, out
        self.view, self.own_broker, self.seed = view, own_broker, seed
        self.offline = offline
        self._t0 = time.monotonic()
        self._console: Any = None  # a rich Console while the live view runs

    def line(self, text: str) -> None:
        stamp = f"{time.monotonic() - self._t0:6.2f}s"
        if self._console is not None:
            self._console.print(f"{stamp}  {text}", markup=False, highlight=False,
                                soft_wrap=True)
        else:
            print(f"{stamp}  {text}", file=self.out, flush=True)

    def event(self, event: StoredEvent) -> None:
        if event.type in _QUIET:
            return
        fields = " ".join(f"{k}={v}" for k, v in event.fields.items()
                          if k not in ("badge", "record", "boot_state", "prev") and not isinstance(
                              v, dict | list))
        self.line(f"  #{event.seq:<4} {event.event_class.value:<9} {event.type}  {fields}")

    async def main(self, config: Any, scenarios: list[Scenario], *, interactive: bool,
                   duration: float) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            async with SimSite(config, self.directory, own_broker=self.own_broker,
                               offline=self.offline, observer=self.event,
                               seed=self.seed) as site:
                self._introduce(site)
                async with self._viewing(site, stop):
                    code = await self._drive(site, scenarios, stop, interactive=interactive,
                                             duration=duration)
            depth = site.running_agent.outbox.depth
            self.line("stopped cleanly: outputs off, outbox closed" + (
                ", empty" if depth == 0 else f" with {depth} event(s) kept for the next start"))
            return code
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    def _introduce(self, site: SimSite) -> None:
        config = site.config
        self.line(f"Curbside sim: {config.device.site}/{config.device.id} "
                  f"from {self.config_path}")
        self.line(f"  files      {self.directory}  (agent.log, outbox.db, issuer/)")
        if self.offline:
            self.line("  broker     none: mosquitto is not installed, so the agent runs offline "
                      "and queues every event (apt-get install mosquitto)")
        elif site.broker is not None and site.proxy is not None:
            self.line(f"  broker     mosquitto on {site.broker.host}:{site.broker.port}; the "
                      f"agent connects through a faulty proxy on :{site.proxy.port}")
        else:
            self.line(f"  broker     {config.mqtt.host}:{config.mqtt.port} (the configuration's)")
        self.line(f"  reader     {site.reader.path}")
        hardware = (f"microcontroller emulator on {site.mcu.path}" if site.mcu is not None
                    else "gpiozero MockFactory pins with door physics")
        self.line(f"  lockers    {', '.join(c.id for c in config.compartments)}: {hardware}")
        for sid, sim in site.sensors.items():
            self.line(f"  sensor     {sid}: {type(sim).__name__} on {sim.path}")
        for bid, bsim in site.battery_sims.items():
            self.line(f"  battery    {bid}: {type(bsim).__name__} on {bsim.path}")

    @contextlib.asynccontextmanager
    async def _viewing(self, site: SimSite, stop: asyncio.Event) -> AsyncIterator[None]:
        mode = self.view
        if mode == "auto":
            mode = "live" if self.out.isatty() else "off"
        if mode != "off":
            try:
                import rich  # noqa: F401, PLC0415  # optional: the sim extra
            except ImportError:
                self.line("(no live view: pip install 'curbside[sim]' for it)")
                mode = "off"
        if mode == "off":
            yield
            return
        from rich.console import Console  # noqa: PLC0415  # optional: the sim extra

        from simulators.live_view import LiveModel, LiveView  # noqa: PLC0415  # needs rich

        console = Console(file=self.out, force_terminal=mode == "live")

        async def model() -> LiveModel:
            agent = site.running_agent
            events = [{"seq": e.seq, "type": e.type, "class": e.event_class.value,
                       "ts": e.ts, "fields": e.fields} for e in site.events[-12:]]
            return LiveModel(state=await site.snapshot(), link=agent.link.state.value,
                             events=events, notes=site.notes[-5:])

        view = LiveView(model, console=console)
        done = asyncio.Event()
        self._console = console
        task = asyncio.ensure_future(view.run(done))
        try:
            yield
        finally:
            done.set()
            await asyncio.wait_for(task, 5.0)
            self._console = None

    async def _drive(self, site: SimSite, scenarios: list[Scenario], stop: asyncio.Event, *,
                     interactive: bool, duration: float) -> int:
        player = Player(site, say=lambda text: self.line(f"== {text}"))
        for scenario in scenarios:
            self.line(f"scenario {scenario.name}: {len(scenario.steps)} steps")
            try:
                await _until_stopped(player.play(scenario), stop)
            except (ScenarioFailed, ScenarioError) as exc:
                self.line(f"FAILED {exc}")
                return 1
            if stop.is_set():
                return 130
            self.line(f"scenario {scenario.name}: passed")
        if interactive:
            return await self.prompt(player, stdin_lines(), stop)
        if duration:
            self.line("running" + (" until Ctrl-C" if duration < 0 else f" for {duration:g}s"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), None if duration < 0 else duration)
        return 0

    async def prompt(self, player: Player, lines: AsyncIterator[str],
                     stop: asyncio.Event) -> int:
        """Read steps until ``quit``, end of input or ``stop``; errors are shown, not fatal."""
        self.line("sim> type steps; 'help' lists them, 'quit' ends")
        async for raw in lines:
            if stop.is_set():
                break
            command = raw.strip()
            if command in ("quit", "exit"):
                break
            try:
                await self._command(player, command, stop)
            except (ScenarioFailed, ScenarioError, SimError, ValueError) as exc:
                self.line(f"error: {exc}")
        return 0

    async def _command(self, player: Player, command: str, stop: asyncio.Event) -> None:
        site = player.site
        if command in ("help", "?"):
            for text in PROMPT_HELP.splitlines():
                self.line(text)
        elif command == "status":
            from simulators.live_view import LiveModel, plain_summary  # noqa: PLC0415  # needs rich

            agent = site.running_agent
            self.line(plain_summary(LiveModel(
                state=await site.snapshot(), link=agent.link.state.value,
                events=[{"seq": e.seq, "type": e.type, "class": e.event_class.value,
                         "ts": e.ts, "fields": e.fields} for e in site.events[-1:]])))
        elif command.split()[:1] == ["events"]:
            words = command.split()
            count = int(words[1]) if len(words) > 1 and words[1].isdigit() else 10
            for event in site.events[-count:]:
                self.event(event)
        else:
            step = parse_line(command)
            if step is not None:
                await _until_stopped(player.step(step), stop)


async def _until_stopped(work: Any, stop: asyncio.Event) -> None:
    """Await ``work`` unless ``stop`` is set first (then cancel it)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            # gather, not suppress(CancelledError): a cancellation of this task that
            # arrives meanwhile must not be swallowed with the child's
            await asyncio.gather(task, return_exceptions=True)
    if task.done() and not task.cancelled():
        task.result()


async def stdin_lines(prompt: str = "sim> ") -> AsyncIterator[str]:
    """Lines typed at the terminal, read by a daemon thread (so Ctrl-C never waits on it)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read(put: Callable[[str | None], object] = queue.put_nowait) -> None:
        while True:
            try:
                text: str | None = input(prompt)
            except (EOFError, OSError):
                text = None
            loop.call_soon_threadsafe(put, text)
            if text is None:
                return

    threading.Thread(target=read, name="sim-prompt", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line
