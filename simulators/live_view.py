"""The live terminal view of ``curbside sim``: one screen of what a simulated site is doing.

Simulator layer, presentation only, for developers' machines (``rich`` comes with the
``sim`` extra). It knows nothing of how the site is built: a :class:`LiveModel` carries the
agent's state snapshot (the shape of ``Agent.snapshot()``), the MQTT link state, the latest
events and the simulator's notes, and :func:`render` turns it into a rich renderable of
about 100 x 30 cells. Every part of the snapshot may be missing, ``None`` or oddly typed:
such a value shows as ``—`` and never raises, since the view must not be what brings a
simulation down (:mod:`simulators.live_format` turns such values into text).

:class:`LiveView` polls an async source and redraws with ``rich.live.Live`` while the
console is interactive. When it is not (output piped or sent to a file, or ``TERM=dumb``)
a live display would only print one full screen at exit, so the view writes instead the
one-line :func:`plain_summary` whenever it changes, at most once per ``plain_interval_s``
(one second by default): logs stay readable and still tell the story.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edge.clock import TimeQuality
from edge.compartment import State
from edge.events import EventClass
from edge.link import LinkState
from simulators.live_format import (
    ALARM_STATES,
    MISSING,
    clip,
    clock_time,
    format_value,
    is_alarm,
    items,
    mapping,
    number,
    show,
)

__all__ = ["EVENTS_SHOWN", "NOTES_SHOWN", "LiveModel", "LiveView", "plain_summary", "render"]

EVENTS_SHOWN = 6  # the last events listed, so that a frame fits 100 x 30
NOTES_SHOWN = 3
ALARM_MARK = "!"  # beside alarm states and in the header, so alarms survive without colour

STATE_STYLES: Mapping[str, str] = {
    State.LOCKED: "green", State.UNLOCKING: "cyan", State.UNLOCKED: "cyan",
    State.OPEN: "yellow", State.AJAR: "bold yellow", State.RELOCKING: "cyan",
    **{state: "bold red" for state in ALARM_STATES},
}
LINK_STYLES: Mapping[str, str] = {
    LinkState.UP: "bold green", LinkState.CONNECTING: "yellow", LinkState.DOWN: "bold red",
    LinkState.CLOSED: "dim",
}
TIME_STYLES: Mapping[str, str] = {
    TimeQuality.SYNCHRONISED: "green", TimeQuality.FLOOR: "yellow",
    TimeQuality.UNTRUSTED: "red",
}
CLASS_STYLES: Mapping[str, str] = {
    EventClass.AUDIT: "cyan", EventClass.ALARM: "bold red", EventClass.STATE: "",
    EventClass.TELEMETRY: "dim",
}
DOOR_STYLES: Mapping[str, str] = {"open": "yellow", "closed": "green"}
_SENSOR_VALUES_SHOWN = 5


@dataclass(frozen=True)
class LiveModel:
    """What one frame shows.

    ``state`` is the agent's snapshot (``Agent.snapshot()``); ``link`` a ``LinkState``
    value; ``events`` the most recent events, oldest first, each with ``seq``, ``type``,
    ``class``, ``ts`` (Unix seconds) and ``fields``; ``notes`` what the simulator did lately.
    """

    state: Mapping[str, Any]
    link: str
    events: Sequence[Mapping[str, Any]]
    notes: Sequence[str] = ()
    title: str = "Curbside sim"


# --- styling (the text itself comes from simulators.live_format) -----------------------------

def _styled(value: object, styles: Mapping[str, str], limit: int = 24) -> Text:
    shown = show(value, limit)
    return Text(shown, style=styles.get(value, "") if isinstance(value, str) else "")


def _table(title: str, *, expand: bool = False) -> Table:
    # No box: rules would cost a line per table, and a frame has only 30 lines.
    return Table(title=title, title_justify="left", title_style="bold", box=None,
                 pad_edge=False, expand=expand, header_style="dim")


# --- the parts of the screen ----------------------------------------------------------------

def _alarms(state: Mapping[str, Any]) -> list[str]:
    """``"A1 forced"`` for each compartment in an alarm state, and an outbox fault."""
    found = [f"{show(cid, 12)} {cs}"
             for cid, cs in mapping(state.get("compartments")).items() if is_alarm(cs)]
    if mapping(state.get("outbox")).get("fault") is not None:
        found.append("outbox fault")
    return found


def _header(model: LiveModel, state: Mapping[str, Any]) -> Text:
    head = Text()
    head.append(show(model.title, 30), style="bold")
    head.append(f"  {show(state.get('site'), 24)}/{show(state.get('device'), 24)}")
    head.append(f"  agent {show(state.get('version'), 12)}"
                f"  boot {show(state.get('boot_id'), 12)}"
                f"  at {clock_time(state.get('ts'))}", style="dim")
    head.append("\nlink ").append_text(_styled(model.link, LINK_STYLES, 12))
    head.append("  time ").append_text(_styled(state.get("tq"), TIME_STYLES, 12))
    hardware = state.get("hardware_link")
    head.append("  hardware ").append_text(
        Text("up", style="green") if hardware is True else
        Text("down", style="bold red") if hardware is False else Text(MISSING))
    head.append(f"  denylist {show(state.get('denylist_version'), 12)}"
                f"  trust {show(state.get('trust_version'), 12)}")
    stats = mapping(state.get("stats"))
    head.append(f"  scans {show(stats.get('scans'), 8)}"
                f"  unlocks {show(stats.get('unlocks'), 8)}", style="dim")
    alarms = _alarms(state)
    if alarms:
        head.append(f"\n{ALARM_MARK} ALARM: " + clip(", ".join(alarms), 88), style="bold red")
    return head


def _compartments(state: Mapping[str, Any]) -> Table:
    states = mapping(state.get("compartments"))
    doors = mapping(state.get("doors"))
    table = _table("Compartments")
    for name in ("compartment", "state", "door"):
        table.add_column(name, no_wrap=True)
    for cid in dict.fromkeys([*states, *doors]):  # the site's order, doors-only ones after
        cs = states.get(cid)
        shown = _styled(cs, STATE_STYLES)
        if is_alarm(cs):
            shown.append(f" {ALARM_MARK}")
        table.add_row(Text(show(cid, 16)), shown, _styled(doors.get(cid), DOOR_STYLES))
    if not states and not doors:
        table.add_row(Text(MISSING), Text(MISSING), Text(MISSING))
    return table


def _outbox(state: Mapping[str, Any]) -> Table:
    outbox = mapping(state.get("outbox"))
    depth, sizes = mapping(outbox.get("by_class")), mapping(outbox.get("bytes_by_class"))
    dropped = mapping(outbox.get("dropped"))
    table = _table("Outbox")
    for name in ("class", "depth", "bytes", "dropped"):
        table.add_column(name, no_wrap=True, justify="left" if name == "class" else "right")
    for cls in dict.fromkeys([*(c.value for c in EventClass), *depth, *dropped]):
        table.add_row(_styled(cls, CLASS_STYLES, 12), Text(show(depth.get(cls), 10)),
                      Text(show(sizes.get(cls), 12)), Text(show(dropped.get(cls), 10)))
    caption = Text(f"total {show(outbox.get('depth'), 10)}"
                   f"  oldest {number(outbox.get('oldest_age_s'), '.1f', ' s')}"
                   f"  held {show(outbox.get('held_in_memory'), 10)}")
    if outbox.get("fault") is not None:
        caption.append(f"\nfault: {show(outbox.get('fault'), 60)}", style="bold red")
    table.caption, table.caption_justify = caption, "left"
    return table


def _sensors(sensors: Mapping[str, Any]) -> Table:
    latest = {sid: mapping(mapping(s).get("latest")) for sid, s in sensors.items()}
    keys = list(islice(dict.fromkeys(k for values in latest.values() for k in values),
                       _SENSOR_VALUES_SHOWN))
    table = _table("Sensors", expand=True)
    for name in ("sensor", "kind", *(show(k, 10) for k in keys), "samples"):
        table.add_column(name, no_wrap=True)
    table.add_column("health", no_wrap=True, overflow="ellipsis", ratio=1)
    for sid, raw in sensors.items():
        status = mapping(raw)
        problems = [show(p) for p in items(status.get("problems"))]
        health = Text("; ".join(problems), style="bold red") if problems else \
            Text("ok", style="green") if status.get("problems") is not None else Text(MISSING)
        table.add_row(Text(show(sid, 16)), Text(show(status.get("kind"), 10)),
                      *(Text(show(latest[sid].get(k), 10)) for k in keys),
                      Text(show(status.get("samples"), 10)), health)
    return table


def _battery_status(status: Mapping[str, Any]) -> Text:
    if status.get("present") is False:
        return Text("absent", style="dim")
    charging = "charging · " if status.get("charging") is True else ""
    if status.get("ready") is True:
        return Text(charging + "ready", style="green")
    if status.get("ready") is False:
        problems = "; ".join(show(p, 60) for p in items(status.get("problems")))
        return Text(f"{charging}not ready: {problems or MISSING}", style="bold red")
    return Text(charging + MISSING)


def _batteries(batteries: Mapping[str, Any]) -> Table:
    table = _table("Batteries", expand=True)
    for name in ("battery", "bay", "SoC", "voltage", "current", "temp"):
        table.add_column(name, no_wrap=True, justify="left" if name in {"battery", "bay"}
                         else "right")
    table.add_column("status", no_wrap=True, overflow="ellipsis", ratio=1)
    for bid, raw in batteries.items():
        status = mapping(raw)
        reading = mapping(status.get("reading"))
        temps = [number(t, ".1f") for t in items(reading.get("temperatures_c"))[:3]]
        table.add_row(Text(show(bid, 16)), Text(show(status.get("compartment"), 8)),
                      Text(number(reading.get("soc_pct"), ".0f", " %")),
                      Text(number(reading.get("voltage_v"), ".2f", " V")),
                      Text(number(reading.get("current_a"), "+.1f", " A")),
                      Text("/".join(temps) + " °C" if temps else MISSING),
                      _battery_status(status))
    return table


def _fields(event: Mapping[str, Any]) -> str:
    fields = event.get("fields")
    if not isinstance(fields, Mapping):
        return "" if fields is None else show(fields, 80)
    return clip(" ".join(f"{format_value(k, 2)}={format_value(v, 1)}" for k, v in
                          islice(fields.items(), 12)), 80)


def _last_events(events: object, count: int) -> list[Mapping[str, Any]]:
    return [e for e in items(events) if isinstance(e, Mapping)][-count:] if count > 0 else []


def _events(events: list[Mapping[str, Any]]) -> Table:
    table = _table("Events", expand=True)
    for name in ("seq", "time", "class", "type"):
        table.add_column(name, no_wrap=True, justify="right" if name == "seq" else "left")
    table.add_column("fields", no_wrap=True, overflow="ellipsis", ratio=1)
    for event in events:
        cls = event.get("class")
        alarm = cls == EventClass.ALARM
        table.add_row(Text(show(event.get("seq"), 10)), Text(clock_time(event.get("ts"))),
                      _styled(cls, CLASS_STYLES, 10), Text(show(event.get("type"), 32)),
                      Text(_fields(event)), style="bold red" if alarm else None)
    if not events:
        table.add_row(Text(MISSING), Text(""), Text(""), Text("no events yet", style="dim"),
                      Text(""))
    return table


def render(model: LiveModel, *, events_shown: int = EVENTS_SHOWN,
           notes_shown: int = NOTES_SHOWN) -> RenderableType:
    """One frame: header, compartments beside the outbox, sensors, batteries, events, notes.

    Sensors and batteries appear only when the snapshot has some. Never raises on odd
    input: what is missing or malformed shows as ``—``.
    """
    state = mapping(model.state)
    top = Table.grid(padding=(0, 4))
    top.add_row(_compartments(state), _outbox(state))
    parts: list[RenderableType] = [_header(model, state), top]
    sensors, batteries = mapping(state.get("sensors")), mapping(state.get("batteries"))
    if sensors:
        parts.append(_sensors(sensors))
    if batteries:
        parts.append(_batteries(batteries))
    parts.append(_events(_last_events(model.events, events_shown)))
    notes = items(model.notes)[-notes_shown:] if notes_shown > 0 else []
    if notes:
        parts.append(Text("Simulator", style="bold"))
        parts.extend(Text(f"• {show(note, 96)}", style="dim") for note in notes)
    return Group(*parts)


def plain_summary(model: LiveModel) -> str:
    """One line for logs: link, doors (with any alarm state), outbox depth, the last event.

    ``link up | doors A1 closed, B1 open (forced!) | outbox 3 (alarm 1, state 2) |
    last #42 alarm door.forced_open compartment=B1``
    """
    state = mapping(model.state)
    compartments, doors = mapping(state.get("compartments")), mapping(state.get("doors"))
    shown = []
    for cid in dict.fromkeys([*compartments, *doors]):
        cs = compartments.get(cid)
        alarm = f" ({show(cs, 16)}{ALARM_MARK})" if is_alarm(cs) else ""
        shown.append(f"{show(cid, 16)} {show(doors.get(cid), 8)}{alarm}")
    outbox = mapping(state.get("outbox"))
    by_class = ", ".join(f"{show(c, 12)} {show(n, 10)}" for c, n in
                         mapping(outbox.get("by_class")).items() if n)
    depth = show(outbox.get("depth"), 10) + (f" ({by_class})" if by_class else "")
    last = _last_events(model.events, 1)
    last_shown = MISSING if not last else (
        f"#{show(last[0].get('seq'), 10)} {show(last[0].get('class'), 10)} "
        f"{show(last[0].get('type'), 32)} {_fields(last[0])}".rstrip())
    line = (f"link {show(model.link, 12)} | doors {', '.join(shown) or MISSING} | "
            f"outbox {depth} | last {last_shown}")
    return clip(line, 240)


# --- the refresh loop -----------------------------------------------------------------------

async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Until ``stop`` is set or ``seconds`` pass, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


class LiveView:
    """Redraws :func:`render` of ``source()`` ``refresh_hz`` times a second.

    ``screen=True`` takes over the terminal's alternate screen; by default the view draws in
    place and its last frame stays in the scrollback. On a console that is not interactive,
    :func:`plain_summary` lines are written instead (see the module docstring).

    While the live display runs, rich redirects ``sys.stdout`` and ``sys.stderr`` above it;
    a logging handler that captured a stream before must write through :attr:`console`
    (``rich.logging.RichHandler(console=view.console)``) or it would tear the frame.
    """

    def __init__(self, source: Callable[[], Awaitable[LiveModel]], *,
                 console: Console | None = None, refresh_hz: float = 4.0,
                 screen: bool = False, plain_interval_s: float = 1.0) -> None:
        """Raises ``ValueError`` unless ``refresh_hz`` and ``plain_interval_s`` are positive."""
        if not refresh_hz > 0 or not plain_interval_s > 0:
            raise ValueError("refresh_hz and plain_interval_s must be positive")
        self._source = source
        self.console = console if console is not None else Console()
        self._period_s = 1.0 / refresh_hz
        self._screen = screen
        self._plain_interval_s = plain_interval_s

    async def run(self, stop: asyncio.Event) -> None:
        """Show the site until ``stop`` is set.

        Returns as soon as ``stop`` is set, once a ``source()`` call in progress (which
        should be quick, a snapshot) has finished. The display is closed (cursor shown,
        alternate screen left, redirected output restored) however this ends: ``stop``,
        cancellation, or an exception from ``source``, which propagates.
        """
        if self.console.is_interactive:
            await self._run_live(stop)
        else:
            await self._run_plain(stop)

    async def _run_live(self, stop: asyncio.Event) -> None:
        # auto_refresh=False: frames are drawn here, in the event loop, so rich starts no
        # refresh thread that would read the renderable while it is being replaced.
        with Live(console=self.console, auto_refresh=False, screen=self._screen) as live:
            while not stop.is_set():
                live.update(render(await self._source()), refresh=True)
                await _wait(stop, self._period_s)

    async def _run_plain(self, stop: asyncio.Event) -> None:
        printed = None
        while not stop.is_set():
            line = plain_summary(await self._source())
            if line != printed:
                self.console.print(line, markup=False, highlight=False, emoji=False,
                                   soft_wrap=True)
                printed = line
            await _wait(stop, self._plain_interval_s)
