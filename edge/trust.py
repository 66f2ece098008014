"""The keys this device trusts now: from its configuration, or from a signed trust bundle.

The configuration's ``[[trust.issuers]]`` and ``[[trust.command_keys]]`` are the keys a
device starts with. A trust bundle (:mod:`provisioning.trust`) signed by one of the
configured ``[[trust.root_keys]]`` replaces both sets once installed, and survives
restarts (``trust.jws`` beside the outbox); an older bundle is refused. Without root keys
no bundle is accepted. :attr:`TrustStore.version` (0: the configuration's keys) is
reported in ``state``.

A bundle that lists broker CAs (``cas``) also rewrites ``broker-ca.pem`` beside it, the
file ``[mqtt.tls] ca_file`` names on an enrolled device (``curbside provision enrol`` makes
it): the broker's CA can rotate without touching the configuration. The TLS context is
built at start, so a new CA is used from the next start.
"""

from __future__ import annotations

from pathlib import Path

from edge.atomic import write_atomically
from edge.config import IssuerKey, TrustConfig
from edge.signed_store import SignedStore, Update, UpdateResult
from provisioning.errors import TokenFault, TokenRejected
from provisioning.keys import public_key_from_b64
from provisioning.tokens import TrustedKey
from provisioning.trust import TrustBundle, TrustBundleVerifier

BROKER_CA_FILE = "broker-ca.pem"


def key_ring(keys: tuple[IssuerKey, ...]) -> dict[str, TrustedKey]:
    """Configured keys as a ring: ``kid`` -> key with its validity window."""
    return {k.kid: TrustedKey(public_key_from_b64(k.public_key), *k.window()) for k in keys}


class TrustStore:
    """Issuer and command keys in force, and the trust bundle that set them (if any)."""

    def __init__(self, path: Path, trust: TrustConfig, *, site: str) -> None:
        self.broker_ca_path = path.with_name(BROKER_CA_FILE)
        self._config_issuers = key_ring(trust.issuers)
        self._config_commands = key_ring(trust.command_keys)
        roots = key_ring(trust.root_keys)
        self._verifier = TrustBundleVerifier(roots, site=site) if roots else None
        self._store: SignedStore[TrustBundle] = SignedStore(
            path, "trust bundle", self._verify, lambda b: b.version)
        self._rings: tuple[dict[str, TrustedKey], dict[str, TrustedKey]] | None = None

    def _verify(self, token: str) -> TrustBundle:
        if self._verifier is None:
            raise TokenRejected(TokenFault.UNKNOWN_KEY,
                                "no [[trust.root_keys]] configured: trust bundles are refused")
        return self._verifier.verify(token)

    @property
    def version(self) -> int:
        """The installed bundle's version; 0 while the configuration's keys are in force."""
        return self._store.version

    @property
    def problem(self) -> str | None:
        """Why the stored bundle could not be used at start, if it could not."""
        return self._store.problem

    def update(self, token: str) -> UpdateResult:
        """Verify and, if newer, install ``token``; the key rings change at once."""
        result = self._store.update(token)
        self._rings = None
        bundle = self._store.current
        if bundle is not None and bundle.broker_cas and result.outcome in (Update.APPLIED,
                                                                          Update.SAME):
            pems = "".join(bundle.broker_cas)
            if not self.broker_ca_path.exists() or self.broker_ca_path.read_text() != pems:
                write_atomically(self.broker_ca_path, pems)
        return result

    def _current(self) -> tuple[dict[str, TrustedKey], dict[str, TrustedKey]]:
        if self._rings is None:
            bundle = self._store.current
            self._rings = ((self._config_issuers, self._config_commands) if bundle is None
                           else (bundle.issuer_ring(), bundle.command_ring()))
        return self._rings

    def issuer_keys(self) -> dict[str, TrustedKey]:
        """Keys that may sign badges and denylists."""
        return self._current()[0]

    def command_keys(self) -> dict[str, TrustedKey]:
        """Keys that may sign platform commands."""
        return self._current()[1]
