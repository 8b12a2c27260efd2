"""``obus topics`` and ``obus acls``: the broker's topics and access rules for a mandate.

obus topics --mandate mandate.bin              # replication factor min(3, brokers)
obus acls apply --mandate mandate.bin --sasl-username admin --sasl-password-file admin.pw
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from bus.acl import acl_model
from bus.errors import BusError, ConfigError
from bus.kafka.admin import ConfigChange, align_topic_configs, ensure_topics
from bus.topics import Topics, standard_topics
from nodes.cli.common import add_common_args, bootstrap, check_broker, security_from_args


def _orgs(args: argparse.Namespace) -> list[str]:
    if args.mandate:
        from nodes.runtime.files import load_mandate  # noqa: PLC0415

        return [o.org for o in load_mandate(Path(args.mandate))[0].organizations]
    orgs = [o.strip() for o in args.orgs.split(",") if o.strip()]
    if not orgs:
        raise BusError("no organizations: pass --mandate FILE or --orgs un,osce,...")
    return orgs


def replication_factor(asked: int | None, brokers: int, *, force: bool) -> int:
    """The replication factor of new topics: ``asked``, else min(3, brokers).

    Raises:
        ConfigError: more replicas than brokers, fewer than 1, or 1 on a cluster of several
            brokers without ``force`` (one broker's disk would hold the only copy of the log).
    """
    if asked is None:
        return min(3, brokers)
    if not 1 <= asked <= brokers:
        raise ConfigError(
            "--replication-factor",
            f"{asked} does not fit a cluster of {brokers} broker(s)",
            f"use 1..{brokers}, or leave it out for {min(3, brokers)}",
        )
    if asked == 1 and brokers > 1 and not force:
        raise ConfigError(
            "--replication-factor",
            f"1 on a cluster of {brokers} brokers keeps a single copy of every record",
            f"leave it out for {min(3, brokers)}, or add --force to keep one copy",
        )
    return asked


def _cmd_topics(args: argparse.Namespace) -> int:
    specs = standard_topics(Topics(args.topic_prefix), _orgs(args), partitions=args.partitions)
    security = security_from_args(args)
    replication = replication_factor(args.replication_factor, check_broker(args), force=args.force)

    async def go() -> list[ConfigChange]:
        await ensure_topics(bootstrap(args), specs, replication=replication, security=security)
        return await align_topic_configs(bootstrap(args), specs, security=security)

    changes = asyncio.run(go())
    print(f"replication factor of new topics: {replication}")
    for s in specs:
        print(f"{s.name}  partitions={s.partitions}  {dict(s.configs)}")
    for c in changes:
        print(f"changed {c.topic}: {c.name} {c.was} -> {c.now}")
        if c.name == "cleanup.policy" and c.was is not None and "compact" in c.was:
            print(
                f"  {c.topic} was compacted: from now on every record is kept; records the log"
                " cleaner already removed do not come back"
            )
    return 0


def _cmd_acls(args: argparse.Namespace) -> int:
    from bus.kafka.acl import apply_acls, describe_acls  # noqa: PLC0415

    rules = acl_model(Topics(args.topic_prefix), _orgs(args))
    if args.acl_command == "show":
        for r in rules:
            what = f"{r.operation.value:8} {r.resource.value:5} {r.pattern.value:8}"
            print(f"{r.principal:12} {what} {r.name}")
        return 0
    security = security_from_args(args)
    check_broker(args)
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


def add_topics_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``obus topics``."""
    tp = sub.add_parser(
        "topics",
        help="create the bus topics and set their configs (idempotent)",
        description="Create every topic of the design for the mandate's organizations: "
        "<prefix>reports.<org> and <prefix>attachments.<org> (--partitions each), "
        "<prefix>decisions.<org> (one partition), and the shared registry, mandate, "
        "statements and seals topics (one partition each). All use broker "
        "log-append time, keep every record and are never compacted (cleanup.policy=delete). "
        "On a topic that already exists, every one of these configs that differs is set "
        "(e.g. a registry or mandate topic created compacted by an older release) and each "
        "change is printed; partitions and replication are left as they are. A checkpoints "
        "topic of an older release is left alone: no reader uses it any more.",
    )
    tp.add_argument("--mandate", metavar="FILE", help="take the organizations from the mandate")
    tp.add_argument("--orgs", default="", help="or list them: un,osce,eu,nato,csto,sco")
    tp.add_argument(
        "--partitions", type=int, default=3,
        help="partitions of the report and attachment topics (default 3)",
    )  # fmt: skip
    tp.add_argument(
        "--replication-factor", "--replication", type=int, metavar="N",
        help="replicas of each new topic (default: min(3, brokers in the cluster); 1 on a "
        "cluster of several brokers only with --force)",
    )  # fmt: skip
    tp.add_argument("--force", action="store_true", help="allow --replication-factor 1")
    add_common_args(tp)
    tp.set_defaults(func=_cmd_topics)


def add_acl_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
    add_common_args(p)
    p.set_defaults(func=_cmd_acls)
