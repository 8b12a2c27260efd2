"""``obus demo``: a full local mission (Kafka, six nodes, observers, an auditor), as ``make demo``.

The mission itself is :mod:`nodes.demo.mission`; this module only parses its options.
"""

from __future__ import annotations

import argparse

from nodes.cli.common import add_log_level


def _cmd_demo(args: argparse.Namespace) -> int:
    from nodes.demo.mission import main as demo_main  # noqa: PLC0415 - keep `obus --help` fast

    return demo_main(reports_per_observer=args.reports_per_observer, keep=args.keep)


def add_demo_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``demo`` to the ``obus`` parser."""
    demo = sub.add_parser(
        "demo",
        help="a full local mission: Kafka, six nodes, observers, an auditor (make demo)",
    )
    demo.add_argument("--reports-per-observer", type=int, default=12)
    demo.add_argument("--keep", action="store_true", help="keep var/demo after the run")
    add_log_level(demo, "warning")
    demo.set_defaults(func=_cmd_demo)
