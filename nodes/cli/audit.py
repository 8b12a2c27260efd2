"""Command-line parts of the audit.

* ``obus audit``: live, or ``--from FILE`` (offline audit of an export), ``--json-out FILE``,
  ``--html-out FILE``, ``--strict``, ``--final-digest``; every record judged by its final
  verdict, the one every node reaches from the sealed log; exit 0 when no final verdict rejects
  a record and the log is consistent with its final seals (an organization's seal equivocation
  is printed but does not fail it), 1 on any violation, or with ``--strict`` on an equivocation
  too;
* ``obus audit prove``: the inclusion proof of one record against a final seal, or
  ``--check FILE``: a printed proof checked against the log (live or ``--from``), or with
  ``--light`` against the mandate file alone;
* ``obus log export FILE``: the portable export.

All three sign and publish nothing, so they read a mandate that has ended too (archive mode,
saying so in one line): every record is judged on the seals' clock, never by this machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from bus.errors import ConfigError, VerificationError
from bus.topics import Topics
from nodes.cli.common import (
    add_common_args,
    bootstrap,
    check_broker,
    read_only_mandate,
    security_from_args,
)

if TYPE_CHECKING:
    from bus.export import ExportHeader
    from bus.model import Mandate

# ---------------------------------------------------------------------------------------------
# obus audit, obus audit prove, obus log export


def _export_header(path: Path) -> ExportHeader:
    """The export's header; raises ConfigError when the file cannot be read."""
    from bus.export import ExportReader  # noqa: PLC0415

    try:
        with path.open("rb") as f:
            return ExportReader(f).header
    except OSError as exc:
        raise ConfigError("--from", f"cannot read {path}: {exc.strerror}", "pass FILE") from exc


def _embedded_mandate(path: Path, header: ExportHeader) -> Mandate:
    """The root mandate embedded in an export, verified against itself (archive mode when it
    has ended, saying so)."""
    from nodes.runtime.files import archive_notice, mandate_ended, open_mandate  # noqa: PLC0415

    mandate = open_mandate(header.root_mandate, source=f"the mandate embedded in {path}")
    if mandate_ended(mandate):
        print(f"obus: {archive_notice(mandate)}", file=sys.stderr, flush=True)
    return mandate


def cmd_audit(args: argparse.Namespace) -> int:
    """``obus audit`` live or ``--from FILE``: exit 1 names every violation (with ``--strict``,
    every seal equivocation as well)."""
    from nodes.auditor.header import redact_argv  # noqa: PLC0415
    from nodes.auditor.report import write_html  # noqa: PLC0415
    from nodes.auditor.run import audit, audit_export, render, write_json  # noqa: PLC0415

    console = Console(stderr=True)
    command = redact_argv(getattr(args, "command_line", ["obus", "audit"]))
    if args.from_file:
        path = Path(args.from_file)
        header = _export_header(path)
        if args.mandate:
            mandate, _ = read_only_mandate(args.mandate)
        else:
            console.print(
                "[yellow]no --mandate: trusting the mandate embedded in the export[/yellow]"
            )
            mandate = _embedded_mandate(path, header)
        result = audit_export(
            path, mandate, console=console, command=command, verify_workers=_workers(args)
        )
        if not args.mandate:
            result.trust_root = "embedded"
    else:
        if not args.mandate:
            raise ConfigError("--mandate", "is required to audit the live bus", "pass FILE")
        mandate, _ = read_only_mandate(args.mandate)
        check_broker(args)
        result = asyncio.run(
            audit(
                bootstrap(args), mandate, topics=Topics(args.topic_prefix), console=console,
                security=security_from_args(args), command=command,
                verify_workers=_workers(args),
            )
        )  # fmt: skip
    if args.final_digest:
        # stdout carries the pair alone, for comparing with `obus node final-state`.
        render(result, console)
        print(json.dumps(result.final_digest(), sort_keys=True))
    else:
        # Not a terminal (a pipe, a file): wide enough that no table folds a digest; reason
        # codes are never cut at any width (nodes.auditor.run.render).
        render(result, Console(width=None if sys.stdout.isatty() else _PIPE_WIDTH))
    # A file that cannot be written is a usage error (exit 2), never "violations found" (1).
    if args.json_out:
        _write_out("--json-out", args.json_out, lambda p: write_json(result, p))
    if args.html_out:
        _write_out("--html-out", args.html_out, lambda p: write_html(result, p))
    return 0 if (result.clean if args.strict else result.ok) else 1


