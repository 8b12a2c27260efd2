"""Reports of a node's store for analysts: filters, paging, and each report with its verdict
and provenance, streamed one row at a time (``obus export reports``, later the dashboard API).

Reads the node's store (:mod:`bus.store.node`) read-only, with the sealer's final store
(:mod:`bus.store.final`) ``ATTACH``-ed read-only when given, over one connection: nothing here
can write either file. The rows are the node's ``reports`` table (every report it accepted,
plain and restricted), in storage order (oldest first, or newest first for a feed); records
the node quarantined are not reports it can vouch for and are not listed.

**Verdicts.** Each row carries its verdict as the dashboard shows it
(:mod:`nodes.org_node.dashboard.final_view` states the rules): ``final`` once the final store
holds a settled (not ``deferred``) verdict at the report's position, with the final status
(``accepted``, ``quarantined`` with its reason code, or ``revoked_after_acceptance`` when a
sealed revocation withdrew it) and the final seal it rests on (the epoch whose answer settled
it, or the epoch of the revocation); ``provisional`` until then, with the node's own status
(``accepted``, or ``revoked_after_acceptance`` when a revocation reached the node).

**Amendments.** Each row says what the report retracts (and why) and which reports corrected or
retracted it (``corrected_by``, ``retracted_by``: the links the node stored, :mod:`bus.store.node`).

**Restricted reports.** A restricted (sealed) report's clear fields (report id, observer,
organization, zone, seq, signed_at, recipients) are always listed. Its content (category,
severity, position, narrative, ...) is listed only when the caller asks for it
(``include_restricted``) *and* this node could read it; otherwise every content field is None
and ``content`` says why (``withheld``: readable here, not asked for; ``unreadable``: this node
cannot read it, see ``readability``). Filters on content (category, severity, text) never match
a report whose content is not listed, so a filtered export reveals nothing of hidden content
through which rows it lists.

**Filters** (:class:`ReportFilter`) combine with AND; several values of one filter with OR.
Those on stored columns (zone, organization, observer, category, severity, verdict) run in
SQL; the time range (on the signed ``signed_at``, which restricted reports show in clear) and
the free text (in narrative and place name, case-insensitive) are checked on the decoded
report, so a page may read more rows than it returns: the cost stays one decode per report
read.

**Paging** (:class:`Page`): keyset pages over the store's row order. A cursor names the last
row of a page; the next page starts after it, so reports stored meanwhile never shift a page
nor appear twice (newest first: they appear before the first page, not inside later ones).
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from bus.errors import BusError, ConfigError, Reason, StoreError
from bus.model import Category, Envelope, Report, SealedReport
from bus.store.sqlite import open_db

MAX_PAGE: Final = 1000  # rows per page of the API (the export streams without a limit)
MAX_TEXT_CHARS: Final = 200
MAX_VALUES: Final = 64  # values of one filter
MAX_ID_CHARS: Final = 128

# Verdict vocabulary (bus.judge.Status values a report can end in).
STATES: Final = ("final", "provisional")
STATUSES: Final = ("accepted", "quarantined", "revoked_after_acceptance")
CONTENT_PLAIN: Final = "plain"
CONTENT_INCLUDED: Final = "included"  # restricted, readable here, asked for
CONTENT_WITHHELD: Final = "withheld"  # restricted, readable here, not asked for
CONTENT_UNREADABLE: Final = "unreadable"  # restricted, this node cannot read it

# The API's query parameters (and the CLI's options, with "--" and "-" for "_").
PARAMS: Final = (
    "since",
    "until",
    "zone",
    "category",
    "min_severity",
    "org",
    "observer",
    "verdict",
    "status",
    "reason",
    "text",
    "restricted_content",
    "limit",
    "cursor",
    "order",
)


class FilterError(ConfigError):
    """A filter or paging parameter is wrong. ``key`` names the parameter (machine-readable),
    the message says what is wrong and what is accepted."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(key, problem, fix)


