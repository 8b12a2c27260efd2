"""``obus observer ...`` and ``obus gateway``: argument parsing and the environment, nothing else.

Registered into the one ``obus`` parser by :func:`add_observer_commands` (nodes/cli/main.py).
The passphrase of an observer key comes from ``$OBUS_PASSPHRASE`` or a prompt, never from the
command line (argv is visible to every user of the machine through ``ps``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import getpass
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from rich.console import Console

from bus.attachment import MAX_ATTACHMENT_BYTES
from bus.errors import ConfigError
from bus.topics import Topics
from bus.verify import DEFAULT_MAX_RECORD_BYTES
from nodes.cli.common import add_common_args, add_log_level, bootstrap, security_from_args

if TYPE_CHECKING:
    from nodes.observer.device import Home

FAULT_ENV: Final = "OBUS_FAULT_EXIT_AFTER_PUBLISHES"  # crash tests only (nodes/gateway/service.py)
EXIT_QUEUED: Final = 3  # sync ended with reports still queued (gateway unreachable)


def _home(args: argparse.Namespace) -> Path:
    from nodes.observer.device import HOME_ENV  # noqa: PLC0415 - keep `obus --help` fast

    raw = args.home or os.environ.get(HOME_ENV) or str(Path.home() / ".obus" / "observer")
    return Path(raw)


def _passphrase(*, confirm: bool) -> str:
    from nodes.observer.device import PASSPHRASE_ENV  # noqa: PLC0415

    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env
    if not sys.stdin.isatty():
        raise ConfigError(
            "passphrase", "no terminal to prompt on", f"set {PASSPHRASE_ENV} in the environment"
        )
    first = getpass.getpass("Key passphrase: ")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise ConfigError("passphrase", "the two entries differ", "type the same passphrase twice")
    return first


def _iso(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def check_gateway_url(flag: str, url: str) -> None:
    """Refuse a gateway address that is not ``http(s)://host[:port][/path]``."""
    from urllib.parse import urlsplit  # noqa: PLC0415

    fix = "pass your organization's gateway as http(s)://host[:port], e.g. https://gw.un.example"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number in 0..65535
    except ValueError as exc:
        raise ConfigError(flag, f"{url!r} is not a URL: {exc}", fix) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(flag, f"{url!r} is not an http(s)://host[:port] URL", fix)
    if port == 0 or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(flag, f"{url!r} is not an http(s)://host[:port] URL", fix)


def _cmd_init(args: argparse.Namespace) -> int:
    from nodes.observer.device import Home, init_observer, now_ms  # noqa: PLC0415

    check_gateway_url("--gateway", args.gateway)
    home = Home(_home(args))
    try:
        mandate = Path(args.mandate).read_bytes()
    except OSError as exc:
        raise ConfigError("mandate", f"cannot read {args.mandate}", "pass --mandate FILE") from exc
    key = init_observer(
        home,
        observer_id=args.observer_id,
        org=args.org,
        mandate_envelope=mandate,
        gateway=args.gateway,
        passphrase=_passphrase(confirm=True),
        at_ms=now_ms(),
    )
    print(f"observer {args.observer_id} ({args.org}) initialised in {home.root}")
    print(f"key id {key.key_id.hex()}, encrypted in {home.key}")
    print(f"send {home.request} to {args.org} to be accredited")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from nodes.observer.device import Home, now_ms, read_encrypted_key, submit_file  # noqa: PLC0415
    from nodes.observer.outbox import Outbox  # noqa: PLC0415

    home = Home(_home(args))
    home.load_config()
    key = read_encrypted_key(home.key, _passphrase(confirm=False))
    outbox = Outbox(home.outbox)
    try:
        for name in args.files:
            entry = submit_file(home, outbox, key, Path(name), at_ms=now_ms())
            print(f"queued {name}: report {entry.report_id} (seq {entry.seq})")
    finally:
        outbox.close()
    if not args.no_deliver:  # queued is success: delivery goes on with `sync`
        _sync(home, max_seconds=10.0, max_failures=1, quiet_offline=True)
    return 0


