"""Claim-based enrolment end to end, against a Mosquitto running deploy/mosquitto/ as is."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import queue
import secrets
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from string import Template

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from provisioning.device_tls import make_csr
from provisioning.enrolment import (
    EnrolmentService,
    Refusal,
    answer,
    enrol,
    proof_message,
    reply_topic,
    request_topic,
)
from provisioning.enrolment_mqtt import ClientTls, TlsSession
from provisioning.enrolment_registry import DeviceRegistry
from provisioning.keys import b64url_encode, generate_signing_key, public_key_b64
from provisioning.pki import Credential, issue, make_ca
from simulators.broker import find_mosquitto, free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"
SITE, DEVICE, OTHER = "elm-street", "lockers-1", "lockers-2"
WAIT_S = 10.0


@dataclass(frozen=True)
class SitePki:
    ca: Credential
    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def client(self, name: str) -> ClientTls:
        """A client identity ``name`` (its certificate's CN), issued once and kept."""
        cert, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        if not cert.exists():
            issue(self.ca, name).write(self.directory, name)
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


def telemetry(device: str) -> str:
    return f"curbside/v1/{SITE}/{device}/telemetry"


def test_the_claim_identity_cannot_publish_on_a_device_topic(site_broker: SiteBroker) -> None:
    with site_broker.session(DEVICE) as device, site_broker.session("claim") as claim, \
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
    assert cert.subject.rfc4514_string() == f"CN={DEVICE}"
    assert service.registry.devices()[DEVICE]["site"] == SITE

    own = ClientTls(pki.ca_file, cert_path, state / "tls.key")
    with site_broker.session("platform") as platform, site_broker.session(own) as device:
        platform.subscribe("curbside/v1/#")
        device.publish(telemetry(DEVICE), b"mine")
        assert next_message(platform).payload == b"mine"
        device.publish(telemetry(OTHER), b"posing as lockers-2")
        device.publish(telemetry(DEVICE), b"control")
        message = next_message(platform)
        assert (message.topic, message.payload) == (telemetry(DEVICE), b"control")
        assert platform.messages.empty()


def test_a_csr_whose_cn_is_not_the_device_id_is_refused_with_a_reason(
        pki: SitePki, site_broker: SiteBroker, service: EnrolmentService) -> None:
    signer, nonce = generate_signing_key(), secrets.token_urlsafe(24)
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), OTHER, SITE)
    request = {"device": DEVICE, "site": SITE, "csr": csr.decode(), "nonce": nonce,
               "signing_key": public_key_b64(signer.public_key()),
               "proof": b64url_encode(signer.sign(proof_message(DEVICE, SITE, nonce, csr)))}
    with site_broker.session("claim") as claim:
        claim.subscribe(reply_topic(DEVICE))
        claim.publish(request_topic(DEVICE), json.dumps(request).encode())
        reply = json.loads(next_message(claim).payload)
    assert reply["ok"] is False
    assert reply["reason"] == Refusal.DEVICE_MISMATCH
    assert "'lockers-2' is not the device id 'lockers-1'" in reply["detail"]
    assert service.registry.devices() == {}


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