@dataclass(frozen=True, slots=True)
class ReportFilter:
    """Which reports to list (module docstring: how they combine).

    Args:
        since_ms, until_ms: signed_at range, ``since`` inclusive, ``until`` exclusive.
        zones, categories, orgs, observers: exact values, any of them.
        min_severity: severity at least this (1..5).
        verdicts: ``final`` and/or ``provisional``.
        statuses: verdict status (final when final, else provisional), any of them.
        reasons: reason code of the verdict, any of them (a quarantined final verdict's).
        text: case-insensitive substring of the narrative or the place name.
        include_restricted: list the content of restricted reports this node could read.
    """

    since_ms: int | None = None
    until_ms: int | None = None
    zones: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    min_severity: int | None = None
    orgs: tuple[str, ...] = ()
    observers: tuple[str, ...] = ()
    verdicts: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    text: str = ""
    include_restricted: bool = False

    @property
    def on_content(self) -> bool:
        """Whether a filter looks at content (never matches a report whose content is hidden)."""
        return bool(self.categories or self.min_severity is not None or self.text)


@dataclass(frozen=True, slots=True)
class Page:
    """Which slice: at most ``limit`` rows (None: all) after ``cursor`` (None: from the start),
    oldest first or ``newest_first``."""

    limit: int | None = None
    cursor: int | None = None
    newest_first: bool = False


