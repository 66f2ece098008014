"""The co-op's central platform, simulated, over MQTT: the client that hears a site and
acts as the co-op towards it.

Simulator layer (the far side of the MQTT interface, docs/mqtt-api.md). One paho-mqtt
client (MQTT 5, QoS 1, a persistent session so that events published while it is away are
queued for it) subscribes to ``curbside/v1/{site}/#``; its thread hands every message to the
event loop with ``call_soon_threadsafe``, where :meth:`PlatformSimulator.ingest` gives it to
a :class:`~simulators.platform_checks.PlatformLedger`, the pure part that deduplicates
events, finds gaps, recomputes the audit chain and verifies device-signed records (see
:mod:`simulators.platform_checks`). The simulator exposes what the ledger learned under the
same names (``events``, ``gaps()``, ``audit_chain()``, ...).

And as the co-op it issues badges, sends signed commands and awaits their replies, and
publishes signed denylists and trust bundles, retained, on the site's topics::

    async with PlatformSimulator("127.0.0.1", port, site="elm-street", issuer=issuer,
                                 command_key=operator) as platform:
        reader.present("A1", platform.issue_badge("ada", groups=("hand-tools",)))
        await platform.wait_for(lambda p: bool(p.of_type("locker.unlocked")), timeout_s=10)
        reply = await platform.send_command("lockers-1", "open", {"compartment": "A1"})
        assert reply["ok"], reply["error"]
        await platform.publish_denylist(members=["ada"])
        assert not platform.gaps() and platform.audit_chain()["lockers-1"].ok
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.topics import ROOT, DeviceTopics
from provisioning.badges import MAX_LIFETIME_S, Skills
from provisioning.badges import issue_badge as sign_badge
from provisioning.commands import issue_command
from provisioning.denylist import issue_denylist
from provisioning.issuer import Issuer
from provisioning.keys import b64url_decode
from provisioning.trust import issue_trust_bundle
from simulators.platform_checks import (
    ChainStatus,
    Event,
    Gap,
    GapCause,
    PlatformLedger,
    RecordFault,
    RejectedRecord,
    VerifiedRecord,
)

__all__ = [
    "CONNECT_TIMEOUT_S", "ChainStatus", "Event", "Gap", "GapCause", "NotConfigured",
    "PlatformLedger", "PlatformSimError", "PlatformSimulator", "PlatformTimeout", "RecordFault",
    "RejectedRecord", "SiteDocument", "VerifiedRecord",
]

_ids = itertools.count(1)
CONNECT_TIMEOUT_S = 10.0


class PlatformSimError(Exception):
    """Base of what :class:`PlatformSimulator` raises."""


class NotConfigured(PlatformSimError, ValueError):
    """An operation needs a key the simulator was not given (issuer, command key, root)."""


class PlatformTimeout(PlatformSimError, TimeoutError):
    """A condition, a reply or a broker acknowledgement did not come in time."""


@dataclass(frozen=True)
class SiteDocument:
    """A signed document published retained on the site topic."""

    version: int
    token: str


@dataclass
class PlatformSimulator:
    """The central platform for one site. ``async with`` connects and subscribes.

    ``issuer`` signs badges and denylists, ``command_key`` signs commands (its ``name`` is
    the operator), ``root`` signs trust bundles; each is only needed for what it signs.
    ``device_keys`` pins the public key of each device (``device -> key`` or its base64url
    form): a pinned device's records verify only against the pinned key, whatever it
    announces in its ``state`` (:class:`~simulators.platform_checks.PlatformLedger` says
    why). What the messages taught is in ``ledger``, and under the same names here.
    """

    host: str
    port: int
    site: str
    issuer: Issuer | None = None
    command_key: Issuer | None = None
    device_keys: Mapping[str, Ed25519PublicKey | str] | None = None
    tls: ssl.SSLContext | None = None
    root: Issuer | None = None
    client_id: str | None = None
    session_expiry_s: int = 3600
    keep_session: bool = False  # on exit; otherwise the broker forgets the session

    ledger: PlatformLedger = field(init=False)
    subscriptions: int = field(default=0, init=False)  # SUBACKs: one per fresh session

    def __post_init__(self) -> None:
        self.ledger = PlatformLedger(self.site, self.device_keys)
        self._replies_due: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self._unacked: dict[int, asyncio.Future[None]] = {}
        self._versions = {"denylist": 0, "trust": 0}
        self._changed = asyncio.Event()  # set on every message; waiters re-check
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._subscribed: asyncio.Future[None] | None = None

    # --- what the ledger learned, under the names it has there ------------------------------
    @property
    def events(self) -> list[Event]:
        """Events received, each once, in arrival order, with their ``device``."""
        return self.ledger.events

    @property
    def duplicates(self) -> int:
        return self.ledger.duplicates

    @property
    def duplicate_keys(self) -> list[tuple[str, int]]:
        return self.ledger.duplicate_keys

    @property
    def conflicting_duplicates(self) -> list[tuple[str, int]]:
        return self.ledger.conflicting_duplicates

    @property
    def out_of_order(self) -> list[tuple[str, str, int]]:
        return self.ledger.out_of_order

    @property
    def status(self) -> dict[str, dict[str, Any]]:
        return self.ledger.status

    @property
    def states(self) -> dict[str, dict[str, Any]]:
        return self.ledger.states

    @property
    def boots(self) -> dict[str, list[str]]:
        return self.ledger.boots

    @property
    def replies(self) -> list[tuple[str, dict[str, Any]]]:
        return self.ledger.replies

    @property
    def documents(self) -> dict[str, bytes]:
        return self.ledger.documents

    @property
    def key_warnings(self) -> dict[str, str]:
        return self.ledger.key_warnings

    @property
    def messages(self) -> int:
        return self.ledger.messages

    @property
    def malformed(self) -> int:
        return self.ledger.malformed

    @property
    def malformed_reasons(self) -> list[str]:
        return self.ledger.malformed_reasons

    @property
    def unknown_topics(self) -> int:
        return self.ledger.unknown_topics

    def of_type(self, event_type: str) -> list[Event]:
        return self.ledger.of_type(event_type)

    def of_device(self, device: str) -> list[Event]:
        return self.ledger.of_device(device)

    def in_order_per_class(self) -> bool:
        return self.ledger.in_order_per_class()

    def gaps(self, *, from_seq: int | None = None) -> dict[str, list[Gap]]:
        return self.ledger.gaps(from_seq=from_seq)

    def audit_chain(self) -> dict[str, ChainStatus]:
        return self.ledger.audit_chain()

    def verified_records(self) -> list[VerifiedRecord]:
        return self.ledger.verified_records()

    def rejected_records(self) -> list[RejectedRecord]:
        return self.ledger.rejected_records()

    # --- connection -----------------------------------------------------------------------
    async def __aenter__(self) -> PlatformSimulator:
        loop = self._loop = asyncio.get_running_loop()
        self._subscribed = loop.create_future()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5,
                             client_id=self.client_id or f"platform-{self.site}-{next(_ids)}-"
                             f"{secrets.token_hex(3)}")
        if self.tls is not None:
            client.tls_set_context(self.tls)
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        await loop.run_in_executor(None, lambda: client.connect(
            self.host, self.port, keepalive=30, clean_start=False, properties=props))
        self._client = client
        client.loop_start()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._subscribed
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._close()

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        props = None
        if not self.keep_session:
            props = _properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
        client.disconnect(properties=props)
        await asyncio.get_running_loop().run_in_executor(None, client.loop_stop)

    # paho's network thread: nothing here but handing over to the loop ---------------------
    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                self._loop.call_soon_threadsafe(callback, *args)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            self._to_loop(self._settle_subscription, f"broker refused: {reason}")
        elif flags.session_present:  # the broker kept our subscription and queued for us
            self._to_loop(self._settle_subscription, None)
        else:
            client.subscribe(f"{ROOT}/{self.site}/#",
                             options=SubscribeOptions(qos=1, noLocal=True))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      codes: list[ReasonCode], properties: Any) -> None:
        failed = [str(c) for c in codes if c.is_failure]
        self._to_loop(self._settle_subscription, "; ".join(failed) if failed else None, True)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        self._to_loop(self.ingest, message.topic, bytes(message.payload), correlation)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Any) -> None:
        self._to_loop(self._acknowledged, mid, str(reason) if reason.is_failure else None)

    # the event loop -------------------------------------------------------------------------
    def _settle_subscription(self, problem: str | None, counted: bool = False) -> None:
        self.subscriptions += counted
        future = self._subscribed
        if future is not None and not future.done():
            if problem is None:
                future.set_result(None)
            else:
                future.set_exception(PlatformSimError(f"subscribing to the site: {problem}"))
        self._changed.set()

    def _acknowledged(self, mid: int, problem: str | None) -> None:
        future = self._unacked.pop(mid, None)
        if future is not None and not future.done():
            if problem is None:
                future.set_result(None)
            else:
                future.set_exception(PlatformSimError(f"broker refused message {mid}: "
                                                      f"{problem}"))

    def ingest(self, topic: str, payload: bytes, correlation: bytes | None = None) -> None:
        """Hand one message as received on ``topic`` to the ledger
        (:meth:`PlatformLedger.ingest`: never raises for its content), answer the
        :meth:`send_command` it replies to, and wake :meth:`wait_for`."""
        try:
            self.ledger.ingest(topic, payload, correlation)
            for (device, request), reply in self._replies_due.items():
                body = self.ledger.reply_to(device, request)
                if body is not None and not reply.done():
                    reply.set_result(body)
        finally:
            self._changed.set()

    async def wait_for(self, predicate: Callable[[PlatformSimulator], bool],
                       timeout_s: float = 10.0) -> None:
        """Return once ``predicate(self)`` holds (checked after every message); raise
        :class:`PlatformTimeout` after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate(self):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise PlatformTimeout(f"not within {timeout_s}s ({len(self.events)} events, "
                                  f"{self.malformed} malformed messages)") from None

    # --- the co-op's side -----------------------------------------------------------------
    def issue_badge(self, member: str, *, compartments: tuple[str, ...] = (),
                    groups: tuple[str, ...] = (), skills: Skills = (),
                    lifetime_s: int = 3600, **claims: Any) -> str:
        """A badge for ``member`` at this site, signed by ``issuer``; ``claims`` are
        further arguments of :func:`provisioning.badges.issue_badge`."""
        issuer = _needed(self.issuer, "issuer")
        return sign_badge(issuer.key, kid=issuer.kid, issuer=issuer.name, member=member,
                          site=self.site, now=int(time.time()), lifetime_s=lifetime_s,
                          compartments=compartments, groups=groups, skills=skills, **claims)

    async def send_command(self, device: str, name: str, args: Mapping[str, Any] | None = None,
                           *, timeout_s: float = 10.0, lifetime_s: int = 60) -> dict[str, Any]:
        """Send a command to ``device`` and return its reply ``{"id", "command", "ok",
        "result" | "error"}``. Signed with ``command_key``, valid ``lifetime_s``; ``ping``
        goes unsigned. The reply is asked on ``…/cmd/result`` with the request id as
        correlation data. Raises :class:`PlatformTimeout` after ``timeout_s``."""
        topics = DeviceTopics(self.site, device)
        if name == "ping":
            request = f"ping-{secrets.token_hex(6)}"
            payload = json.dumps({"command": name, "id": request, "args": dict(args or {})})
        else:
            operator = _needed(self.command_key, "command_key")
            payload = issue_command(operator.key, kid=operator.kid, operator=operator.name,
                                    device=device, name=name, now=int(time.time()),
                                    args=args, lifetime_s=lifetime_s)
            request = str(json.loads(b64url_decode(payload.split(".")[1]))["jti"])
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies_due[(device, request)] = reply
        props = _properties(PacketTypes.PUBLISH)
        props.ResponseTopic = topics.cmd_result
        props.CorrelationData = request.encode()
        try:
            async with asyncio.timeout(timeout_s):
                await self._publish(topics.cmd, payload.encode(), properties=props)
                return await reply
        except TimeoutError:
            raise PlatformTimeout(f"{name} to {device}: no reply within {timeout_s}s") from None
        finally:
            self._replies_due.pop((device, request), None)

    async def publish_denylist(self, *, members: Iterable[str] = (),
                               badge_ids: Iterable[str] = (),
                               entries: Sequence[Mapping[str, object]] = (),
                               version: int | None = None, until: int | None = None,
                               timeout_s: float = 10.0) -> SiteDocument:
        """Sign with ``issuer`` and publish, retained, the site's denylist: ``members`` and
        ``badge_ids`` revoked until ``until`` (default: as long as any badge lives), plus
        raw ``entries``. ``version`` defaults to one above every version this simulator
        published or a device's ``state`` reports."""
        issuer = _needed(self.issuer, "issuer")
        now = int(time.time())
        lapse = now + MAX_LIFETIME_S if until is None else until
        listed = [*({"sub": m, "until": lapse} for m in members),
                  *({"jti": b, "until": lapse} for b in badge_ids), *entries]
        number = self._next_version("denylist", version)
        token = issue_denylist(issuer.key, kid=issuer.kid, issuer=issuer.name, site=self.site,
                               version=number, entries=listed, now=now)
        return await self._publish_document("denylist", number, token, timeout_s)

    async def publish_trust(self, *, issuer_keys: Sequence[Issuer | Mapping[str, object]] = (),
                            command_keys: Sequence[Issuer | Mapping[str, object]] = (),
                            broker_cas: Sequence[str] = (), version: int | None = None,
                            timeout_s: float = 10.0) -> SiteDocument:
        """Sign with ``root`` and publish, retained, the site's trust bundle. Keys are
        :class:`Issuer` or ``{"kid", "key", "nbf"?, "exp"?}``; by default ``issuer`` and
        ``command_key``. ``version`` as for :meth:`publish_denylist`."""
        root = _needed(self.root, "root")
        issuers = issuer_keys or [_needed(self.issuer, "issuer")]
        commands = command_keys or ([self.command_key] if self.command_key else [])
        number = self._next_version("trust", version)
        token = issue_trust_bundle(
            root.key, kid=root.kid, issuer=root.name, site=self.site, version=number,
            now=int(time.time()), issuer_keys=[_grant(k) for k in issuers],
            command_keys=[_grant(k) for k in commands], broker_cas=broker_cas)
        return await self._publish_document("trust", number, token, timeout_s)

    async def clear_retained(self, timeout_s: float = 10.0) -> None:
        """Clear the retained denylist and trust bundle (devices keep what they hold)."""
        for kind in ("denylist", "trust"):
            await self._publish(f"{ROOT}/{self.site}/{kind}", b"", retain=True,
                                timeout_s=timeout_s)

    def _next_version(self, kind: str, version: int | None) -> int:
        held = [v for s in self.states.values()  # a bool is no version
                if isinstance(v := s.get(f"{kind}_version"), int) and not isinstance(v, bool)]
        number = version if version is not None else 1 + max([self._versions[kind], *held])
        self._versions[kind] = max(self._versions[kind], number)
        return number

    async def _publish_document(self, kind: str, version: int, token: str,
                                timeout_s: float) -> SiteDocument:
        await self._publish(f"{ROOT}/{self.site}/{kind}", token.encode(), retain=True,
                            timeout_s=timeout_s)
        return SiteDocument(version, token)

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False,
                       properties: Properties | None = None, timeout_s: float = 10.0) -> None:
        """Publish at QoS 1 and return on the broker's PUBACK."""
        client = self._client
        if client is None:
            raise PlatformSimError("not connected: use `async with PlatformSimulator(...)`")
        props = properties or _properties(PacketTypes.PUBLISH)
        props.UserProperty = [("schema", "1")]
        info = client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise PlatformSimError(f"publish to {topic}: {mqtt.error_string(info.rc)}")
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unacked[info.mid] = acked  # PUBACK is handed over later, on this thread
        try:
            async with asyncio.timeout(timeout_s):
                await acked
        except TimeoutError:
            raise PlatformTimeout(f"publish to {topic}: no PUBACK in {timeout_s}s") from None
        finally:
            self._unacked.pop(info.mid, None)


def _properties(packet: int) -> Properties:
    return Properties(packet)  # type: ignore[no-untyped-call]  # paho: unannotated


def _needed(issuer: Issuer | None, what: str) -> Issuer:
    if issuer is None:
        raise NotConfigured(f"PlatformSimulator was given no {what}")
    return issuer


def _grant(key: Issuer | Mapping[str, object]) -> Mapping[str, object]:
    return {"kid": key.kid, "key": key.public_key} if isinstance(key, Issuer) else key