def _workers(args: argparse.Namespace) -> int:
    """``--verify-workers``: none when not given. Measured on 100,020 records (bench/README):
    signature checks are about a sixth of the audit's time, and on two cores 1 or 2 workers
    made it slower (4,386 and 4,420 records per CPU-second against 4,797 without), so they are
    for machines with cores to spare.

    Raises:
        ConfigError: a negative count.
    """
    n: int | None = args.verify_workers
    if n is None:
        return 0
    if n < 0:
        raise ConfigError("--verify-workers", str(n), "give 0 (none) or a number of processes")
    return n


_PIPE_WIDTH = 200  # columns of the console report written to a pipe or file


def _write_out(flag: str, path: str, write: Callable[[Path], object]) -> None:
    """Run ``write(Path(path))``; an OSError becomes a ConfigError naming ``flag``."""
    try:
        write(Path(path))
    except OSError as exc:
        raise ConfigError(
            flag, f"cannot write {path}: {exc.strerror or exc}", "pick a writable path"
        ) from exc


# `obus audit` options that mean nothing to `obus audit prove` (given before `prove`):
# (attribute, flag, default).
_AUDIT_ONLY: tuple[tuple[str, str, object], ...] = (
    ("html_out", "--html-out", None),
    ("strict", "--strict", False),
    ("final_digest", "--final-digest", False),
)


