"""Reports for analysts in CSV, GeoJSON and HXL: the formats of ``obus export reports``, written
as the rows come (constant memory), to any text stream, so the dashboard API serves the same
bytes from the same function (:func:`write_reports`).

The rows come from :class:`bus.store.report_query.ReportQuery` (filters, paging, verdicts and
restricted content are decided there). Every format has the same columns, :data:`COLUMNS`, in
the same order: the report's fields, then its provenance and its verdict.

* **CSV** (RFC 4180): UTF-8 without a byte-order mark, a header row, CRLF line ends, fields
  quoted when they hold a comma, a quote or a line break (quotes doubled). Open the stream with
  ``newline=""``. **Formula injection**: a text cell that begins with ``=``, ``+``, ``-``,
  ``@``, a tab or a carriage return gets a leading apostrophe (``'``), so a spreadsheet shows it
  as text and never evaluates it (OWASP's advice); numbers the export writes itself (a negative
  longitude) are left as they are. Times are ISO 8601 in UTC to the millisecond
  (``2026-11-01T06:00:00.000Z``); empty cells mean "none" or "not listed" (restricted content);
  booleans are ``true``/``false``; lists (recipients, attachment hashes) are space-separated.
* **HXL** (Humanitarian Exchange Language 1.1): the CSV above with the hashtag row as its second
  row, one hashtag for every column (:data:`COLUMNS`): the standard hashtags where one fits
  (``#event+id``, ``#date+reported``, ``#date+occurred``, ``#org+code``, ``#loc+name``,
  ``#geo+lat``, ``#geo+lon``, ``#event+type``, ``#event+type+sub``, ``#severity``,
  ``#affected+killed``, ``#affected+injured``, ``#affected+missing``, ``#description``,
  ``#status``) and ``#meta`` with descriptive attributes for provenance.
* **GeoJSON** (RFC 7946): one FeatureCollection; each report a Feature whose ``id`` is its
  report id, geometry a Point ``[lon, lat]`` (WGS 84), or ``null`` when its position is not
  listed (a restricted report), and whose properties are the columns as JSON values (numbers,
  booleans, null; lists as arrays).

Encodings of binary values: signer key ids and envelope and attachment SHA-256 digests in hex
(as ``obus org revoke --key-id`` and the dashboard take and show them), seal digests in base64
(as ``obus node final-state`` and the dashboard show them).
"""

from __future__ import annotations

import base64
import csv
import enum
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from bus.store.report_query import ReportRow


class TextSink(Protocol):
    """Where an export goes: anything with ``write(str)`` (a file, a response body writer)."""

    def write(self, s: str, /) -> object:
        """Write ``s``."""


class Format(enum.StrEnum):
    """The export formats."""

    CSV = "csv"
    GEOJSON = "geojson"
    HXL = "hxl"


CONTENT_TYPES: Final = {
    Format.CSV: "text/csv; charset=utf-8",
    Format.HXL: "text/csv; charset=utf-8",
    Format.GEOJSON: "application/geo+json",
}
SUFFIXES: Final = {Format.CSV: ".csv", Format.HXL: ".hxl.csv", Format.GEOJSON: ".geojson"}

# Characters a spreadsheet reads as the start of a formula (and tab/CR, which some strip first).
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def utc_iso(ms: int | None) -> str | None:
    """Unix milliseconds as ISO 8601 UTC, e.g. ``2026-11-01T06:00:00.000Z``."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


def _attachments(r: ReportRow) -> list[str] | None:
    return None if r.attachments is None else [a.sha256.hex() for a in r.attachments]


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its name (CSV header, GeoJSON property), HXL hashtag, and its JSON value."""

    name: str
    hxl: str
    value: Callable[[ReportRow], Any]