def _sync(
    home: Home, *, max_seconds: float, max_failures: int | None, quiet_offline: bool = False,
    backoff_base: float = 0.5, backoff_cap: float = 60.0,
) -> int:  # fmt: skip
    from nodes.observer.client import GatewayClient  # noqa: PLC0415
    from nodes.observer.delivery import Backoff, sync  # noqa: PLC0415
    from nodes.observer.outbox import Outbox  # noqa: PLC0415

    config = home.load_config()
    outbox = Outbox(home.outbox)

    async def run() -> int:
        async with GatewayClient(config.gateway) as client:
            result = await sync(
                home,
                outbox,
                client,
                backoff=Backoff(backoff_base, backoff_cap),
                max_seconds=max_seconds,
                max_failures=max_failures,
            )
        parts = [f"delivered {result.delivered}"]
        if result.duplicates:
            parts.append(f"({result.duplicates} already at the gateway)")
        parts.append(f"rejected {result.rejected}, still queued {result.remaining}")
        if result.uploaded or result.refused_uploads or result.remaining_uploads:
            parts.append(
                f"attachments: uploaded {result.uploaded} ({_mib(result.uploaded_bytes)}),"
                f" refused {result.refused_uploads}, still to upload {result.remaining_uploads}"
            )
        if result.bad_receipts:
            parts.append(f"- {result.bad_receipts} receipts DO NOT VERIFY")
        if result.remaining and quiet_offline:
            print(f"gateway {config.gateway} not reachable; {result.remaining} queued for sync")
        else:
            print(", ".join(parts))
        return EXIT_QUEUED if result.remaining or result.remaining_uploads else 0

    try:
        return asyncio.run(run())
    finally:
        outbox.close()


def _cmd_sync(args: argparse.Namespace) -> int:
    from nodes.observer.device import Home  # noqa: PLC0415

    return _sync(
        Home(_home(args)),
        max_seconds=args.max_seconds,
        max_failures=None,
        backoff_base=args.backoff_base,
        backoff_cap=args.backoff_cap,
    )


def _cmd_status(args: argparse.Namespace) -> int:
    from nodes.observer.device import Home, status  # noqa: PLC0415
    from nodes.observer.outbox import Outbox  # noqa: PLC0415

    home = Home(_home(args))
    home.load_config()
    outbox = Outbox(home.outbox)
    try:
        doc = status(home, outbox)
    finally:
        outbox.close()
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    out = Console(highlight=False, soft_wrap=True)
    c = doc["counts"]
    out.print(f"observer [bold]{doc['observer_id']}[/] ({doc['org']}, mandate {doc['mandate_id']})")
    out.print(f"gateway  {doc['gateway']}")
    head = doc["head"]
    chain = "empty" if head is None else f"seq {head['seq']}, digest {head['digest'][:16]}…"
    out.print(f"chain    {chain}")
    out.print(f"queued {c['queued']}   delivered {c['delivered']}   rejected {c['rejected']}")
    for q in doc["queued"][:10]:
        err = f" - last error: {q['last_error']}" if q["last_error"] else ""
        out.print(
            f"  queued   seq {q['seq']:>5} {q['report_id']} {q['source']} since"
            f" {_iso(q['queued_at_ms'])}, {q['attempts']} attempts{err}"
        )
    if len(doc["queued"]) > 10:
        out.print(f"  … and {len(doc['queued']) - 10} more queued")
    for r in doc["rejected"]:
        out.print(
            f"  [red]rejected[/] seq {r['seq']:>5} {r['report_id']} {r['source']}:"
            f" HTTP {r['http_status']} {r['reason']} - {r['detail']}"
        )
    a = doc["attachments"]["counts"]
    if any(a.values()):
        out.print(
            f"attachments  to upload {a['pending']}   uploaded {a['uploaded']}   refused"
            f" {a['refused']}   dropped {a['dropped']}   by reference only {a['external']}"
        )
    for u in doc["attachments"]["open"]:
        what = f"{u['name'] or u['sha256'][:16]} ({_mib(u['size'])}, {u['media_type']})"
        if u["state"] == "pending":
            err = f" - last error: {u['last_error']}" if u["last_error"] else ""
            out.print(f"  to upload seq {u['seq']:>5} {what}, {u['attempts']} attempts{err}")
        else:
            out.print(f"  [red]refused[/]  seq {u['seq']:>5} {what}: {u['reason']} - {u['detail']}")
    return 0


