"""Scenario files: a small line language that drives a :class:`~simulators.sim_site.SimSite`.

One step per line; ``#`` starts a comment; words are split as a shell would (quotes keep
spaces). The same lines are what the interactive prompt of ``curbside sim`` accepts.
docs/simulators.md is the reference; in short::

    say Ada borrows a drill                    # narrate
    badge A1 ada group=hand-tools              # present a badge issued now for ada
    badge B1 ben group=batteries skill=battery-handling:2 uses=1
    badge A1 mallory forged                    # right kid, wrong key  (also: expired, not-yet)
    open A1 | close A1 | force A1              # pull a door (force: while locked), close it
    leave-open A1 | walk-away A1               # how the next member at A1 behaves
    take A1 | return A1                        # the item switch
    air pm-1 pm2_5=85 pm10=120                 # change the air a sensor breathes
    battery bank-1 soc=15 temp=60 current=-20  # drain, heat, load a battery bank
    broker cut | broker stall | broker restore | broker restart
    mcu reboot | mcu unplug | mcu plug         # the firmware bridge's microcontroller
    noise reader 64                            # random bytes on a serial line
    clock back 3600 | clock reset              # the device's wall clock
    command open compartment=A1 [refused]      # the platform sends a signed command
    revoke ada                                 # the platform publishes a signed denylist
    wait 2s | wait link up | wait link down    # let time pass; wait for the link
    expect access.denied compartment=A1 reason=bad_signature within=5s
    expect local door.forced_open              # local: recorded by the agent (else: at the broker)
    expect delivered                           # every event recorded so far is at the broker
    check compartments.A1 == fault within=5s   # the agent's state snapshot (== != < <= > >=)

``expect`` looks at the events since the first action (any step but ``expect``, ``say``,
``wait`` and ``check``) after the previous ``expect``: a run of actions, then what they
should cause. So it never matches an event an earlier run caused. Parsing is
sans-I/O (:func:`parse`); :class:`simulators.scenario_player.Player` runs the steps against
a running site.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_OPTION = re.compile(r"^[A-Za-z_][\w.-]*=")  # key=value; "==" and "<=" are words
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
ACTIONS = {"badge", "command", "revoke", "open", "close", "force", "leave-open", "walk-away",
            "take", "return", "air", "battery", "broker", "mcu", "noise", "clock"}
COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
_BADGE_FLAGS = {"expired", "forged", "not-yet", "allow-untrusted-time"}


class ScenarioError(ValueError):
    """A line that is not a step; the message names the file and line."""


class ScenarioFailed(AssertionError):
    """An ``expect`` that did not come true in time."""


@dataclass(frozen=True)
class Step:
    """One parsed line: its verb, its positional words and its ``key=value`` options."""

    line: int
    text: str
    verb: str
    args: tuple[str, ...] = ()
    options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def option(self, name: str, default: str | None = None) -> str | None:
        values = self.options.get(name)
        return values[-1] if values else default


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]


def duration(text: str) -> float:
    """``"2"``, ``"2s"``, ``"500ms"``, ``"1.5m"``, ``"1h"`` -> seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"expected a duration like 2s, 500ms, 1.5m or 1h, got {text!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse(text: str, name: str = "<scenario>") -> Scenario:
    """Every step of ``text``; :class:`ScenarioError` (file:line: why) for the first bad one."""
    steps = []
    for number, raw in enumerate(text.splitlines(), start=1):
        try:
            step = parse_line(raw, number)
        except ValueError as exc:
            raise ScenarioError(f"{name}:{number}: {exc}") from None
        if step is not None:
            steps.append(step)
    return Scenario(name, tuple(steps))


def load(path: Path) -> Scenario:
    return parse(path.read_text(encoding="utf-8"), str(path))


def parse_line(raw: str, number: int = 1) -> Step | None:
    """One line -> a :class:`Step`, or None for a blank or comment line; ValueError if bad."""
    first = raw.split(maxsplit=1)
    if first and first[0].lower() == "say":  # free text: apostrophes allowed, " #" ends it
        text = first[1].split(" #")[0].strip() if len(first) > 1 else ""
        return Step(number, raw.strip(), "say", (text,))
    words = shlex.split(raw, comments=True)
    if not words:
        return None
    verb, rest = words[0].lower(), words[1:]
    args = tuple(w for w in rest if _OPTION.match(w) is None)
    options: dict[str, tuple[str, ...]] = {}
    for word in rest:
        if _OPTION.match(word) is not None:
            key, _, value = word.partition("=")
            options[key] = (*options.get(key, ()), value)
    step = Step(number, raw.strip(), verb, args, options)
    _check(step)
    return step


def _need(step: Step, count: int, usage: str) -> None:
    if len(step.args) < count:
        raise ValueError(f"{step.verb}: usage: {usage}")