COLUMNS: Final = (
    Column("report_id", "#event+id", lambda r: r.report_id),
    Column("signed_at", "#date+reported", lambda r: utc_iso(r.signed_at_ms)),
    Column("observed_at", "#date+occurred", lambda r: utc_iso(r.observed_at_ms)),
    Column("observer_id", "#contact+observer+id", lambda r: r.observer_id),
    Column("org", "#org+code", lambda r: r.org),
    Column("zone", "#loc+zone+code", lambda r: r.zone),
    Column("category", "#event+type", lambda r: r.category),
    Column("sub_type", "#event+type+sub", lambda r: r.sub_type),
    Column("severity", "#severity", lambda r: r.severity),
    Column("confidence", "#meta+confidence", lambda r: r.confidence),
    Column("killed", "#affected+killed", lambda r: r.killed),
    Column("injured", "#affected+injured", lambda r: r.injured),
    Column("missing", "#affected+missing", lambda r: r.missing),
    Column("civilian", "#affected+civilian+flag", lambda r: r.civilian),
    Column("lat", "#geo+lat", lambda r: r.lat),
    Column("lon", "#geo+lon", lambda r: r.lon),
    Column("precision_m", "#geo+precision+m", lambda r: r.precision_m),
    Column("place", "#loc+name", lambda r: r.place),
    Column("narrative", "#description", lambda r: r.narrative),
    Column("corrects", "#event+id+corrects", lambda r: r.corrects),
    Column("retracts", "#event+id+retracts", lambda r: r.retracts),
    Column("retraction_reason", "#description+retraction", lambda r: r.retraction_reason),
    Column("corrected_by", "#event+id+corrected_by", lambda r: r.corrected_by),
    Column("retracted_by", "#event+id+retracted_by", lambda r: r.retracted_by),
    Column(
        "attachments",
        "#meta+attachments+num",
        lambda r: None if r.attachments is None else len(r.attachments),
    ),
    Column("attachment_sha256", "#meta+attachments+sha256", _attachments),
    Column("restricted", "#meta+restricted", lambda r: r.restricted),
    Column("recipients", "#meta+recipients", lambda r: list(r.recipients)),
    Column("readability", "#meta+readability", lambda r: r.readability),
    Column("content", "#meta+content", lambda r: r.content),
    Column("signer_key_id", "#meta+signer+key", lambda r: _hex(r.signer_key_id)),
    Column("chain_seq", "#meta+chain+seq", lambda r: r.seq),
    Column("envelope_sha256", "#meta+envelope+sha256", lambda r: _hex(r.envelope_sha256)),
    Column("topic", "#meta+topic", lambda r: r.topic),
    Column("partition", "#meta+partition", lambda r: r.partition),
    Column("offset", "#meta+offset", lambda r: r.offset),
    Column("logged_at", "#date+logged", lambda r: utc_iso(r.log_time_ms)),
    Column("verdict", "#status+verdict", lambda r: r.verdict),
    Column("verdict_status", "#status", lambda r: r.status),
    Column("verdict_reason", "#status+reason+code", lambda r: r.reason),
    Column("verdict_changed", "#status+changed+flag", lambda r: r.changed),
    Column("provisional_status", "#status+provisional", lambda r: r.provisional_status),
    Column("verdict_detail", "#status+description", lambda r: r.detail),
    Column("sealed_epoch", "#meta+epoch+sealed", lambda r: r.sealed_epoch),
    Column("seal_epoch", "#meta+seal+epoch", lambda r: r.seal_epoch),
    Column("seal_digest", "#meta+seal+digest", lambda r: _b64(r.seal_digest)),
)


_FORMULA_START_SET: Final = frozenset(FORMULA_STARTS)


def neutralize(text: str) -> str:
    """A text cell a spreadsheet never evaluates (module docstring)."""
    return "'" + text if text[:1] in _FORMULA_START_SET else text


def _cell(value: Any) -> str:
    """A JSON value of a column as a CSV cell (dispatch on the exact type: the hot path)."""
    kind = type(value)
    if kind is str:
        return neutralize(value)
    if value is None:
        return ""
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        return repr(value)
    if kind is list:
        return neutralize(" ".join(str(v) for v in value))
    return neutralize(str(value))


def _write_csv(rows: Iterable[ReportRow], out: TextSink, *, hxl: bool) -> int:
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([c.name for c in COLUMNS])
    if hxl:
        writer.writerow([c.hxl for c in COLUMNS])
    n = 0
    for r in rows:
        writer.writerow([_cell(c.value(r)) for c in COLUMNS])
        n += 1
    return n


def feature(r: ReportRow) -> dict[str, Any]:
    """One report as a GeoJSON Feature (module docstring)."""
    geometry = (
        None if r.lat is None or r.lon is None else {"type": "Point", "coordinates": [r.lon, r.lat]}
    )
    return {
        "type": "Feature",
        "id": r.report_id,
        "geometry": geometry,
        "properties": {c.name: c.value(r) for c in COLUMNS},
    }


def _write_geojson(rows: Iterable[ReportRow], out: TextSink) -> int:
    out.write('{"type":"FeatureCollection","features":[')
    n = 0
    for r in rows:
        out.write(("," if n else "") + "\n")
        out.write(json.dumps(feature(r), ensure_ascii=False, separators=(",", ":")))
        n += 1
    out.write("\n]}\n")
    return n


def write_reports(rows: Iterable[ReportRow], out: TextSink, fmt: Format) -> int:
    """Write ``rows`` to ``out`` in ``fmt`` as they come; returns how many were written.

    ``out`` is a text stream (for CSV and HXL opened with ``newline=""``); nothing is kept
    in memory but the row being written.
    """
    if fmt is Format.GEOJSON:
        return _write_geojson(rows, out)
    return _write_csv(rows, out, hxl=fmt is Format.HXL)
