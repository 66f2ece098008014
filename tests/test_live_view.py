"""The live view of ``curbside sim``: what a frame shows, odd input, and the refresh loop."""

from __future__ import annotations

import asyncio
import io
import re
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from edge.clock import TimeQuality
from edge.compartment import State
from edge.events import EventClass
from edge.link import LinkState
from simulators.live_view import (
    CLASS_STYLES,
    EVENTS_SHOWN,
    LINK_STYLES,
    STATE_STYLES,
    TIME_STYLES,
    LiveModel,
    LiveView,
    plain_summary,
    render,
)

T0 = 1_767_225_600.0
EVENT_ROW = re.compile(r"^\s*(\d+)\s+\d\d:\d\d:\d\d\s", re.MULTILINE)


def site_state() -> dict[str, Any]:
    """A state document in the shape of ``Agent.snapshot()``: three doors, one forced."""
    return {
        "device": "lockers-1", "site": "elm-street", "boot_id": "3f9c2a7b1d04",
        "version": "0.1.0", "ts": T0, "tq": "synchronised",
        "doors": {"A1": "closed", "B1": "open", "C1": "closed"},
        "compartments": {"A1": "locked", "B1": "forced", "C1": "unlocked"},
        "hardware_link": True,
        "outbox": {"depth": 9, "by_class": {"audit": 2, "alarm": 1, "state": 4, "telemetry": 2},
                   "bytes_by_class": {"audit": 410, "alarm": 96, "state": 388, "telemetry": 180},
                   "wal_bytes": 4120, "oldest_age_s": 12.4,
                   "dropped": {"audit": 0, "alarm": 0, "state": 0, "telemetry": 5},
                   "held_in_memory": 0, "fault": None},
        "sensors": {
            "curb-pm": {"kind": "pms5003", "latest": {"pm1_0": 3.1, "pm2_5": 5.2, "pm10": 7.8},
                        "samples": 42, "problems": [],
                        "calibration": {"model": "linear", "offset": 0.0, "gain": 1.0}},
            "curb-sds": {"kind": "sds011", "latest": None, "samples": 0, "problems": ["stale"],
                         "calibration": {"model": "linear", "offset": 0.0, "gain": 1.0}},
        },
        "batteries": {
            "bat-1": {"kind": "jbd", "present": True, "compartment": "C1", "ready": True,
                      "problems": [], "charging": False,
                      "reading": {"voltage_v": 13.27, "current_a": -1.2, "soc_pct": 86.0,
                                  "temperatures_c": [21.5, 22.0], "cell_min_v": 3.31,
                                  "cell_max_v": 3.33, "protection": [], "cycles": 12}},
            "bat-2": {"kind": "vedirect", "present": True, "compartment": "B1", "ready": False,
                      "problems": ["charge 12% below 40%"], "charging": True,
                      "reading": {"voltage_v": 12.1, "current_a": 3.5, "soc_pct": 12.0}},
        },
        "device_key": {"kid": "k1", "public_key": "AAAA"},
        "denylist_version": 3, "trust_version": 7, "remote_config": {},
        "stats": {"scans": 4, "unlocks": 2, "garbage_lines": 0},
    }


def event(seq: int, event_type: str, event_class: str = "state",
          **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "type": event_type, "class": event_class, "ts": T0 - 60 + seq,
            "fields": fields}


def site_events() -> list[dict[str, Any]]:
    return [
        event(38, "access.granted", "audit", compartment="A1", member="ada"),
        event(39, "locker.unlocked", compartment="A1", pulse_ms=500),
        event(40, "door.closed", compartment="A1", open_s=4.3),
        event(41, "door.forced_open", "alarm", compartment="B1"),
    ]


def site_model(**changes: Any) -> LiveModel:
    values: dict[str, Any] = {"state": site_state(), "link": "up", "events": site_events(),
                              "notes": ["badge presented at A1 by ada", "broker cut"]}
    return LiveModel(**{**values, **changes})


