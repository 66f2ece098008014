"""Plays scenario steps (:mod:`simulators.scenario`) against a running
:class:`~simulators.sim_site.SimSite`: each verb calls the site's driver API, ``expect``
waits for events at the broker (or recorded locally), ``check`` polls the agent's state
snapshot. A step that does not come true raises :class:`ScenarioFailed` naming the file,
the line and what happened instead.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.link import LinkState
from provisioning.badges import BADGE_TYP
from provisioning.tokens import sign_token
from simulators.scenario import (
    ACTIONS,
    COMPARE,
    Scenario,
    ScenarioError,
    ScenarioFailed,
    Step,
    duration,
)
from simulators.sim_site import SimError, SimSite

DEFAULT_WITHIN_S = 10.0


@dataclass
class Player:
    """Plays steps against ``site``; ``say`` receives the narration."""

    site: SimSite
    say: Callable[[str], None] = print
    _local_mark: int = 0
    _platform_mark: int = 0
    _acting: bool = False

    async def play(self, scenario: Scenario) -> None:
        for step in scenario.steps:
            try:
                await self.step(step)
            except ScenarioFailed as exc:
                raise ScenarioFailed(f"{scenario.name}:{step.line}: {step.text}: {exc}"
                                     ) from None
            except (SimError, ValueError) as exc:
                raise ScenarioError(f"{scenario.name}:{step.line}: {exc}") from None

    async def step(self, step: Step) -> None:
        if step.verb in ACTIONS and not self._acting:
            self._mark()  # a new run of actions: what follows is expected of it
        self._acting = step.verb in ACTIONS or (self._acting and step.verb != "expect")
        handler = getattr(self, "_" + step.verb.replace("-", "_"))
        await handler(step)

    def _mark(self) -> None:
        self._local_mark = len(self.site.events)
        platform = self.site.platform
        self._platform_mark = len(platform.events) if platform is not None else 0

    async def _say(self, step: Step) -> None:
        self.say(step.args[0])

    async def _badge(self, step: Step) -> None:
        compartment, member = step.args[0], step.args[1]
        flags = set(step.args[2:])
        claims: dict[str, Any] = {
            "groups": step.options.get("group", ()),
            "compartments": step.options.get("compartment", ()),
            "permissions": step.options.get("permission", ()),
            "skills": {name: int(level or 1) for name, _, level in
                       (s.partition(":") for s in step.options.get("skill", ()))},
        }
        if (uses := step.option("uses")) is not None:
            claims["use_limit"] = int(uses)
        if (lifetime := step.option("lifetime")) is not None:
            claims["lifetime_s"] = int(duration(lifetime))
        if "allow-untrusted-time" in flags:
            claims["allows_untrusted_time"] = True
        now = int(time.time())
        if "expired" in flags:
            claims.update(not_before=now - 3 * 86400, lifetime_s=86400)
        if "not-yet" in flags:
            claims["not_before"] = now + 3600
        token = self._forged(member) if "forged" in flags else None
        self.site.present(compartment, member, token=token, **claims)

    def _forged(self, member: str) -> str:
        """A badge with the site issuer's kid, signed by a key nobody trusts."""
        issuer = self.site.issuer
        assert issuer is not None
        now = int(time.time())
        claims = {"iss": issuer.name, "sub": member, "aud": self.site.site, "iat": now,
                  "nbf": now, "exp": now + 3600, "jti": f"forged-{now}",
                  "grp": ["hand-tools", "batteries"]}
        return sign_token(claims, Ed25519PrivateKey.generate(), kid=issuer.kid, typ=BADGE_TYP)

    async def _open(self, step: Step) -> None:
        self.site.open_door(step.args[0])

    _force = _open

    async def _close(self, step: Step) -> None:
        self.site.close_door(step.args[0])

    async def _leave_open(self, step: Step) -> None:
        self.site.leave_open(step.args[0])

    async def _walk_away(self, step: Step) -> None:
        self.site.walk_away(step.args[0])

    async def _take(self, step: Step) -> None:
        self.site.take_item(step.args[0])

    async def _return(self, step: Step) -> None:
        self.site.return_item(step.args[0])

    async def _air(self, step: Step) -> None:
        self.site.set_air(step.args[0], pm2_5=_float(step.option("pm2_5")),
                          pm10=_float(step.option("pm10")))

    async def _battery(self, step: Step) -> None:
        self.site.battery(step.args[0], soc_pct=_float(step.option("soc")),
                          temperature_c=_float(step.option("temp")),
                          current_a=_float(step.option("current")))

    async def _broker(self, step: Step) -> None:
        {"cut": self.site.cut_broker, "stall": self.site.stall_broker,
         "restore": self.site.restore_broker, "restart": self.site.restart_broker,
         }[step.args[0]]()

    async def _command(self, step: Step) -> None:
        args = {k: _json_or_text(v[-1]) for k, v in step.options.items() if k != "within"}
        try:
            reply = await self.site.command(step.args[0], args, timeout_s=_within(step))
        except TimeoutError as exc:
            raise ScenarioFailed(str(exc)) from None
        refused = "refused" in step.args[1:]
        if bool(reply.get("ok")) == refused:
            raise ScenarioFailed(f"{'expected a refusal, got' if refused else 'refused:'} "
                                 f"{reply}")
        self.say(f"command {step.args[0]}: {reply.get('result', reply.get('error'))}")

    async def _revoke(self, step: Step) -> None:
        await self.site.revoke(*step.args)

    async def _mcu(self, step: Step) -> None:
        {"reboot": self.site.reboot_mcu, "unplug": self.site.unplug_mcu,
         "plug": self.site.plug_mcu}[step.args[0]]()

    async def _noise(self, step: Step) -> None:
        self.site.noise(step.args[0], int(step.args[1]) if len(step.args) > 1 else 64)

    async def _clock(self, step: Step) -> None:
        if step.args[0] == "back":
            self.site.clock_back(duration(step.args[1]))
        else:
            self.site.clock_reset()

    async def _wait(self, step: Step) -> None:
        if step.args[0] != "link":
            await asyncio.sleep(duration(step.args[0]))
            return
        agent = self.site.running_agent
        want_up = step.args[1] == "up"
        try:
            async with asyncio.timeout(_within(step)):
                if want_up:  # up and subscribed: commands sent from now on arrive
                    await agent.link.wait_subscribed()
                else:
                    await self.site.until(lambda _e: agent.link.state is not LinkState.UP)
        except TimeoutError:
            raise ScenarioFailed(f"the link was not {step.args[1]} within "
                                 f"{_within(step):g} s") from None

    async def _check(self, step: Step) -> None:
        path, op, want = step.args
        within = _within(step)
        deadline = time.monotonic() + within
        while True:
            try:
                got = _lookup(await self.site.snapshot(), path)
            except TimeoutError:
                raise ScenarioFailed("the agent's state snapshot did not come") from None
            if _compare(got, op, want):
                return
            if time.monotonic() > deadline:
                raise ScenarioFailed(f"{path} is {got!r}, not {op} {want} within {within:g} s")
            await asyncio.sleep(0.05)  # the snapshot has no change signal: poll it

    async def _expect(self, step: Step) -> None:
        within = _within(step)
        if step.args[0] == "delivered":
            await self._delivered(within)
            return
        local = step.args[0] == "local"
        names = step.args[1:] if local else step.args
        if not names:
            raise ValueError("expect local: which event type?")
        wanted = {k: v[-1] for k, v in step.options.items() if k != "within"}
        platform = self.site.platform
        try:
            if local or platform is None:
                await self.site.until(lambda events: any(
                    e.type == names[0] and _matches(e.fields, wanted)
                    for e in events[self._local_mark:]), within)
            else:
                mark = self._platform_mark
                await platform.wait_for(lambda p: any(
                    e.get("type") == names[0] and _matches(e, wanted)
                    for e in p.events[mark:]), within)
        except TimeoutError:
            where = "recorded" if local or platform is None else "at the broker"
            seen = self._seen(local or platform is None, names[0])
            raise ScenarioFailed(f"no {names[0]} {wanted or ''} {where} within {within:g} s; "
                                 f"since the last action: {seen or 'nothing'}") from None

    def _seen(self, local: bool, event_type: str) -> str:
        """The events since the mark: those of ``event_type`` with their fields, else types."""
        if local or self.site.platform is None:
            events = [{"type": e.type, **e.fields} for e in self.site.events[self._local_mark:]]
        else:
            events = list(self.site.platform.events[self._platform_mark:])
        same = [e for e in events if e.get("type") == event_type]
        if same:
            return "; ".join(" ".join(f"{k}={v}" for k, v in e.items() if k not in (
                "record", "badge")) for e in same[-3:])
        return ", ".join(str(e.get("type")) for e in events[-12:])

    async def _delivered(self, within: float) -> None:
        platform = self.site.platform
        if platform is None:
            raise ValueError("expect delivered: the site has no broker of its own")
        wanted = {e.seq for e in self.site.events if e.durable}
        try:
            await platform.wait_for(lambda p: wanted <= {int(e["seq"]) for e in p.events
                                                         if e.get("device") == self.site.device},
                                    within)
        except TimeoutError:
            got = {int(e["seq"]) for e in platform.events}
            missing = sorted(wanted - got)
            raise ScenarioFailed(f"{len(missing)} event(s) not at the broker within "
                                 f"{within:g} s: seq {missing[:20]}") from None


def _within(step: Step) -> float:
    value = step.option("within")
    return duration(value) if value is not None else DEFAULT_WITHIN_S


def _lookup(document: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(document, Mapping) or part not in document:
            return None
        document = document[part]
    return document


def _compare(got: Any, op: str, want: str) -> bool:
    if isinstance(got, bool) or got is None:
        got = {True: "true", False: "false", None: "none"}[got]
    try:
        return COMPARE[op](float(got), float(want))
    except (TypeError, ValueError):
        return op in ("==", "!=") and COMPARE[op](str(got), want)


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def _matches(fields: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    for key, value in wanted.items():
        got = fields.get(key)
        if isinstance(got, bool):
            got = "true" if got else "false"
        if got is None or str(got) != value:
            return False
    return True
