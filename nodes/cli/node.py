"""``obus node``: run an organization's node (verify, store, quarantine, follow up, seal).

Argument parsing and the environment only: the node itself is built and run by
:mod:`nodes.org_node.process`.

On a mandate that has ended the node starts in archive mode: it consumes what is on the log,
verifies and stores it, and serves its dashboard, but signs and publishes nothing: its follow-up
keeps decisions unpublished (and logs why), and its sealer judges the seals made before the end
and proposes and cosigns none.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import structlog

from bus.attachment import MAX_ATTACHMENT_BYTES, UNREFERENCED_TTL_MS, AttachmentLimits
from bus.crypto import SigningKey
from bus.errors import BusError, ConfigError
from bus.model import Mandate
from bus.policy import Policy
from bus.policy_file import load_policy
from bus.store.quarantine import DEFAULT_QUARANTINE_QUOTA_BYTES
from bus.topics import Topics
from nodes.cli.common import (
    add_common_args,
    add_log_level,
    bootstrap,
    check_broker,
    security_from_args,
)
from nodes.cli.dashboard import add_auth_args, auth_from_args
from nodes.cli.trust import read_decryption_key
from nodes.runtime.files import archive_notice, ended_on, load_mandate, mandate_ended, read_key

log = structlog.get_logger(__name__)


def _cmd_node(args: argparse.Namespace) -> int:
    from nodes.org_node.config import NodeConfig  # noqa: PLC0415 - keep `obus --help` fast

    check_port("--http-port", args.http_port)
    limits = None if args.ingest_only else _attachment_limits(args)
    mandate, _ = load_mandate(Path(args.mandate), archive=True)
    archive = mandate_ended(mandate)
    policy = load_policy(Path(args.policy)) if args.policy else None
    if policy is not None and policy.org != args.org:
        raise BusError(
            f"policy file is for org {policy.org!r}, not {args.org!r}; pass this org's policy"
        )
    if mandate.organization(args.org) is None:
        known = ", ".join(o.org for o in mandate.organizations)
        raise BusError(f"--org {args.org!r} is not part of the mandate; known: {known}")
    node_key = _node_key_for_policy(args, policy)
    if policy is not None:
        policy.check_mandate(mandate)
    config = NodeConfig(
        security=security_from_args(args),
        org=args.org,
        bootstrap=bootstrap(args),
        db_path=Path(args.db),
        mandate=mandate,
        policy=policy,
        topics=Topics(args.topic_prefix),
        node_key=node_key,
        http_port=args.http_port,
        http_host=args.http_host,
        dashboard_auth=None if args.http_port is None else auth_from_args(args),
        verify_workers=args.verify_workers,
        attachments=limits,
        ingest_only=args.ingest_only,
        fetch_min_bytes=args.fetch_min_bytes,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
        quarantine_quota_bytes=args.quarantine_quota_bytes,
        seal=None if args.ingest_only else seal_settings(args, mandate, args.org, archive=archive),
    )
    if args.decryption_key:  # restricted reports sealed to this organization
        keys = tuple(read_decryption_key(Path(f), args.org) for f in args.decryption_key)
        config = dataclasses.replace(config, decryption_keys=keys)
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    if archive:
        log.warning(
            "archive_mode", org=args.org, mandate_id=mandate.mandate_id,
            version=mandate.version, ended=ended_on(mandate), notice=archive_notice(mandate),
        )  # fmt: skip
    from nodes.org_node.process import run_node  # noqa: PLC0415 - keep `obus --help` fast

    ops = node_ops(args)
    check_broker(args)  # once, at start: later outages are waited out (nodes/runtime/backoff)
    return asyncio.run(run_node(config, ops))


def node_ops(args: argparse.Namespace) -> Any:
    """The node's ops server settings (a NodeOps), or None with ``--no-ops`` or
    ``--ingest-only`` (the full node answers for its workers).

    Raises:
        ConfigError: ``--ops-listen`` is not HOST:PORT, or ``--ready-max-lag`` is negative.
    """
    from nodes.org_node.process import NodeOps  # noqa: PLC0415 - keep `obus --help` fast
    from nodes.runtime.ops import DEFAULT_NODE_OPS, parse_listen  # noqa: PLC0415

    if args.ready_max_lag < 0:
        raise ConfigError("--ready-max-lag", f"{args.ready_max_lag} is negative", "pass N >= 0")
    if not args.ops or args.ingest_only:
        return None
    if args.ops_listen is None:
        return NodeOps(parse_listen(DEFAULT_NODE_OPS, explicit=False), args.ready_max_lag)
    return NodeOps(parse_listen(args.ops_listen), args.ready_max_lag)


def add_ops_args(p: argparse.ArgumentParser, default: str, what: str) -> None:
    """--ops-listen and --no-ops of a long-running process (node, gateway)."""
    g = p.add_argument_group(
        "ops",
        f"/healthz (liveness), /readyz (readiness, every check with its reason) and /metrics "
        f"(Prometheus) of the {what}, on their own address apart from everything else it "
        "serves: scrape it without access to any report.",
    )
    g.add_argument(
        "--ops-listen", metavar="HOST:PORT",
        help=f"where the ops server listens (default {default}; port 0 picks a free one). "
        "A named address that is taken stops the start; the default one taken is logged "
        "(ops_port_unavailable) and the process runs without ops",
    )  # fmt: skip
    g.add_argument(
        "--ops", action=argparse.BooleanOptionalAction, default=True,
        help="serve the ops port (default: on)",
    )  # fmt: skip


def seal_settings(
    args: argparse.Namespace, mandate: Mandate, org: str, *, archive: bool = False
) -> Any:
    """The sealer settings of ``obus node``, or None with ``--no-seal`` or when no root mandate
    (the version the bus began under) is at hand: final verdicts are a function of the root,
    so a node judging from another one would disagree with every other reader.

    Raises:
        ConfigError: a seal option out of range, or ``--root-mandate`` of another mandate.
    """
    from nodes.org_node.config import SealSettings  # noqa: PLC0415

    if not args.seal:
        return None
    root = mandate
    if args.root_mandate:
        root, _ = load_mandate(Path(args.root_mandate), archive=True)
        if root.mandate_id != mandate.mandate_id:
            raise ConfigError(
                "--root-mandate",
                f"is mandate {root.mandate_id!r}, the node runs {mandate.mandate_id!r}",
                "pass version 1 of the mandate this node runs",
            )
    if root.version != 1:
        log.warning(
            "sealer_not_started", org=org, reason="no_root_mandate",
            detail=f"the mandate file is version {root.version}; final verdicts are judged from"
            " version 1", fix="pass --root-mandate FILE (version 1 of this mandate)",
        )  # fmt: skip
        return None
    db = Path(args.final_db) if args.final_db else Path(args.db).with_suffix(".final.db")
    return SealSettings(
        root=root,
        db_path=db,
        # After the mandate's end a node signs nothing: it judges the seals made before.
        node_key=read_key(Path(args.node_key)) if args.node_key and not archive else None,
        interval_ms=round(args.seal_interval * 1000),
        tolerance_ms=round(args.seal_tolerance * 1000),
        withdraw_after_ms=(
            None if args.seal_withdraw_after is None else round(args.seal_withdraw_after * 1000)
        ),
    )


def add_seal_args(node: argparse.ArgumentParser) -> None:
    """The sealer options of ``obus node``."""
    g = node.add_argument_group(
        "seals",
        "Read the whole bus, propose and cosign seals on <prefix>seals (with --node-key), and "
        "keep the final verdict of every sealed record in <db stem>.final.db: the verdicts "
        "every honest node and auditor share, whatever order they read the log in.",
    )
    g.add_argument(
        "--seal", action=argparse.BooleanOptionalAction, default=True,
        help="run the sealer (default: on)",
    )  # fmt: skip
    g.add_argument(
        "--seal-interval", type=float, default=5.0, metavar="SECONDS",
        help="propose the next epoch this long after the previous seal's time (default 5); "
        "a silent turn owner is replaced after as long again per organization",
    )  # fmt: skip
    g.add_argument(
        "--seal-tolerance", type=float, default=60.0, metavar="SECONDS",
        help="cosign only seals whose time is within this of this host's clock (default 60)",
    )  # fmt: skip
    g.add_argument(
        "--seal-withdraw-after", type=float, default=None, metavar="SECONDS",
        help="withdraw this node's vote from a seal round not final this long after casting "
        "it (default: six seal intervals; 0: never). Withdrawals let k running organizations "
        "finish an epoch whose votes split while others stay silent; the price: an operator "
        "who hides votes from some nodes for longer than this can fork one epoch, detectably "
        "(seal_fork)",
    )  # fmt: skip
    g.add_argument(
        "--root-mandate", metavar="FILE",
        help="version 1 of the mandate (the root every reader judges from); default: --mandate",
    )  # fmt: skip
    g.add_argument("--final-db", metavar="FILE", help="the final store (<db stem>.final.db)")


def _attachment_limits(args: argparse.Namespace) -> AttachmentLimits | None:
    """The attachment reassembler's limits, or None with --no-attachments."""
    if not args.attachments:
        return None
    if args.max_attachment_bytes < 0:
        raise ConfigError(
            "--max-attachment-bytes", f"{args.max_attachment_bytes} is negative", "pass N >= 0"
        )
    if not args.attachment_wait_hours >= 0:  # also refuses nan
        raise ConfigError(
            "--attachment-wait-hours", f"{args.attachment_wait_hours} is negative", "pass H >= 0"
        )
    try:
        return AttachmentLimits(
            max_bytes=args.max_attachment_bytes,
            unreferenced_ttl_ms=round(args.attachment_wait_hours * 3_600_000),
            incomplete_ttl_ms=round(args.attachment_wait_hours * 3_600_000),
        )
    except (ValueError, OverflowError) as exc:
        raise ConfigError("--attachment-wait-hours", str(exc), "pass a smaller value") from exc


