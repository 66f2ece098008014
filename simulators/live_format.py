"""Defensive access and formatting for the live view: any value, as short text.

Simulator layer, presentation only; pure (no I/O, no rich objects), used by
:mod:`simulators.live_view`. The values come from an agent's state snapshot and events,
where anything may be missing, ``None`` or oddly typed: every function here returns
something to show (``—`` for what is missing) and never raises.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from itertools import islice
from typing import Any

from rich.control import strip_control_codes

from edge.compartment import State

__all__ = ["ALARM_STATES", "MISSING", "clip", "clock_time", "format_value", "is_alarm",
           "is_number", "items", "mapping", "number", "show"]

MISSING = "—"
ALARM_STATES = frozenset({State.FORCED, State.HELD_OPEN, State.FAULT, State.UNLOCK_FAILED})
_BIG_INT = 10**18  # larger ints are no reading; and str() of a huge int may itself raise


def is_alarm(state: object) -> bool:
    return isinstance(state, str) and state in ALARM_STATES


def mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def items(value: object) -> list[Any]:
    """A list or tuple as a list; anything else (a string, a number, None) as empty."""
    return list(value) if isinstance(value, list | tuple) else []


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def clip(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters, without control codes."""
    line = " ".join(strip_control_codes(text).split())
    return line if len(line) <= limit else line[: max(0, limit - 1)] + "…"


def _format_scalar(value: object) -> str | None:
    """JSON's scalars as text; ``None`` for anything else."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) < _BIG_INT else ("-" if value < 0 else "") + "≫1e18"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value or MISSING
    return None


def format_value(value: object, depth: int = 0) -> str:
    """Any value as text; containers shown two levels deep, eight entries each."""
    scalar = _format_scalar(value)
    if scalar is not None:
        return scalar
    if depth >= 2:
        return "…"
    if isinstance(value, Mapping):
        pairs = islice(value.items(), 8)
        return "{" + " ".join(f"{format_value(k, 2)}={format_value(v, depth + 1)}"
                              for k, v in pairs) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v, depth + 1) for v in value[:8]) + "]"
    return type(value).__name__  # not str(value): an unknown object's __str__ may raise


def show(value: object, limit: int = 40) -> str:
    """Any value as one short line; ``None`` as ``—``."""
    return clip(format_value(value), limit)


def number(value: object, spec: str, unit: str = "") -> str:
    if not is_number(value):
        return show(value, 12)
    try:
        return f"{value:{spec}}{unit}"
    except (ValueError, OverflowError):  # an int too large for a float format
        return show(value, 12)


def clock_time(ts: object) -> str:
    """Unix seconds as local ``HH:MM:SS``, the way a developer reads the laptop's clock."""
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return MISSING
    try:
        return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S")
    except (ValueError, OverflowError, OSError):  # NaN, or outside the platform's range
        return MISSING
