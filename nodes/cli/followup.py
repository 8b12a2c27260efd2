"""``obus statement draft|sign|status`` and ``obus dashboard``, plus the bus-facing helpers the
demo uses for joint statements.

A joint statement is drafted by one organization (signed with its node key, published on
``<prefix>statements`` keyed by statement id), co-signed by others (the same payload bytes with
their own signature) and valid once the distinct signing organizations reach the mandate's
threshold (see :mod:`bus.statement`). A co-signer checks the references against its own store
first: it signs only reports it verified itself, with the same envelope digests.

Which keys count is the final trust state of the organization's own node (``--final-db``, by
default beside ``--db``): the final judge's key ring from version 1 of the mandate
(``--root-mandate``) and the sealed trust records, the same the node's follow-up uses, never
one built from the mandate file alone. ``status`` shows each statement final (as the sealed
epochs leave it, the same at every node) and now (with the records not sealed yet).

``draft`` and ``sign`` refuse a mandate that has ended; ``status`` and ``dashboard`` read it
(archive mode, saying so).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.table import Table

from bus.crypto import SigningKey
from bus.errors import ConfigError
from bus.model import Mandate
from bus.statement import JointStatement
from bus.topics import Topics
from nodes.cli.common import (
    add_common_args,
    add_log_level,
    bootstrap,
    check_broker,
    read_only_mandate,
    security_from_args,
)
from nodes.cli.dashboard import add_auth_args, auth_from_args
from nodes.org_node.statements import (
    Board,
    check_signing_key,
    draft,
    final_store_of,
    read_board,
    references_from_store,
    sign,
)

# `obus statement status ID`: the statement is known but not valid and final (yet); 3 is taken
# by the broker being unreachable (nodes/cli/common.py), so a script can tell the two apart.
EXIT_NOT_FINAL: Final = 4


def render_statuses(board: Board, console: Console) -> None:
    """A table of every statement, who signed it, and its state: final (as the sealed epochs
    leave it, the same at every node) and now (with the records not sealed yet)."""
    table = Table(
        title=f"Joint statements on the bus ({len(board.book.statuses())}),"
        f" final up to epoch {board.epoch}"
    )
    for col in ("statement id", "title", "drafted by", "signed by", "k of n", "final", "now"):
        table.add_column(col)
    for s in board.book.statuses():
        final = board.final.get(s.statement.statement_id)
        table.add_row(
            s.statement.statement_id,
            s.statement.title,
            s.statement.drafted_by,
            ", ".join(sorted(s.signed_by)),
            f"{len(s.signed_by)} of {s.organizations} (k = {s.threshold})",
            "not sealed yet" if final is None else _state(final.valid),
            _state(s.valid),
        )
    console.print(table)
    unsealed = set(board.unsealed)
    for offset, reason, detail in board.rejected:
        when = "not sealed yet" if offset in unsealed else "final"
        console.print(f"[red]rejected[/red] record at offset {offset} ({when}): {reason}: {detail}")


def _state(valid: bool) -> str:
    return "[green]valid" if valid else "[yellow]pending"


def _root(args: argparse.Namespace, mandate: Mandate) -> Mandate:
    """The root mandate (version 1) the node's sealer judges from: ``--root-mandate``, else the
    mandate file when it is version 1.

    Raises:
        ConfigError: no version 1 at hand, or a root of another mandate.
    """
    root = read_only_mandate(args.root_mandate)[0] if args.root_mandate else mandate
    if root.mandate_id != mandate.mandate_id:
        raise ConfigError(
            "--root-mandate",
            f"is mandate {root.mandate_id!r}, not {mandate.mandate_id!r}",
            "pass version 1 of the mandate of --mandate",
        )
    if root.version != 1:
        raise ConfigError(
            "--root-mandate",
            f"is missing and the mandate file is version {root.version}",
            "pass version 1 of the mandate (--root-mandate FILE): final trust is judged from it",
        )
    return root


def _final_db(args: argparse.Namespace) -> Path:
    db = getattr(args, "db", None)
    return final_store_of(Path(db) if db else None, Path(args.final_db) if args.final_db else None)


# ---------------------------------------------------------------------------------------------
# Command line


def _mandate(args: argparse.Namespace) -> Mandate:
    """The mandate of a command that signs: refused once it has ended."""
    from nodes.runtime.files import load_mandate  # noqa: PLC0415

    return load_mandate(Path(args.mandate))[0]


def _read_only_mandate(args: argparse.Namespace) -> Mandate:
    """The mandate of a command that only reads: accepted after its end, saying so."""
    return read_only_mandate(args.mandate)[0]


def _key(args: argparse.Namespace) -> SigningKey:
    from nodes.runtime.files import read_key  # noqa: PLC0415

    return read_key(Path(args.node_key))


def _cmd_draft(args: argparse.Namespace) -> int:
    mandate = _mandate(args)
    if mandate.organization(args.org) is None:
        raise ConfigError("--org", f"{args.org!r} is not part of the mandate", "use your org id")
    if args.text_file and args.text:
        raise ConfigError("--text-file", "given with --text", "pass one of the two")
    text = args.text
    if args.text_file:
        try:
            text = Path(args.text_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problem = exc.strerror if isinstance(exc, OSError) else "is not UTF-8 text"
            raise ConfigError(
                "--text-file", f"cannot read {args.text_file}: {problem}", "pass a UTF-8 text file"
            ) from exc
    if not text:
        raise ConfigError("--text", "is missing", "pass --text TEXT or --text-file FILE")
    refs = references_from_store(Path(args.db), args.report)
    key, security, topics = _key(args), security_from_args(args), Topics(args.topic_prefix)
    root, final_db = _root(args, mandate), _final_db(args)
    check_broker(args)

    async def go() -> JointStatement:
        board = await read_board(
            bootstrap(args), topics, root, final_db=final_db, security=security
        )
        check_signing_key(board.keyring, key, args.org)
        return await draft(
            bootstrap(args), topics, mandate, org=args.org, key=key,
            title=args.title, text=text, references=refs, security=security,
        )  # fmt: skip

    stmt = asyncio.run(go())
    print(f"drafted statement {stmt.statement_id} ({len(refs)} reports), signed by {args.org}")
    print(f"others co-sign with: obus statement sign {stmt.statement_id} --org ORG ...")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    mandate = _mandate(args)
    key, security = _key(args), security_from_args(args)
    final_db, root = _final_db(args), _root(args, mandate)
    check_broker(args)
    status = asyncio.run(
        sign(
            bootstrap(args), Topics(args.topic_prefix), mandate,
            statement_id=args.statement_id, key=key, org=args.org,
            db=Path(args.db) if args.db else None, security=security,
            final_db=final_db, root=root,
        )
    )  # fmt: skip
    print(
        f"signed {status.statement.statement_id}: {len(status.signed_by)} of "
        f"{status.organizations} organizations (k = {status.threshold}): {status.state}"
    )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    mandate = _read_only_mandate(args)
    root, final_db, security = _root(args, mandate), _final_db(args), security_from_args(args)
    check_broker(args)
    board = asyncio.run(
        read_board(
            bootstrap(args), Topics(args.topic_prefix), root, final_db=final_db, security=security
        )
    )
    if args.statement_id:
        status = board.book.get(args.statement_id)
        if status is None:
            print(f"obus: no verified statement {args.statement_id}", file=sys.stderr)
            return 1
        final = board.final.get(args.statement_id)
        sealed = (
            "not sealed yet" if final is None else f"final: {final.state} at epoch {board.epoch}"
        )
        print(
            f"{status.statement.title}: signed by {', '.join(sorted(status.signed_by))}; "
            f"{len(status.signed_by)} of {status.organizations} (k = {status.threshold}): "
            f"{status.state} ({sealed})"
        )
        return 0 if final is not None and final.valid else EXIT_NOT_FINAL
    render_statuses(board, Console())
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from bus.policy_file import load_policy  # noqa: PLC0415
    from nodes.org_node.dashboard.config import DashboardConfig  # noqa: PLC0415
    from nodes.org_node.dashboard.server import serve  # noqa: PLC0415

    if not 0 <= args.http_port <= 65535:
        raise ConfigError("--http-port", f"{args.http_port} is not a TCP port", "pass 0..65535")
    db = Path(args.db)
    if not db.exists():
        raise ConfigError("--db", f"{db} does not exist", "pass the store of a node")
    config = DashboardConfig(
        org=args.org,
        db_path=db,
        mandate=_read_only_mandate(args),
        policy=load_policy(Path(args.policy)) if args.policy else None,
        host=args.http_host,
        port=args.http_port,
        auth=auth_from_args(args),
    )
    return asyncio.run(serve(config))


def _add_trust_args(p: argparse.ArgumentParser) -> None:
    """Where the trust state comes from: the organization's own node."""
    p.add_argument(
        "--final-db", metavar="FILE",
        help="your node's final store (default: <db stem>.final.db): its final seals and the"
        " sealed trust records decide which keys count, as at your node",
    )  # fmt: skip
    p.add_argument(
        "--root-mandate", metavar="FILE",
        help="version 1 of the mandate, the root your node judges from (default: --mandate)",
    )  # fmt: skip


