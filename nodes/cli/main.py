"""``obus``: the one command-line entry point of observer-bus.

Only this module (and nodes/demo/mission.py) read the environment and files given on the command line;
everything below it takes explicit configuration objects.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import textwrap
from pathlib import Path

from bus.attachment import MAX_ATTACHMENT_BYTES, UNREFERENCED_TTL_MS, AttachmentLimits
from bus.crypto import SigningKey
from bus.errors import BusError, ConfigError
from bus.policy import Policy
from bus.policy_file import load_policy
from bus.topics import Topics
from nodes.runtime import logs

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

_EPILOG = textwrap.dedent(
    """\
    Quick start (a full local mission on a real Kafka broker):
      make demo

    Run one organization's node against a broker you run:
      obus node --org un --mandate mandate.bin --db var/un.db --policy deploy/policies/un.toml \\
          --node-key un-node.json   # the witness (on by default) signs with a role NODE key

    Audit everything on the bus (exit 1 names every violation):
      obus audit --mandate mandate.bin --json-out audit.json --html-out audit.html

    Export the log and audit the copy offline; prove one record's inclusion:
      obus log export log.jsonl --mandate mandate.bin
      obus audit --from log.jsonl --mandate mandate.bin --require-witnessed
      obus audit prove --mandate mandate.bin --topic obus.reports.un --partition 0 --offset 7

    Environment:
      OBUS_BOOTSTRAP   Kafka bootstrap servers (default 127.0.0.1:9092); --bootstrap overrides it
      OBUS_LOG_JSON    1 forces JSON logs, 0 forces console logs (default: JSON unless a TTY)
    """
)


def _bootstrap(args: argparse.Namespace) -> str:
    return str(args.bootstrap or os.environ.get("OBUS_BOOTSTRAP") or DEFAULT_BOOTSTRAP)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        help=f"Kafka bootstrap servers (default: $OBUS_BOOTSTRAP or {DEFAULT_BOOTSTRAP})",
    )
    p.add_argument(
        "--topic-prefix", default="obus.", metavar="PREFIX", help="topic prefix (default obus.)"
    )
    p.add_argument("--log-level", default="info", choices=logs.LEVELS)
    from nodes.cli.kafka import add_security_args  # noqa: PLC0415 - issue 8: SASL/TLS

    add_security_args(p)


def _cmd_node(args: argparse.Namespace) -> int:
    from nodes.org_node.config import NodeConfig  # noqa: PLC0415
    from nodes.runtime.files import load_mandate  # noqa: PLC0415 - keep `obus --help` fast

    check_port("--http-port", args.http_port)
    limits = None if args.ingest_only else _attachment_limits(args)
    mandate, _ = load_mandate(Path(args.mandate))
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
    from nodes.cli.kafka import security_from_args  # noqa: PLC0415

    config = NodeConfig(
        security=security_from_args(args),
        org=args.org,
        bootstrap=_bootstrap(args),
        db_path=Path(args.db),
        mandate=mandate,
        policy=policy,
        topics=Topics(args.topic_prefix),
        node_key=node_key,
        http_port=args.http_port,
        http_host=args.http_host,
        verify_workers=args.verify_workers,
        attachments=limits,
        ingest_only=args.ingest_only,
        fetch_min_bytes=args.fetch_min_bytes,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
    )
    if args.decryption_key:  # restricted reports sealed to this organization (issue 4)
        import dataclasses  # noqa: PLC0415

        from nodes.cli.trust import read_decryption_key  # noqa: PLC0415

        keys = tuple(read_decryption_key(Path(f), args.org) for f in args.decryption_key)
        config = dataclasses.replace(config, decryption_keys=keys)
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    if args.ingest_only:  # an extra worker: the full node runs the witness and follow-up
        from nodes.org_node.process import run_node  # noqa: PLC0415

        return asyncio.run(run_node(config))
    from nodes.cli.audit import run_with_witness  # noqa: PLC0415 - issue 5: the witness

    return asyncio.run(run_with_witness(args, config))


def _attachment_limits(args: argparse.Namespace) -> AttachmentLimits | None:
    """The attachment reassembler's limits (issue 3), or None with --no-attachments."""
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
    from nodes.runtime.files import read_key  # noqa: PLC0415

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


def _cmd_audit(args: argparse.Namespace) -> int:
    from nodes.cli.audit import cmd_audit  # noqa: PLC0415 - live or --from an export

    return cmd_audit(args, _bootstrap)