@dataclass(frozen=True, slots=True)
class Attachment:
    """An attachment a report references: SHA-256, size, media type, name."""

    sha256: bytes
    size: int
    media_type: str
    name: str


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One listed report: its fields (None where its content is not listed), its verdict and
    its provenance. Times are Unix milliseconds, UTC."""

    cursor: int  # pass as Page.cursor to continue after this row
    report_id: str
    signed_at_ms: int
    org: str
    observer_id: str
    zone: str
    seq: int
    restricted: bool
    recipients: tuple[str, ...]
    readability: str  # "" for a plain report
    content: str  # CONTENT_*
    observed_at_ms: int | None
    category: str | None
    sub_type: str | None
    severity: int | None
    confidence: float | None
    killed: int | None
    injured: int | None
    missing: int | None
    civilian: bool | None
    lat: float | None
    lon: float | None
    precision_m: int | None
    place: str | None
    narrative: str | None
    corrects: str | None
    attachments: tuple[Attachment, ...] | None
    # provenance
    signer_key_id: bytes
    envelope_sha256: bytes
    topic: str
    partition: int
    offset: int
    log_time_ms: int
    # verdict
    verdict: str  # "final" | "provisional"
    status: str
    reason: str
    changed: bool  # the final verdict differs from this node's provisional one
    provisional_status: str
    sealed_epoch: int | None  # the epoch the record was sealed in (None: not sealed yet)
    seal_epoch: int | None  # the final seal the verdict rests on (None: provisional)
    seal_digest: bytes | None
    detail: str = ""  # the final judge's sentence
    # amendments (bus.verify), as this node stored them: what this report retracts (and why),
    # and the reports that corrected or retracted it ("" for none)
    retracts: str = ""
    retraction_reason: str = ""
    corrected_by: str = ""
    retracted_by: str = ""


@dataclass(frozen=True, slots=True)
class ReportPage:
    """One page and the cursor of the next (None: this was the last)."""

    rows: list[ReportRow] = field(default_factory=list)
    next_cursor: int | None = None


# -- parsing filters (the CLI's options and the API's query parameters alike) --------------


def parse_time(key: str, text: str) -> int:
    """A time as Unix milliseconds: all digits are milliseconds; else ISO 8601 (a date, or a
    date and time; without an offset it is UTC).

    Raises:
        FilterError: neither.
    """
    t = text.strip()
    if t.isdigit():
        return int(t)
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise FilterError(
            key,
            f"{text[:40]!r} is no time",
            "give Unix milliseconds or ISO 8601 (2026-11-01, 2026-11-01T06:00Z)",
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _ids(key: str, values: Sequence[str]) -> tuple[str, ...]:
    out = tuple(v.strip() for v in values if v.strip())
    if len(out) > MAX_VALUES:
        raise FilterError(key, f"{len(out)} values", f"give at most {MAX_VALUES}")
    for v in out:
        if len(v) > MAX_ID_CHARS:
            raise FilterError(
                key, f"a value is longer than {MAX_ID_CHARS} characters", "shorten it"
            )
    return out


def _one_of(key: str, values: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    out = _ids(key, values)
    for v in out:
        if v not in allowed:
            raise FilterError(key, f"{v!r} is not one of {', '.join(allowed)}", "use one of them")
    return out


def _int(key: str, text: str, low: int, high: int) -> int:
    try:
        n = int(text.strip())
    except ValueError:
        n = low - 1
    if not low <= n <= high:
        raise FilterError(key, f"{text[:20]!r} is not a whole number in {low}..{high}", "fix it")
    return n


def _single(key: str, values: Sequence[str]) -> str:
    if len(values) != 1:
        raise FilterError(key, f"given {len(values)} times", "give it once")
    return values[0]


def parse_params(
    params: Mapping[str, Sequence[str]], *, max_limit: int | None = MAX_PAGE
) -> tuple[ReportFilter, Page]:
    """Filters and page from query parameters (name -> values; names in :data:`PARAMS`).

    ``since``/``until`` (signed_at), ``zone``, ``category``, ``min_severity``, ``org``,
    ``observer``, ``verdict`` (final, provisional), ``status``, ``reason``, ``text``,
    ``restricted_content`` (1/true: list readable restricted content), ``limit``
    (1..``max_limit``; None: no bound), ``cursor`` (from the previous page), ``order``
    (``oldest``, the default, or ``newest``).

    Raises:
        FilterError: an unknown parameter (never silently ignored), or a wrong value.
    """
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise FilterError(unknown[0], "is no filter", f"use {', '.join(PARAMS)}")
    one = {k: _single(k, v) for k, v in params.items() if k not in _MULTI}
    since = parse_time("since", one["since"]) if "since" in one else None
    until = parse_time("until", one["until"]) if "until" in one else None
    if since is not None and until is not None and until <= since:
        raise FilterError("until", "is not after since", "give an until later than since")
    text = one.get("text", "").strip()
    if len(text) > MAX_TEXT_CHARS:
        raise FilterError("text", f"longer than {MAX_TEXT_CHARS} characters", "shorten it")
    flag = one.get("restricted_content", "0").strip().lower()
    if flag not in ("0", "1", "false", "true"):
        raise FilterError("restricted_content", f"{flag[:10]!r} is no flag", "use 1 or 0")
    order = one.get("order", "oldest")
    if order not in ("oldest", "newest"):
        raise FilterError("order", f"{order[:20]!r} is no order", "use oldest or newest")
    limit = None
    if "limit" in one:
        limit = _int("limit", one["limit"], 1, max_limit or 2**62)
    elif max_limit is not None:
        limit = max_limit
    cursor = _int("cursor", one["cursor"], 0, 2**62) if "cursor" in one else None
    filt = ReportFilter(
        since_ms=since,
        until_ms=until,
        zones=_ids("zone", params.get("zone", ())),
        categories=_one_of("category", params.get("category", ()), [c.label for c in Category]),
        min_severity=_int("min_severity", one["min_severity"], 1, 5)
        if "min_severity" in one
        else None,
        orgs=_ids("org", params.get("org", ())),
        observers=_ids("observer", params.get("observer", ())),
        verdicts=_one_of("verdict", params.get("verdict", ()), STATES),
        statuses=_one_of("status", params.get("status", ()), STATUSES),
        reasons=_one_of("reason", params.get("reason", ()), [r.value for r in Reason]),
        text=text,
        include_restricted=flag in ("1", "true"),
    )
    return filt, Page(limit=limit, cursor=cursor, newest_first=order == "newest")


_MULTI: Final = frozenset({"zone", "category", "org", "observer", "verdict", "status", "reason"})


# -- the query ------------------------------------------------------------------------------

# Every listed report with the node's own verdict and, when the final store is attached, the
# final one at its position, the epoch a sealed revocation withdrew it at and the seal its
# verdict rests on. {final} is replaced by the final store's columns or NULLs.
_BASE: Final = """
SELECT r.rowid AS rid, r.report_id, r.topic, r.partition, r."offset", r.observer_id, r.org,
       r.seq, r.zone, r.category, r.severity, r.log_time_ms, r.digest, r.key_id, r.envelope,
       r.retracts, r.retraction_reason, r.corrected_by, r.retracted_by,
       s.report_id IS NOT NULL AS restricted, s.recipients, s.readability, s.content,
       CASE WHEN x.report_id IS NULL THEN 'accepted' ELSE 'revoked_after_acceptance' END
           AS p_status,
       {final}
  FROM main.reports r
  LEFT JOIN main.revoked_after_acceptance x ON x.report_id = r.report_id
  LEFT JOIN main.sealed_reports s ON s.report_id = r.report_id
  {join}
