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
from typing import TYPE_CHECKING, Any, Final

from rich.console import Console

from bus.attachment import MAX_ATTACHMENT_BYTES
from bus.errors import ConfigError
from bus.topics import Topics
from bus.verify import DEFAULT_MAX_RECORD_BYTES
from nodes.cli.common import add_common_args, add_log_level, bootstrap, security_from_args
from nodes.cli.node import add_ops_args

if TYPE_CHECKING:
    from nodes.observer.device import Home

FAULT_ENV: Final = "OBUS_FAULT_EXIT_AFTER_PUBLISHES"  # crash tests only (nodes/gateway/service.py)
# `obus observer sync` ended with reports or attachments still queued (gateway unreachable):
# not done yet, run it again later; the code `obus statement status` gives a statement not final
# yet. 3 is taken by the broker being unreachable (nodes/cli/common.py).
EXIT_QUEUED: Final = 4


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


async def _gateway_reads(
    url: str, *, recipients: bool
) -> tuple[object | None, tuple[int, int], object | None]:
    """GET /v1/time (with the device times around it) and, when asked, /v1/recipients; None
    for what could not be read (offline)."""
    from nodes.observer.client import GatewayClient, Unreachable  # noqa: PLC0415
    from nodes.observer.device import now_ms  # noqa: PLC0415

    time_doc = keys_doc = None
    sent = received = 0
    async with GatewayClient(url, timeout_s=10, connect_timeout_s=5) as client:
        try:
            sent = now_ms()
            answer = await client.time()
            received = now_ms()
            time_doc = client.json(answer)
            if recipients:
                keys_doc = client.json(await client.recipients())
        except Unreachable as exc:
            print(f"gateway {url}: {exc}")
    return time_doc, (sent, received), keys_doc


def _check_clock(time_doc: object | None, around: tuple[int, int], *, force: bool) -> None:
    """Warn about the device clock, and refuse to sign what the nodes would refuse as
    clock_skew unless --force."""
    from nodes.observer.device import clock_check  # noqa: PLC0415

    if time_doc is None:
        print("clock not checked (gateway not reachable): make sure this device's time is right")
        return
    check = clock_check(time_doc, sent_ms=around[0], received_ms=around[1])
    if check.refused:
        if not force:
            raise ConfigError(
                "clock",
                f"clock_skew: {check.describe()}; the nodes would refuse the report",
                "set this device's clock right (or sign anyway with --force)",
            )
        print(f"WARNING {check.describe()}: signing anyway (--force); expect clock_skew")
    elif abs(check.ahead_ms) > check.max_skew_ms // 2:
        print(f"warning: {check.describe()}")


