"""Platform-side signing on the command line: badges, denylists, trust bundles, commands.

Every signing key lives in a key directory made by ``curbside issuer init`` (the
issuer's, the platform's command key, the site's root key). Each command prints one
compact JWS on stdout, to hand to a member (badge) or publish (``mosquitto_pub -r`` for
the retained denylist and trust topics; the ``…/cmd`` topic for a command). The library
behind them is :mod:`provisioning`; docs/badges.md describes every claim.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from provisioning.badges import MAX_LIFETIME_S, issue_badge
from provisioning.commands import issue_command
from provisioning.denylist import issue_denylist
from provisioning.issuer import INFO_FILE, load_issuer
from provisioning.trust import issue_trust_bundle

Parsers = Any  # argparse's private _SubParsersAction


def parse_time(text: str) -> int:
    """Unix seconds, or an ISO 8601 date-time with a zone (``2026-12-01T00:00:00Z``)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected Unix seconds or an ISO date-time like 2026-12-01T00:00:00Z, got {text!r}"
        ) from exc
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone (Z or +01:00) in {text!r}")
    return int(moment.timestamp())


def register(sub: Parsers, parse_duration: Any) -> None:
    """Add ``badge issue``, ``denylist issue``, ``trust issue`` and ``command sign``."""
    badge = sub.add_parser("badge", help="issue member badges").add_subparsers(
        dest="badge_command", required=True, metavar="ACTION")
    issue = badge.add_parser("issue", help="print a signed badge")
    issue.add_argument("--issuer", type=Path, required=True, help="issuer key directory")
    issue.add_argument("--member", required=True)
    issue.add_argument("--site", required=True)
    issue.add_argument("--compartment", action="append", default=[], help="repeatable")
    issue.add_argument("--group", action="append", default=[], help="repeatable")
    issue.add_argument("--skill", action="append", default=[], metavar="NAME[:LEVEL]",
                       help="a skill badge and its level (default 1); repeatable")
    issue.add_argument("--window", action="append", default=[], metavar="'DAYS HH:MM-HH:MM'",
                       help="weekly window in site time, e.g. '12345 08:00-20:00'; repeatable")
    uses = issue.add_mutually_exclusive_group()
    uses.add_argument("--uses", type=int, help="use limit on each device")
    uses.add_argument("--single-use", action="store_const", const=1, dest="uses")
    issue.add_argument("--permission", action="append", default=[],
                       metavar="service|audit|calibrate:SENSOR", help="maintainer; repeatable")
    issue.add_argument("--allow-untrusted-time", action="store_true",
                       help="honour even while the device's clock is untrusted")
    issue.add_argument("--not-before", type=parse_time, help="default: now")
    issue.add_argument("--lifetime", type=parse_duration, default=7 * 86400, help="e.g. 7d")
    issue.set_defaults(handler=_badge_issue)

    denylist = sub.add_parser("denylist", help="sign site denylists").add_subparsers(
        dest="denylist_command", required=True, metavar="ACTION")
    deny = denylist.add_parser("issue", help="print a signed denylist (the whole list)")
    deny.add_argument("--issuer", type=Path, required=True, help="issuer key directory")
    deny.add_argument("--site", required=True)
    deny.add_argument("--version", type=int, required=True, help="higher than the last one")
    deny.add_argument("--badge", action="append", default=[], metavar="JTI",
                      help="revoke one badge; repeatable")
    deny.add_argument("--member", action="append", default=[],
                      help="revoke every badge of a member; repeatable")
    deny.add_argument("--void-before", action="append", default=[], metavar="MEMBER",
                      help="void a member's badges issued before now; repeatable")
    deny.add_argument("--until", type=parse_time,
                      help="when the entries lapse (default: now + the longest badge life)")
    deny.set_defaults(handler=_denylist_issue)

    trust = sub.add_parser("trust", help="sign site trust bundles").add_subparsers(
        dest="trust_command", required=True, metavar="ACTION")
    bundle = trust.add_parser("issue", help="print a signed trust bundle")
    bundle.add_argument("--root", type=Path, required=True, help="root key directory")
    bundle.add_argument("--site", required=True)
    bundle.add_argument("--version", type=int, required=True, help="higher than the last one")
    bundle.add_argument("--issuer-key", action="append", default=[], required=True,
                        metavar="KEY[@FROM/UNTIL]", help=_KEY_HELP)
    bundle.add_argument("--command-key", action="append", default=[],
                        metavar="KEY[@FROM/UNTIL]", help=_KEY_HELP)
    bundle.add_argument("--broker-ca", action="append", default=[], type=Path, metavar="PEM",
                        help="a CA certificate devices trust for the broker; repeatable "
                             "(they replace broker-ca.pem on each device)")
    bundle.set_defaults(handler=_trust_issue)

    command = sub.add_parser("command", help="sign platform commands").add_subparsers(
        dest="command_command", required=True, metavar="ACTION")
    sign = command.add_parser("sign", help="print a signed command for one device")
    sign.add_argument("--key", type=Path, required=True, help="command key directory")
    sign.add_argument("--device", required=True)
    sign.add_argument("--name", required=True,
                      help="open, audit, set_time, set_config, refresh_state")
    sign.add_argument("--arg", action="append", default=[], metavar="NAME=JSON",
                      help="an argument; the value is JSON, or else a string; repeatable")
    sign.add_argument("--lifetime", type=parse_duration, default=60, help="at most 5m")
    sign.set_defaults(handler=_command_sign)