def frame_text(model: LiveModel, width: int = 100) -> str:
    console = Console(record=True, width=width, color_system=None, file=io.StringIO())
    console.print(render(model))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def line_with(text: str, start: str) -> str:
    """The first line of ``text`` that starts with ``start``."""
    return next(line for line in text.splitlines() if line.startswith(start))


# --- what a frame shows ---------------------------------------------------------------------

def test_frame_shows_each_compartment_with_its_state_and_door() -> None:
    text = frame_text(site_model())
    assert re.search(r"^A1\s+locked\s+closed\b", text, re.MULTILINE)
    assert re.search(r"^B1\s+forced !\s+open\b", text, re.MULTILINE)
    assert re.search(r"^C1\s+unlocked\s+closed\b", text, re.MULTILINE)


def test_forced_door_shows_as_an_alarm_in_words_and_in_red() -> None:
    text = frame_text(site_model())
    assert "! ALARM: B1 forced" in text
    coloured = Console(width=100, file=io.StringIO(), force_terminal=True,
                       color_system="standard", record=True)
    coloured.print(render(site_model()))
    ansi = coloured.export_text(styles=True)
    assert "\x1b[1;31mforced !" in ansi
    assert "\x1b[1;31mdoor.forced_open" in ansi  # the alarm event's row is red too


@pytest.mark.parametrize("state", ["held_open", "fault", "unlock_failed"])
def test_every_alarm_state_is_marked(state: str) -> None:
    model = site_model(state={"compartments": {"A1": state}, "doors": {"A1": "closed"}})
    text = frame_text(model)
    assert re.search(rf"^A1\s+{state} !\s+closed", text, re.MULTILINE)
    assert f"ALARM: A1 {state}" in text


def test_a_quiet_site_shows_no_alarm() -> None:
    state = site_state()
    state["compartments"]["B1"] = "locked"
    assert "ALARM" not in frame_text(site_model(state=state, events=[]))


def test_frame_shows_link_time_quality_hardware_and_document_versions() -> None:
    text = frame_text(site_model(link="down"))
    assert "Curbside sim  elm-street/lockers-1" in text
    assert re.search(r"link down\s+time synchronised\s+hardware up\s+denylist 3\s+trust 7",
                     text)


def test_frame_shows_outbox_depth_bytes_and_drops_per_class_with_the_oldest_age() -> None:
    text = frame_text(site_model())
    assert re.search(r"\baudit\s+2\s+410\s+0$", text, re.MULTILINE)
    assert re.search(r"\balarm\s+1\s+96\s+0$", text, re.MULTILINE)
    assert re.search(r"\bstate\s+4\s+388\s+0$", text, re.MULTILINE)
    assert re.search(r"\btelemetry\s+2\s+180\s+5$", text, re.MULTILINE)
    assert "total 9  oldest 12.4 s  held 0" in text


def test_outbox_fault_and_unknown_classes_are_shown() -> None:
    state = site_state()
    state["outbox"].update(fault="disk I/O error", by_class={"audit": 1, "debug": 3})
    text = frame_text(site_model(state=state))
    assert re.search(r"\bdebug\s+3\b", text)
    assert "fault: disk I/O error" in text
    assert "outbox fault" in line_with(text, "! ALARM")


def test_frame_shows_sensor_values_and_health() -> None:
    text = frame_text(site_model())
    assert re.search(r"^sensor\s+kind\s+pm1_0\s+pm2_5\s+pm10\s+samples\s+health", text,
                     re.MULTILINE)
    assert re.search(r"^curb-pm\s+pms5003\s+3\.1\s+5\.2\s+7\.8\s+42\s+ok\b", text, re.MULTILINE)
    assert re.search(r"^curb-sds\s+sds011\s+—\s+—\s+—\s+0\s+stale\b", text, re.MULTILINE)


