"""What every command family of ``obus`` shares: bootstrap servers, topic prefix, broker
security options, the log level, and the few file and publishing helpers several families use.

Each command family (nodes/cli/node.py, audit.py, kafka.py, trust.py, mandate.py, observer.py,
followup.py, demo.py) registers its commands on the one parser of nodes/cli/main.py and takes its
shared options and helpers from here.

Passwords never go on the command line (other users can read it in ``ps``): they come from a
file (``--sasl-password-file``, or ``OBUS_SASL_PASSWORD_FILE``) or from ``OBUS_SASL_PASSWORD``.

    obus node --org un ... --security-protocol SASL_SSL --sasl-username un \\
        --sasl-password-file /run/secrets/un_password --ssl-cafile ca.crt
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Final

from bus.errors import ConfigError
from bus.kafka.admin import ensure_topics
from bus.kafka.client import (
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    KafkaSecurity,
    kafka_errors,
    probe_brokers,
    reliable_producer,
)
from bus.model import Mandate
from bus.topics import Topics, standard_topics
from nodes.runtime import logs
from nodes.runtime.files import archive_notice, load_mandate, mandate_ended

DEFAULT_BOOTSTRAP: Final = "127.0.0.1:9092"
DEFAULT_CONNECT_TIMEOUT_S: Final = 15.0

# Exit codes of every ``obus`` command (documented in ``obus --help`` and the README).
EXIT_OK: Final = 0
EXIT_VERIFICATION: Final = 1  # something was judged and failed: a violation, a refusal
EXIT_USAGE: Final = 2  # usage or configuration error: wrong option, file, key or record
EXIT_BROKER: Final = 3  # the Kafka brokers could not be reached (or failed) in the time given


# ---------------------------------------------------------------------------------------------
# Broker options


def bootstrap(args: argparse.Namespace) -> str:
    """The Kafka bootstrap servers: ``--bootstrap``, else ``$OBUS_BOOTSTRAP``, else the default."""
    return str(args.bootstrap or os.environ.get("OBUS_BOOTSTRAP") or DEFAULT_BOOTSTRAP)


def connect_timeout_s(args: argparse.Namespace) -> float:
    """How long a one-shot command waits for the brokers: ``--connect-timeout``, else
    ``$OBUS_CONNECT_TIMEOUT``, else 15 s.

    Raises:
        ConfigError: the value is not a positive number of seconds.
    """
    key, text = "--connect-timeout", getattr(args, "connect_timeout", None)
    if text is None:
        key, text = "OBUS_CONNECT_TIMEOUT", os.environ.get("OBUS_CONNECT_TIMEOUT")
    if text is None:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:  # an hour bounds a typo, not a use
        raise ConfigError(key, f"{text!r} is not a number of seconds", "write e.g. 15 or 2.5")
    return value


def check_broker(args: argparse.Namespace) -> int:
    """:func:`probe_brokers` with the command's bootstrap, security and connect timeout; the
    number of brokers. Called before a one-shot command signs or publishes anything."""
    return asyncio.run(
        probe_brokers(bootstrap(args), security_from_args(args), connect_timeout_s(args))
    )


def add_common_args(p: argparse.ArgumentParser) -> None:
    """--bootstrap, --connect-timeout, --topic-prefix, --log-level and the broker security
    options."""
    p.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        help=f"Kafka bootstrap servers (default: $OBUS_BOOTSTRAP or {DEFAULT_BOOTSTRAP})",
    )
    p.add_argument(
        "--connect-timeout",
        metavar="SECONDS",
        help="how long a one-shot command waits for the brokers before it gives up with exit 3"
        f" (default: $OBUS_CONNECT_TIMEOUT or {DEFAULT_CONNECT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--topic-prefix", default="obus.", metavar="PREFIX", help="topic prefix (default obus.)"
    )
    add_log_level(p)
    add_security_args(p)


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


# ---------------------------------------------------------------------------------------------
# Log level


def add_log_level(p: argparse.ArgumentParser, default: str = "info") -> None:
    """--log-level, with the same choices on every command (:data:`nodes.runtime.logs.LEVELS`)."""
    p.add_argument("--log-level", default=default, choices=logs.LEVELS)


def configure_logs(level: str) -> None:
    """Configure logging at ``level``; ``$OBUS_LOG_JSON`` 1 forces JSON, 0 the console format
    (default: JSON unless standard error is a terminal)."""
    json_env = os.environ.get("OBUS_LOG_JSON")
    logs.configure(json=None if json_env is None else json_env == "1", level=level)


# ---------------------------------------------------------------------------------------------
# Files and publishing


def now_ms() -> int:
    """The wall clock in Unix milliseconds."""
    return time.time_ns() // 1_000_000


def read_only_mandate(path: str) -> tuple[Mandate, bytes]:
    """The mandate file of a command that signs and publishes nothing (archive mode: accepted
    after the mandate's end, saying so in one line on standard error).

    Raises:
        ConfigError: the file is missing or does not verify.
    """
    mandate, raw = load_mandate(Path(path), archive=True)
    if mandate_ended(mandate):
        print(f"obus: {archive_notice(mandate)}", file=sys.stderr, flush=True)
    return mandate, raw


def read_file(path: str, what: str) -> bytes:
    """The bytes of a file given on the command line (ConfigError naming ``what`` otherwise)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(what, f"cannot read {path}: {exc.strerror}", f"check {what}") from exc


def write_file(path: str, data: bytes, what: str, flag: str = "--out") -> None:
    """Write ``data`` to ``path`` (parents created) and say so; ConfigError naming ``flag``."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    except OSError as exc:
        raise ConfigError(
            flag, f"cannot write {path}: {exc.strerror or exc}", "pick a writable path"
        ) from exc
    print(f"wrote {what} {p}")


async def publish(
    bootstrap: str, topic: str, value: bytes, *, security: KafkaSecurity | None = None
) -> tuple[int, int]:
    """Publish one record, without a key, with the idempotent acks=all producer; returns
    (partition, offset).

    Raises:
        TransportError: the broker refused or could not be reached.
    """
    producer = reliable_producer(bootstrap, security=security)
    try:
        with kafka_errors(f"publishing to {topic}"):
            await producer.start()
            md = await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()
    return md.partition, md.offset


async def ensure_topic(
    bootstrap: str, topics: Topics, name: str, security: KafkaSecurity | None
) -> None:
    """Create the shared topic ``name`` as ``obus topics`` would, unless it exists."""
    specs = [s for s in standard_topics(topics, []) if s.name == name]
    await ensure_topics(bootstrap, specs, security=security)
