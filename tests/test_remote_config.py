"""Remote configuration items: what may change, validation with the file's rules, storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import SiteConfig, load_config
from edge.remote_config import RemoteConfigError, RemoteConfigStore, apply_items
from simulators.site import write_site


@pytest.fixture
def config(tmp_path: Path) -> SiteConfig:
    return load_config(write_site(tmp_path, broker_port=1883, reader_url="loop://").config_path)


def test_remote_items_apply_and_validate(config: SiteConfig) -> None:
    changed = apply_items(config, {"access.lockout_s": 30, "access.timezone": "Europe/Paris",
                                   "compartments.A1.pulse_ms": 800, "trust.leeway_s": 10,
                                   "compartments.B1.skills": ["battery-handling"]})
    assert changed.access.lockout_s == 30
    assert changed.access.timezone == "Europe/Paris"
    assert changed.compartments[0].pulse_ms == 800
    assert changed.compartments[1].skills == {"battery-handling": 1}
    assert changed.trust.leeway_s == 10
    assert config.access.lockout_s == 120  # the original is untouched


@pytest.mark.parametrize(("items", "message"), [
    ({"mqtt.host": "evil.example"}, "mqtt.host: not a remote item"),
    ({"compartments.A1.solenoid_pin": 4}, "not a remote item"),
    ({"compartments.Z9.pulse_ms": 600}, "no compartment 'Z9'"),
    ({"access.lockout_s": -1}, "access.lockout_s"),
    ({"compartments.A1.pulse_ms": 9000}, "compartments.0.pulse_ms"),
    ({"access.timezone": "Mars/Olympus"}, "unknown time zone"),
])
def test_refusals_name_the_item(config: SiteConfig, items: dict[str, object],
                                message: str) -> None:
    with pytest.raises(RemoteConfigError, match=message):
        apply_items(config, items)


def test_store_persists_and_drops_items_that_no_longer_apply(config: SiteConfig,
                                                             tmp_path: Path) -> None:
    path = tmp_path / "remote-config.json"
    RemoteConfigStore(path).save({"access.lockout_s": 30, "compartments.A1.pulse_ms": 700})
    store = RemoteConfigStore(path)
    assert store.apply_to(config).access.lockout_s == 30
    store.save({"compartments.Z9.pulse_ms": 600})  # e.g. the file lost compartment Z9
    again = RemoteConfigStore(path)
    applied = again.apply_to(config)
    assert applied.compartments[0].pulse_ms == 700
    assert "compartments.Z9.pulse_ms" not in again.items


def test_an_unreadable_store_is_ignored(config: SiteConfig, tmp_path: Path) -> None:
    path = tmp_path / "remote-config.json"
    path.write_text("{not json", encoding="utf-8")
    assert RemoteConfigStore(path).apply_to(config) == config
