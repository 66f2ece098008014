"""A device's TLS identity and the development CA that signs it.

Identity layer, no I/O beyond key and certificate files. The device makes its own EC P-256
key (written 0600, never logged, never leaves the device) and a certificate signing request
whose common name is its identity, ``<site>/<device>``; the CA signs it keeping only that
common name, for client authentication. The broker takes the common name as the MQTT
username (``use_identity_as_username``) and its ACL turns it into the one subtree the
device may use, ``curbside/v1/<site>/<device>/#``: the certificate binds the device to its
site as well as to its id. Site and device ids must each be safe as an MQTT topic level.

CA directory layout (``curbside pki ca``): ``ca.pem`` (certificate), ``ca.key`` (0600) and
``crl.pem`` (the revocation list, :mod:`provisioning.crl`).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning.crl import CRL_FILE, write_crl
from provisioning.errors import KeyFileError, ProvisioningError
from provisioning.keys import write_secret_pem
from provisioning.pki import Credential, make_ca

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
DEVICE_DAYS = 825
MAX_DEVICE_DAYS = 3650
# Device ids become MQTT usernames and topic levels: no '/', '+', '#', spaces or NULs.
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Identities the broker's ACL gives other rights; a device may never be named like them.
RESERVED_IDS = frozenset({"claim", "provisioner", "platform", "broker"})


class CsrRejected(ProvisioningError, ValueError):
    """A certificate signing request was not signed; the message says why."""


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is usable as a certificate CN and a topic level.

    Raises ValueError for characters MQTT gives meaning to, and for reserved identities.
    """
    if _DEVICE_ID.fullmatch(device_id) is None:
        raise ValueError(f"device id {device_id!r}: use 1-64 of A-Z a-z 0-9 . _ - "
                         "(starting with a letter or digit)")
    if device_id.lower() in RESERVED_IDS:
        raise ValueError(f"device id {device_id!r} is reserved for the broker's own identities")
    return device_id


def device_identity(site: str, device_id: str) -> str:
    """The certificate CN (and broker username) of ``device_id`` at ``site``."""
    try:
        check_device_id(site)
    except ValueError as exc:
        raise ValueError(str(exc).replace("device id", "site id", 1)) from exc
    return f"{site}/{check_device_id(device_id)}"


def split_identity(identity: str) -> tuple[str, str]:
    """``(site, device)`` of a device identity; ValueError if it is not one."""
    site, slash, device = identity.partition("/")
    if not slash:
        raise ValueError(f"identity {identity!r}: expected <site>/<device>")
    device_identity(site, device)
    return site, device


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write ``key`` as PKCS#8 PEM, created 0600; refuse to overwrite an existing file."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_secret_pem(path, pem)


def read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load an EC P-256 PEM key; refuse one that others than its owner may read."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: mode {stat.S_IMODE(mode):04o}; a private key must be 0600")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{path}: expected an EC P-256 key")
    return key


def load_or_create_tls_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The device's TLS key at ``path``: made (0600) on first use, loaded afterwards.

    A file that exists but cannot be read is an error (:class:`KeyFileError`), never a
    reason to make a new key.
    """
    if not path.exists():
        write_key(path, ec.generate_private_key(ec.SECP256R1()))
    return read_key(path)


def make_csr(key: ec.EllipticCurvePrivateKey, device_id: str, site: str) -> bytes:
    """A PEM certificate signing request whose CN is ``<site>/<device_id>``."""
    name = x509.NameAttribute(NameOID.COMMON_NAME, device_identity(site, device_id))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([name]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def create_ca(directory: Path, name: str, *, days: int = 3650) -> Credential:
    """Make a development CA in ``directory`` (0700); refuse to replace an existing one."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (directory / CA_KEY_FILE).exists() or (directory / CA_CERT_FILE).exists():
        raise KeyFileError(f"{directory}: already holds a CA; refusing to replace it")
    ca = make_ca(name, days=days)
    write_key(directory / CA_KEY_FILE, ca.key)
    (directory / CA_CERT_FILE).write_bytes(ca.cert_pem())
    write_crl(ca, directory / CRL_FILE)  # empty: the broker's crlfile must exist
    return ca


def load_ca(directory: Path) -> Credential:
    """Load a CA directory made by :func:`create_ca`."""
    path = directory / CA_CERT_FILE
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM certificate: {exc}") from exc
    return Credential(read_key(directory / CA_KEY_FILE), cert)


def csr_common_name(csr: x509.CertificateSigningRequest) -> str:
    """The single CN of a request; raise :class:`CsrRejected` if there is not exactly one."""
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise CsrRejected(f"the request has {len(names)} common names; exactly one is needed")
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def sign_csr(ca: Credential, csr_pem: bytes, *, expected_id: str | None = None,
             days: int = DEVICE_DAYS) -> x509.Certificate:
    """Sign a device's request: subject = its CN only, client authentication only.

    Raises :class:`CsrRejected` when the request is malformed, its self-signature fails,
    its key is not EC P-256, its CN is not a device identity (``<site>/<device>``), or
    (``expected_id``) the CN is not the identity of the device that asked.
    """
    if not 1 <= days <= MAX_DEVICE_DAYS:
        raise CsrRejected(f"validity of {days} days; expected 1 to {MAX_DEVICE_DAYS}")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        signature_ok = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm, InvalidSignature) as exc:
        raise CsrRejected(f"not a PEM certificate signing request: {exc}") from exc
    if not signature_ok:
        raise CsrRejected("the request's signature does not verify")
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != (
            "secp256r1"):
        raise CsrRejected("the request's key is not EC P-256")
    common_name = csr_common_name(csr)
    try:
        split_identity(common_name)
    except ValueError as exc:
        raise CsrRejected(str(exc)) from exc
    if expected_id is not None and common_name != expected_id:
        raise CsrRejected(f"the request's common name {common_name!r} is not the device "
                          f"identity {expected_id!r}")
    return _client_certificate(ca, common_name, public_key, days)


def _client_certificate(ca: Credential, common_name: str, public_key: ec.EllipticCurvePublicKey,
                        days: int) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """Raise :class:`ProvisioningError` unless ``ca_cert`` signed ``cert`` (and it is valid now)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ProvisioningError(f"certificate not issued by {ca_cert.subject.rfc4514_string()}"
                                ) from exc
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ProvisioningError("certificate not valid now")


def write_certificate(path: Path, pem: bytes) -> None:
    """Write a certificate (public: 0644) atomically beside its key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)  # whatever the umask
    os.replace(tmp, path)
