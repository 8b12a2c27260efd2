"""The dashboard's reports: filtered, paged, one report's detail, its attachments, and the
analyst export, all read through :class:`bus.store.report_query.ReportQuery` (one definition
of filters, paging, verdicts and restricted content for the CLI export, the page and the API).

**Parameters** are :data:`bus.store.report_query.PARAMS`, parsed by
:func:`~bus.store.report_query.parse_params` (an unknown or wrong one is refused, naming it),
with the dashboard's defaults: newest first (``order=newest``), :data:`PAGE_ROWS` rows a page
of the HTML feed and the JSON API (at most :data:`~bus.store.report_query.MAX_PAGE`), no limit
for an export, and the content of restricted reports this node can read listed
(``restricted_content=1``: whoever is logged in works for this organization, to which such a
report was sealed); a report this node cannot read is listed without content.

**Paging** is keyset paging: ``next_cursor`` names the last row of a page, and the next page
starts after it, so reports stored meanwhile never shift a page nor appear twice.

**Attachments** of a report are listed with their SHA-256, size and media type as the signed
report references them, and a ``check``: ``verified`` (the node keeps a file whose bytes hash
to the reference, hashed again when read), ``missing`` (not received or not reassembled yet),
``mismatch`` (a kept file no longer hashes to its address, or has another size) or
``not_kept`` (a restricted report's: never reassembled, see
:mod:`nodes.org_node.attachment_store`). Only ``verified`` bytes are ever served, images
(:data:`INLINE_TYPES`) inline, everything else as a download.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bus.errors import BusError, StoreError
from bus.model import Envelope, Report, SealedReport
from bus.store.report_query import (
    MAX_PAGE,
    Page,
    ReportFilter,
    ReportPage,
    ReportQuery,
    ReportRow,
    parse_params,
)
from bus.store.sqlite import open_db
from nodes.org_node.attachment_store import AttachmentStore
from nodes.org_node.dashboard.config import DashboardConfig
from nodes.org_node.dashboard.read_model import utc_minute
from nodes.org_node.export import Format, TextSink, feature, write_reports

PAGE_ROWS: Final = 50
INLINE_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
VERIFIED: Final = "verified"
MISSING: Final = "missing"
MISMATCH: Final = "mismatch"
NOT_KEPT: Final = "not_kept"


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


def dashboard_params(
    params: Mapping[str, Sequence[str]], *, export: bool = False, drop_empty: bool = False
) -> tuple[ReportFilter, Page]:
    """Filters and page from query parameters with the dashboard's defaults (module
    docstring). ``drop_empty``: a value left empty is no filter (the HTML form sends every
    field).

    Raises:
        FilterError: an unknown parameter or a wrong value (names it).
    """
    given = {
        k: [v for v in vs if v.strip()] if drop_empty else list(vs) for k, vs in params.items()
    }
    given = {k: vs for k, vs in given.items() if vs or not drop_empty}
    given.setdefault("order", ["newest"])
    given.setdefault("restricted_content", ["1"])
    if not export:
        given.setdefault("limit", [str(PAGE_ROWS)])
    return parse_params(given, max_limit=None if export else MAX_PAGE)


def verdict_of(r: ReportRow) -> dict[str, Any]:
    """A listed report's verdict in the shape of
    :func:`nodes.org_node.dashboard.final_view.verdict_json` (the page's verdict cell), with
    the seal it rests on (``seal_epoch``, ``seal_digest`` in base64)."""
    final = r.verdict == "final"
    prov = r.provisional_status
    shown = f"{r.status} ({r.reason})" if r.reason else r.status
    change = (
        f"{prov} → {shown}" if final and r.changed and (prov, "") != (r.status, r.reason) else ""
    )
    if final and r.changed and not change:
        change = "the sealed record at this position is another report"
    return {
        "state": r.verdict,
        "status": r.status,
        "reason": r.reason,
        "epoch": r.sealed_epoch,
        "changed": r.changed,
        "change": change,
        "provisional": {"status": prov, "reason": ""},
        "deferred": not final and r.sealed_epoch is not None,
        "revoked_at_epoch": r.seal_epoch
        if final and r.status == "revoked_after_acceptance"
        else None,
        "detail": r.detail,
        "seal_epoch": r.seal_epoch,
        "seal_digest": _b64(r.seal_digest),
    }


def report_json(r: ReportRow) -> dict[str, Any]:
    """One report in the JSON API: the export's columns (:data:`nodes.org_node.export.COLUMNS`,
    same names and encodings), its ``cursor``, ``position``, ``detail`` (the page's URL) and
    ``change`` (how sealing changed its verdict, in words)."""
    out: dict[str, Any] = dict(feature(r)["properties"])
    out["cursor"] = r.cursor
    out["position"] = f"{r.topic}[{r.partition}]@{r.offset}"
    out["detail"] = f"/reports/{r.report_id}"
    out["change"] = verdict_of(r)["change"]
    return out


def feed_row(r: ReportRow, reasons: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One report as the page's feed shows it; ``reasons``: why the reports that retracted
    listed ones did (:meth:`ReportsView.retraction_reasons`)."""
    return {
        "row": r,
        "retracted_because": (reasons or {}).get(r.retracted_by, "") if r.retracted_by else "",
        "report_id": r.report_id,
        "own_state": "verified" if r.provisional_status == "accepted" else r.provisional_status,
        "verdict": verdict_of(r),
        "observed_at": utc_minute(r.observed_at_ms),
        "signed_at": utc_minute(r.signed_at_ms),
        "shown": r.content in ("plain", "included"),
        "envelope_digest": r.envelope_sha256.hex(),
    }


@dataclass(frozen=True, slots=True)
class AttachmentView:
    """One attachment a report references, and whether this node holds its bytes."""

    sha256: str  # hex
    size: int
    media_type: str
    name: str
    check: str  # VERIFIED, MISSING, MISMATCH, NOT_KEPT
    inline: bool  # shown as an image on the page

    def json(self) -> dict[str, Any]:
        """As the API shows it (``url`` only when its bytes are served)."""
        return {
            "sha256": self.sha256,
            "size": self.size,
            "media_type": self.media_type,
            "name": self.name,
            "check": self.check,
            "url": f"/attachments/{self.sha256}" if self.check == VERIFIED else None,
        }


class ReportsView:
    """Reads for the feed, the detail view, attachments and exports (call from a worker
    thread; each call opens and closes its own read-only connections)."""

    def __init__(self, config: DashboardConfig) -> None:
        self.config = config

    @contextlib.contextmanager
    def _query(self) -> Iterator[ReportQuery]:
        q = ReportQuery(self.config.db_path, self.config.final_db)
        try:
            yield q
        finally:
            q.close()

    def page(self, f: ReportFilter, page: Page) -> ReportPage:
        """One page of matching reports and the next page's cursor."""
        with self._query() as q:
            return q.page(f, page)

    def retraction_reasons(self, rows: Sequence[ReportRow]) -> dict[str, str]:
        """The reason each retracting report of ``rows``' ``retracted_by`` gives, by its id."""
        ids = sorted({r.retracted_by for r in rows if r.retracted_by})
        if not ids:
            return {}
        db = open_db(self.config.db_path, what="store", read_only=True)
        try:
            found = db.execute(
                "SELECT report_id, retraction_reason FROM reports"  # noqa: S608 - placeholders
                f" WHERE report_id IN ({','.join('?' * len(ids))})",
                ids,
            ).fetchall()
        finally:
            db.close()
        return {str(i): str(reason) for i, reason in found}

    def export(self, f: ReportFilter, page: Page, fmt: Format, out: TextSink) -> int:
        """Write the matching reports to ``out`` as they are read; returns how many."""
        with self._query() as q:
            return write_reports(q.rows(f, page), out, fmt)

    def _attachment_store(self) -> AttachmentStore | None:
        db = self.config.db_path
        path = db.with_name(db.stem + ".attachments.db")
        if not path.exists():
            return None
        return AttachmentStore(path, db.with_name(db.stem + ".attachments"), None, read_only=True)

    def detail(self, report_id: str) -> dict[str, Any] | None:
        """One report with everything the detail view shows; None when this node holds no
        such report.

        Raises:
            StoreError: a store cannot be read, or the report does not decode.
        """
        db = open_db(self.config.db_path, what="store", read_only=True)
        try:
            found = db.execute(
                "SELECT rowid, envelope FROM reports WHERE report_id = ?",
                (report_id,),
            ).fetchone()
        finally:
            db.close()
        if found is None:
            return None
        rowid, raw = int(found[0]), bytes(found[1])
        # The keyset page that starts just above this row holds exactly it, first.
        with self._query() as q:
            rows = q.page(
                ReportFilter(include_restricted=True), Page(1, rowid + 1, newest_first=True)
            ).rows
        if not rows or rows[0].report_id != report_id:
            return None
        r = rows[0]
        try:
            payload = Envelope.decode(raw).payload
            # A restricted report's chain position is in clear (its content need not be).
            chain = SealedReport.decode(payload) if r.restricted else Report.decode(payload)
            prev = chain.prev_digest.hex()
        except BusError as exc:
            raise StoreError(f"stored report {report_id} does not decode: {exc.message}") from exc
        views = self.attachments(r)
        return {
            "report": report_json(r),
            "row": r,
            "verdict": verdict_of(r),
            "prev_digest": prev,
            "retracted_because": self.retraction_reasons([r]).get(r.retracted_by, ""),
            "attachments": [a.json() for a in views],
            "attachment_views": views,
        }

    def attachments(self, r: ReportRow) -> list[AttachmentView]:
        """The report's attachments with their checks (module docstring)."""
        if r.attachments is None or not r.attachments:
            return []
        store = None if r.restricted else self._attachment_store()
        out = []
        try:
            for a in r.attachments:
                check = NOT_KEPT if r.restricted else MISSING
                kept = None if store is None else store.stored(a.sha256)
                if kept is not None:
                    good = kept.size == a.size and store is not None and store.verify_file(kept)
                    check = VERIFIED if good else MISMATCH
                out.append(
                    AttachmentView(
                        a.sha256.hex(), a.size, a.media_type, a.name, check,
                        check == VERIFIED and a.media_type in INLINE_TYPES,
                    )
                )  # fmt: skip
        finally:
            if store is not None:
                store.close()
        return out

    def attachment_bytes(self, sha_hex: str) -> tuple[bytes, str, str] | None:
        """A kept attachment's bytes, media type and name, only when they hash to its address
        now; None otherwise (unknown, missing, altered).

        Raises:
            StoreError: the attachment store or the file cannot be read.
        """
        try:
            digest = bytes.fromhex(sha_hex)
        except ValueError:
            return None
        if len(digest) != 32:
            return None
        store = self._attachment_store()
        if store is None:
            return None
        try:
            kept = store.stored(digest)
        finally:
            store.close()
        if kept is None:
            return None
        try:
            data = kept.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read attachment {kept.path}: {exc.strerror}") from exc
        if len(data) != kept.size or hashlib.sha256(data).digest() != digest:
            return None
        return data, kept.media_type, kept.name
