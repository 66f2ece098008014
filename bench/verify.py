"""Badge decisions per second (verify + policy) against raw Ed25519 verification.

The badge is a realistic one: a group, a skill badge with a level, a weekly window, and
a compartment that needs the skill at level 2, checked against a denylist of 1,000
entries. The baseline is `cryptography`'s Ed25519 verify of the same signature over the
same bytes: the floor any badge check must pay. The ratio shows what parsing, pinning and
policy cost on top.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _report import per_second, report
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.access import AccessPolicy, Reason
from edge.clock import Reading, TimeQuality
from edge.config import CompartmentConfig
from edge.denylist import DenylistStore
from firmware_bridge.badge_reader import BadgeScan
from provisioning.badges import issue_badge
from provisioning.denylist import issue_denylist
from provisioning.keys import b64url_decode
from provisioning.tokens import TrustedKey


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about 2 s instead of 10 s")
    seconds = 1.0 if parser.parse_args().quick else 5.0

    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    now = int(time.time())
    with tempfile.TemporaryDirectory() as tmp:
        denylist = DenylistStore(Path(tmp) / "denylist.jws", {"k1": public}, site="elm-street")
        denylist.update(issue_denylist(
            key, kid="k1", issuer="coop", site="elm-street", version=1, now=now,
            entries=[{"jti": f"lost-{i}", "until": now + 86400} for i in range(1000)]))
        policy = AccessPolicy(
            "elm-street",
            (CompartmentConfig(id="B1", solenoid_pin=22, door_pin=23, group="batteries",
                               skills={"battery-handling": 2}),),
            keys={"k1": TrustedKey(public, not_before=now - 86400)}, denylist=denylist)
    token = issue_badge(key, kid="k1", issuer="coop", member="ada", site="elm-street", now=now,
                        lifetime_s=86400, groups=("batteries",), skills={"battery-handling": 2},
                        windows=("1234567 00:00-24:00",))
    scan = BadgeScan("B1", token)
    at = Reading(now, TimeQuality.SYNCHRONISED)
    assert policy.decide(scan, now=at).reason is Reason.GRANTED

    head, body, sig = token.split(".")
    signing_input, signature = f"{head}.{body}".encode(), b64url_decode(sig)

    decide = per_second(lambda: policy.decide(scan, now=at), seconds=seconds)
    raw = per_second(lambda: public.verify(signature, signing_input), seconds=seconds)
    report("badge_decisions", decide, "decisions/s", raw, "raw Ed25519 verify",
           token_bytes=len(token), latency_us=round(1e6 / decide, 1))


if __name__ == "__main__":
    main()