def _cmd_receipts(args: argparse.Namespace) -> int:
    from nodes.observer.device import Home, check_receipts, now_ms  # noqa: PLC0415
    from nodes.observer.outbox import DELIVERED, Outbox  # noqa: PLC0415

    home = Home(_home(args))
    home.load_config()
    outbox = Outbox(home.outbox)
    try:
        if not args.verify:
            for e in outbox.entries(DELIVERED):
                print(f"seq {e.seq:>5} {e.report_id} receipt {len(e.receipt or b'')} bytes")
            return 0
        checks = check_receipts(home, outbox, at_ms=now_ms())
    finally:
        outbox.close()
    bad = [c for c in checks if not c.ok]
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in checks], indent=2))
    else:
        for c in checks:
            where = f"{c.topic}[{c.partition}]@{c.offset}" if c.ok else f"{c.reason}: {c.detail}"
            print(f"{'ok  ' if c.ok else 'FAIL'} seq {c.seq:>5} {c.report_id} {where}")
        print(f"{len(checks) - len(bad)} of {len(checks)} receipts verify")
    return 1 if bad else 0


def _cmd_gateway(args: argparse.Namespace) -> int:
    from nodes.gateway.http import run_gateway  # noqa: PLC0415
    from nodes.gateway.service import GatewayConfig  # noqa: PLC0415
    from nodes.runtime.files import load_mandate, read_key  # noqa: PLC0415

    mandate, _ = load_mandate(Path(args.mandate))
    if mandate.organization(args.org) is None:
        known = ", ".join(o.org for o in mandate.organizations)
        raise ConfigError("org", f"{args.org!r} is not part of the mandate", f"one of {known}")
    from bus.attachment import AttachmentLimits  # noqa: PLC0415

    if args.max_attachment_bytes < 0:
        raise ConfigError(
            "--max-attachment-bytes", f"{args.max_attachment_bytes} is negative", "pass N >= 0"
        )
    if not 0 <= args.port <= 65535:
        raise ConfigError("--port", f"{args.port} is not a TCP port", "pass a port in 0..65535")

    if not args.final_db:
        raise ConfigError(
            "--final-db",
            "is missing: the gateway judges with its node's final trust state",
            "pass the final store of this organization's node (obus node --final-db FILE)",
        )
    final_db = Path(args.final_db)
    if not final_db.is_file():
        raise ConfigError(
            "--final-db",
            f"{final_db} is not a file",
            "start the organization's node (with its sealer) first, and pass its final store",
        )
    root = None
    if args.root_mandate:
        root, _ = load_mandate(Path(args.root_mandate), archive=True)
    fault = os.environ.get(FAULT_ENV)
    config = GatewayConfig(
        org=args.org,
        bootstrap=bootstrap(args),
        db_path=Path(args.db),
        mandate=mandate,
        node_key=read_key(Path(args.node_key)),
        topics=Topics(args.topic_prefix),
        final_db=final_db,
        root=root,
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        rate_per_s=args.rate,
        burst=args.burst,
        exit_after_publishes=int(fault) if fault else None,
        attachments=AttachmentLimits(max_bytes=args.max_attachment_bytes),
        security=security_from_args(args),
        tls_cert=None if args.tls_cert is None else Path(args.tls_cert),
        tls_key=None if args.tls_key is None else Path(args.tls_key),
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        max_connections=args.max_connections,
    )
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    return asyncio.run(run_gateway(config))


