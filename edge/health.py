"""The watchdog's eyes: systemd is pinged only while every critical loop is healthy.

The ``health`` task checks, every half ``WatchdogSec`` (or every 10 s without a
watchdog), that the event loop runs (it is this task running at all), that the critical
tasks (``link``, ``forwarder``, ``reader``, ``lockers``, ``commands``) are alive, that
the outbox writer commits what is queued, and that no unlock is stuck. All well:
``WATCHDOG=1``. Anything wrong: no ping (systemd restarts the service after
``WatchdogSec``), the problems in ``STATUS=`` and the log. The first round sends
``READY=1``: the agent is up once its tasks are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from edge.sdnotify import Notifier, watchdog_interval_s

log = logging.getLogger(__name__)

Check = Callable[[], str | None]  # None: healthy; else what is wrong
DEFAULT_INTERVAL_S = 10.0


class HealthWatch:
    """Pings the watchdog while ``checks`` and ``tasks`` are healthy."""

    def __init__(self, notifier: Notifier, checks: Mapping[str, Check],
                 interval_s: float | None = None) -> None:
        self._notifier = notifier
        self._checks = dict(checks)
        self._tasks: dict[str, asyncio.Task[object]] = {}
        self.interval_s = interval_s or watchdog_interval_s() or DEFAULT_INTERVAL_S
        self.pings = 0
        self.problems: list[str] = []

    def watch(self, name: str, task: asyncio.Task[object]) -> None:
        """A critical task: the service is unhealthy once it has ended."""
        self._tasks[name] = task

    def check(self) -> list[str]:
        """What is wrong now (empty: healthy)."""
        problems = [f"{name}: task ended" for name, t in self._tasks.items() if t.done()]
        for name, check in self._checks.items():
            problem = check()
            if problem is not None:
                problems.append(f"{name}: {problem}")
        return problems

    async def run(self) -> None:
        """The ``health`` task. Cancel to stop (it says STOPPING=1 on the way out)."""
        self._notifier.notify("READY=1", "STATUS=running")
        try:
            while True:
                problems = self.check()
                if problems != self.problems:
                    for problem in problems:
                        log.error("unhealthy: %s", problem)
                    self.problems = problems
                    self._notifier.notify("STATUS=" + ("; ".join(problems) or "running"))
                if not problems:
                    self._notifier.notify("WATCHDOG=1")
                    self.pings += 1
                await asyncio.sleep(self.interval_s)
        finally:
            self._notifier.notify("STOPPING=1")