def test_frame_shows_battery_charge_voltage_temperature_and_readiness() -> None:
    text = frame_text(site_model())
    assert re.search(r"^bat-1\s+C1\s+86 %\s+13\.27 V\s+-1\.2 A\s+21\.5/22\.0 °C\s+ready\b",
                     text, re.MULTILINE)
    assert re.search(r"^bat-2\s+B1\s+12 %\s+12\.10 V\s+\+3\.5 A\s+—\s+charging · not ready: "
                     r"charge 12% below 40%", text, re.MULTILINE)


def test_sensors_and_batteries_appear_only_when_the_site_has_some() -> None:
    state = site_state()
    state["sensors"], state["batteries"] = {}, {}
    text = frame_text(site_model(state=state))
    assert "Sensors" not in text
    assert "Batteries" not in text
    assert "Compartments" in text


def test_frame_lists_the_events_oldest_first_with_compact_fields() -> None:
    text = frame_text(site_model())
    assert [int(seq) for seq in EVENT_ROW.findall(text)] == [38, 39, 40, 41]
    assert re.search(r"\balarm\s+door\.forced_open\s+compartment=B1$", text, re.MULTILINE)
    assert re.search(r"\bstate\s+door\.closed\s+compartment=A1 open_s=4\.3$", text,
                     re.MULTILINE)


def test_only_the_last_events_are_listed() -> None:
    events = [event(seq, "sensor.minute", "telemetry", sensor="curb-pm") for seq in range(1, 21)]
    text = frame_text(site_model(events=events))
    assert [int(seq) for seq in EVENT_ROW.findall(text)] == list(range(21 - EVENTS_SHOWN, 21))
    console = Console(record=True, width=100, color_system=None, file=io.StringIO())
    console.print(render(site_model(events=events), events_shown=3))
    assert [int(seq) for seq in EVENT_ROW.findall(console.export_text())] == [18, 19, 20]


def test_frame_shows_the_latest_notes() -> None:
    notes = [f"note {n}" for n in range(10)]
    text = frame_text(site_model(notes=notes))
    assert "• note 9" in text
    assert "• note 7" in text
    assert "• note 6" not in text


def test_a_realistic_frame_fits_a_100_by_30_terminal() -> None:
    lines = frame_text(site_model(notes=["a", "b", "c"])).splitlines()
    assert len(lines) <= 30
    assert max(len(line) for line in lines) <= 100


def test_frame_with_almost_everything_missing_still_renders() -> None:
    text = frame_text(LiveModel(state={}, link="", events=[]))
    assert "link —" in text
    assert "no events yet" in text
    nones = {key: None for key in site_state()}
    text = frame_text(LiveModel(state=nones, link="connecting", events=[{"seq": 1}]))
    assert "link connecting  time —  hardware —  denylist —  trust —" in text
    assert re.search(r"^\s*1\s+—\s+—\s+—", text, re.MULTILINE)


def test_every_state_link_class_and_time_quality_has_a_style() -> None:
    assert set(STATE_STYLES) == {s.value for s in State}
    assert set(LINK_STYLES) == {s.value for s in LinkState}
    assert set(CLASS_STYLES) == {c.value for c in EventClass}
    assert set(TIME_STYLES) == {q.value for q in TimeQuality}


def test_markup_in_site_data_is_shown_literally() -> None:
    state = site_state()
    state["compartments"]["[bold]X"] = "[red]"
    text = frame_text(site_model(state=state, notes=["[/] closing tag", "line\nbreak"]))
    assert "[bold]X" in text
    assert "• [/] closing tag" in text
    assert "• line break" in text


# --- the one-line summary -------------------------------------------------------------------

def test_plain_summary_tells_link_doors_outbox_and_the_last_event() -> None:
    assert plain_summary(site_model()) == (
        "link up | doors A1 closed, B1 open (forced!), C1 closed | "
        "outbox 9 (audit 2, alarm 1, state 4, telemetry 2) | "
        "last #41 alarm door.forced_open compartment=B1")


def test_plain_summary_of_an_empty_model() -> None:
    assert plain_summary(LiveModel(state={}, link="", events=[])) == (
        "link — | doors — | outbox — | last —")


