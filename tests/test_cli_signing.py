"""Platform-side signing from the command line: every token verifies on the device side."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.cli import main
from provisioning.badges import BadgeVerifier
from provisioning.commands import CommandVerifier
from provisioning.denylist import DenylistVerifier
from provisioning.issuer import Issuer, init_issuer
from provisioning.keys import public_key_from_b64
from provisioning.trust import TrustBundleVerifier
from simulators.site import write_site


def signed(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out.strip()


def ring(key: Issuer) -> dict[str, Ed25519PublicKey]:
    return {key.kid: public_key_from_b64(key.public_key)}


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Issuer]:
    return {role: init_issuer(tmp_path / role, name=f"{role}@coop")
            for role in ("issuer", "ops", "root")}


def test_badge_with_every_claim(tmp_path: Path, keys: dict[str, Issuer],
                                capsys: pytest.CaptureFixture[str]) -> None:
    token = signed(capsys, "badge", "issue", "--issuer", str(tmp_path / "issuer"),
                   "--member", "mia", "--site", "elm-street", "--group", "batteries",
                   "--skill", "battery-handling:2", "--skill", "ladders",
                   "--window", "12345 08:00-20:00", "--single-use",
                   "--permission", "audit", "--permission", "calibrate:pm-1",
                   "--allow-untrusted-time", "--lifetime", "1d")
    badge = BadgeVerifier(ring(keys["issuer"]), site="elm-street").verify(
        token, now=time.time())
    assert badge.skills == {"battery-handling": 2, "ladders": 1}
    assert [str(w) for w in badge.windows] == ["12345 08:00-20:00"]
    assert (badge.use_limit, badge.permissions) == (1, ("audit", "calibrate:pm-1"))
    assert badge.allows_untrusted_time
    assert badge.may_calibrate("pm-1")
    assert not badge.may_calibrate("pm-2")


def test_a_bad_claim_is_refused_with_its_name(tmp_path: Path, keys: dict[str, Issuer],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["badge", "issue", "--issuer", str(tmp_path / "issuer"), "--member", "mia",
                   "--site", "elm-street", "--window", "8 08:00-09:00"])
    assert status == 1
    assert "claim win.0" in capsys.readouterr().err


def test_denylist(tmp_path: Path, keys: dict[str, Issuer],
                  capsys: pytest.CaptureFixture[str]) -> None:
    token = signed(capsys, "denylist", "issue", "--issuer", str(tmp_path / "issuer"),
                   "--site", "elm-street", "--version", "4", "--badge", "b-1",
                   "--member", "bo", "--void-before", "cy")
    denylist = DenylistVerifier(ring(keys["issuer"]),
                                site="elm-street").verify(token)
    assert denylist.version == 4
    assert [(e.jti, e.sub, e.before is not None) for e in denylist.entries] == [
        ("b-1", None, False), (None, "bo", False), (None, "cy", True)]
    assert all(e.until > time.time() + 30 * 86400 for e in denylist.entries)


def test_trust_bundle_from_key_directories_and_windows(
        tmp_path: Path, keys: dict[str, Issuer], capsys: pytest.CaptureFixture[str]) -> None:
    token = signed(capsys, "trust", "issue", "--root", str(tmp_path / "root"),
                   "--site", "elm-street", "--version", "2",
                   "--issuer-key", f"{tmp_path / 'issuer'}@2026-01-01T00:00:00Z/",
                   "--issuer-key", f"legacy={keys['ops'].public_key}@/1800000000",
                   "--command-key", str(tmp_path / "ops"))
    bundle = TrustBundleVerifier(ring(keys["root"]),
                                 site="elm-street").verify(token)
    assert [(k.kid, k.nbf, k.exp) for k in bundle.issuer_keys] == [
        (keys["issuer"].kid, 1767225600, None), ("legacy", None, 1800000000)]
    assert [k.kid for k in bundle.command_keys] == [keys["ops"].kid]


def test_command_with_json_and_string_arguments(
        tmp_path: Path, keys: dict[str, Issuer], capsys: pytest.CaptureFixture[str]) -> None:
    token = signed(capsys, "command", "sign", "--key", str(tmp_path / "ops"),
                   "--device", "lockers-1", "--name", "set_config",
                   "--arg", 'items={"access.lockout_s": 30}', "--arg", "note=rotate keys",
                   "--lifetime", "2m")
    command = CommandVerifier(ring(keys["ops"]),
                              device="lockers-1").verify(token, now=time.time())
    assert command.name == "set_config"
    assert command.args == {"items": {"access.lockout_s": 30}, "note": "rotate keys"}
    assert command.expires_at - command.issued_at == 120


def test_issuer_init_prints_the_section_for_its_role(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["issuer", "init", str(tmp_path / "r"), "--role", "root"]) == 0
    assert "[[trust.root_keys]]" in capsys.readouterr().out


def test_provision_install_trust_installs_newer_and_refuses_older(
        tmp_path: Path, keys: dict[str, Issuer], capsys: pytest.CaptureFixture[str]) -> None:
    site = write_site(tmp_path / "site", broker_port=1883, reader_url="loop://")
    root = keys["root"]
    with site.config_path.open("a", encoding="utf-8") as fh:
        fh.write(f'\n[[trust.root_keys]]\nkid = "{root.kid}"\npublic_key = "{root.public_key}"\n')
    bundles = {}
    for version in (3, 2):
        bundles[version] = tmp_path / f"bundle-{version}.jws"
        bundles[version].write_text(signed(
            capsys, "trust", "issue", "--root", str(tmp_path / "root"), "--site", "elm-street",
            "--version", str(version), "--issuer-key", str(tmp_path / "issuer")))
    assert main(["provision", "install-trust", "-c", str(site.config_path),
                 str(bundles[3])]) == 0
    assert "applied: version 3" in capsys.readouterr().out
    assert main(["provision", "install-trust", "-c", str(site.config_path),
                 str(bundles[2])]) == 1
    assert "rollback" in capsys.readouterr().out
    assert (site.directory / "trust.jws").exists()