"""
_FINAL_COLUMNS: Final = """
       v.epoch AS f_epoch, v.judged_epoch AS f_judged, v.status AS f_status,
       v.reason AS f_reason, v.detail AS f_detail, v.report_id AS f_report_id,
       (SELECT min(c.at_epoch) FROM final.changes c WHERE c.topic = r.topic
           AND c.partition = r.partition AND c."offset" = r."offset") AS f_revoked_at"""
_NO_FINAL: Final = """
       NULL AS f_epoch, NULL AS f_judged, NULL AS f_status, NULL AS f_reason,
       NULL AS f_detail, NULL AS f_report_id, NULL AS f_revoked_at"""
_FINAL_JOIN: Final = """LEFT JOIN final.verdicts v
    ON v.topic = r.topic AND v.partition = r.partition AND v."offset" = r."offset"
"""
# The verdict shown (module docstring), in SQL so filters on it run there.
_VERDICT: Final = """
SELECT b.*,
       CASE WHEN settled THEN 'final' ELSE 'provisional' END AS state,
       CASE WHEN NOT settled THEN p_status
            WHEN f_revoked_at IS NOT NULL THEN 'revoked_after_acceptance'
            ELSE f_status END AS status,
       CASE WHEN settled AND f_revoked_at IS NULL THEN f_reason ELSE '' END AS reason,
       CASE WHEN NOT settled THEN NULL
            WHEN f_revoked_at IS NOT NULL THEN f_revoked_at ELSE f_judged END AS rests_on
  FROM (SELECT *, coalesce(f_status, 'deferred') <> 'deferred' AS settled FROM ({base})) b
"""
_QUERY: Final = """
SELECT q.*, se.digest AS seal_digest
  FROM ({verdict}) q
  LEFT JOIN {seals} se ON se.epoch = q.rests_on
 WHERE {where}
 ORDER BY q.rid {order}
