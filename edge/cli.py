"""The ``curbside`` command line: run the agent, check a config, keys and signed tokens.

Further commands (``curbside demo`` from the simulators) plug in through the
``curbside.commands`` entry point group, so the agent never imports the simulators.
Exit status: 0 success, 1 runtime failure, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from edge import __version__, cli_control, cli_pki, cli_signing
from edge.agent import Agent
from edge.audit_chain import verify_outbox
from edge.config import load_config
from edge.errors import ConfigError, CurbsideError
from provisioning.errors import ProvisioningError
from provisioning.issuer import init_issuer

EXIT_FAILURE = 1
EXIT_USAGE = 2
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_TRUST_SECTIONS = {"issuer": "issuers", "command": "command_keys", "root": "root_keys"}


def parse_duration(text: str) -> int:
    """``"90"``, ``"90s"``, ``"15m"``, ``"12h"``, ``"7d"`` -> seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 90s, 15m, 12h or 7d, got {text!r}"
        )
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curbside", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"curbside {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent")
    run.add_argument("-c", "--config", type=Path, required=True, help="site TOML file")
    run.set_defaults(handler=_cmd_run)

    check = sub.add_parser("check", help="validate a site configuration and exit")
    check.add_argument("-c", "--config", type=Path, required=True, help="site TOML file")
    check.set_defaults(handler=_cmd_check)

    audit = sub.add_parser("audit", help="check the audit trail").add_subparsers(
        dest="audit_command", required=True, metavar="ACTION"
    )
    verify = audit.add_parser("verify", help="check the hash chain of the audit events")
    verify.add_argument("-c", "--config", type=Path, help="site TOML file (its outbox)")
    verify.add_argument("--db", type=Path, help="an outbox file instead of the config's")
    verify.set_defaults(handler=_cmd_audit_verify)

    issuer = sub.add_parser("issuer", help="create signing keys").add_subparsers(
        dest="issuer_command", required=True, metavar="ACTION"
    )
    init = issuer.add_parser("init", help="create an Ed25519 signing key directory DIR")
    init.add_argument("directory", type=Path)
    init.add_argument("--name", default="curbside-coop", help="signer name (iss claim)")
    init.add_argument("--kid", help="key id (default: derived from the public key)")
    init.add_argument("--role", choices=sorted(_TRUST_SECTIONS), default="issuer",
                      help="what the key signs: badges and denylists (issuer), platform "
                           "commands (command) or trust bundles (root)")
    init.set_defaults(handler=_cmd_issuer_init)

    cli_signing.register(sub, parse_duration)
    cli_pki.register(sub)
    cli_control.register(sub)

    for plugin in entry_points(group="curbside.commands"):
        plugin.load()(sub)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    return asyncio.run(_run_agent(Agent(config), args.config))


async def _run_agent(agent: Agent, config_path: Path | None = None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task[None]] = set()
    if config_path is not None:
        def reload() -> None:
            task = loop.create_task(agent.reload(config_path))
            reloads.add(task)
            task.add_done_callback(reloads.discard)
        loop.add_signal_handler(signal.SIGHUP, reload)
    await agent.run(stop)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"{args.config}: valid; device {config.device.id} at site {config.device.site}, "
          f"{len(config.compartments)} compartment(s), backend {config.hardware.backend}")
    return 0


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    if (args.config is None) == (args.db is None):
        raise ConfigError("give either -c CONFIG or --db OUTBOX")
    path = args.db if args.db is not None else load_config(args.config).storage.path
    if not path.exists():
        raise ConfigError(f"{path}: no outbox file there")
    report = verify_outbox(path)
    if report.ok:
        print(f"{path}: audit chain intact: {report.checked} event(s) in the outbox, "
              f"head {report.head[:16]}…")
        return 0
    print(f"{path}: audit chain BROKEN at seq {report.broken_at}: {report.problem} "
          f"({report.checked} event(s) verified before it)")
    return EXIT_FAILURE


def _cmd_issuer_init(args: argparse.Namespace) -> int:
    issuer = init_issuer(args.directory, name=args.name, kid=args.kid)
    print(f"{args.role} key {issuer.name!r} created in {args.directory} "
          "(private key: issuer.key, 0600)")
    print("trust it in a site configuration with:\n")
    print(f'[[trust.{_TRUST_SECTIONS[args.role]}]]\nkid = "{issuer.kid}"\n'
          f'public_key = "{issuer.public_key}"')
    return 0


def _leaves(group: BaseExceptionGroup[Exception]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``curbside`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"curbside: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CurbsideError, ProvisioningError, ValueError) as exc:
        print(f"curbside: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ExceptionGroup as group:  # a task of the agent failed: say why when we know
        known, rest = group.split(CurbsideError)
        if rest is not None or known is None:
            raise
        for leaf in _leaves(known):
            print(f"curbside: {leaf}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