def _cmd_topics(args: argparse.Namespace) -> int:
    from bus.kafka.admin import ensure_topics  # noqa: PLC0415
    from bus.topics import standard_topics  # noqa: PLC0415

    orgs = [o.strip() for o in args.orgs.split(",") if o.strip()]
    if args.mandate:
        from nodes.runtime.files import load_mandate  # noqa: PLC0415

        orgs = [o.org for o in load_mandate(Path(args.mandate))[0].organizations]
    if not orgs:
        raise BusError("no organizations: pass --mandate FILE or --orgs un,osce,...")
    specs = standard_topics(Topics(args.topic_prefix), orgs, partitions=args.partitions)
    from nodes.cli.kafka import security_from_args  # noqa: PLC0415

    security = security_from_args(args)
    asyncio.run(
        ensure_topics(_bootstrap(args), specs, replication=args.replication, security=security)
    )
    for s in specs:
        print(f"{s.name}  partitions={s.partitions}  {dict(s.configs)}")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from nodes.runtime.files import write_key  # noqa: PLC0415

    key = SigningKey.generate()
    try:
        write_key(Path(args.path), key)
    except OSError as exc:
        raise ConfigError(
            "PATH", f"cannot write {args.path}: {exc.strerror}", "pick a writable path"
        ) from exc
    print(f"wrote {args.path} (key id {key.key_id.hex()})")
    print(f"public key {key.public_key.hex()}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from nodes.demo.mission import main as demo_main  # noqa: PLC0415

    return demo_main(reports_per_observer=args.reports_per_observer, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="obus",
        description="observer-bus: signed observer reports on shared Kafka topics, verified "
        "independently by every organization.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
        help="this organization's X25519 key file (obus org enckey): read restricted reports",
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
        "witness and attachments). Each batch commits only if the store still holds what it "
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
    _common(node)
    node.set_defaults(func=_cmd_node)

    aud = sub.add_parser(
        "audit",
        help="replay every topic (or an export file) and verify everything",
        description="Replays the mandate, registry, checkpoints and every obus.reports.* topic "
        "with its own consumer (no group, nothing committed), or reads an export file "
        "(--from), and re-verifies every signature, accreditation, revocation, chain link and "
        "checkpoint (Merkle roots recomputed from the records, split views, witness quorum); "
        "prints a summary and exits 1 naming every violation.",
    )
    aud.add_argument(
        "--mandate", metavar="FILE", help="signed mandate file (the trust root; required live)"
    )
    aud.add_argument("--json-out", metavar="FILE", help="also write the result as JSON")
    _common(aud)
    aud.set_defaults(func=_cmd_audit)

    tp = sub.add_parser(
        "topics",
        help="create the bus topics (idempotent)",
        description="Create every topic of the design for the mandate's organizations: "
        "<prefix>reports.<org> and <prefix>attachments.<org> (--partitions each), "
        "<prefix>decisions.<org> (one partition), and the shared registry and mandate "
        "(compacted), checkpoints and statements topics (one partition each). All use broker "
        "log-append time and keep every record. Existing topics are left as they are.",
    )
    tp.add_argument("--mandate", metavar="FILE", help="take the organizations from the mandate")
    tp.add_argument("--orgs", default="", help="or list them: un,osce,eu,nato,csto,sco")
    tp.add_argument(
        "--partitions", type=int, default=3,
        help="partitions of the report and attachment topics (default 3)",
    )  # fmt: skip
    tp.add_argument("--replication", type=int, default=1, help="replication factor (3 in prod)")
    _common(tp)
    tp.set_defaults(func=_cmd_topics)

    kg = sub.add_parser("keygen", help="generate an Ed25519 key file (mode 0600)")
    kg.add_argument("path", help="where to write the key file (must not exist)")
    kg.add_argument("--log-level", default="info", choices=logs.LEVELS)
    kg.set_defaults(func=_cmd_keygen)

    demo = sub.add_parser(
        "demo",
        help="a full local mission: Kafka, six nodes, observers, an auditor (make demo)",
    )
    demo.add_argument("--reports-per-observer", type=int, default=12)
    demo.add_argument("--keep", action="store_true", help="keep var/demo after the run")
    demo.add_argument("--log-level", default="warning", choices=logs.LEVELS)
    demo.set_defaults(func=_cmd_demo)

    from nodes.cli.trust import add_trust_commands  # noqa: PLC0415 - issue 4: mandate, org

    add_trust_commands(sub, _common, _bootstrap)

    from nodes.cli.observer import add_commands  # noqa: PLC0415 - issue 3: observer, gateway

    add_commands(sub, _common, _bootstrap)

    from nodes.cli.followup import add_followup_commands  # noqa: PLC0415 - issue 6

    add_followup_commands(sub, _common, _bootstrap)

    from nodes.cli.audit import add_witness_commands  # noqa: PLC0415 - issue 5

    add_witness_commands(sub, _common, _bootstrap)

    from nodes.cli.kafka import add_acl_commands  # noqa: PLC0415 - issue 8: broker ACLs

    add_acl_commands(sub, _common, _bootstrap)
    _same_log_levels(parser)
    return parser


def _same_log_levels(parser: argparse.ArgumentParser) -> None:
    """Give every --log-level of every (sub-)command the same choices (logs.LEVELS)."""
    for action in parser._actions:
        if "--log-level" in action.option_strings:
            action.choices = logs.LEVELS
        if isinstance(action, argparse._SubParsersAction):
            for child in {id(c): c for c in action.choices.values()}.values():
                _same_log_levels(child)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``obus`` console script."""
    args = build_parser().parse_args(argv)
    json_env = os.environ.get("OBUS_LOG_JSON")
    logs.configure(json=None if json_env is None else json_env == "1", level=args.log_level)
    try:
        code: int = args.func(args)
    except BusError as exc:
        print(f"obus: error: {exc.diagnostics()}", file=sys.stderr)
        return 2
    except OSError as exc:  # safety net: a path the user gave cannot be written or read
        where = f" {exc.filename}" if exc.filename else ""
        print(f"obus: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