def _check_proof(args: argparse.Namespace, err: Console) -> int:
    """``obus audit prove --check FILE``: a printed proof checked against the log (live or
    ``--from``), or with ``--light`` against the mandate file alone."""
    from bus.seal_proof import SealProof, verify_light  # noqa: PLC0415
    from nodes.auditor.prove import check_from_file, check_live  # noqa: PLC0415

    for flag, value in (
        ("--topic", args.topic), ("--partition", args.partition), ("--offset", args.offset),
        ("--report-id", args.report_id), ("--json-out", args.json_out), ("--epoch", args.epoch),
    ):  # fmt: skip
        if value is not None:
            raise ConfigError(flag, "given with --check", "--check verifies the proof's record")
    if args.light and args.from_file:
        raise ConfigError("--from", "given with --light", "the light check reads no log: drop one")
    try:
        doc = json.loads(Path(args.check).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError("--check", f"cannot read a proof from {args.check}: {exc}",
                          "pass the JSON that obus audit prove printed") from exc  # fmt: skip
    mandate, _ = read_only_mandate(args.mandate)
    try:
        proof = SealProof.from_json(doc)
        if args.light:
            orgs = verify_light(proof, mandate)
            how = f"with mandate {mandate.mandate_id} version {mandate.version} alone (light)"
        elif args.from_file:
            path = Path(args.from_file)
            _export_header(path)  # an unreadable file is named as --from
            orgs = check_from_file(proof, path, mandate)
            how = f"against the log in {path}"
        else:
            check_broker(args)  # exit 3 naming the brokers, before any wait on the log
            orgs = asyncio.run(
                check_live(
                    proof, bootstrap(args), Topics(args.topic_prefix), mandate,
                    security=security_from_args(args),
                )
            )  # fmt: skip
            how = "against the live log"
    except VerificationError as exc:
        err.print(f"[red]refused: {exc.reason.value}: {exc.message}[/red]")
        return 1
    seal = proof.seal()
    err.print(
        f"[green]verified[/green] {how}: {proof.topic}[{proof.partition}]@{proof.offset} is leaf"
        f" {proof.leaf_index} of {proof.size} under the final seal of epoch {seal.epoch}"
        f" (t_e {seal.time_ms}, seals offset {proof.seal_offset}), cosigned by"
        f" {', '.join(sorted(orgs))}"
    )
    return 0


def cmd_prove(args: argparse.Namespace) -> int:
    """``obus audit prove``: print one record's inclusion proof against a final seal, or
    (``--check``) check a printed one."""
    from nodes.auditor.prove import prove_from_file, prove_live  # noqa: PLC0415

    for attr, flag, default in _AUDIT_ONLY:
        if getattr(args, attr, default) != default:
            raise ConfigError(
                flag, "is an option of `obus audit`, not of `obus audit prove`", "drop it"
            )
    if not args.mandate:
        raise ConfigError("--mandate", "is required", "pass --mandate FILE (the signed mandate)")
    if args.check is not None:
        return _check_proof(args, Console(stderr=True))
    if args.light:
        raise ConfigError("--light", "needs --check FILE", "pass the proof to check")
    by_position = [
        flag
        for flag, value in (
            ("--topic", args.topic), ("--partition", args.partition), ("--offset", args.offset)
        )
        if value is not None
    ]  # fmt: skip
    if args.report_id is not None and by_position:
        raise ConfigError(
            by_position[0], "given with --report-id", "name the record one way: drop one of them"
        )
    if args.report_id is None:
        if args.topic is None:
            raise ConfigError(
                "--topic",
                "no record named" if not by_position else f"{by_position[0]} needs --topic",
                "pass --topic T --partition P --offset O, or --report-id ID",
            )
        if args.offset is None:
            raise ConfigError(
                "--offset", "--topic needs --offset", "pass --topic T --partition P --offset O"
            )
    partition = 0 if args.partition is None else args.partition
    where = None if args.topic is None else (args.topic, partition, args.offset)
    err = Console(stderr=True)
    try:
        mandate, _ = read_only_mandate(args.mandate)
        if args.from_file:
            path = Path(args.from_file)
            _export_header(path)  # an unreadable file is named as --from
            proof = prove_from_file(
                path, mandate, where=where, report_id=args.report_id, epoch=args.epoch
            )
        else:
            check_broker(args)  # exit 3 naming the brokers, before any wait on the log
            proof = asyncio.run(
                prove_live(
                    bootstrap(args), Topics(args.topic_prefix), mandate, where=where,
                    report_id=args.report_id, epoch=args.epoch, security=security_from_args(args),
                )
            )  # fmt: skip
    except VerificationError as exc:
        err.print(f"[red]cannot prove: {exc.reason.value}: {exc.message}[/red]")
        return 1
    doc = json.dumps(proof.to_json(), indent=2)
    sys.stdout.write(doc + "\n")
    if args.json_out:
        _write_out("--json-out", args.json_out, lambda p: p.write_text(doc + "\n", "utf-8"))
    seal = proof.seal()
    err.print(
        f"[green]verified[/green] against the log: {proof.topic}[{proof.partition}]@"
        f"{proof.offset} is leaf {proof.leaf_index} of {proof.size} under the final seal of"
        f" epoch {seal.epoch}"
        f" (seals offset {proof.seal_offset}); audit path of {len(proof.path)} hashes,"
        f" {len(proof.registry)} accreditations for the light check"
    )
    return 0


def cmd_log_export(args: argparse.Namespace) -> int:
    """``obus log export FILE``."""
    from nodes.auditor.log_export import export_log  # noqa: PLC0415

    mandate, raw = read_only_mandate(args.mandate)
    path = Path(args.path)
    check_broker(args)
    started = time.monotonic()
    counts = asyncio.run(
        export_log(
            bootstrap(args), Topics(args.topic_prefix), mandate, raw, path,
            console=Console(stderr=True), security=security_from_args(args),
        )
    )  # fmt: skip
    print(
        f"wrote {path}: "
        + ", ".join(f"{n} {section}" for section, n in counts.items())
        + f" records in {time.monotonic() - started:.1f}s"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# Parser


def add_audit_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``audit`` and ``audit prove`` to the ``obus`` parser."""
    aud = sub.add_parser(
        "audit",
        help="replay every topic (or an export file) and verify everything",
        description="Replays the seals, the mandate, the registry, every obus.reports.* topic "
        "and every decisions, statements and attachments topic with its own consumer (no group, "
        "nothing committed), or reads an export file (--from), and judges it all with the same "
        "bus reader every node runs: final seals (their roots recomputed from the records) and, "
        "epoch by epoch on the seals' clock, the final verdict of every sealed record (signature, "
        "accreditation, revocation, chain, report-id scope). A record whose final verdict "
        "rejects it, a sealed record altered or deleted (named with its topic, partition and "
        "sealed size), a first seal over registry records the log lacks, and a damaged export "
        "file are violations: exit 1 names each. Records after the last final seal are listed "
        "as not sealed yet (no verdict). An organization that signed two seal texts for one "
        "epoch (equivocation) is printed as evidence against it and leaves exit 0, unless "
        "--strict. The checkpoints section of an export of format version 1 or 2 is skipped, "
        "with a note.",
    )
    aud.add_argument(
        "--mandate", metavar="FILE",
        help="signed mandate file (the trust root; required live): the version the bus began "
        "under, the root every node starts from (final verdicts and state digests chain from "
        "it); without it, --from uses the one embedded in the export",
    )  # fmt: skip
    aud.add_argument("--json-out", metavar="FILE", help="also write the result as JSON")
    add_common_args(aud)
    aud.set_defaults(func=cmd_audit)
    aud.add_argument(
        "--from", dest="from_file", metavar="FILE",
        help="audit an export file (obus log export) instead of the live bus; no broker needed",
    )  # fmt: skip
    aud.add_argument("--html-out", metavar="FILE", help="also write a self-contained HTML report")
    aud.add_argument(
        "--verify-workers", type=int, metavar="N", default=None,
        help="worker processes that check report signatures one epoch ahead of the final "
        "judge (default 0: none; they pay only with cores to spare); the verdicts are the same",
    )  # fmt: skip
    aud.add_argument(
        "--strict", action="store_true",
        help="exit 1 on a seal equivocation too (an organization that signed two seal texts "
        "for one epoch), not only on violations",
    )  # fmt: skip
    aud.add_argument(
        "--final-digest", action="store_true",
        help="print only the last judged epoch and the state digest after it to stdout, as "
        'JSON {"epoch": E, "state_digest": BASE64} (null before the first epoch; the summary '
        "goes to stderr): the pair obus node final-state prints from a node's final store, to "
        "compare",
    )  # fmt: skip
    audsub = aud.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    prove = audsub.add_parser(
        "prove",
        help="prove one record's inclusion in the sealed log (a final seal), or check a proof",
        description="Prints (JSON, format obus-seal-proof/v1) the RFC 9162 inclusion proof of "
        "one record against the first final seal that covers it (or the final seal of --epoch): "
        "the value, its leaf index (the offset), the partition's sealed size, the audit path to "
        "the seal's root, the seal's signed note with the cosignatures that made it final and "
        "its offset on the seals topic, and the cosigning node keys' accreditations. Reads the "
        "seals, mandate and registry topics and the record's partition (live, or --from an "
        "export). --check FILE checks a printed proof: against the log (its final seal of that "
        "epoch, byte for byte, and the trust in force for it), or with --light against the "
        "mandate file alone (k organizations' node keys, accredited by their roots in that "
        "file, cosigned the seal). Exit 1 when the record cannot be proven or the proof is "
        "refused (named reason).",
    )
    prove.add_argument("--mandate", metavar="FILE", help="signed mandate file (required)")
    prove.add_argument("--topic", help="the record's topic, e.g. obus.reports.un")
    prove.add_argument("--partition", type=int, help="the record's partition (default 0)")
    prove.add_argument("--offset", type=int)
    prove.add_argument("--report-id", help="or name the record by its report id")
    prove.add_argument(
        "--epoch", type=int, metavar="E",
        help="prove against the final seal of epoch E (default: the first that covers it)",
    )  # fmt: skip
    prove.add_argument("--from", dest="from_file", metavar="FILE", help="prove from an export")
    prove.add_argument("--json-out", metavar="FILE", help="also write the proof to a file")
    prove.add_argument("--check", metavar="FILE", help="check a proof printed by obus audit prove")
    prove.add_argument(
        "--light", action="store_true",
        help="with --check: the light check, with the mandate file alone (no log read)",
    )  # fmt: skip
    add_common_args(prove)
    # An option prove shares with `obus audit` keeps its value when given before `prove`
    # (`obus audit --from E prove ...`): without this, prove's default would overwrite it.
    shared = {a.dest for a in aud._actions} - {"help"}
    for action in prove._actions:
        if action.dest in shared:
            action.default = argparse.SUPPRESS
    prove.set_defaults(func=cmd_prove)


def add_log_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``log export`` to the ``obus`` parser."""
    logp = sub.add_parser("log", help="the whole log: export it to a portable file")
    logsub = logp.add_subparsers(dest="log_command", required=True, metavar="SUBCOMMAND")
    exp = logsub.add_parser(
        "export",
        help="write every record of every bus topic, the seals included, to FILE",
        description="Writes the obus-log-export v3 file (JSON Lines: header, seals, mandate, "
        "registry, reports, decisions, statements, attachments, trailer; see README 'Export "
        "format'), the seals read first so every seal covers records in the file. Audit it "
        "offline with obus audit --from FILE (v1 and v2 files are still read, their "
        "checkpoints section skipped).",
    )
    exp.add_argument("path", metavar="FILE")
    exp.add_argument(
        "--mandate", required=True, metavar="FILE",
        help="signed mandate file: the version the bus began under (embedded in the export as "
        "its root, which obus audit --from uses when given no --mandate)",
    )  # fmt: skip
    add_common_args(exp)
    exp.set_defaults(func=cmd_log_export)