_KEY_HELP = ("a key directory or KID=PUBLICKEY, with an optional validity window "
             "@FROM/UNTIL (ISO date-times or Unix seconds; either may be empty); repeatable")


def _badge_issue(args: argparse.Namespace) -> int:
    issuer = load_issuer(args.issuer)
    now = int(time.time())
    print(issue_badge(
        issuer.key, kid=issuer.kid, issuer=issuer.name, member=args.member, site=args.site,
        now=now, lifetime_s=args.lifetime, not_before=args.not_before,
        compartments=tuple(args.compartment), groups=tuple(args.group), skills=args.skill,
        windows=args.window, use_limit=args.uses, permissions=args.permission,
        allows_untrusted_time=args.allow_untrusted_time))
    return 0


def _denylist_issue(args: argparse.Namespace) -> int:
    issuer = load_issuer(args.issuer)
    now = int(time.time())
    until = args.until if args.until is not None else now + MAX_LIFETIME_S
    entries: list[dict[str, object]] = [{"jti": j, "until": until} for j in args.badge]
    entries += [{"sub": m, "until": until} for m in args.member]
    entries += [{"sub": m, "before": now, "until": until} for m in args.void_before]
    print(issue_denylist(issuer.key, kid=issuer.kid, issuer=issuer.name, site=args.site,
                         version=args.version, entries=entries, now=now))
    return 0


def _trust_issue(args: argparse.Namespace) -> int:
    root = load_issuer(args.root)
    print(issue_trust_bundle(
        root.key, kid=root.kid, issuer=root.name, site=args.site, version=args.version,
        now=int(time.time()), issuer_keys=[key_grant(k) for k in args.issuer_key],
        command_keys=[key_grant(k) for k in args.command_key],
        broker_cas=[path.read_text(encoding="ascii") for path in args.broker_ca]))
    return 0


def key_grant(text: str) -> dict[str, object]:
    """``DIR`` or ``KID=KEY``, then optionally ``@FROM/UNTIL`` -> a trust bundle key."""
    spec, _, window = text.partition("@")
    if (Path(spec) / INFO_FILE).exists():
        info = json.loads((Path(spec) / INFO_FILE).read_text(encoding="utf-8"))
        grant: dict[str, object] = {"kid": info["kid"], "key": info["public_key"]}
    elif "=" in spec:
        kid, _, key = spec.partition("=")
        grant = {"kid": kid, "key": key}
    else:
        raise ValueError(f"{spec!r} is neither a key directory nor KID=PUBLICKEY")
    if window:
        start, sep, end = window.partition("/")
        if not sep:
            raise ValueError(f"expected @FROM/UNTIL in {text!r}")
        try:
            if start:
                grant["nbf"] = parse_time(start)
            if end:
                grant["exp"] = parse_time(end)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(str(exc)) from exc
    return grant


def _command_sign(args: argparse.Namespace) -> int:
    key = load_issuer(args.key)
    command_args: dict[str, object] = {}
    for item in args.arg:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        try:
            command_args[name] = json.loads(value)
        except ValueError:
            command_args[name] = value
    print(issue_command(key.key, kid=key.kid, operator=key.name, device=args.device,
                        name=args.name, now=int(time.time()), args=command_args,
                        lifetime_s=args.lifetime))
    return 0