def _cmd_submit(args: argparse.Namespace) -> int:
    from nodes.observer.device import (  # noqa: PLC0415
        Home,
        now_ms,
        read_encrypted_key,
        recipient_keys,
        submit_file,
    )
    from nodes.observer.outbox import Outbox  # noqa: PLC0415

    home = Home(_home(args))
    config = home.load_config()
    orgs = [o.strip() for o in args.to.split(",")] if args.to else []
    time_doc, around, keys_doc = asyncio.run(_gateway_reads(config.gateway, recipients=bool(orgs)))
    _check_clock(time_doc, around, force=args.force)
    keys = []
    if orgs:
        cache = home.root / "recipients.json"
        if keys_doc is None:
            try:
                keys_doc = json.loads(cache.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    "--to", "the recipients' keys are not known offline",
                    "connect to the gateway once (it serves them), then submit again",
                ) from exc  # fmt: skip
            print(f"recipients' keys from {cache} (gateway not reachable)")
        keys = recipient_keys(keys_doc, home.load_mandate(now_ms=now_ms()), orgs)
        cache.write_text(json.dumps(keys_doc))
    key = read_encrypted_key(home.key, _passphrase(confirm=False))
    outbox = Outbox(home.outbox)
    try:
        for name in args.files:
            entry = submit_file(
                home, outbox, key, Path(name), at_ms=now_ms(), recipients=keys, fixes=args.fixes
            )
            to = f", restricted to {', '.join(orgs)}" if orgs else ""
            print(f"queued {name}: report {entry.report_id} (seq {entry.seq}{to})")
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
    from nodes.observer.delivery import Backoff, Waiting, sync  # noqa: PLC0415
    from nodes.observer.outbox import Outbox  # noqa: PLC0415

    config = home.load_config()
    outbox = Outbox(home.outbox)

    def waiting(w: Waiting) -> None:
        print(
            f"{w.queued} queued; gateway {config.gateway}: {w.error}; retry {w.failures} in"
            f" {w.retry_in_s:.0f} s ({w.elapsed_s:.0f} of {w.budget_s:.0f} s)",
            flush=True,
        )

    async def run() -> int:
        async with GatewayClient(config.gateway) as client:
            result = await sync(
                home,
                outbox,
                client,
                backoff=Backoff(backoff_base, backoff_cap),
                max_seconds=max_seconds,
                max_failures=max_failures,
                progress=None if quiet_offline else waiting,
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
        if result.held:
            parts.append(
                f"- {result.held} held after a refused report: re-sign them (obus observer"
                " resign, or fix the refused one: submit --fixes ID FILE)"
            )
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


def _cmd_resign(args: argparse.Namespace) -> int:
    from nodes.observer.device import (  # noqa: PLC0415
        Home,
        now_ms,
        read_encrypted_key,
        resign_held,
    )
    from nodes.observer.outbox import Outbox  # noqa: PLC0415

    home = Home(_home(args))
    config = home.load_config()
    time_doc, around, _ = asyncio.run(_gateway_reads(config.gateway, recipients=False))
    _check_clock(time_doc, around, force=args.force)
    key = read_encrypted_key(home.key, _passphrase(confirm=False))
    outbox = Outbox(home.outbox)
    try:
        done = resign_held(home, outbox, key, at_ms=now_ms(), refused=args.refused or ())
    finally:
        outbox.close()
    for e in done:
        print(f"re-signed report {e.report_id} at seq {e.seq}")
    print(f"{len(done)} re-signed; deliver with obus observer sync")
    return 0


def _cmd_continue(args: argparse.Namespace) -> int:
    from nodes.observer.client import GatewayClient  # noqa: PLC0415
    from nodes.observer.device import Home, continue_chain, now_ms  # noqa: PLC0415
    from nodes.observer.outbox import Outbox  # noqa: PLC0415

    home = Home(_home(args))
    config = home.load_config()

    async def fetch() -> tuple[object, bytes]:
        async with GatewayClient(config.gateway) as client:
            node = await client.node_accreditation()
            if node.status != 200:
                raise ConfigError("gateway", f"GET /v1/node answered {node.status}", "retry")
            return client.json(await client.head(config.observer_id)), node.body

    doc, node = asyncio.run(fetch())
    outbox = Outbox(home.outbox)
    try:
        head = continue_chain(home, outbox, doc, node, at_ms=now_ms())
    finally:
        outbox.close()
    if head is None:
        print(f"{config.observer_id} has no accepted report yet: the chain starts at seq 1")
    else:
        digest = head.digest.hex()[:16]
        print(
            f"continuing {config.observer_id}'s chain after seq {head.seq} (digest {digest}…),"
            " as the gateway's node key signed it"
        )
    return 0


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
    if args.verify or args.inclusion:
        _archive_notice(home)
    if args.inclusion:
        return _inclusion(home, as_json=args.json)
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


def _archive_notice(home: Home) -> None:
    """Say so (on standard error) when receipts are checked under a mandate that has ended."""
    from nodes.observer.device import now_ms  # noqa: PLC0415
    from nodes.runtime.files import archive_notice, mandate_ended  # noqa: PLC0415

    mandate = home.load_mandate(now_ms=now_ms(), archive=True)
    if mandate_ended(mandate):
        print(f"obus: {archive_notice(mandate)}", file=sys.stderr, flush=True)


def _inclusion(home: Home, *, as_json: bool) -> int:
    from nodes.observer.client import GatewayClient  # noqa: PLC0415
    from nodes.observer.delivery import VERIFIED, check_inclusion  # noqa: PLC0415
    from nodes.observer.device import now_ms  # noqa: PLC0415
    from nodes.observer.outbox import Outbox  # noqa: PLC0415

    config = home.load_config()
    outbox = Outbox(home.outbox, read_only=True)

    async def run() -> list[Any]:
        async with GatewayClient(config.gateway) as client:
            return await check_inclusion(home, outbox, client, at_ms=now_ms())

    try:
        checks = asyncio.run(run())
    finally:
        outbox.close()
    if as_json:
        print(json.dumps([dataclasses.asdict(c) for c in checks], indent=2))
    else:
        for c in checks:
            if c.state == VERIFIED:
                what = f"verified: sealed in epoch {c.epoch}, cosigned by {', '.join(c.orgs)}"
            elif c.reason == "record_not_sealed":
                what = "not sealed yet"
            else:
                what = f"refused: {c.reason} - {c.detail}"
            print(f"seq {c.seq:>5} {c.report_id} {what}")
        n = sum(c.state == VERIFIED for c in checks)
        print(f"{n} of {len(checks)} receipted reports verified in the sealed log")
    refused = [c for c in checks if c.state != VERIFIED and c.reason != "record_not_sealed"]
    return 1 if refused else 0


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
    from nodes.runtime.ops import DEFAULT_GATEWAY_OPS, GatewayOps, parse_listen  # noqa: PLC0415

    listen = None
    if args.ops:
        given = args.ops_listen is not None
        listen = parse_listen(args.ops_listen or DEFAULT_GATEWAY_OPS, explicit=given)
    ops = GatewayOps(listen, bootstrap=config.bootstrap, security=config.security)
    return asyncio.run(run_gateway(config, ops))


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
    p.add_argument(
        "--to", metavar="ORGS",
        help="restricted: readable only by these organizations, e.g. un,osce (HPKE to the keys"
        " the gateway serves)",
    )  # fmt: skip
    p.add_argument(
        "--fixes", metavar="REPORT_ID",
        help="the file corrects this refused report: same report id, signed at the next seq"
        " (its own when nothing came between)",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="sign even when the clock check says "
                   "the nodes would refuse the report as clock_skew")  # fmt: skip
    p.set_defaults(func=_cmd_submit)

    p = with_home(
        osub.add_parser(
            "resign",
            help="re-sign reports held after a refusal (and refused ones named)",
            description="A refused report stops the chain where it was: reports queued after "
            "it are held. Re-sign them at the next positions (same report ids, signed now), "
            "first the refused reports named with --refused (same content: e.g. refused as "
            "clock_skew before the clock was set right).",
        )
    )
    p.add_argument("--refused", action="append", metavar="REPORT_ID", help="re-sign this "
                   "refused report first, at its seq (repeatable)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="sign despite the clock check")
    p.set_defaults(func=_cmd_resign)

    p = with_home(
        osub.add_parser(
            "continue",
            help="on a new device or key: continue the chain from the gateway's signed head",
            description="Once this key is accredited for the same observer id (and the old one "
            "revoked), fetch the observer's accepted chain head from the gateway, check the node "
            "key's signature on it, and sign the next report after it. Only before this outbox "
            "signed anything.",
        )
    )
    p.set_defaults(func=_cmd_continue)

    p = with_home(
        osub.add_parser(
            "sync",
            help="deliver everything queued, oldest first",
            description="Deliver every queued report and attachment to the gateway, oldest "
            "first, retrying with backoff until all is delivered or --max-seconds pass. Exit 0 "
            f"when nothing is left queued, {EXIT_QUEUED} when reports or attachments are still "
            "queued (not done yet: the gateway is unreachable, run sync again later), 2 on a "
            "usage error.",
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
    p.add_argument("--inclusion", action="store_true", help="with --verify: fetch each "
                   "report's proof from the gateway and check it is in the log sealed by k "
                   "organizations, with the mandate file alone")  # fmt: skip
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
    add_ops_args(gw, "127.0.0.1:9465", "gateway")
    gw.set_defaults(func=_cmd_gateway)


__all__ = ["EXIT_QUEUED", "FAULT_ENV", "add_observer_commands"]
