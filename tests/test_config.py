"""Configuration: valid files load; every bad file names the file, the key and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import MAX_PULSE_MS, GpioHardware, load_config
from edge.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "virtual-site.toml"

VALID = """
[device]
id = "lockers-1"
site = "elm-street"

[mqtt]
host = "broker.example"
port = 8883
[mqtt.tls]
ca_file = "certs/ca.pem"
cert_file = "certs/device.pem"
key_file = "certs/device.key"

[storage]
path = "outbox.db"

[[trust.issuers]]
kid = "k1"
public_key = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"

[reader]
url = "/dev/ttyUSB0"

[hardware]
backend = "gpio"
pin_factory = "lgpio"

[[compartments]]
id = "A1"
solenoid_pin = 17
door_pin = 27
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_file_loads_with_safe_defaults_and_paths_beside_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    assert config.device.id == "lockers-1"
    assert config.compartments[0].pulse_ms == 500
    assert config.storage.path == tmp_path / "outbox.db"
    assert config.mqtt.tls is not None
    assert config.mqtt.tls.ca_file == tmp_path / "certs" / "ca.pem"
    assert isinstance(config.hardware, GpioHardware)
    assert config.mqtt.protocol == "5"


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    with pytest.raises(ValueError, match="frozen"):
        config.device.id = "other"  # type: ignore[misc]  # the point is that it is refused


@pytest.mark.parametrize(
    ("change", "key", "expected"),
    [
        (("pulse_ms", "pulse_ms = 5000\n"), "compartments[0].pulse_ms",
         f"less than or equal to {MAX_PULSE_MS}"),
        (("port = 8883", 'port = "eighty"'), "mqtt.port", "valid integer"),
        (('backend = "gpio"', 'backend = "magic"'), "hardware", "'gpio', 'mock'"),
        (('pin_factory = "lgpio"', 'pin_factory = "wiringpi"'), "hardware.pin_factory",
         "'lgpio'"),
        (('id = "lockers-1"', 'id = "lockers 1!"'), "device.id", "match pattern"),
        (('url = "/dev/ttyUSB0"', 'url = "/dev/ttyUSB0"\nbaud = 9600'), "reader.baud",
         "unknown key"),
        (('public_key = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"', 'public_key = "abc"'),
         "trust.issuers[0].public_key", "match pattern"),
        (('public_key = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"',
          'public_key = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"\n'
          'not_after = 2027-01-01T00:00:00'), "trust.issuers[0].not_after", "time zone"),
        (('url = "/dev/ttyUSB0"', 'url = "/dev/ttyUSB0"\n[access]\ntimezone = "Europe/Pari"'),
         "access.timezone", "unknown time zone"),
        (('url = "/dev/ttyUSB0"', 'url = "/dev/ttyUSB0"\n[access]\nmax_badge_lifetime_s = 9e9'),
         "access.max_badge_lifetime_s", "less than or equal to 2678400"),
        (("pulse_ms", 'skills = { battery-handling = 12 }\n'),
         "compartments[0].skills.battery-handling", "less than or equal to 9"),
    ],
)
def test_bad_values_name_the_file_and_key_path(
    tmp_path: Path, change: tuple[str, str], key: str, expected: str
) -> None:
    old, new = change
    text = VALID.replace("door_pin = 27\n", "door_pin = 27\n" + new) if old == "pulse_ms" \
        else VALID.replace(old, new)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"  {key}:" in message
    assert expected in message


def test_missing_section_is_named(tmp_path: Path) -> None:
    start = VALID.index("[reader]")
    rest = VALID[start:].replace('[reader]\nurl = "/dev/ttyUSB0"\n', "")
    path = write(tmp_path, VALID[:start] + rest)
    with pytest.raises(ConfigError, match=r"  reader: required key is missing"):
        load_config(path)


def test_plaintext_mqtt_needs_explicit_allow_insecure(tmp_path: Path) -> None:
    start, end = VALID.index("[mqtt.tls]"), VALID.index("[storage]")
    path = write(tmp_path, VALID[:start] + VALID[end:])
    with pytest.raises(ConfigError, match=r"  mqtt: .*allow_insecure = true"):
        load_config(path)


def test_pin_used_twice_is_refused(tmp_path: Path) -> None:
    text = VALID + '\n[[compartments]]\nid = "A2"\nsolenoid_pin = 27\ndoor_pin = 5\n'
    with pytest.raises(ConfigError, match="each pin may be used by one"):
        load_config(write(tmp_path, text))


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[device\nid = 1\n")
    with pytest.raises(ConfigError, match=rf"{path}: not valid TOML: .*line 1"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration: No such file"):
        load_config(tmp_path / "absent.toml")


def test_cli_exits_2_with_the_message_on_a_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("port = 8883", "port = 0"))
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", "-c", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert f"{path}: invalid configuration" in result.stderr
    assert "mqtt.port: expected input should be greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_shipped_example_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.hardware.backend == "mock"
    assert {c.id for c in config.compartments} == {"A1", "B1"}


@pytest.mark.parametrize(("hardware", "pins", "message"), [
    ('backend = "bridge"\nurl = "/dev/ttyACM0"', "solenoid_pin = 300\ndoor_pin = 0",
     "numbers are 0..255"),
    ('backend = "bridge"\nurl = "/dev/ttyACM0"', 'solenoid_pin = "GPIO4"\ndoor_pin = 0',
     "integers"),
    ('backend = "bridge"\nurl = "/dev/ttyACM0"\nheartbeat_s = 2\nlink_timeout_s = 3',
     "solenoid_pin = 0\ndoor_pin = 0", "two heartbeats"),
])
def test_bridge_hardware_is_checked(tmp_path: Path, hardware: str, pins: str,
                                    message: str) -> None:
    start = VALID.index("[hardware]")
    text = (VALID[:start] + "[hardware]\n" + hardware + "\n\n"
            + '[[compartments]]\nid = "A1"\n' + pins + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_bridge_outputs_and_inputs_are_numbered_apart(tmp_path: Path) -> None:
    start = VALID.index("[hardware]")
    text = (VALID[:start] + '[hardware]\nbackend = "bridge"\nurl = "/dev/ttyACM0"\n\n'
            '[[compartments]]\nid = "A1"\nsolenoid_pin = 0\ndoor_pin = 0\n')
    config = load_config(write(tmp_path, text))
    assert config.compartments[0].inputs() == {"door": 0}
