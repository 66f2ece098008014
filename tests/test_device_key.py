"""The device key: created once and private, the same identity after a restart."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.device_key import DeviceKey
from edge.errors import ConfigError
from provisioning.keys import public_key_from_b64, thumbprint_kid, write_private_key
from provisioning.records import RecordVerifier, sign_swap


def test_a_missing_key_is_created_0600_in_a_private_directory(tmp_path: Path) -> None:
    path = tmp_path / "state" / "device.key"
    key = DeviceKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert key.kid == thumbprint_kid(key.public_key)
    assert public_key_from_b64(key.public_key_b64).public_bytes_raw() == \
        key.public_key.public_bytes_raw()


def test_reloading_gives_the_same_identity(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    first = DeviceKey.load_or_create(path)
    again = DeviceKey.load_or_create(path)
    assert (again.kid, again.public_key_b64) == (first.kid, first.public_key_b64)


def test_an_existing_key_file_is_used_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    write_private_key(path, private)
    assert DeviceKey.load_or_create(path).kid == thumbprint_kid(private.public_key())


@pytest.mark.parametrize("content", [
    b"garbage\n", b"", b"\xff\xfe",
    b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
])
def test_a_file_that_is_not_a_key_is_a_clear_error_and_is_kept(tmp_path: Path,
                                                                 content: bytes) -> None:
    path = tmp_path / "device.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"device key .*device\.key: not a PEM private key"):
        DeviceKey.load_or_create(path)
    assert path.read_bytes() == content


def test_a_key_of_another_algorithm_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    path.write_bytes(generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="expected an Ed25519 key"):
        DeviceKey.load_or_create(path)


def test_an_unreadable_key_path_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    path.mkdir()
    with pytest.raises(ConfigError, match="cannot read key"):
        DeviceKey.load_or_create(path)


def test_a_key_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="device key"):
        DeviceKey.load_or_create(blocker / "device.key")


def test_the_private_key_is_never_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "device.key"
    with caplog.at_level(logging.DEBUG):
        key = DeviceKey.load_or_create(path)
        DeviceKey.load_or_create(path)
    secret = path.read_text().splitlines()[1]
    assert secret not in caplog.text
    assert secret not in repr(key)
    assert "key=" not in repr(key)


def test_what_the_device_signs_verifies_under_its_published_key(tmp_path: Path) -> None:
    key = DeviceKey.load_or_create(tmp_path / "device.key")
    token = sign_swap(key.key, device="pi-elm-01", site="elm-street", now=1_800_000_000,
                      member="ada", badge_id="b1", bay="B1",
                      taken={"id": "bat-1", "soc_pct": 90, "cycles": 3, "voltage_v": None},
                      returned=None)
    platform = RecordVerifier({key.kid: public_key_from_b64(key.public_key_b64)},
                              site="elm-street", device="pi-elm-01")
    assert platform.verify_swap(token).bay == "B1"