def _check(step: Step) -> None:
    checker = _CHECKS.get(step.verb)
    if checker is None:
        raise ValueError(f"unknown step {step.verb!r}; steps are: {', '.join(sorted(_CHECKS))}")
    checker(step)


def _check_badge(step: Step) -> None:
    _need(step, 2, "badge COMPARTMENT MEMBER [group=G] [skill=S[:L]] [uses=N] [flags]")
    unknown = set(step.args[2:]) - _BADGE_FLAGS
    if unknown:
        raise ValueError(f"badge: unknown flag(s) {sorted(unknown)}; "
                         f"known: {sorted(_BADGE_FLAGS)}")
    for skill in step.options.get("skill", ()):
        name, _, level = skill.partition(":")
        if not name or (level and not level.isdigit()):
            raise ValueError(f"badge: skill={skill!r}: expected NAME or NAME:LEVEL")
    if (uses := step.option("uses")) is not None and not uses.isdigit():
        raise ValueError(f"badge: uses={uses!r}: expected a whole number")
    if (lifetime := step.option("lifetime")) is not None:
        duration(lifetime)


def _check_door(step: Step) -> None:
    _need(step, 1, f"{step.verb} COMPARTMENT")


def _check_air(step: Step) -> None:
    _need(step, 1, "air SENSOR pm2_5=X pm10=Y")
    _floats(step, ("pm2_5", "pm10"))


def _check_battery(step: Step) -> None:
    _need(step, 1, "battery ID [soc=X] [temp=Y] [current=Z]")
    _floats(step, ("soc", "temp", "current"))


def _check_broker(step: Step) -> None:
    if step.args[:1] not in (("cut",), ("stall",), ("restore",), ("restart",)):
        raise ValueError("broker: usage: broker cut|stall|restore|restart")


def _check_mcu(step: Step) -> None:
    if step.args[:1] not in (("reboot",), ("unplug",), ("plug",)):
        raise ValueError("mcu: usage: mcu reboot|unplug|plug")


def _check_noise(step: Step) -> None:
    _need(step, 1, "noise TARGET [BYTES]")
    if len(step.args) > 1 and not step.args[1].isdigit():
        raise ValueError(f"noise: {step.args[1]!r}: expected a number of bytes")


def _check_clock(step: Step) -> None:
    if step.args[:1] == ("back",) and len(step.args) == 2:
        duration(step.args[1])
    elif step.args[:1] != ("reset",):
        raise ValueError("clock: usage: clock back SECONDS | clock reset")


def _check_wait(step: Step) -> None:
    _need(step, 1, "wait DURATION | wait link up|down")
    if step.args[0] != "link":
        duration(step.args[0])
    elif step.args[1:] not in (("up",), ("down",)):
        raise ValueError("wait: usage: wait link up|down")
    _within_ok(step)


def _check_check(step: Step) -> None:
    if len(step.args) != 3 or step.args[1] not in COMPARE:
        raise ValueError(f"check: usage: check PATH OP VALUE [within=5s], OP one of "
                         f"{' '.join(COMPARE)}")
    _within_ok(step)


def _check_expect(step: Step) -> None:
    _need(step, 1, "expect [local] TYPE [key=value...] [within=5s] | expect delivered")
    if step.args == ("local",):
        raise ValueError("expect local: which event type?")
    _within_ok(step)


def _check_command(step: Step) -> None:
    _need(step, 1, "command NAME [arg=value...] [refused] [within=10s]")
    if set(step.args[1:]) - {"refused"}:
        raise ValueError(f"command: unknown flag(s) {sorted(set(step.args[1:]) - {'refused'})}")
    _within_ok(step)


def _check_revoke(step: Step) -> None:
    _need(step, 1, "revoke MEMBER...")


def _check_say(step: Step) -> None:
    return


def _within_ok(step: Step) -> None:
    if (within := step.option("within")) is not None:
        duration(within)


_CHECKS: dict[str, Callable[[Step], None]] = {
    "badge": _check_badge, "air": _check_air, "battery": _check_battery,
    "broker": _check_broker, "mcu": _check_mcu, "noise": _check_noise, "clock": _check_clock,
    "wait": _check_wait, "check": _check_check, "expect": _check_expect, "say": _check_say,
    "command": _check_command, "revoke": _check_revoke,
    **dict.fromkeys(("open", "close", "force", "leave-open", "walk-away", "take", "return"),
                    _check_door),
}


def _floats(step: Step, names: tuple[str, ...]) -> None:
    unknown = set(step.options) - set(names)
    if unknown:
        raise ValueError(f"{step.verb}: unknown option(s) {sorted(unknown)}; "
                         f"known: {', '.join(names)}")
    for name in names:
        if (value := step.option(name)) is not None:
            try:
                float(value)
            except ValueError:
                raise ValueError(f"{step.verb}: {name}={value!r}: expected a number") from None
