"""Claim-based enrolment end to end, against a Mosquitto running deploy/mosquitto/ as is."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import queue
import secrets
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from string import Template

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from edge.agent import Agent
from edge.cli import main
from edge.config import load_config
from provisioning.crl import CRL_FILE, revoked_serials, write_crl
from provisioning.device_tls import make_csr
from provisioning.enrolment import (
    EnrolmentRefused,
    EnrolmentService,
    Refusal,
    answer,
    enrol,
    proof_message,
    reply_topic,
    request_topic,
)
from provisioning.enrolment_mqtt import ClientTls, SessionError, TlsSession
from provisioning.enrolment_registry import DeviceRegistry
from provisioning.keys import b64url_encode, generate_signing_key, public_key_b64
from provisioning.pki import Credential, issue, make_ca
from simulators.badge_reader import PtyBadgeReader
from simulators.broker import find_mosquitto, free_port
from simulators.gpio_world import LockerWorld, world_pin_factory
from simulators.site import DOORS, write_site

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"
SITE, DEVICE, OTHER = "elm-street", "lockers-1", "lockers-2"
IDENTITY = f"{SITE}/{DEVICE}"  # a device certificate's CN
WAIT_S = 10.0


@dataclass(frozen=True)
class SitePki:
    ca: Credential
    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def crl_file(self) -> Path:
        return self.directory / CRL_FILE

    def client(self, name: str) -> ClientTls:
        """A client identity ``name`` (its certificate's CN), issued once and kept."""
        stem = name.replace("/", "@")
        cert, key = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        if not cert.exists():
            issue(self.ca, name).write(self.directory, stem)
        return ClientTls(self.ca_file, cert, key)


class SiteBroker:
    """Mosquitto with deploy/mosquitto's template and ACL on a free loopback port."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, pki: SitePki) -> None:
        self.workdir, self.pki, self.port = workdir, pki, free_port()
        self.log_path = workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        cert, key = issue(self.pki.ca, "broker", server_names=(self.host,)).write(
            self.pki.directory, "broker")
        config = Template((DEPLOY / "mosquitto.conf.template").read_text()).substitute(
            LISTEN_PORT=self.port, LISTEN_ADDRESS=self.host, CA_FILE=self.pki.ca_file,
            CRL_FILE=self.pki.crl_file,
            CERT_FILE=cert, KEY_FILE=key, ACL_FILE=DEPLOY / "acl", STATE_DIR=self.workdir)
        if os.geteuid() == 0:
            config += f"user {getpass.getuser()}\n"  # as simulators.broker: stay this user
        path = self.workdir / "mosquitto.conf"
        path.write_text(config, encoding="utf-8")
        return path

    def start(self) -> None:
        executable = find_mosquitto()
        if executable is None:
            pytest.fail("mosquitto is not installed: the README's test command installs it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen([executable, "-c", str(config)],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self._wait_for_tls()

    def _wait_for_tls(self) -> None:
        """Return once a full mutual-TLS handshake succeeds (the listener is not enough)."""
        context = self.pki.client("platform").context()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.host, self.port), timeout=0.5) as raw, context.wrap_socket(
                    raw, server_hostname=self.host):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept TLS on {self.port} within {WAIT_S}s")

    def reload(self) -> None:
        """SIGHUP, as ``systemctl reload mosquitto`` (the broker logs nothing we can wait on)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGHUP)

    def refuses(self, tls: ClientTls) -> bool:
        """Whether the broker refuses ``tls`` within WAIT_S (retried: a reload takes effect
        between two connections)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            session = TlsSession(self.host, self.port, tls, timeout_s=2.0)
            try:
                session.open()
            except SessionError:
                return True
            session.close()
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def session(self, identity: str | ClientTls) -> TlsSession:
        tls = self.pki.client(identity) if isinstance(identity, str) else identity
        return TlsSession(self.host, self.port, tls, timeout_s=WAIT_S)


@pytest.fixture
def pki(tmp_path: Path) -> SitePki:
    ca = make_ca("Elm Street Test CA")
    ca.write(tmp_path / "pki", "ca")
    write_crl(ca, tmp_path / "pki" / CRL_FILE)
    return SitePki(ca, tmp_path / "pki")


@pytest.fixture
def site_broker(tmp_path: Path, pki: SitePki) -> Iterator[SiteBroker]:
    broker = SiteBroker(tmp_path / "broker", pki)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def service(tmp_path: Path, pki: SitePki, site_broker: SiteBroker) -> Iterator[EnrolmentService]:
    with EnrolmentService(pki.ca, tmp_path / "devices.json", site_broker.host,
                          site_broker.port, pki.client("provisioner")) as running:
        yield running


def next_message(session: TlsSession) -> mqtt.MQTTMessage:
    try:
        return session.messages.get(timeout=WAIT_S)
    except queue.Empty:
        pytest.fail(f"no message within {WAIT_S}s")


def telemetry(device: str, site: str = SITE) -> str:
    return f"curbside/v1/{site}/{device}/telemetry"


def test_the_claim_identity_cannot_publish_on_a_device_topic(site_broker: SiteBroker) -> None:
    with site_broker.session(IDENTITY) as device, site_broker.session("claim") as claim, \
            site_broker.session("platform") as platform:
        device.subscribe(f"curbside/v1/{SITE}/{DEVICE}/#")
        claim.publish(telemetry(DEVICE), b"forged by the claim")
        platform.publish(telemetry(DEVICE), b"control")  # sent after, so it arrives after
        assert next_message(device).payload == b"control"
        assert device.messages.empty()


def test_the_claim_identity_receives_nothing_but_enrolment_replies(
        site_broker: SiteBroker) -> None:
    # Mosquitto 2.0 grants any subscription and applies the ACL to each delivery.
    with site_broker.session("claim") as claim, site_broker.session("platform") as platform, \
            site_broker.session("provisioner") as provisioner:
        claim.subscribe("#")
        platform.publish(telemetry(DEVICE), b"telemetry")
        platform.publish(f"curbside/v1/{SITE}/denylist", b"denylist")  # deny beats the pattern
        provisioner.publish(reply_topic(DEVICE), b"control")
        message = next_message(claim)
        assert (message.topic, message.payload) == (reply_topic(DEVICE), b"control")
        assert claim.messages.empty()


def test_a_device_enrols_reconnects_as_itself_and_publishes_only_on_its_own_topic(
        tmp_path: Path, pki: SitePki, site_broker: SiteBroker,
        service: EnrolmentService) -> None:
    state = tmp_path / "device"
    claim = pki.client("claim")
    started = time.monotonic()
    cert_path = enrol(site_broker.host, site_broker.port, pki.ca_file, claim.cert_file,
                      claim.key_file, DEVICE, SITE, state, timeout_s=WAIT_S)
    assert time.monotonic() - started < WAIT_S
    assert cert_path == state / "tls.pem"
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert stat.S_IMODE((state / "tls.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.subject.rfc4514_string() == f"CN={SITE}/{DEVICE}"
    assert service.registry.devices()[DEVICE]["site"] == SITE

    own = ClientTls(pki.ca_file, cert_path, state / "tls.key")
    with site_broker.session("platform") as platform, site_broker.session(own) as device:
        platform.subscribe("curbside/v1/#")
        device.publish(telemetry(DEVICE), b"mine")
        assert next_message(platform).payload == b"mine"
        device.publish(telemetry(OTHER), b"posing as lockers-2")
        device.publish(telemetry(DEVICE, "oak-road"), b"posing at another site")
        device.publish(telemetry(DEVICE), b"control")
        message = next_message(platform)
        assert (message.topic, message.payload) == (telemetry(DEVICE), b"control")
        assert platform.messages.empty()


@pytest.mark.parametrize(("device", "site"), [(OTHER, SITE), (DEVICE, "oak-road")])
def test_a_csr_whose_cn_is_not_the_device_identity_is_refused_with_a_reason(
        pki: SitePki, site_broker: SiteBroker, service: EnrolmentService, device: str,
        site: str) -> None:
    signer, nonce = generate_signing_key(), secrets.token_urlsafe(24)
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), device, site)
    request = {"device": DEVICE, "site": SITE, "csr": csr.decode(), "nonce": nonce,
               "signing_key": public_key_b64(signer.public_key()),
               "proof": b64url_encode(signer.sign(proof_message(DEVICE, SITE, nonce, csr)))}
    with site_broker.session("claim") as claim:
        claim.subscribe(reply_topic(DEVICE))
        claim.publish(request_topic(DEVICE), json.dumps(request).encode())
        reply = json.loads(next_message(claim).payload)
    assert reply["ok"] is False
    assert reply["reason"] == Refusal.DEVICE_MISMATCH
    assert f"'{site}/{device}' is not the device identity '{IDENTITY}'" in reply["detail"]
    assert service.registry.devices() == {}


def test_a_retired_device_is_refused_by_the_broker_and_cannot_enrol_again(
        tmp_path: Path, pki: SitePki, site_broker: SiteBroker,
        service: EnrolmentService) -> None:
    state, claim = tmp_path / "device", pki.client("claim")
    cert_path = enrol(site_broker.host, site_broker.port, pki.ca_file, claim.cert_file,
                      claim.key_file, DEVICE, SITE, state, timeout_s=WAIT_S)
    own = ClientTls(pki.ca_file, cert_path, state / "tls.key")
    with site_broker.session(own):
        pass  # accepted while enrolled
    assert main(["provision", "retire", DEVICE, "--ca", str(pki.directory),
                 "--registry", str(service.registry.path)]) == 0
    serial = x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number
    assert serial in revoked_serials(pki.crl_file)
    site_broker.reload()
    assert site_broker.refuses(own)
    with pytest.raises(EnrolmentRefused) as refused:
        enrol(site_broker.host, site_broker.port, pki.ca_file, claim.cert_file,
              claim.key_file, DEVICE, SITE, state, timeout_s=WAIT_S)
    assert refused.value.reason == Refusal.RETIRED
    with site_broker.session(IDENTITY):
        pass  # another certificate of the same CA is still accepted


def test_the_provisioning_service_command_enrols_and_stops_cleanly_on_sigterm(
        tmp_path: Path, pki: SitePki, site_broker: SiteBroker) -> None:
    pki.client("provisioner")  # provisioner.pem/.key beside ca.pem: the --tls directory
    registry = tmp_path / "devices.json"
    serve = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "provision", "serve", "--ca", str(pki.directory),
         "--broker", f"{site_broker.host}:{site_broker.port}", "--tls", str(pki.directory),
         "--registry", str(registry), "--days", "30"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert serve.stderr is not None
        assert serve.stderr.readline().startswith("serving enrolment requests on")
        claim = pki.client("claim")
        cert_path = enrol(site_broker.host, site_broker.port, pki.ca_file, claim.cert_file,
                          claim.key_file, DEVICE, SITE, tmp_path / "device", timeout_s=WAIT_S)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        assert 30 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 31
        assert DeviceRegistry(registry).serials(DEVICE) == (cert.serial_number,)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=WAIT_S) == 0
        assert "stopped" in serve.stderr.read()
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        for stream in (serve.stdout, serve.stderr):
            if stream is not None:
                stream.close()


def request_for(device: str) -> tuple[bytes, str]:
    signer, nonce = generate_signing_key(), secrets.token_urlsafe(24)
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), device, SITE)
    body = {"device": device, "site": SITE, "csr": csr.decode(), "nonce": nonce,
            "signing_key": public_key_b64(signer.public_key()),
            "proof": b64url_encode(signer.sign(proof_message(device, SITE, nonce, csr)))}
    return json.dumps(body).encode(), body["signing_key"]


def test_an_enrolled_device_cannot_be_taken_over_with_another_signing_key(
        tmp_path: Path, pki: SitePki) -> None:
    registry = DeviceRegistry(tmp_path / "devices.json")
    first, key = request_for(DEVICE)
    assert answer(pki.ca, registry, DEVICE, first, days=30)["ok"] is True
    second, _ = request_for(DEVICE)
    reply = answer(pki.ca, registry, DEVICE, second, days=30)
    assert (reply["ok"], reply["reason"]) == (False, Refusal.ALREADY_ENROLLED)
    assert registry.signing_key(DEVICE) == key


def test_a_proof_that_does_not_match_the_signing_key_is_refused(
        tmp_path: Path, pki: SitePki) -> None:
    payload, _ = request_for(DEVICE)
    body = json.loads(payload)
    body["signing_key"] = public_key_b64(generate_signing_key().public_key())
    reply = answer(pki.ca, DeviceRegistry(tmp_path / "d.json"), DEVICE,
                   json.dumps(body).encode(), days=30)
    assert (reply["ok"], reply["reason"]) == (False, Refusal.BAD_PROOF)


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"device": "lockers-1"}'])
def test_malformed_requests_are_refused_as_malformed(
        tmp_path: Path, pki: SitePki, payload: bytes) -> None:
    reply = answer(pki.ca, DeviceRegistry(tmp_path / "d.json"), DEVICE, payload, days=30)
    assert (reply["ok"], reply["reason"]) == (False, Refusal.MALFORMED)


def talk_without_a_certificate(broker: SiteBroker) -> None:
    context = ssl.create_default_context(cafile=str(broker.pki.ca_file))
    with socket.create_connection((broker.host, broker.port), timeout=WAIT_S) as raw, \
            context.wrap_socket(raw, server_hostname=broker.host) as tls:
        tls.sendall(b"\x10\x00")  # TLS 1.3 reports the missing certificate on first use
        if not tls.recv(1):
            raise ConnectionResetError("closed by the broker")


def test_the_broker_refuses_a_client_without_a_certificate(site_broker: SiteBroker) -> None:
    with pytest.raises((ssl.SSLError, OSError)):
        talk_without_a_certificate(site_broker)


@pytest.mark.usefixtures("service")
async def test_the_agent_runs_under_the_acl_with_the_certificate_provision_enrol_gave_it(
        tmp_path: Path, pki: SitePki, site_broker: SiteBroker, reader: PtyBadgeReader,
        capsys: pytest.CaptureFixture[str]) -> None:
    site = write_site(tmp_path / "site", broker_port=site_broker.port, reader_url=reader.path)
    # The configuration names the files enrolment writes (docs/operations.md).
    config = site.config_path.read_text().replace("allow_insecure = true", "") + (
        '\n[mqtt.tls]\nca_file = "broker-ca.pem"\ncert_file = "tls.pem"\n'
        'key_file = "tls.key"\n')
    site.config_path.write_text(config)
    claim_dir = tmp_path / "claim"
    claim_dir.mkdir()
    claim = pki.client("claim")
    for source, name in ((pki.ca_file, "ca.pem"), (claim.cert_file, "claim.pem"),
                         (claim.key_file, "claim.key")):
        (claim_dir / name).write_bytes(source.read_bytes())
    (claim_dir / "claim.key").chmod(0o600)
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["provision", "enrol", "-c", str(site.config_path),
                                          "--claim", str(claim_dir)]) == 0
    assert f"enrolled {SITE}/{DEVICE}" in capsys.readouterr().out
    state = site.directory
    assert stat.S_IMODE((state / "tls.key").stat().st_mode) == 0o600
    assert (state / "broker-ca.pem").read_bytes() == pki.ca_file.read_bytes()

    factory = world_pin_factory()
    world = LockerWorld(factory, DOORS, asyncio.get_running_loop())
    agent = Agent(load_config(site.config_path), pin_factory=factory)
    stop = asyncio.Event()
    with site_broker.session("platform") as platform:
        platform.subscribe(f"curbside/v1/{SITE}/#")
        task = asyncio.ensure_future(agent.run(stop))
        try:
            await asyncio.wait_for(agent.link.wait_up(), WAIT_S)
            reader.present("A1", site.badge("ada", groups=("hand-tools",)))
            topics: set[str] = set()
            granted = False
            async with asyncio.timeout(WAIT_S):
                while not granted:
                    message = await asyncio.to_thread(next_message, platform)
                    topics.add(message.topic)
                    granted = b'"access.granted"' in message.payload
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT_S)
            await world.aclose()
    assert all(t.startswith(f"curbside/v1/{SITE}/{DEVICE}/") for t in topics)
    assert f"curbside/v1/{SITE}/{DEVICE}/status" in topics