def add_followup_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``statement`` and ``dashboard`` on the ``obus`` parser."""
    st = sub.add_parser(
        "statement",
        help="joint statements: draft, co-sign, status (valid at k of n organizations)",
        description="A statement drafted by one organization and co-signed by others on "
        "<prefix>statements; valid once the mandate's threshold of distinct organizations "
        "signed it. Statements never gate any organization's own decisions.",
    )
    ss = st.add_subparsers(dest="statement_command", required=True, metavar="ACTION")

    d = ss.add_parser("draft", help="draft and sign a statement referencing verified reports")
    d.add_argument("--org", required=True, help="your organization id")
    d.add_argument("--node-key", required=True, metavar="FILE", help="your node key (NODE)")
    d.add_argument("--mandate", required=True, metavar="FILE", help="signed mandate file")
    d.add_argument("--db", required=True, metavar="FILE", help="your node's store (digests)")
    d.add_argument("--title", required=True)
    d.add_argument("--text", default="", help="the statement text")
    d.add_argument("--text-file", metavar="FILE", help="or read the text from a file")
    d.add_argument("--report", action="append", default=[], metavar="ID", help="repeatable")
    _add_trust_args(d)
    add_common_args(d)
    d.set_defaults(func=_cmd_draft)

    s = ss.add_parser("sign", help="co-sign a drafted statement")
    s.add_argument("statement_id")
    s.add_argument("--org", required=True, help="your organization id")
    s.add_argument("--node-key", required=True, metavar="FILE", help="your node key (NODE)")
    s.add_argument("--mandate", required=True, metavar="FILE", help="signed mandate file")
    s.add_argument("--db", metavar="FILE", help="check the references against your store")
    _add_trust_args(s)
    add_common_args(s)
    s.set_defaults(func=_cmd_sign)

    t = ss.add_parser(
        "status",
        help="every statement (or one: exit 0 valid and final, 4 pending or not sealed yet,"
        " 1 unknown id; 3 is the broker unreachable, as for every command)",
    )
    t.add_argument("statement_id", nargs="?")
    t.add_argument("--mandate", required=True, metavar="FILE", help="signed mandate file")
    t.add_argument("--db", metavar="FILE", help="your node's store (its final store beside it)")
    _add_trust_args(t)
    add_common_args(t)
    t.set_defaults(func=_cmd_status)

    dash = sub.add_parser(
        "dashboard",
        help="serve a node store's dashboard without running the node",
        description="The same dashboard `obus node --http-port` serves, on a store alone "
        "(read-only): reports, quarantine, decisions, early warning, statements.",
    )
    dash.add_argument("--org", required=True)
    dash.add_argument("--db", required=True, metavar="FILE")
    dash.add_argument("--mandate", required=True, metavar="FILE")
    dash.add_argument("--policy", metavar="FILE", help="for the early-warning charts")
    dash.add_argument("--http-port", type=int, default=8080)
    dash.add_argument("--http-host", default="127.0.0.1")
    add_auth_args(dash)
    add_log_level(dash)
    dash.set_defaults(func=_cmd_dashboard)
