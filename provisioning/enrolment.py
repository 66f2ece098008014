"""Claim-based enrolment over MQTT: a device trades a shared claim certificate for its own.

Protocol layer plus its two ends. The device, connected with the claim certificate (CN
``claim``, which the broker's ACL confines to the provisioning topics), publishes on
``curbside/provision/<device>/request``::

    {"device", "site", "csr" (PEM), "signing_key" (Ed25519, base64url), "nonce",
     "proof" (Ed25519 signature, base64url, over proof_message(...))}

The :class:`EnrolmentService` signs the CSR if its CN is ``<site>/<device>`` for the
request's site and the topic's device (the broker's ACL turns that CN into the device's one
subtree, so the certificate binds it to its site),
records the signing key in a JSON registry, and answers on ``…/reply`` with
``{"device", "nonce", "ok": true, "certificate", "chain"}`` or ``{"device", "nonce",
"ok": false, "reason", "detail"}``. The proof shows the device holds the signing key, so
a claim holder cannot take over an enrolled device by replaying its public key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import secrets
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from provisioning.device_tls import (
    CsrRejected,
    check_device_id,
    device_identity,
    load_or_create_tls_key,
    make_csr,
    sign_csr,
    verify_issued_by,
    write_certificate,
)
from provisioning.enrolment_mqtt import ClientTls, SessionError, TlsSession
from provisioning.enrolment_registry import DeviceRegistry
from provisioning.errors import ProvisioningError
from provisioning.keys import (
    b64url_decode,
    b64url_encode,
    generate_signing_key,
    public_key_b64,
    public_key_from_b64,
    read_private_key,
    write_private_key,
)
from provisioning.pki import Credential

log = logging.getLogger(__name__)

REQUEST_FILTER = "curbside/provision/+/request"
TLS_KEY_FILE, TLS_CERT_FILE, SIGNING_KEY_FILE = "tls.key", "tls.pem", "signing.key"
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def request_topic(device_id: str) -> str:
    return f"curbside/provision/{device_id}/request"


def reply_topic(device_id: str) -> str:
    return f"curbside/provision/{device_id}/reply"


class Refusal(StrEnum):
    """Why the service refused a request. Values are stable: they travel in replies."""

    MALFORMED = "malformed"
    DEVICE_MISMATCH = "device_mismatch"  # CSR's CN is not <site>/<device>, or body ≠ topic
    BAD_CSR = "bad_csr"
    BAD_PROOF = "bad_proof"
    ALREADY_ENROLLED = "already_enrolled"  # the id is registered with another signing key
    RETIRED = "retired"  # the id was retired (its certificates revoked): never again


class EnrolmentRefused(ProvisioningError, PermissionError):
    """The provisioning service refused the request; :attr:`reason` says why."""

    def __init__(self, reason: Refusal, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class EnrolmentTimeout(ProvisioningError, TimeoutError):
    """No reply from the provisioning service in time."""


def proof_message(device_id: str, site: str, nonce: str, csr_pem: bytes) -> bytes:
    """What the device signs with its Ed25519 key: binds the key to this request."""
    digest = hashlib.sha256(csr_pem).hexdigest()
    return f"curbside-enrol-v1\n{device_id}\n{site}\n{nonce}\n{digest}".encode()


def answer(ca: Credential, registry: DeviceRegistry, topic_device: str, payload: bytes,
           *, days: int) -> dict[str, Any]:
    """The reply to one request (pure but for the registry write)."""
    nonce = ""
    try:
        body = json.loads(payload)
        if not isinstance(body, dict):
            raise EnrolmentRefused(Refusal.MALFORMED, "the request is not a JSON object")
        nonce = str(body["nonce"]) if isinstance(body.get("nonce"), str) else ""
        certificate = _sign(ca, registry, topic_device, body, days=days)
    except EnrolmentRefused as exc:
        log.warning("enrolment of %r refused: %s", topic_device, exc)
        return {"device": topic_device, "nonce": nonce, "ok": False,
                "reason": exc.reason.value, "detail": exc.detail}
    except ValueError as exc:  # JSON
        return {"device": topic_device, "nonce": nonce, "ok": False,
                "reason": Refusal.MALFORMED.value, "detail": f"not JSON: {exc}"}
    log.info("enrolled %s (serial %x)", topic_device, certificate.serial_number)
    return {"device": topic_device, "nonce": nonce, "ok": True,
            "certificate": certificate.public_bytes(serialization.Encoding.PEM).decode(),
            "chain": [ca.cert_pem().decode()]}


def _sign(ca: Credential, registry: DeviceRegistry, topic_device: str, body: dict[str, Any],
          *, days: int) -> x509.Certificate:
    fields = {name: body.get(name) for name in
              ("device", "site", "csr", "signing_key", "nonce", "proof")}
    missing = [name for name, value in fields.items() if not isinstance(value, str)]
    if missing:
        raise EnrolmentRefused(Refusal.MALFORMED, f"missing or not strings: {missing}")
    device, site, csr, nonce = (str(fields[n]) for n in ("device", "site", "csr", "nonce"))
    if device != topic_device:
        raise EnrolmentRefused(Refusal.DEVICE_MISMATCH,
                               f"the request names {device!r} on {topic_device!r}'s topic")
    if _NONCE.fullmatch(nonce) is None:
        raise EnrolmentRefused(Refusal.MALFORMED, "nonce: 16-64 base64url characters")
    try:
        check_device_id(device)
        check_device_id(site)
        signing_key = public_key_from_b64(str(fields["signing_key"]))
        signing_key.verify(b64url_decode(str(fields["proof"])),
                           proof_message(device, site, nonce, csr.encode()))
    except InvalidSignature as exc:
        raise EnrolmentRefused(Refusal.BAD_PROOF, "the proof does not verify with the "
                               "signing key") from exc
    except ValueError as exc:
        raise EnrolmentRefused(Refusal.MALFORMED, str(exc)) from exc
    try:
        certificate = sign_csr(ca, csr.encode(), expected_id=device_identity(site, device),
                               days=days)
    except CsrRejected as exc:
        reason = Refusal.DEVICE_MISMATCH if "is not the device identity" in str(exc) else (
            Refusal.BAD_CSR)
        raise EnrolmentRefused(reason, str(exc)) from exc
    if registry.retired(device):
        raise EnrolmentRefused(Refusal.RETIRED, f"{device} was retired and its certificates "
                               "revoked; enrol the hardware under a new device id")
    known = registry.signing_key(device)
    if known is not None and known != public_key_b64(signing_key):
        raise EnrolmentRefused(Refusal.ALREADY_ENROLLED,
                               f"{device} is enrolled with another signing key; an operator "
                               "must remove it from the registry first")
    registry.record(device, site=site, signing_key=public_key_b64(signing_key),
                    serial=certificate.serial_number)
    return certificate


class EnrolmentService:
    """Answers enrolment requests from the broker on paho's thread.

    ``with EnrolmentService(...):`` runs it in the background (subscribed on entry);
    :meth:`serve_forever` runs it until interrupted.
    """

    def __init__(self, ca: Credential, registry_path: Path, host: str, port: int,
                 tls: ClientTls, *, days: int = 825, timeout_s: float = 10.0) -> None:
        self.ca = ca
        self.registry = DeviceRegistry(registry_path)
        self.days = days
        self._lock = threading.Lock()
        self.session = TlsSession(host, port, tls, client_id="curbside-provisioner",
                                  on_message=self._on_request, timeout_s=timeout_s)

    def _on_request(self, message: mqtt.MQTTMessage) -> None:
        device = message.topic.split("/")[2]
        with self._lock:
            reply = answer(self.ca, self.registry, device, bytes(message.payload),
                           days=self.days)
        self.session.publish_nowait(reply_topic(device), json.dumps(reply).encode(), qos=1)

    def start(self) -> None:
        self.session.open()
        try:
            self.session.subscribe(REQUEST_FILTER, qos=1)
        except SessionError:
            self.session.close()
            raise

    def stop(self) -> None:
        self.session.close()

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        """Run until ``stop`` is set (the CLI sets it on SIGTERM and SIGINT)."""
        self.start()
        try:
            (stop or threading.Event()).wait()
        finally:
            self.stop()

    def __enter__(self) -> EnrolmentService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def enrol(  # noqa: PLR0917  # the documented call: broker, trust, claim, identity, state
          broker_host: str, port: int, ca_file: Path, claim_cert: Path, claim_key: Path,
          device_id: str, site: str, state_dir: Path, timeout_s: float = 30.0,
          *, signing_key: Ed25519PrivateKey | None = None, key_file: Path | None = None,
          cert_file: Path | None = None) -> Path:
    """Enrol this device; return the path of its new certificate (``cert_file``, by
    default ``state_dir/tls.pem``).

    The TLS key (``key_file``, by default ``state_dir/tls.key``, 0600) is made here if
    absent and never leaves the device; the Ed25519 signing key defaults to
    ``state_dir/signing.key`` (made if absent).
    Raises :class:`EnrolmentRefused` (with the service's reason), :class:`EnrolmentTimeout`,
    or :class:`SessionError` when the broker is unreachable or refuses the claim.
    """
    check_device_id(device_id)
    key = load_or_create_tls_key(key_file or state_dir / TLS_KEY_FILE)
    signer = signing_key or _load_or_create_signing_key(state_dir / SIGNING_KEY_FILE)
    csr = make_csr(key, device_id, site)
    nonce = secrets.token_urlsafe(24)
    request = {"device": device_id, "site": site, "csr": csr.decode(), "nonce": nonce,
               "signing_key": public_key_b64(signer.public_key()),
               "proof": b64url_encode(signer.sign(proof_message(device_id, site, nonce, csr)))}
    tls = ClientTls(ca_file, claim_cert, claim_key)
    with TlsSession(broker_host, port, tls, client_id=f"enrol-{device_id}-{nonce[:8]}",
                    timeout_s=timeout_s) as session:
        session.subscribe(reply_topic(device_id), qos=1)
        session.publish(request_topic(device_id), json.dumps(request).encode(), qos=1)
        reply = _await_reply(session, nonce, timeout_s)
    if not reply.get("ok"):
        try:
            reason = Refusal(str(reply.get("reason")))
        except ValueError:
            reason = Refusal.MALFORMED
        raise EnrolmentRefused(reason, str(reply.get("detail", "")))
    pem = str(reply.get("certificate", "")).encode()
    _check_certificate(pem, key.public_key(), device_identity(site, device_id), ca_file)
    path = cert_file or state_dir / TLS_CERT_FILE
    write_certificate(path, pem)
    return path


def _await_reply(session: TlsSession, nonce: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = session.messages.get(timeout=left)
        except queue.Empty:
            break
        try:
            reply = json.loads(message.payload)
        except ValueError:
            continue
        if isinstance(reply, dict) and reply.get("nonce") == nonce:
            return reply
    raise EnrolmentTimeout(f"no enrolment reply within {timeout_s}s")


def _check_certificate(pem: bytes, public_key: Any, identity: str, ca_file: Path) -> None:
    try:
        cert = x509.load_pem_x509_certificate(pem)
        cas = x509.load_pem_x509_certificates(ca_file.read_bytes())
    except ValueError as exc:
        raise ProvisioningError(f"the reply's certificate does not parse: {exc}") from exc
    if cert.public_key() != public_key:
        raise ProvisioningError("the reply's certificate is not for this device's key")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cert.subject) != 1 or len(names) != 1 or names[0].value != identity:
        raise ProvisioningError(f"the reply's certificate names {cert.subject.rfc4514_string()}"
                                f", not CN={identity}")
    errors = []
    for ca in cas:
        try:
            verify_issued_by(cert, ca)
        except ProvisioningError as exc:
            errors.append(str(exc))
        else:
            return
    raise ProvisioningError(f"the reply's certificate is not from a trusted CA: {errors}")


def _load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_key(path, generate_signing_key())
    return read_private_key(path)  # KeyFileError if unreadable: never replaced silently
