"""The CA's certificate revocation list: which device certificates the broker refuses.

Identity layer, no I/O beyond one file. ``CA/crl.pem`` is made empty with the CA and
re-signed whenever a certificate is revoked; the site broker reads it (``crlfile``) and
refuses a TLS handshake with a revoked certificate. Its ``nextUpdate`` is the CA's own
expiry: OpenSSL refuses *every* client once a CRL has expired, and a site broker must not
lock out the whole site because nobody re-signed a list in time.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from provisioning.errors import KeyFileError
from provisioning.pki import Credential

CRL_FILE = "crl.pem"
_HEX = re.compile(r"[0-9a-f]{1,40}")  # RFC 5280: at most 20 octets


def revoked_serials(path: Path) -> dict[int, dt.datetime]:
    """Serial number → revocation time in the CRL at ``path`` (empty if there is none)."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a PEM certificate revocation list: {exc}") from exc
    return {entry.serial_number: entry.revocation_date_utc for entry in crl}


def write_crl(ca: Credential, path: Path,
              revoke: tuple[int, ...] = ()) -> x509.CertificateRevocationList:
    """Re-sign ``path`` with every serial it held plus ``revoke``; return the new list.

    Atomic (temporary file, fsync, rename), 0644: the list is public.
    """
    known = revoked_serials(path)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for serial in revoke:
        known.setdefault(serial, now)
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca.cert.subject)
               .last_update(now - dt.timedelta(minutes=5))
               .next_update(max(ca.cert.not_valid_after_utc, now + dt.timedelta(days=1))))
    for serial, when in sorted(known.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
            .build())
    crl = builder.sign(ca.key, hashes.SHA256())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(crl.public_bytes(serialization.Encoding.PEM))
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return crl


def serial_of(text: str) -> int:
    """A serial number given as hex (as ``devices.json`` and ``openssl x509 -serial`` show it)."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    if _HEX.fullmatch(cleaned) is None:
        raise ValueError(f"serial {text!r}: expected hexadecimal digits")
    serial = int(cleaned, 16)
    if serial <= 0:
        raise ValueError(f"serial {text!r}: must be positive")
    return serial