"""
_FINAL_TABLES: Final = ("seals", "verdicts", "changes")


def _in(column: str, values: Sequence[object], args: list[object]) -> str:
    args.extend(values)
    return f"{column} IN ({','.join('?' * len(values))})"


def _where(f: ReportFilter, page: Page) -> tuple[str, list[object]]:
    args: list[object] = []
    clauses = []
    if page.cursor is not None:
        clauses.append("q.rid < ?" if page.newest_first else "q.rid > ?")
        args.append(page.cursor)
    for column, values in (
        ("q.zone", f.zones),
        ("q.org", f.orgs),
        ("q.observer_id", f.observers),
        ("q.state", f.verdicts),
        ("q.status", f.statuses),
        ("q.reason", f.reasons),
    ):
        if values:
            clauses.append(_in(column, values, args))
    if f.on_content:
        # content listed: a plain report, or a readable restricted one when asked for
        clauses.append(
            "(NOT q.restricted OR (? AND q.readability = 'readable' AND q.content IS NOT NULL))"
        )
        args.append(int(f.include_restricted))
    if f.categories:
        clauses.append(_in("q.category", f.categories, args))
    if f.min_severity is not None:
        clauses.append("q.severity >= ?")
        args.append(f.min_severity)
    return " AND ".join(clauses) or "1", args


def _attach(db: sqlite3.Connection, final_db: Path) -> bool:
    """Attach the final store read-only as ``final``; False while it is absent or lacks its
    tables (its sealer has not created them yet)."""
    if not final_db.exists():
        return False
    uri = "file:" + urllib.parse.quote(str(final_db.resolve())) + "?mode=ro"
    try:
        db.execute("ATTACH DATABASE ? AS final", (uri,))
        (found,) = db.execute(
            "SELECT count(*) FROM final.sqlite_master WHERE type = 'table' AND name IN (?,?,?)",
            _FINAL_TABLES,
        ).fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read final store {final_db}: {exc}", path=str(final_db)) from exc
    return int(found) == len(_FINAL_TABLES)


class ReportQuery:
    """Read-only listing of a node's reports (module docstring). Use from one thread; close it.

    Args:
        node_db: the node's store.
        final_db: its final store (None: verdicts are provisional only).

    Raises:
        StoreError: the node store is missing or cannot be read, or the final store cannot.
    """

    def __init__(self, node_db: Path, final_db: Path | None = None) -> None:
        if not node_db.exists():
            raise StoreError(f"no node store at {node_db}", path=str(node_db))
        self._db = open_db(node_db, what="store", read_only=True, threads=True)
        try:
            self.final = final_db is not None and _attach(self._db, final_db)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the connection (ends any listing still open)."""
        self._db.close()

    def __enter__(self) -> ReportQuery:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _sql(self, f: ReportFilter, page: Page, select: str = "q.*") -> tuple[str, list[object]]:
        base = _BASE.format(
            final=_FINAL_COLUMNS if self.final else _NO_FINAL,
            join=_FINAL_JOIN if self.final else "",
        )
        where, args = _where(f, page)
        sql = _QUERY.format(
            verdict=_VERDICT.format(base=base),
            seals="final.seals" if self.final else "(SELECT NULL AS epoch, NULL AS digest)",
            where=where,
            order="DESC" if page.newest_first else "ASC",
        )
        if select != "q.*":
            sql = f"SELECT {select} FROM ({sql})"  # noqa: S608 - constant fragments
        return sql, args

    def candidates(self, f: ReportFilter, page: Page = Page()) -> int:
        """How many reports the filters that run in SQL leave (an upper bound of the rows
        :meth:`rows` yields: for a progress bar)."""
        sql, args = self._sql(f, Page(cursor=page.cursor, newest_first=page.newest_first))
        try:
            return int(self._db.execute(f"SELECT count(*) FROM ({sql})", args).fetchone()[0])  # noqa: S608
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {exc}") from exc

    def rows(
        self, f: ReportFilter, page: Page = Page(), *, on_read: Callable[[], None] | None = None
    ) -> Iterator[ReportRow]:
        """The matching reports, one at a time, in the page's order (at most ``page.limit``).

        ``on_read``, when given, is called once per report read (matching or not): progress
        for a caller that shows it.

        Raises:
            StoreError: the store cannot be read, or holds a report that does not decode.
        """
        sql, args = self._sql(f, page)
        needle = f.text.casefold()
        n = 0
        try:
            cur = self._db.cursor()
            cur.row_factory = sqlite3.Row
            for values in cur.execute(sql, args):
                if on_read is not None:
                    on_read()
                row = _row(values, f.include_restricted)
                if f.since_ms is not None and row.signed_at_ms < f.since_ms:
                    continue
                if f.until_ms is not None and row.signed_at_ms >= f.until_ms:
                    continue
                if needle and not (
                    needle in (row.narrative or "").casefold()
                    or needle in (row.place or "").casefold()
                ):
                    continue
                yield row
                n += 1
                if page.limit is not None and n >= page.limit:
                    return
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {exc}") from exc

    def page(self, f: ReportFilter, page: Page) -> ReportPage:
        """One page, and the cursor of the next when more reports match."""
        limit = page.limit if page.limit is not None else MAX_PAGE
        rows = list(self.rows(f, Page(limit + 1, page.cursor, page.newest_first)))
        more = len(rows) > limit
        rows = rows[:limit]
        return ReportPage(rows, rows[-1].cursor if more else None)


