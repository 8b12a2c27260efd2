"""``obus``: the one command-line entry point of observer-bus: the parser and the dispatch.

Each command family registers its commands through its ``add_*_commands`` function
(nodes/cli/node.py, audit.py, kafka.py, trust.py, mandate.py, observer.py, followup.py, demo.py,
export.py)
and takes the options every command shares from nodes/cli/common.py. Only the CLI (and
nodes/demo/mission.py) read the environment and files given on the command line; everything
below it takes explicit configuration objects.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, version

from bus.errors import BusError, TransportError
from bus.kafka.client import BrokerUnreachableError
from nodes.cli.audit import add_audit_commands, add_log_commands
from nodes.cli.common import (
    EXIT_BROKER,
    EXIT_USAGE,
    bootstrap,
    configure_logs,
)
from nodes.cli.dashboard import add_dashboard_commands
from nodes.cli.demo import add_demo_commands
from nodes.cli.export import add_export_commands
from nodes.cli.followup import add_followup_commands
from nodes.cli.kafka import add_acl_commands, add_topics_commands
from nodes.cli.mandate import add_mandate_commands
from nodes.cli.node import add_node_commands
from nodes.cli.observer import add_observer_commands
from nodes.cli.trust import add_keygen_commands, add_org_commands

_EPILOG = textwrap.dedent(
    """\
    Quick start (a full local mission on a real Kafka broker):
      make demo

    Run one organization's node against a broker you run:
      obus node --org un --mandate mandate.bin --db var/un.db --policy deploy/policies/un.toml \\
          --node-key un-node.json   # the sealer (on by default) signs seals with a role NODE key

    Audit everything on the bus (exit 1 names every violation):
      obus audit --mandate mandate.bin --json-out audit.json --html-out audit.html

    Export the log and audit the copy offline; prove one record's inclusion:
      obus log export log.jsonl --mandate mandate.bin
      obus audit --from log.jsonl --mandate mandate.bin --require-witnessed
      obus audit prove --mandate mandate.bin --topic obus.reports.un --partition 0 --offset 7

    Environment:
      OBUS_BOOTSTRAP        Kafka bootstrap servers (default 127.0.0.1:9092); --bootstrap
                            overrides it
      OBUS_CONNECT_TIMEOUT  seconds a one-shot command waits for the brokers (default 15);
                            --connect-timeout overrides it
      OBUS_LOG_JSON         1 forces JSON logs, 0 forces console logs (default: JSON unless a TTY)
      OBUS_ROOT_KEY_PASSPHRASE, OBUS_NODE_KEY_PASSPHRASE
                            passphrases of encrypted root and node key files (else a prompt)

    Exit codes:
      0  ok
      1  verification failure: a violation found, a record or file that does not verify
      2  usage or configuration error: a wrong option, file, key or record (nothing published)
      3  broker unreachable: no Kafka broker answered within the connect timeout
    """
)


def package_version() -> str:
    """The installed distribution's version (``obus --version``)."""
    try:
        return version("observer-bus")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="obus",
        description="observer-bus: signed observer reports on shared Kafka topics, verified "
        "independently by every organization.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"obus {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_node_commands(sub)  # node
    add_audit_commands(sub)  # audit, audit prove
    add_topics_commands(sub)  # topics
    add_keygen_commands(sub)  # keygen
    add_demo_commands(sub)  # demo
    add_mandate_commands(sub)  # mandate draft|sign|combine|verify|show|publish
    add_org_commands(sub)  # org accredit|revoke|enckey
    add_observer_commands(sub)  # observer ..., gateway
    add_followup_commands(sub)  # statement ..., dashboard
    add_dashboard_commands(sub)  # dashboard-user add|list
    add_log_commands(sub)  # log export
    add_acl_commands(sub)  # acls
    add_export_commands(sub)  # export reports
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``obus`` console script."""
    args = build_parser().parse_args(argv)
    # The command line as given, for reports that name it (obus audit's header).
    args.command_line = ["obus", *(sys.argv[1:] if argv is None else argv)]
    configure_logs(args.log_level)
    try:
        code: int = args.func(args)
    except BrokerUnreachableError as exc:
        print(f"obus: error: {exc.message}", file=sys.stderr)
        return EXIT_BROKER
    except TransportError as exc:
        if hasattr(args, "bootstrap"):  # else an HTTP failure (the observer's gateway)
            where = f"the brokers at {bootstrap(args)} failed: "
            print(f"obus: error: {where}{exc.diagnostics()}", file=sys.stderr)
        else:
            print(f"obus: error: {exc.diagnostics()}", file=sys.stderr)
        return EXIT_USAGE
    except BusError as exc:
        print(f"obus: error: {exc.diagnostics()}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # safety net: a path the user gave cannot be written or read
        where = f" {exc.filename}" if exc.filename else ""
        print(f"obus: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code
