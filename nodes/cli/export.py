"""``obus export reports``: a node's reports as CSV, GeoJSON or HXL for analysts.

Reads the node's store and its final store read-only (a running node keeps writing; the export
lists the reports stored when it started reading), filtered and paged by
:mod:`bus.store.report_query`, written by :mod:`nodes.org_node.export` as the rows come, so a
store of any size exports in constant memory. A progress bar goes to standard error when it is
a terminal. With ``-o FILE`` the file is written under a temporary name and renamed when
complete, so an interrupted export never leaves a file that looks whole.

    obus export reports --store var/un.db --format geojson --zone north --min-severity 4 \\
        --since 2026-11-01 --verdict final -o north.geojson
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bus.errors import ConfigError
from bus.store.report_query import STATES, STATUSES, ReportQuery, ReportRow, parse_params
from nodes.cli.common import EXIT_OK, add_log_level
from nodes.org_node.export import SUFFIXES, Format, write_reports

# CLI option (argparse dest) -> query parameter of bus.store.report_query.parse_params.
_MULTI_OPTIONS = ("zone", "category", "org", "observer", "verdict", "status", "reason")
_SINGLE_OPTIONS = ("since", "until", "min_severity", "text", "limit", "cursor", "order")


def _params(args: argparse.Namespace) -> dict[str, list[str]]:
    """The options given, as the query parameters the API takes (one parser for both)."""
    params: dict[str, list[str]] = {}
    for name in _MULTI_OPTIONS:
        values = getattr(args, name)
        if values:
            params[name] = list(values)
    for name in _SINGLE_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            params[name] = [str(value)]
    if args.restricted_content:
        params["restricted_content"] = ["1"]
    return params


def _final_db(args: argparse.Namespace, store: Path) -> Path | None:
    """``--final-db``, else the one ``obus node`` keeps beside the store when it exists."""
    if args.final_db:
        path = Path(args.final_db)
        if not path.exists():
            raise ConfigError(
                "--final-db", f"{path} does not exist", "give your node's final store"
            )
        return path
    beside = store.with_suffix(".final.db")
    return beside if beside.exists() else None


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    """UTF-8 text with no newline translation: standard output, or ``path`` written under a
    temporary name and renamed once complete (removed on failure)."""
    if path is None or path == "-":
        out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
        try:
            yield out
        finally:
            out.flush()
            out.detach()
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            yield f
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def _noting(rows: Iterator[ReportRow], last: list[int]) -> Iterator[ReportRow]:
    """``rows``, keeping the cursor of the last one in ``last`` (for the next page's hint)."""
    for r in rows:
        last[:] = [r.cursor]
        yield r


def cmd_export_reports(args: argparse.Namespace) -> int:
    """``obus export reports``."""
    store = Path(args.store)
    filt, page = parse_params(_params(args), max_limit=None)
    fmt = Format(args.format)
    final_db = _final_db(args, store)
    console = Console(stderr=True) if sys.stderr.isatty() else None
    with ReportQuery(store, final_db) as query:
        if final_db is None or not query.final:
            why = "no final store" if final_db is None else f"{final_db} holds no judged epoch yet"
            print(f"obus export: {why}: every verdict is provisional", file=sys.stderr)
        progress = Progress(
            TextColumn("export"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, disable=console is None, transient=True,
        )  # fmt: skip
        with progress:
            total = None if console is None else query.candidates(filt, page)
            task = progress.add_task("export", total=total)
            last: list[int] = []
            rows = _noting(query.rows(filt, page, on_read=lambda: progress.advance(task)), last)
            with _output(args.output) as out:
                n = write_reports(rows, out, fmt)
    where = "standard output" if args.output in (None, "-") else args.output
    print(f"obus export: {n} reports written as {fmt.value} to {where}", file=sys.stderr)
    if page.limit is not None and n == page.limit:
        print(f"obus export: the next page follows --cursor {last[-1]}", file=sys.stderr)
    return EXIT_OK


def add_export_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``export reports`` on the ``obus`` parser."""
    exp = sub.add_parser("export", help="export a node's reports for analysts (CSV, GeoJSON, HXL)")
    expsub = exp.add_subparsers(dest="export_command", required=True, metavar="WHAT")
    p = expsub.add_parser(
        "reports",
        help="the reports of a node's store with verdicts and provenance, filtered",
        description="Every report the node accepted (restricted ones with their clear fields "
        "only, unless --restricted-content), each with its verdict (final once sealed and "
        "judged, else provisional), the final seal it rests on, its signer key and log "
        "position. Filters combine with AND; an option given twice matches either value. "
        "See README 'Exporting reports'.",
    )
    p.add_argument("--store", required=True, metavar="FILE", help="the node's store (--db)")
    p.add_argument(
        "--final-db", metavar="FILE",
        help="the node's final store (default: <store stem>.final.db when it exists; without"
        " one every verdict is provisional)",
    )  # fmt: skip
    p.add_argument("--format", required=True, choices=[f.value for f in Format])
    p.add_argument(
        "-o", "--output", metavar="FILE",
        help="write to FILE (default: standard output); suffixes: "
        + ", ".join(f"{f.value} {s}" for f, s in SUFFIXES.items()),
    )  # fmt: skip
    g = p.add_argument_group("filters")
    g.add_argument("--since", metavar="TIME", help="signed at or after (ISO 8601 or Unix ms)")
    g.add_argument("--until", metavar="TIME", help="signed before (ISO 8601 or Unix ms)")
    g.add_argument("--zone", action="append", metavar="ZONE")
    g.add_argument("--category", action="append", metavar="CATEGORY")
    g.add_argument("--min-severity", type=int, metavar="1-5")
    g.add_argument("--org", action="append", metavar="ORG", help="the observer's organization")
    g.add_argument("--observer", action="append", metavar="OBSERVER_ID")
    g.add_argument("--verdict", action="append", choices=STATES)
    g.add_argument("--status", action="append", choices=STATUSES, help="the verdict's status")
    g.add_argument("--reason", action="append", metavar="CODE", help="the verdict's reason code")
    g.add_argument("--text", metavar="TEXT", help="in the narrative or place name (any case)")
    g.add_argument(
        "--restricted-content", action="store_true",
        help="list the content of restricted reports this node can read (default: clear"
        " fields only)",
    )  # fmt: skip
    pg = p.add_argument_group("paging")
    pg.add_argument("--limit", type=int, metavar="N", help="at most N reports")
    pg.add_argument("--cursor", type=int, metavar="C", help="after the report with cursor C")
    pg.add_argument("--order", choices=("oldest", "newest"), help="default: oldest first")
    add_log_level(p, default="warning")
    p.set_defaults(func=cmd_export_reports)
