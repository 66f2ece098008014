"""TLS certificates on the command line: a development CA, the broker's certificate,
device requests and their signing, and the claim-based enrolment service.

``curbside pki ca|broker|client|csr|sign-csr|revoke`` and ``curbside provision
serve|enrol|retire|install-trust``. Private
keys are written 0600 and never printed. The library behind them is
:mod:`provisioning.device_tls` and :mod:`provisioning.enrolment`; docs/enrolment.md
describes the flow.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge.config import load_config
from edge.device_key import DeviceKey
from edge.signed_store import Update
from edge.trust import BROKER_CA_FILE, TrustStore
from provisioning.crl import CRL_FILE, serial_of, write_crl
from provisioning.device_tls import (
    CA_CERT_FILE,
    DEVICE_DAYS,
    create_ca,
    load_ca,
    load_or_create_tls_key,
    make_csr,
    sign_csr,
    write_certificate,
)
from provisioning.enrolment import EnrolmentService, enrol
from provisioning.enrolment_mqtt import ClientTls
from provisioning.enrolment_registry import DeviceRegistry
from provisioning.pki import issue

SERVICE_IDENTITIES = frozenset({"claim", "provisioner", "platform"})  # as deploy/mosquitto/acl
Parsers = Any  # argparse's private _SubParsersAction


def register(sub: Parsers) -> None:
    """Add ``pki ca|broker|client|csr|sign-csr|revoke`` and ``provision ...``."""
    pki = sub.add_parser("pki", help="TLS certificates for the broker and devices"
                         ).add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    ca = pki.add_parser("ca", help="create a development CA in DIR (ca.pem, ca.key 0600)")
    ca.add_argument("directory", type=Path, metavar="DIR")
    ca.add_argument("--name", required=True, help="the CA's common name")
    ca.add_argument("--days", type=int, default=3650)
    ca.set_defaults(handler=_ca)

    broker = pki.add_parser("broker", help="a broker certificate in DIR (broker.pem, .key)")
    broker.add_argument("directory", type=Path, metavar="DIR")
    broker.add_argument("--ca", type=Path, required=True, help="CA directory")
    broker.add_argument("--host", action="append", required=True,
                        help="a DNS name or IP address clients connect to; repeatable")
    broker.add_argument("--days", type=int, default=825)
    broker.set_defaults(handler=_broker)

    client = pki.add_parser("client", help="a service identity in DIR (NAME.pem, NAME.key): "
                            "claim, provisioner or platform")
    client.add_argument("directory", type=Path, metavar="DIR")
    client.add_argument("--ca", type=Path, required=True, help="CA directory")
    client.add_argument("--name", required=True, choices=sorted(SERVICE_IDENTITIES))
    client.add_argument("--days", type=int, default=825)
    client.set_defaults(handler=_client)

    csr = pki.add_parser("csr", help="on the device: a request for its TLS key (made if absent)")
    csr.add_argument("--key", type=Path, required=True, help="the device's TLS key file")
    csr.add_argument("--device", required=True, help="device id")
    csr.add_argument("--site", required=True,
                     help="site id (the certificate's CN is SITE/DEVICE)")
    csr.add_argument("--out", type=Path, required=True)
    csr.set_defaults(handler=_csr)

    sign = pki.add_parser("sign-csr", help="sign a device request: CN kept, client auth only")
    sign.add_argument("csr", type=Path, metavar="CSR")
    sign.add_argument("--ca", type=Path, required=True, help="CA directory")
    sign.add_argument("--out", type=Path, required=True, help="certificate file (0644)")
    sign.add_argument("--identity", metavar="SITE/DEVICE",
                      help="refuse unless the CN is this device identity")
    sign.add_argument("--days", type=int, default=DEVICE_DAYS)
    sign.set_defaults(handler=_sign_csr)

    revoke = pki.add_parser("revoke", help="add certificates to the CA's revocation list "
                            "(CA/crl.pem, the broker's crlfile)")
    revoke.add_argument("certificates", nargs="+", metavar="CERT|SERIAL",
                        help="a certificate file, or a serial number in hex")
    revoke.add_argument("--ca", type=Path, required=True, help="CA directory")
    revoke.set_defaults(handler=_revoke)

    _register_provision(sub)



def _ca(args: argparse.Namespace) -> int:
    ca = create_ca(args.directory, args.name, days=args.days)
    print(f"{args.directory / CA_CERT_FILE}  {ca.cert.subject.rfc4514_string()}")
    return 0


def _broker(args: argparse.Namespace) -> int:
    ca = load_ca(args.ca)
    hosts = tuple(args.host)
    cert_path, key_path = issue(ca, hosts[0], server_names=hosts, days=args.days).write(
        args.directory, "broker")
    print(f"{cert_path}  {key_path}  for {', '.join(hosts)}")
    return 0


def _client(args: argparse.Namespace) -> int:
    cert_path, key_path = issue(load_ca(args.ca), args.name, days=args.days).write(
        args.directory, args.name)
    print(f"{cert_path}  {key_path}")
    return 0


def _csr(args: argparse.Namespace) -> int:
    key = load_or_create_tls_key(args.key)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(make_csr(key, args.device, args.site))
    print(args.out)
    return 0


def _sign_csr(args: argparse.Namespace) -> int:
    ca = load_ca(args.ca)
    cert = sign_csr(ca, args.csr.read_bytes(), expected_id=args.identity, days=args.days)
    write_certificate(args.out, cert.public_bytes(serialization.Encoding.PEM))
    print(f"{args.out}  {cert.subject.rfc4514_string()}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    serials = []
    for given in args.certificates:
        path = Path(given)
        if path.is_file():
            serials.append(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)
        else:
            serials.append(serial_of(given))
    crl = write_crl(load_ca(args.ca), args.ca / CRL_FILE, tuple(serials))
    print(f"{args.ca / CRL_FILE}: {len(crl)} revoked; reload the broker (systemctl reload "
          "mosquitto) for it to take effect")
    return 0


def _retire(args: argparse.Namespace) -> int:
    ca = load_ca(args.ca)
    serials = DeviceRegistry(args.registry or args.ca / "devices.json").retire(args.device)
    crl = write_crl(ca, args.ca / CRL_FILE, serials)
    print(f"retired {args.device}: {len(serials)} certificate(s) revoked, {len(crl)} in "
          f"{args.ca / CRL_FILE}; reload the broker (systemctl reload mosquitto)")
    return 0


def _register_provision(sub: Parsers) -> None:
    provision = sub.add_parser("provision", help="claim-based enrolment over MQTT"
                               ).add_subparsers(dest="provision_command", required=True,
                                                metavar="ACTION")
    serve = provision.add_parser("serve", help="sign enrolment requests from the broker")
    serve.add_argument("--ca", type=Path, required=True, help="CA directory")
    serve.add_argument("--broker", required=True, metavar="HOST:PORT")
    serve.add_argument("--tls", type=Path, required=True, metavar="DIR",
                       help="the service's identity: DIR/ca.pem (the broker's CA), "
                            "DIR/provisioner.pem and DIR/provisioner.key")
    serve.add_argument("--registry", type=Path, help="device registry (default: CA/devices.json)")
    serve.add_argument("--days", type=int, default=DEVICE_DAYS)
    serve.set_defaults(handler=_serve)

    enrol_cmd = provision.add_parser("enrol", help="on the device: get its own certificate "
                                                   "with the shared claim identity")
    enrol_cmd.add_argument("-c", "--config", type=Path, required=True, help="site TOML file")
    enrol_cmd.add_argument("--claim", type=Path, required=True, metavar="DIR",
                           help="DIR/ca.pem (the broker's CA), DIR/claim.pem, DIR/claim.key")
    enrol_cmd.add_argument("--timeout", type=float, default=30.0)
    enrol_cmd.set_defaults(handler=_enrol)

    retire = provision.add_parser("retire", help="revoke every certificate of a device and "
                                  "refuse to enrol its id again")
    retire.add_argument("device", help="device id")
    retire.add_argument("--ca", type=Path, required=True, help="CA directory")
    retire.add_argument("--registry", type=Path, help="device registry (default: CA/devices.json)")
    retire.set_defaults(handler=_retire)

    install = provision.add_parser("install-trust", help="install a signed trust bundle "
                                                         "(docs/badges.md) on this device")
    install.add_argument("-c", "--config", type=Path, required=True, help="site TOML file")
    install.add_argument("bundle", type=Path, help="a file holding the bundle (compact JWS)")
    install.set_defaults(handler=_install_trust)


def _enrol(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    tls = config.mqtt.tls
    if tls is None or tls.cert_file is None or tls.key_file is None:
        raise ValueError(
            f"{args.config}: [mqtt.tls] must name ca_file, cert_file and key_file (the files "
            "enrolment writes), e.g. /var/lib/curbside/broker-ca.pem, tls.pem and tls.key")
    state = config.storage.path.parent
    # The key the device signs its records with is the one the service registers.
    signing = DeviceKey.load_or_create(state / "device.key")
    claim_ca = args.claim / CA_CERT_FILE
    cert = enrol(config.mqtt.host, config.mqtt.port, claim_ca, args.claim / "claim.pem",
                 args.claim / "claim.key", config.device.id, config.device.site, state,
                 args.timeout, signing_key=signing.key, key_file=tls.key_file,
                 cert_file=tls.cert_file)
    if not tls.ca_file.exists():  # the CA enrolment trusted; trust bundles may replace it
        write_certificate(tls.ca_file, claim_ca.read_bytes())
    print(f"enrolled {config.device.site}/{config.device.id}: key {tls.key_file}, "
          f"certificate {cert}, broker CA {tls.ca_file}")
    if tls.ca_file.name != BROKER_CA_FILE or tls.ca_file.parent != state:
        print(f"note: ca_file = \"{state / BROKER_CA_FILE}\" lets signed trust bundles "
              "rotate the broker's CA", file=sys.stderr)
    return 0


def _install_trust(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = TrustStore(config.storage.path.parent / "trust.jws", config.trust,
                       site=config.device.site)
    result = store.update(args.bundle.read_text(encoding="ascii").strip())
    print(f"trust bundle {result.outcome.value}: version {result.version}"
          + (f" ({result.detail})" if result.detail else ""))
    return 0 if result.outcome in (Update.APPLIED, Update.SAME) else 1


def _serve(args: argparse.Namespace) -> int:
    host, _, port = args.broker.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--broker: expected HOST:PORT, got {args.broker!r}")
    tls = ClientTls(ca_file=args.tls / CA_CERT_FILE, cert_file=args.tls / "provisioner.pem",
                     key_file=args.tls / "provisioner.key")
    service = EnrolmentService(load_ca(args.ca), args.registry or args.ca / "devices.json",
                               host, int(port), tls, days=args.days)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service.start()  # subscribed: requests from now on are answered
    try:
        print(f"serving enrolment requests on {args.broker}", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        service.stop()
    print("stopped", file=sys.stderr)
    return 0