def check_port(flag: str, port: int | None) -> None:
    """Refuse a TCP port outside 0..65535 (None: not given)."""
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(flag, f"{port} is not a TCP port", "pass a port in 0..65535")


def _node_key_for_policy(args: argparse.Namespace, policy: Policy | None) -> SigningKey | None:
    """The node key (--node-key); required when a rule of the policy publishes decisions."""
    if args.node_key:
        return read_key(Path(args.node_key))
    publishing = [r.name for r in policy.rules if r.publish] if policy is not None else []
    if publishing:
        raise ConfigError(
            "--node-key",
            f"rule {publishing[0]} of the policy has publish = true, and published decisions"
            " are signed by the node key",
            "pass --node-key FILE (a key your organization accredited with role NODE),"
            " or set publish = false",
        )
    return None


def add_node_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``node`` to the ``obus`` parser."""
    node = sub.add_parser(
        "node",
        help="run an organization's node: verify, store and quarantine every report",
        description="Subscribe to every obus.reports.* topic, verify each record against the "
        "mandate and the accreditations on obus.registry, store accepted reports in SQLite, "
        "quarantine rejected ones with a reason code, and apply this organization's policy. "
        "Stops cleanly on SIGINT/SIGTERM; restarts resume exactly where the store stopped.",
    )
    node.add_argument("--org", required=True, help="this organization's id, e.g. un")
    node.add_argument("--mandate", required=True, metavar="FILE", help="signed mandate file")
    node.add_argument("--db", required=True, metavar="FILE", help="SQLite store of this node")
    node.add_argument("--policy", metavar="FILE", help="this organization's rules (TOML)")
    node.add_argument(
        "--decryption-key",
        action="append",
        metavar="FILE",
        help="this organization's X25519 key file (obus org enckey): read restricted reports;"
        " an encrypted one takes its passphrase from $OBUS_DECRYPTION_KEY_PASSPHRASE, else the"
        " terminal",
    )
    node.add_argument(
        "--node-key", metavar="FILE", help="node key (role NODE): signs published decisions"
    )
    node.add_argument(
        "--http-port", type=int, metavar="PORT", help="serve the dashboard and API on this port"
    )
    node.add_argument("--http-host", default="127.0.0.1", help="dashboard address (127.0.0.1)")
    node.add_argument(
        "--verify-workers",
        type=int,
        default=0,
        metavar="N",
        help="check each batch's signatures in N worker processes first (same rule, same "
        "verdicts; default 0: all in the node process). Useful up to the number of cores.",
    )
    node.add_argument(
        "--ingest-only",
        action="store_true",
        help="run an extra ingest worker of this organization's node: same --org and --db "
        "(one SQLite file, same host) as the full node, sharing its consumer group and so its "
        "partitions; it only verifies and stores (the full node runs follow-up, dashboard, "
        "sealer and attachments). Each batch commits only if the store still holds what it "
        "was judged against, so workers never store a record twice or judge on stale chains.",
    )
    node.add_argument(
        "--fetch-min-bytes", type=int, default=64 * 1024, metavar="N",
        help="the broker answers the node's fetch once N bytes of reports are ready or "
        "--fetch-max-wait-ms passed (default 65536). Every batch has a fixed cost, so a "
        "steady trickle read record by record costs far more CPU than the same reports in "
        "batches; 1 reads each record the moment it lands",
    )  # fmt: skip
    node.add_argument(
        "--fetch-max-wait-ms", type=int, default=50, metavar="MS",
        help="longest a report waits on the broker to be batched with others (default 50)",
    )  # fmt: skip
    node.add_argument(
        "--quarantine-quota-bytes", type=int, default=DEFAULT_QUARANTINE_QUOTA_BYTES,
        metavar="BYTES",
        help="rejected bytes kept per topic; past it, rejected records keep their reason, size, "
        "SHA-256 and position only, and quarantine_quota_exceeded is logged "
        f"(default {DEFAULT_QUARANTINE_QUOTA_BYTES}; 0 keeps none)",
    )  # fmt: skip
    att = node.add_argument_group(
        "attachments",
        "Reassemble the attachment chunks of <prefix>attachments.* (own consumer group, "
        "<db stem>.attachments.db and <db stem>.attachments/), keep those an accepted report "
        "references, by SHA-256; quarantine the rest with a reason.",
    )
    att.add_argument(
        "--attachments", action=argparse.BooleanOptionalAction, default=True,
        help="run the attachment reassembler (default: on)",
    )  # fmt: skip
    att.add_argument(
        "--max-attachment-bytes", type=int, default=MAX_ATTACHMENT_BYTES, metavar="N",
        help=f"larger attachments are quarantined as oversized (default {MAX_ATTACHMENT_BYTES})",
    )  # fmt: skip
    att.add_argument(
        "--attachment-wait-hours", type=float, default=UNREFERENCED_TTL_MS / 3_600_000,
        metavar="H", help="how long chunks wait for their report or their missing pieces "
        "before they are quarantined (unreferenced, incomplete); default 168 (a week)",
    )  # fmt: skip
    add_auth_args(node)
    add_common_args(node)
    add_seal_args(node)
    add_ops_args(
        node, "127.0.0.1:9464", "node (the full node answers for its --ingest-only workers)"
    )
    node.add_argument(
        "--ready-max-lag", type=int, default=10_000, metavar="N",
        help="/readyz says lagging while more than N report records on the broker are not in "
        "the store yet (default 10000)",
    )  # fmt: skip
    node.set_defaults(func=_cmd_node)

    final = sub.add_parser(
        "final-state",
        help="print where a node's final verdicts stand: epoch, state digest, fingerprint",
        description="Read a node's final store (<db stem>.final.db) and print, as JSON, the "
        "last judged epoch and its state digest (base64), the SHA-256 of the store's canonical "
        "dump (equal at every honest node that judged the same epochs, whatever order it read "
        "the log in), the newest final seals and the final verdicts by status. Compare it with "
        "another node's, or with `obus audit --final-digest`.",
    )
    final.add_argument("--final-db", required=True, metavar="FILE", help="the final store")
    final.add_argument(
        "--dump", action="store_true", help="print the canonical dump instead (JSON lines)"
    )
    add_log_level(final)
    final.set_defaults(func=_cmd_final_state)


def _cmd_final_state(args: argparse.Namespace) -> int:
    import base64  # noqa: PLC0415
    import json  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from bus.store.final import FinalStore  # noqa: PLC0415

    path = Path(args.final_db)
    if not path.exists():
        raise ConfigError("--final-db", f"{path} does not exist", "pass a node's final store")
    store = FinalStore(path, read_only=True)
    try:
        if args.dump:
            for line in store.dump():
                sys.stdout.buffer.write(line)
            return 0
        last = store.last_epoch()
        out = {
            "epoch": 0 if last is None else last[0],
            "state_digest": None if last is None else base64.b64encode(last[1]).decode(),
            "fingerprint": base64.b64encode(store.fingerprint()).decode(),
            "verdicts": store.counts(),
            "seals": store.seals(limit=5),
        }
    finally:
        store.close()
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0
