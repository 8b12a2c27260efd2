"""``obus demo``: a full local mission (Kafka, six nodes, observers, an auditor), as ``make demo``.

The mission itself is :mod:`nodes.demo.mission`; this module parses its options and picks its
working directory (``--dir``, default ``./obus-demo``): logs, stores, keys, the broker's data and
the audit reports go there, never into the installed package. The directory is cleared at the
start of a run, so it must be empty, missing, or a previous demo's (it holds the marker file
:data:`nodes.demo.mission.DEMO_MARKER`, or, made before the marker, ``logs/`` and
``mandate.bin``); anything else is refused rather than deleted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bus.errors import ConfigError
from nodes.cli.common import add_log_level

DEFAULT_DIR = "obus-demo"


def demo_dir(text: str) -> Path:
    """The demo's working directory, absolute.

    Raises:
        ConfigError: a file, or a non-empty directory that no demo made (it would be deleted).
    """
    from nodes.demo.mission import DEMO_MARKER  # noqa: PLC0415 - keep `obus --help` fast

    path = Path(text).resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError("--dir", f"{path} is a file", "pass a directory (it is created)")
    # a demo's directory from before the marker: its logs and its mandate
    earlier = (path / "logs").is_dir() and (path / "mandate.bin").is_file()
    if path.is_dir() and any(path.iterdir()) and not ((path / DEMO_MARKER).exists() or earlier):
        raise ConfigError(
            "--dir",
            f"{path} is not empty and no demo made it; the demo clears its directory",
            f"pass an empty or new directory, e.g. --dir {DEFAULT_DIR}",
        )
    return path


def _cmd_demo(args: argparse.Namespace) -> int:
    from nodes.demo.mission import main as demo_main  # noqa: PLC0415 - keep `obus --help` fast

    work = demo_dir(args.dir)
    return demo_main(reports_per_observer=args.reports_per_observer, keep=args.keep, work=work)


def add_demo_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``demo`` to the ``obus`` parser."""
    demo = sub.add_parser(
        "demo",
        help="a full local mission: Kafka, six nodes, observers, an auditor (make demo)",
    )
    demo.add_argument("--reports-per-observer", type=int, default=12)
    demo.add_argument(
        "--dir", default=DEFAULT_DIR, metavar="DIR",
        help=f"working directory: logs, stores, keys, audit reports (default ./{DEFAULT_DIR};"
        " cleared at the start, so empty, new or a previous demo's)",
    )  # fmt: skip
    demo.add_argument("--keep", action="store_true", help="keep the broker's data after the run")
    add_log_level(demo, "warning")
    demo.set_defaults(func=_cmd_demo)
