"""``curbside pki``: a development CA, a broker certificate, a device request and its signing."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.cli import main
from provisioning.device_tls import (
    CsrRejected,
    load_ca,
    load_or_create_tls_key,
    make_csr,
    sign_csr,
    verify_issued_by,
)
from provisioning.errors import KeyFileError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    assert main(["pki", "ca", str(tmp_path / "ca"), "--name", "Elm Street Dev CA"]) == 0
    return tmp_path / "ca"


def test_pki_ca_writes_a_self_signed_ca_with_its_key_0600(ca_dir: Path) -> None:
    assert mode(ca_dir / "ca.key") == 0o600
    ca = load_ca(ca_dir)
    assert cn(ca.cert) == "Elm Street Dev CA"
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    verify_issued_by(ca.cert, ca.cert)


def test_pki_ca_refuses_to_replace_an_existing_ca(ca_dir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    assert main(["pki", "ca", str(ca_dir), "--name", "Another"]) == 1
    assert "refusing" in capsys.readouterr().err
    assert (ca_dir / "ca.key").read_bytes() == before


def test_pki_broker_issues_a_server_certificate_with_every_host_as_a_san(
        ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "broker"
    assert main(["pki", "broker", str(out), "--ca", str(ca_dir),
                 "--host", "127.0.0.1", "--host", "broker.example"]) == 0
    assert mode(out / "broker.key") == 0o600
    cert = x509.load_pem_x509_certificate((out / "broker.pem").read_bytes())
    verify_issued_by(cert, load_ca(ca_dir).cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["broker.example"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_a_device_csr_signed_by_the_ca_carries_only_its_cn_and_client_auth(
        ca_dir: Path, tmp_path: Path) -> None:
    key, csr, cert_path = tmp_path / "dev" / "tls.key", tmp_path / "dev.csr", tmp_path / "dev.pem"
    assert main(["pki", "csr", "--key", str(key), "--device", "lockers-1",
                 "--site", "elm-street", "--out", str(csr)]) == 0
    assert mode(key) == 0o600
    assert main(["pki", "sign-csr", str(csr), "--ca", str(ca_dir), "--out", str(cert_path),
                 "--days", "30"]) == 0
    assert mode(cert_path) == 0o644
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    verify_issued_by(cert, load_ca(ca_dir).cert)
    assert cert.subject.rfc4514_string() == "CN=lockers-1"  # the site OU is not kept
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.public_key() == load_or_create_tls_key(key).public_key()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 30 <= lifetime.days <= 31


def test_the_device_key_is_reused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "tls.key"
    first = load_or_create_tls_key(path)
    assert load_or_create_tls_key(path).private_numbers() == first.private_numbers()


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tls.key"
    load_or_create_tls_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="0600"):
        load_or_create_tls_key(path)


def test_sign_csr_refuses_a_cn_that_is_not_the_expected_device(ca_dir: Path) -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "lockers-2")
    with pytest.raises(CsrRejected, match="not the device id 'lockers-1'"):
        sign_csr(load_ca(ca_dir), csr, expected_id="lockers-1")


@pytest.mark.parametrize("device_id", ["claim", "a/b", "lockers+", "#", "", "platform"])
def test_a_device_id_that_would_escape_its_acl_is_refused(device_id: str) -> None:
    with pytest.raises(ValueError, match="device id"):
        make_csr(ec.generate_private_key(ec.SECP256R1()), device_id)


def test_sign_csr_refuses_garbage(ca_dir: Path) -> None:
    with pytest.raises(CsrRejected, match="not a PEM"):
        sign_csr(load_ca(ca_dir), b"-----BEGIN CERTIFICATE REQUEST-----\nxx\n")


def test_pki_client_makes_the_claim_identity_for_the_broker_acl(ca_dir: Path,
                                                                tmp_path: Path) -> None:
    assert main(["pki", "client", str(tmp_path / "svc"), "--ca", str(ca_dir),
                 "--name", "claim"]) == 0
    assert mode(tmp_path / "svc" / "claim.key") == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "svc" / "claim.pem").read_bytes())
    verify_issued_by(cert, load_ca(ca_dir).cert)
    assert cn(cert) == "claim"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
