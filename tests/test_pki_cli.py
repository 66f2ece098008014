"""``curbside pki``: a development CA, a broker certificate, a device request and its signing."""

from __future__ import annotations

import ipaddress
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from edge.cli import main
from provisioning.crl import CRL_FILE, revoked_serials, serial_of
from provisioning.device_tls import (
    CsrRejected,
    device_identity,
    load_ca,
    load_or_create_tls_key,
    make_csr,
    sign_csr,
    split_identity,
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
                 "--identity", "elm-street/lockers-1", "--days", "30"]) == 0
    assert mode(cert_path) == 0o644
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    verify_issued_by(cert, load_ca(ca_dir).cert)
    assert cert.subject.rfc4514_string() == "CN=elm-street/lockers-1"
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


@pytest.mark.parametrize(("device", "site"), [("lockers-2", "elm-street"),
                                               ("lockers-1", "oak-road")])
def test_sign_csr_refuses_a_cn_that_is_not_the_expected_identity(
        ca_dir: Path, device: str, site: str) -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), device, site)
    with pytest.raises(CsrRejected, match="not the device identity 'elm-street/lockers-1'"):
        sign_csr(load_ca(ca_dir), csr, expected_id="elm-street/lockers-1")


@pytest.mark.parametrize("common_name", ["lockers-1", "platform", "a/b/c", "/lockers-1",
                                         "elm-street/", "elm+/lockers-1", "elm/#"])
def test_sign_csr_refuses_a_cn_that_is_not_a_device_identity(
        ca_dir: Path, common_name: str) -> None:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    with pytest.raises(CsrRejected, match=r"id|identity"):
        sign_csr(load_ca(ca_dir), csr.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize("device_id", ["claim", "a/b", "lockers+", "#", "", "platform"])
def test_a_device_id_that_would_escape_its_acl_is_refused(device_id: str) -> None:
    with pytest.raises(ValueError, match="device id"):
        make_csr(ec.generate_private_key(ec.SECP256R1()), device_id, "elm-street")


@pytest.mark.parametrize("site", ["a/b", "elm+", "#", "", "claim"])
def test_a_site_id_that_would_escape_its_acl_is_refused(site: str) -> None:
    with pytest.raises(ValueError, match="site id"):
        make_csr(ec.generate_private_key(ec.SECP256R1()), "lockers-1", site)


@given(st.text(max_size=80))
def test_split_identity_yields_two_topic_safe_levels_or_refuses(text: str) -> None:
    try:
        site, device = split_identity(text)
    except ValueError:
        return
    assert f"{site}/{device}" == text
    assert not {"/", "+", "#", "\x00"} & set(site + device)
    assert device_identity(site, device) == text


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


def test_a_new_ca_has_an_empty_revocation_list_valid_as_long_as_the_ca(ca_dir: Path) -> None:
    crl = x509.load_pem_x509_crl((ca_dir / CRL_FILE).read_bytes())
    ca = load_ca(ca_dir)
    assert len(crl) == 0
    assert crl.is_signature_valid(ca.key.public_key())
    assert crl.next_update_utc == ca.cert.not_valid_after_utc  # never expires before the CA
    assert mode(ca_dir / CRL_FILE) == 0o644


def test_revoke_adds_certificates_and_serials_and_keeps_what_was_revoked(
        ca_dir: Path, tmp_path: Path) -> None:
    key, csr, cert_path = tmp_path / "tls.key", tmp_path / "dev.csr", tmp_path / "dev.pem"
    assert main(["pki", "csr", "--key", str(key), "--device", "lockers-1",
                 "--site", "elm-street", "--out", str(csr)]) == 0
    assert main(["pki", "sign-csr", str(csr), "--ca", str(ca_dir), "--out", str(cert_path)]) == 0
    serial = x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number
    assert main(["pki", "revoke", str(cert_path), "--ca", str(ca_dir)]) == 0
    assert main(["pki", "revoke", "0x1f:2a", "--ca", str(ca_dir)]) == 0
    assert set(revoked_serials(ca_dir / CRL_FILE)) == {serial, 0x1F2A}
    crl = x509.load_pem_x509_crl((ca_dir / CRL_FILE).read_bytes())
    assert crl.is_signature_valid(load_ca(ca_dir).key.public_key())


def test_revoke_names_a_serial_that_is_not_hex(ca_dir: Path, capsys: pytest.CaptureFixture[str],
                                                ) -> None:
    assert main(["pki", "revoke", "lockers-1.pem", "--ca", str(ca_dir)]) != 0
    assert "serial 'lockers-1.pem': expected hexadecimal digits" in capsys.readouterr().err


def test_a_revocation_list_that_is_not_one_is_named(tmp_path: Path) -> None:
    (tmp_path / "crl.pem").write_text("garbage")
    with pytest.raises(KeyFileError, match=r"crl\.pem: not a PEM certificate revocation list"):
        revoked_serials(tmp_path / "crl.pem")


@given(st.text(max_size=40))
def test_serial_of_reads_hex_or_refuses(text: str) -> None:
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    if not cleaned or not set(cleaned) <= set("0123456789abcdef") or len(cleaned) > 40 or (
            int(cleaned, 16) == 0):
        with pytest.raises(ValueError, match=re.escape(repr(text))):
            serial_of(text)
        return
    serial = serial_of(text)
    assert serial > 0
    assert serial == int(text.strip().lower().removeprefix("0x").replace(":", ""), 16)