# --- odd input never raises -----------------------------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=10)
NAMES = st.text(max_size=10)


def some_of(**keys: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts with any subset of ``keys``, each value either plausible or any JSON."""
    return st.fixed_dictionaries({}, optional={k: v | JSON for k, v in keys.items()})


SENSOR = some_of(kind=st.sampled_from(["pms5003", "sds011"]),
                 latest=st.dictionaries(NAMES, SCALARS, max_size=8),
                 samples=st.integers(), problems=st.lists(SCALARS, max_size=3))
BATTERY = some_of(present=st.booleans(), compartment=NAMES, ready=st.booleans(),
                  charging=st.booleans(), problems=st.lists(SCALARS, max_size=3),
                  reading=some_of(voltage_v=st.floats(), current_a=st.floats(),
                                  soc_pct=st.floats(), temperatures_c=st.lists(SCALARS)))
OUTBOX = some_of(depth=st.integers(), by_class=st.dictionaries(NAMES, SCALARS),
                 bytes_by_class=st.dictionaries(NAMES, SCALARS), oldest_age_s=st.floats(),
                 dropped=st.dictionaries(NAMES, SCALARS), held_in_memory=st.integers(),
                 fault=st.text())
STATE = some_of(
    device=NAMES, site=NAMES, boot_id=NAMES, version=NAMES, ts=st.floats(),
    tq=st.sampled_from([q.value for q in TimeQuality]),
    doors=st.dictionaries(NAMES, st.sampled_from(["open", "closed"]) | SCALARS),
    compartments=st.dictionaries(NAMES, st.sampled_from([s.value for s in State]) | SCALARS),
    hardware_link=st.booleans(), outbox=OUTBOX,
    sensors=st.dictionaries(NAMES, SENSOR | JSON, max_size=3),
    batteries=st.dictionaries(NAMES, BATTERY | JSON, max_size=3),
    denylist_version=st.integers(), trust_version=st.integers(),
    stats=some_of(scans=st.integers(), unlocks=st.integers()))
EVENT = some_of(seq=st.integers(), type=NAMES, ts=st.floats(),
                **{"class": st.sampled_from([c.value for c in EventClass]),
                   "fields": st.dictionaries(NAMES, JSON, max_size=5)})


@settings(max_examples=150, deadline=None)
@given(state=STATE | st.dictionaries(NAMES, JSON), link=NAMES | JSON,
       events=st.lists(EVENT | JSON, max_size=10), notes=st.lists(NAMES | JSON, max_size=5),
       title=NAMES | JSON, width=st.sampled_from([30, 100]))
def test_odd_input_never_makes_the_view_raise(  # noqa: PLR0917  # one argument per strategy
        state: dict[str, Any], link: Any, events: list[Any], notes: list[Any], title: Any,
        width: int) -> None:
    model = LiveModel(state=state, link=link, events=events, notes=notes, title=title)
    frame_text(model, width=width)
    summary = plain_summary(model)
    assert "\n" not in summary
    assert summary.startswith("link ")


# --- the refresh loop -----------------------------------------------------------------------

def door_closed_model(n: int) -> LiveModel:
    return site_model(events=[event(n, "door.closed", compartment="A1", open_s=float(n))])


class ChangingSource:
    """The n-th call returns ``model(n)``; ``calls`` is set once called ``until`` times."""

    def __init__(self, until: int, model: Callable[[int], LiveModel] = door_closed_model) -> None:
        self.count = 0
        self.until = until
        self.calls = asyncio.Event()
        self.at: list[float] = []
        self._model = model

    async def __call__(self) -> LiveModel:
        self.count += 1
        self.at.append(asyncio.get_running_loop().time())
        if self.count >= self.until:
            self.calls.set()
        return self._model(self.count)


def piped_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=100, force_terminal=False, force_interactive=False), out


def terminal_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=100, height=40, force_terminal=True, force_interactive=True,
                   color_system="standard"), out


async def test_piped_output_gets_a_summary_line_per_change_and_stops_when_asked() -> None:
    console, out = piped_console()
    source = ChangingSource(until=3)
    stop = asyncio.Event()
    view = LiveView(source, console=console, plain_interval_s=0.01)
    task = asyncio.create_task(view.run(stop), name="live-view")
    await asyncio.wait_for(source.calls.wait(), timeout=5)
    stop.set()
    await asyncio.wait_for(task, timeout=1)
    lines = out.getvalue().splitlines()
    assert lines[:2] == [plain_summary(door_closed_model(n)) for n in (1, 2)]
    assert len(lines) == source.count
    assert "\x1b" not in out.getvalue()


async def test_piped_output_does_not_repeat_an_unchanged_summary() -> None:
    console, out = piped_console()
    source = ChangingSource(until=4, model=lambda _: site_model())
    stop = asyncio.Event()
    task = asyncio.create_task(LiveView(source, console=console, plain_interval_s=0.01)
                               .run(stop), name="live-view")
    await asyncio.wait_for(source.calls.wait(), timeout=5)
    stop.set()
    await asyncio.wait_for(task, timeout=1)
    assert out.getvalue().splitlines() == [plain_summary(site_model())]


async def test_piped_output_is_polled_at_most_once_a_second_yet_stops_at_once() -> None:
    console, _ = piped_console()
    source = ChangingSource(until=2)
    stop = asyncio.Event()
    task = asyncio.create_task(LiveView(source, console=console).run(stop), name="live-view")
    await asyncio.wait_for(source.calls.wait(), timeout=5)
    assert source.at[1] - source.at[0] >= 0.99
    stop.set()
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(task, timeout=1)
    assert asyncio.get_running_loop().time() - started < 0.5
    assert source.count == 2


async def test_terminal_gets_live_frames_and_its_cursor_back() -> None:
    console, out = terminal_console()
    source = ChangingSource(until=3)
    stop = asyncio.Event()
    task = asyncio.create_task(LiveView(source, console=console, refresh_hz=50).run(stop),
                               name="live-view")
    await asyncio.wait_for(source.calls.wait(), timeout=5)
    stop.set()
    await asyncio.wait_for(task, timeout=1)
    written = out.getvalue()
    assert "door.forced_open" not in written  # the changing source's events replaced it
    assert "door.closed" in written
    assert "Compartments" in written
    assert written.rstrip("\n").endswith("\x1b[?25h")  # cursor shown again


async def test_cancelled_view_closes_the_display() -> None:
    console, out = terminal_console()
    source = ChangingSource(until=2)
    stdout = sys.stdout
    task = asyncio.create_task(LiveView(source, console=console, refresh_hz=50)
                               .run(asyncio.Event()), name="live-view")
    await asyncio.wait_for(source.calls.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=1)
    assert sys.stdout is stdout  # the live display's redirection is undone
    assert out.getvalue().rstrip("\n").endswith("\x1b[?25h")


async def test_a_failing_source_propagates_after_the_display_is_closed() -> None:
    console, out = terminal_console()

    async def broken() -> LiveModel:
        raise RuntimeError("snapshot failed")

    with pytest.raises(RuntimeError, match="snapshot failed"):
        await asyncio.wait_for(LiveView(broken, console=console).run(asyncio.Event()),
                               timeout=1)
    assert out.getvalue().rstrip("\n").endswith("\x1b[?25h")


async def test_a_stop_already_set_returns_without_asking_the_source() -> None:
    console, out = piped_console()
    source = ChangingSource(until=1)
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(LiveView(source, console=console).run(stop), timeout=1)
    assert source.count == 0
    assert out.getvalue() == ""


@pytest.mark.parametrize(("refresh_hz", "plain_interval_s"), [(0.0, 1.0), (-1.0, 1.0),
                                                               (4.0, 0.0)])
def test_rates_must_be_positive(refresh_hz: float, plain_interval_s: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        LiveView(ChangingSource(until=1), console=piped_console()[0], refresh_hz=refresh_hz,
                 plain_interval_s=plain_interval_s)
