"""A virtual site on disk: an issuer, a site configuration, and badges for its members."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioning.badges import Skills, issue_badge
from provisioning.issuer import Issuer, init_issuer
from simulators.gpio_world import DoorSpec

SITE = "elm-street"
DEVICE = "lockers-1"
DOORS = (
    DoorSpec("A1", solenoid_pin=17, door_pin=27),
    DoorSpec("B1", solenoid_pin=22, door_pin=23),
)

_GPIO_PINS = {"a1_out": 17, "a1_in": 27, "b1_out": 22, "b1_in": 23}
_BRIDGE_PINS = {"a1_out": 0, "a1_in": 0, "b1_out": 1, "b1_in": 1}

_CONFIG = """\
# A virtual tool-library site, written by the Curbside simulators.
[device]
id = "{device}"
site = "{site}"

[mqtt]
host = "127.0.0.1"
port = {broker_port}
protocol = "5"
keepalive_s = 10
allow_insecure = true      # loopback broker of the simulation; real sites use [mqtt.tls]
reconnect_min_s = 0.2
reconnect_max_s = 2.0

[storage]
path = "outbox.db"

[[trust.issuers]]
kid = "{kid}"
public_key = "{public_key}"

[reader]
url = "{reader_url}"

{hardware}

[[compartments]]
id = "A1"                  # hand tools
solenoid_pin = {a1_out}
door_pin = {a1_in}
pulse_ms = 500
group = "hand-tools"

[[compartments]]
id = "B1"                  # battery bay
solenoid_pin = {b1_out}
door_pin = {b1_in}
pulse_ms = 500
group = "batteries"
skills = ["battery-handling"]
"""


@dataclass(frozen=True)
class VirtualSite:
    """Paths and keys of a virtual site."""

    directory: Path
    config_path: Path
    issuer: Issuer

    def badge(
        self,
        member: str,
        *,
        compartments: tuple[str, ...] = (),
        groups: tuple[str, ...] = (),
        skills: Skills = (),
        lifetime_s: int = 3600,
        not_before: int | None = None,
        **claims: Any,
    ) -> str:
        """A badge signed by the site's issuer; ``claims`` are further keyword arguments
        of :func:`~provisioning.badges.issue_badge` (windows, use_limit, permissions...)."""
        return issue_badge(
            self.issuer.key, kid=self.issuer.kid, issuer=self.issuer.name, member=member,
            site=SITE, now=int(time.time()), lifetime_s=lifetime_s, not_before=not_before,
            compartments=compartments, groups=groups, skills=skills, **claims,
        )


_MOCK = '[hardware]\nbackend = "mock"'
_BRIDGE = ('[hardware]\nbackend = "bridge"   # the microcontroller emulator on a pty\n'
           'url = "{url}"\nheartbeat_s = 0.1\nlink_timeout_s = 0.5')


def write_site(directory: Path, *, broker_port: int, reader_url: str,
               bridge_url: str | None = None) -> VirtualSite:
    """Create ``directory`` with ``issuer/`` and ``site.toml``: GPIO on MockFactory pins,
    or with ``bridge_url`` a microcontroller on that serial port (A1 on output and input
    0, B1 on 1)."""
    directory.mkdir(parents=True, exist_ok=True)
    issuer = init_issuer(directory / "issuer", name="elm-street-coop")
    # A site that has had NTP before: a time floor a minute old, so the clock reads as
    # "floor" quality, as on a real Pi between reboots.
    (directory / "time.floor").write_text(f"{time.time() - 60:.3f}\n", encoding="ascii")
    config_path = directory / "site.toml"
    config_path.write_text(
        _CONFIG.format(
            device=DEVICE, site=SITE, broker_port=broker_port, kid=issuer.kid,
            public_key=issuer.public_key, reader_url=reader_url,
            hardware=_MOCK if bridge_url is None else _BRIDGE.format(url=bridge_url),
            **(_GPIO_PINS if bridge_url is None else _BRIDGE_PINS),
        ),
        encoding="utf-8",
    )
    return VirtualSite(directory, config_path, issuer)
