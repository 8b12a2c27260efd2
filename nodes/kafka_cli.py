"""Command-line pieces for secured brokers: SASL/TLS client options and ``obus acls``.

Passwords never go on the command line (other users can read it in ``ps``): they come from a
file (``--sasl-password-file``, or ``OBUS_SASL_PASSWORD_FILE``) or from ``OBUS_SASL_PASSWORD``.

    obus node --org un ... --security-protocol SASL_SSL --sasl-username un \\
        --sasl-password-file /run/secrets/un_password --ssl-cafile ca.crt
    obus acls apply --mandate mandate.bin --sasl-username admin --sasl-password-file admin.pw
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from bus.acl import acl_model
from bus.errors import BusError, ConfigError
from bus.kafka import SASL_MECHANISMS, SECURITY_PROTOCOLS, KafkaSecurity, Topics

Bootstrap = Callable[[argparse.Namespace], str]
Common = Callable[[argparse.ArgumentParser], None]


def add_security_args(p: argparse.ArgumentParser) -> None:
    """--security-protocol, --sasl-*, --ssl-cafile (each also from an OBUS_* variable)."""
    g = p.add_argument_group(
        "broker security",
        "How to authenticate to the brokers (default PLAINTEXT). Each option can also be set "
        "with the variable in brackets.",
    )
    g.add_argument(
        "--security-protocol", choices=SECURITY_PROTOCOLS, help="[OBUS_SECURITY_PROTOCOL]"
    )
    g.add_argument(
        "--sasl-mechanism", choices=SASL_MECHANISMS, help="[OBUS_SASL_MECHANISM] (SCRAM-SHA-512)"
    )
    g.add_argument("--sasl-username", metavar="USER", help="[OBUS_SASL_USERNAME] e.g. the org id")
    g.add_argument(
        "--sasl-password-file",
        metavar="FILE",
        help="file holding the password [OBUS_SASL_PASSWORD_FILE; or OBUS_SASL_PASSWORD]",
    )
    g.add_argument(
        "--ssl-cafile", metavar="FILE", help="CA of the brokers' certificates [OBUS_SSL_CAFILE]"
    )


def security_from_args(args: argparse.Namespace) -> KafkaSecurity | None:
    """The client security the options and environment ask for; None for plain PLAINTEXT.

    Raises:
        ConfigError: unreadable password file or contradictory options.
    """

    def opt(name: str, env: str) -> str | None:
        value = getattr(args, name, None)
        return str(value) if value else os.environ.get(env) or None

    protocol = opt("security_protocol", "OBUS_SECURITY_PROTOCOL")
    username = opt("sasl_username", "OBUS_SASL_USERNAME")
    mechanism = opt("sasl_mechanism", "OBUS_SASL_MECHANISM")
    cafile = opt("ssl_cafile", "OBUS_SSL_CAFILE")
    password_file = opt("sasl_password_file", "OBUS_SASL_PASSWORD_FILE")
    password = os.environ.get("OBUS_SASL_PASSWORD") or None
    if password_file:
        try:
            password = Path(password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                "--sasl-password-file",
                f"cannot read {password_file}: {exc.strerror}",
                "give a readable file",
            ) from exc
    if protocol is None:
        if not (username or password or cafile):
            return None
        protocol = ("SASL_SSL" if cafile else "SASL_PLAINTEXT") if username else "SSL"
    sasl = protocol.startswith("SASL_")
    return KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=(mechanism or "SCRAM-SHA-512") if sasl else None,
        username=username if sasl else None,
        password=password if sasl else None,
        ssl_cafile=cafile,
    )


def _orgs(args: argparse.Namespace) -> list[str]:
    if args.mandate:
        from nodes.files import load_mandate  # noqa: PLC0415

        return [o.org for o in load_mandate(Path(args.mandate))[0].organizations]
    orgs = [o.strip() for o in args.orgs.split(",") if o.strip()]
    if not orgs:
        raise BusError("no organizations: pass --mandate FILE or --orgs un,osce,...")
    return orgs


def _cmd_acls(args: argparse.Namespace, bootstrap: Bootstrap) -> int:
    from bus.kafka_acl import apply_acls, describe_acls  # noqa: PLC0415

    rules = acl_model(Topics(args.topic_prefix), _orgs(args))
    if args.acl_command == "show":
        for r in rules:
            what = f"{r.operation.value:8} {r.resource.value:5} {r.pattern.value:8}"
            print(f"{r.principal:12} {what} {r.name}")
        return 0
    security = security_from_args(args)
    if args.acl_command == "apply":
        count = asyncio.run(apply_acls(bootstrap(args), rules, security=security))
        print(f"applied {count} ACL rules for {len(_orgs(args))} organizations")
        return 0
    present, others = asyncio.run(describe_acls(bootstrap(args), security=security))
    missing, extra = set(rules) - present, present - set(rules)
    for r in sorted(missing):
        print(f"missing: {r}")
    for r in sorted(extra):
        print(f"extra:   {r}")
    for raw in others:
        print(f"other:   {raw}")
    ok = not (missing or extra or others)
    print("ACLs match the model" if ok else "ACLs differ from the model")
    return 0 if ok else 1


def add_acl_commands(sub: argparse._SubParsersAction, common: Common, bootstrap: Bootstrap) -> None:  # type: ignore[type-arg]
    """``obus acls show|apply|check``."""
    p = sub.add_parser(
        "acls",
        help="broker ACLs per organization (bus/acl.py): show, apply, check",
        description="Each organization may write only its own reports and decisions topics and "
        "the shared ones, read every topic, and use only its own consumer groups. 'apply' and "
        "'check' need the super user (--sasl-username admin).",
    )
    p.add_argument("acl_command", choices=["show", "apply", "check"])
    p.add_argument("--mandate", metavar="FILE", help="take the organizations from the mandate")
    p.add_argument("--orgs", default="", help="or list them: un,osce,eu,nato,csto,sco")
    common(p)
    p.set_defaults(func=lambda a: _cmd_acls(a, bootstrap))
