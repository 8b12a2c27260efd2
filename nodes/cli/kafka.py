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
from bus.kafka.client import SASL_MECHANISMS, SECURITY_PROTOCOLS, KafkaSecurity
from bus.topics import Topics

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

    Contradictions are refused, never dropped: SASL options need a SASL_* protocol, a SASL_*
    protocol needs a username and a password, a password needs a username, and a CA file needs
    a TLS protocol. Errors name the flag, or the OBUS_* variable the value came from.

    Raises:
        ConfigError: unreadable password file, unknown values or contradictory options.
    """

    def opt(name: str, flag: str, env: str) -> tuple[str | None, str]:
        """(value, its source: the flag, or the variable when it came from the environment)."""
        value = getattr(args, name, None)
        if value:
            return str(value), flag
        from_env = os.environ.get(env)
        return (from_env, env) if from_env else (None, flag)

    protocol, protocol_key = opt(
        "security_protocol", "--security-protocol", "OBUS_SECURITY_PROTOCOL"
    )
    username, username_key = opt("sasl_username", "--sasl-username", "OBUS_SASL_USERNAME")
    mechanism, mechanism_key = opt("sasl_mechanism", "--sasl-mechanism", "OBUS_SASL_MECHANISM")
    cafile, cafile_key = opt("ssl_cafile", "--ssl-cafile", "OBUS_SSL_CAFILE")
    password_file, password_key = opt(
        "sasl_password_file", "--sasl-password-file", "OBUS_SASL_PASSWORD_FILE"
    )
    password = None
    if password_file:
        try:
            password = Path(password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                password_key,
                f"cannot read {password_file}: {exc.strerror}",
                "give a readable file",
            ) from exc
    elif os.environ.get("OBUS_SASL_PASSWORD"):
        password, password_key = os.environ["OBUS_SASL_PASSWORD"], "OBUS_SASL_PASSWORD"
    if protocol is not None and protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(
            protocol_key, f"{protocol!r} is unknown", f"use one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    if mechanism is not None and mechanism not in SASL_MECHANISMS:
        raise ConfigError(
            mechanism_key, f"{mechanism!r} is unknown", f"use one of {', '.join(SASL_MECHANISMS)}"
        )
    if password is not None and not username:
        raise ConfigError(
            password_key,
            "a SASL password needs a username",
            "add --sasl-username USER (or set OBUS_SASL_USERNAME)",
        )
    given = ((username, username_key), (mechanism, mechanism_key), (password, password_key))
    sasl_given = [key for value, key in given if value is not None]
    explicit = protocol is not None
    if protocol is None:
        if sasl_given:
            protocol = "SASL_SSL" if cafile else "SASL_PLAINTEXT"
        elif cafile:
            protocol = "SSL"
        else:
            return None
    sasl = protocol.startswith("SASL_")
    if not sasl and sasl_given:
        raise ConfigError(
            sasl_given[0],
            f"SASL options need a SASL_* protocol, but {protocol_key} is {protocol}",
            f"use {protocol_key} SASL_SSL (or SASL_PLAINTEXT), or drop {', '.join(sasl_given)}",
        )
    if sasl and not (username and password):
        missing = "--sasl-username" if not username else "--sasl-password-file"
        why = protocol_key if explicit else sasl_given[0]
        raise ConfigError(
            missing,
            f"{protocol} (asked for by {why}) needs a username and a password",
            "pass --sasl-username USER and --sasl-password-file FILE (or set "
            "OBUS_SASL_USERNAME and OBUS_SASL_PASSWORD_FILE or OBUS_SASL_PASSWORD)",
        )
    if cafile and not protocol.endswith("SSL"):
        raise ConfigError(
            cafile_key,
            f"a CA file is for TLS, but {protocol_key} is {protocol}",
            f"use {protocol_key} SSL or SASL_SSL, or drop {cafile_key}",
        )
    return KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=(mechanism or "SCRAM-SHA-512") if sasl else None,
        username=username if sasl else None,
        password=password if sasl else None,
        ssl_cafile=cafile,
    )


def _orgs(args: argparse.Namespace) -> list[str]:
    if args.mandate:
        from nodes.runtime.files import load_mandate  # noqa: PLC0415

        return [o.org for o in load_mandate(Path(args.mandate))[0].organizations]
    orgs = [o.strip() for o in args.orgs.split(",") if o.strip()]
    if not orgs:
        raise BusError("no organizations: pass --mandate FILE or --orgs un,osce,...")
    return orgs


def _cmd_acls(args: argparse.Namespace, bootstrap: Bootstrap) -> int:
    from bus.kafka.acl import apply_acls, describe_acls  # noqa: PLC0415

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