def _decode_error(report_id: str, exc: BusError) -> StoreError:
    return StoreError(
        f"stored report {report_id} does not decode: {exc.message}", report_id=report_id
    )


def _row(r: sqlite3.Row, include_restricted: bool) -> ReportRow:
    """One query row as a :class:`ReportRow` (content per the module docstring)."""
    report_id = str(r["report_id"])
    restricted = bool(r["restricted"])
    try:
        payload = Envelope.decode(bytes(r["envelope"])).payload
        content: Report | None = None
        readability = ""
        if restricted:
            sealed = SealedReport.decode(payload)
            signed_at, recipients = sealed.signed_at_ms, sealed.recipient_orgs
            readability = str(r["readability"])
            inner = r["content"]
            if readability == "readable" and inner is not None:
                shown = CONTENT_INCLUDED if include_restricted else CONTENT_WITHHELD
                if include_restricted:
                    content = Report.decode(bytes(inner))
            else:
                shown = CONTENT_UNREADABLE
        else:
            content = Report.decode(payload)
            signed_at, recipients, shown = content.signed_at_ms, (), CONTENT_PLAIN
    except BusError as exc:
        raise _decode_error(report_id, exc) from exc
    state, status = str(r["state"]), str(r["status"])
    reason = str(r["reason"] or "")
    p_status = str(r["p_status"])
    f_report = r["f_report_id"]
    changed = state == "final" and (
        (status, reason) != (p_status, "") or (f_report is not None and f_report != report_id)
    )
    digest = r["seal_digest"]
    c, loc = content, None if content is None else content.location
    cas = None if c is None else c.casualties
    return ReportRow(
        cursor=int(r["rid"]),
        report_id=report_id,
        signed_at_ms=signed_at,
        org=str(r["org"]),
        observer_id=str(r["observer_id"]),
        zone=str(r["zone"]),
        seq=int(r["seq"]),
        restricted=restricted,
        recipients=recipients,
        readability=readability,
        content=shown,
        observed_at_ms=None if c is None else c.observed_at_ms,
        category=None if c is None else c.category.label,
        sub_type=None if c is None else c.sub_type,
        severity=None if c is None else c.severity,
        confidence=None if c is None else c.confidence,
        killed=None if cas is None else cas.killed,
        injured=None if cas is None else cas.injured,
        missing=None if cas is None else cas.missing,
        civilian=None if cas is None else cas.civilian,
        lat=None if loc is None else loc.lat,
        lon=None if loc is None else loc.lon,
        precision_m=None if loc is None else loc.precision_m,
        place=None if loc is None else loc.place,
        narrative=None if c is None else c.narrative,
        corrects=None if c is None else c.corrects,
        attachments=None
        if c is None
        else tuple(Attachment(a.sha256, a.size, a.media_type, a.name) for a in c.attachments),
        signer_key_id=bytes(r["key_id"]),
        envelope_sha256=bytes(r["digest"]),
        topic=str(r["topic"]),
        partition=int(r["partition"]),
        offset=int(r["offset"]),
        log_time_ms=int(r["log_time_ms"]),
        verdict=state,
        status=status,
        reason=reason,
        changed=changed,
        provisional_status=p_status,
        sealed_epoch=None if r["f_epoch"] is None else int(r["f_epoch"]),
        seal_epoch=None if r["rests_on"] is None else int(r["rests_on"]),
        seal_digest=None if digest is None else bytes(digest),
        detail=str(r["f_detail"] or "") if state == "final" else "",
        retracts=str(r["retracts"]),
        retraction_reason=str(r["retraction_reason"]),
        corrected_by=str(r["corrected_by"]),
        retracted_by=str(r["retracted_by"]),
    )
