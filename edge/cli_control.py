"""``curbside status``, ``curbside queue`` and ``curbside calibrate``: talking to the
running agent through its local control socket (``control.sock`` beside the outbox;
owner-only)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from edge.config import load_config
from edge.control import request
from edge.errors import CurbsideError

Parsers = Any  # argparse's private _SubParsersAction


def register(sub: Parsers) -> None:
    status = sub.add_parser("status", help="the running agent's state, as JSON")
    status.add_argument("-c", "--config", type=Path, required=True, help="site TOML file")
    status.set_defaults(handler=_status)

    queue = sub.add_parser("queue", help="the outbox: depth and age per class, the link")
    queue.add_argument("-c", "--config", type=Path, required=True, help="site TOML file")
    queue.set_defaults(handler=_queue)

    calibrate = sub.add_parser("calibrate", help="calibrate a sensor (maintainers)")
    calibrate.add_argument("-c", "--config", type=Path, required=True, help="site TOML file")
    calibrate.add_argument("--sensor", required=True)
    calibrate.add_argument("--method", choices=["zero", "span", "colocation"])
    calibrate.add_argument("--reference", type=float, nargs="+", default=[],
                           help="span: the span value; colocation: one value per recent "
                                "reading, oldest first (µg/m³)")
    calibrate.add_argument("--samples", type=int, default=5, help="zero/span: readings used")
    calibrate.add_argument("--tolerance", type=float, default=2.0, help="µg/m³")
    calibrate.add_argument("--model", choices=["linear", "piecewise"], default="linear")
    calibrate.add_argument("--rollback", action="store_true",
                           help="back to the previous coefficients")
    badge = calibrate.add_mutually_exclusive_group(required=True)
    badge.add_argument("--badge", help="the maintainer's badge (a compact JWS)")
    badge.add_argument("--badge-file", type=Path, help="a file holding the badge")
    calibrate.set_defaults(handler=_calibrate)


def _socket(config_path: Path) -> Path:
    return load_config(config_path).storage.path.parent / "control.sock"


def _ask(config_path: Path, body: dict[str, Any]) -> dict[str, Any]:
    path = _socket(config_path)
    try:
        return asyncio.run(request(path, body))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise CurbsideError(f"{path}: the agent is not running (or not for this "
                            "configuration)") from exc
    except PermissionError as exc:
        raise CurbsideError(f"{path}: permission denied: run as the agent's user") from exc


def _status(args: argparse.Namespace) -> int:
    reply = _ask(args.config, {"op": "status"})
    print(json.dumps(reply.get("state", reply), indent=2))
    return 0 if reply.get("ok") else 1


def _queue(args: argparse.Namespace) -> int:
    reply = _ask(args.config, {"op": "queue"})
    if not reply.get("ok"):
        print(f"curbside: {reply.get('error')}")
        return 1
    outbox, link = reply["outbox"], reply["link"]
    print(f"link {link}; {outbox['depth']} event(s) waiting, the oldest "
          f"{outbox['oldest_age_s'] if outbox['oldest_age_s'] is not None else '-'} s old")
    for name, depth in outbox["by_class"].items():
        print(f"  {name:<10} {depth:>8} event(s) {outbox['bytes_by_class'].get(name, 0):>12} bytes")
    if outbox.get("fault"):
        print(f"storage fault: {outbox['fault']}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    badge = args.badge if args.badge is not None else \
        args.badge_file.read_text(encoding="ascii").strip()
    body: dict[str, Any] = {"op": "calibrate", "sensor": args.sensor, "badge": badge,
                            "samples": args.samples, "tolerance": args.tolerance,
                            "model": args.model}
    if args.rollback:
        body["rollback"] = True
    else:
        if args.method is None:
            raise CurbsideError("give --method (zero, span, colocation) or --rollback")
        body["method"] = args.method
        body["reference"] = (args.reference if args.method == "colocation"
                             else args.reference[0] if args.reference else None)
    reply = _ask(args.config, body)
    if not reply.get("ok"):
        print(f"calibration refused: {reply.get('error')}")
        return 1
    reply.pop("ok")
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("passed", True) else 1
