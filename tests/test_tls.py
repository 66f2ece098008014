"""Mutual TLS against a Mosquitto that requires client certificates from a test CA."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edge.config import MqttConfig, TlsConfig
from edge.link import LinkState, MqttLink
from edge.topics import DeviceTopics
from provisioning.pki import Credential, issue, make_ca
from simulators.broker import BrokerTls, MosquittoBroker, find_mosquitto

TOPICS = DeviceTopics("elm-street", "lockers-1")


@pytest.fixture
def ca() -> Credential:
    return make_ca("Curbside Test CA")


@pytest.fixture
def tls_broker(tmp_path: Path, ca: Credential) -> Iterator[MosquittoBroker]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: the README's test command installs it")
    pki = tmp_path / "pki"
    ca_file, _ = ca.write(pki, "ca")
    cert, key = issue(ca, "broker", server_names=("127.0.0.1", "localhost")).write(pki, "broker")
    with MosquittoBroker(tmp_path / "broker", tls=BrokerTls(ca_file, cert, key)) as broker:
        yield broker


def client_config(broker: MosquittoBroker, directory: Path, signer: Credential,
                  trusted_ca: Credential) -> MqttConfig:
    ca_file, _ = trusted_ca.write(directory, "trusted-ca")
    cert, key = issue(signer, "lockers-1").write(directory, "device")
    return MqttConfig(host=broker.host, port=broker.port,
                      tls=TlsConfig(ca_file=ca_file, cert_file=cert, key_file=key),
                      reconnect_min_s=0.05, reconnect_max_s=0.2)


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[None]:
    task = asyncio.ensure_future(link.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def attempts_fail(link: MqttLink, n: int = 3) -> list[str]:
    """Wait for ``n`` failed connection attempts; return their reasons."""
    failures: list[str] = []
    done = asyncio.Event()

    def note(state: LinkState, detail: str) -> None:
        if state is LinkState.DOWN:
            failures.append(detail)
            if len(failures) >= n:
                done.set()

    link._on_state = note
    async with running(link):
        await asyncio.wait_for(done.wait(), 10)
        assert link.state is not LinkState.UP
    return failures


async def test_the_right_client_certificate_connects_and_publishes(
    tls_broker: MosquittoBroker, tmp_path: Path, ca: Credential
) -> None:
    link = MqttLink(client_config(tls_broker, tmp_path / "dev", ca, ca), TOPICS, boot_id="b")
    async with running(link):
        await asyncio.wait_for(link.wait_up(), 10)
        await link.publish(TOPICS.events, b"{}", qos=1)


async def test_a_certificate_from_another_ca_is_refused(
    tls_broker: MosquittoBroker, tmp_path: Path, ca: Credential
) -> None:
    rogue = make_ca("Someone Else")
    link = MqttLink(client_config(tls_broker, tmp_path / "dev", rogue, ca), TOPICS, boot_id="b")
    failures = await attempts_fail(link)
    assert failures  # refused every time, never up


async def test_an_untrusted_broker_is_refused(
    tls_broker: MosquittoBroker, tmp_path: Path, ca: Credential
) -> None:
    other = make_ca("Not Our CA")
    link = MqttLink(client_config(tls_broker, tmp_path / "dev", ca, other), TOPICS, boot_id="b")
    failures = await attempts_fail(link)
    assert any("CERTIFICATE_VERIFY_FAILED" in f or "certificate verify failed" in f
               for f in failures)


async def test_tls_never_falls_back_to_plaintext(
    broker: MosquittoBroker, tmp_path: Path, ca: Credential
) -> None:
    link = MqttLink(client_config(broker, tmp_path / "dev", ca, ca), TOPICS, boot_id="b")
    assert await attempts_fail(link)  # a plaintext-only broker is never used