def add_observer_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``observer`` and ``gateway`` to the ``obus`` sub-command parser."""
    obs = sub.add_parser(
        "observer",
        help="the field observer's client: init, submit, sync, status, receipts",
        description="Write reports offline, sign them on this device, queue them in a durable "
        "outbox and deliver them exactly once to your organization's gateway.",
    )
    osub = obs.add_subparsers(dest="observer_command", required=True, metavar="COMMAND")

    def with_home(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--home", metavar="DIR", help="observer home (default $OBUS_OBSERVER_HOME "
                       "or ~/.obus/observer)")  # fmt: skip
        add_log_level(p, "warning")
        return p

    p = with_home(osub.add_parser("init", help="new key (encrypted) and accreditation request"))
    p.add_argument("--observer-id", required=True, help="your observer id, e.g. un-obs-7")
    p.add_argument("--org", required=True, help="your organization, e.g. un")
    p.add_argument("--mandate", required=True, metavar="FILE", help="signed mandate file")
    p.add_argument("--gateway", required=True, metavar="URL", help="your organization's gateway")
    p.set_defaults(func=_cmd_init)

    p = with_home(osub.add_parser("submit", help="validate, sign and queue report files"))
    p.add_argument("files", nargs="+", metavar="FILE", help="report file(s), YAML or JSON")
    p.add_argument("--no-deliver", action="store_true", help="queue only; deliver with sync")
    p.set_defaults(func=_cmd_submit)

    p = with_home(
        osub.add_parser(
            "sync",
            help="deliver everything queued, oldest first",
            description="Deliver every queued report and attachment to the gateway, oldest "
            "first, retrying with backoff until all is delivered or --max-seconds pass. Exit 0 "
            f"when nothing is left queued, {EXIT_QUEUED} when reports or attachments are still "
            "queued (gateway unreachable: run sync again later), 2 on a usage error.",
        )
    )
    p.add_argument("--max-seconds", type=float, default=600.0, help="give up after (default 600)")
    p.add_argument("--backoff-base", type=float, default=0.5, help="first retry bound, seconds")
    p.add_argument("--backoff-cap", type=float, default=60.0, help="longest retry wait, seconds")
    p.set_defaults(func=_cmd_sync)

    p = with_home(osub.add_parser("status", help="queued, delivered and rejected reports"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_status)

    p = with_home(osub.add_parser("receipts", help="list or verify the gateway's receipts"))
    p.add_argument("--verify", action="store_true", help="check every receipt's signature")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_receipts)

    gw = sub.add_parser(
        "gateway",
        help="run an organization's ingest gateway for its observers (HTTP or HTTPS)",
        description="POST /v1/reports: verify the envelope (this organization's accredited "
        "observers, within the mandate), check the observer's chain, publish exactly once "
        "(idempotent producer, acks=all) and answer with a receipt signed by the node key. "
        "PUT /v1/attachments/<sha256>: publish the bytes of an attachment a published report "
        "references, in chunks on <prefix>attachments.<org>.",
    )
    gw.add_argument("--org", required=True, help="this organization's id")
    gw.add_argument("--mandate", required=True, metavar="FILE", help="signed mandate file")
    gw.add_argument("--node-key", required=True, metavar="FILE", help="node key (obus keygen), "
                    "accredited by the organization with role NODE")  # fmt: skip
    gw.add_argument("--db", required=True, metavar="FILE", help="the gateway's SQLite state")
    gw.add_argument(
        "--final-db", metavar="FILE",
        help="the final store of this organization's node (obus node --final-db; by default"
        " <node db stem>.final.db): the gateway judges with its final trust state and publishes"
        " nothing before the first final seal (503 not_sealed_yet)",
    )  # fmt: skip
    gw.add_argument(
        "--root-mandate", metavar="FILE",
        help="version 1 of the mandate (the root the final trust state is judged from);"
        " default: --mandate",
    )  # fmt: skip
    gw.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    gw.add_argument("--port", type=int, default=8480, help="listen port (default 8480)")
    gw.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_RECORD_BYTES)
    gw.add_argument(
        "--max-attachment-bytes", type=int, default=MAX_ATTACHMENT_BYTES, metavar="N",
        help=f"largest attachment accepted (default {MAX_ATTACHMENT_BYTES}, 32 MiB)",
    )  # fmt: skip
    gw.add_argument("--rate", type=float, default=10.0, help="reports/s per observer")
    gw.add_argument("--burst", type=int, default=500, help="burst per observer")
    gw.add_argument(
        "--header-timeout", type=float, default=20.0, metavar="SECONDS",
        help="a connection that has not sent a request's headers this long after opening (or"
        " after its previous answer) is closed (default 20)",
    )  # fmt: skip
    gw.add_argument(
        "--body-timeout", type=float, default=30.0, metavar="SECONDS",
        help="a request body that stops arriving for this long is dropped (408; default 30)",
    )  # fmt: skip
    gw.add_argument(
        "--max-connections", type=int, default=16_384, metavar="N",
        help="open connections served at once; beyond them a connection is answered 503 with"
        " Retry-After and closed (default 16384, lowered to fit the open-files limit)",
    )  # fmt: skip
    gw.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate"
                    " (chain, leaf first); needs --tls-key")  # fmt: skip
    gw.add_argument("--tls-key", metavar="FILE", help="the certificate's unencrypted PEM private"
                    " key")  # fmt: skip
    add_common_args(gw)
    gw.set_defaults(func=_cmd_gateway)


__all__ = ["EXIT_QUEUED", "FAULT_ENV", "add_observer_commands"]
