"""The OpenAPI 3.1 document of the dashboard's JSON API (``GET /api/openapi.json``).

The filters and paging are :data:`bus.store.report_query.PARAMS`, described once here for every
reports route; a test checks that the document is valid OpenAPI and that it names every route
the server has and every filter the query knows.
"""

from __future__ import annotations

from typing import Any, Final

from bus.errors import Reason
from bus.model import Category
from bus.store.report_query import MAX_PAGE, MAX_TEXT_CHARS, STATES, STATUSES
from nodes.org_node.dashboard.reports_view import PAGE_ROWS

_MANY: Final = {"style": "form", "explode": True}


def _param(name: str, schema: dict[str, Any], text: str, *, many: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "in": "query", "required": False, "description": text}
    if many:
        out.update(_MANY, schema={"type": "array", "items": schema})
    else:
        out["schema"] = schema
    return out


def filter_parameters() -> list[dict[str, Any]]:
    """The reports routes' query parameters (bus.store.report_query.parse_params)."""
    time = {"type": "string", "examples": ["2026-11-01T06:00Z", "1793512800000"]}
    ident = {"type": "string", "maxLength": 128}
    return [
        _param("since", time, "signed_at at or after (ISO 8601, UTC without offset, or Unix ms)"),
        _param("until", time, "signed_at before (ISO 8601 or Unix ms); after since"),
        _param("zone", ident, "mandate zone id; repeat for any of several", many=True),
        _param(
            "category",
            {"type": "string", "enum": [c.label for c in Category]},
            "report category; repeat for any of several",
            many=True,
        ),
        _param("min_severity", {"type": "integer", "minimum": 1, "maximum": 5}, "severity >="),
        _param("org", ident, "organization of the observer; repeatable", many=True),
        _param("observer", ident, "observer id; repeatable", many=True),
        _param(
            "verdict",
            {"type": "string", "enum": list(STATES)},
            "final (a quorum's final seal covers it) or provisional",
            many=True,
        ),
        _param("status", {"type": "string", "enum": list(STATUSES)}, "verdict status", many=True),
        _param(
            "reason",
            {"type": "string", "enum": sorted(r.value for r in Reason)},
            "reason code of a final verdict",
            many=True,
        ),
        _param(
            "text",
            {"type": "string", "maxLength": MAX_TEXT_CHARS},
            "case-insensitive substring of the narrative or the place name",
        ),
        _param(
            "restricted_content",
            {"type": "string", "enum": ["0", "1", "false", "true"], "default": "1"},
            "list the content of restricted reports this node can read (default 1)",
        ),
        _param(
            "order",
            {"type": "string", "enum": ["newest", "oldest"], "default": "newest"},
            "storage order",
        ),
        _param("cursor", {"type": "integer", "minimum": 0}, "next_cursor of the previous page"),
    ]


_LIMIT: Final = _param(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": PAGE_ROWS},
    "rows per page",
)
_ERROR: Final = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "reason": {"type": "string", "description": "machine-readable code"},
        "parameter": {"type": "string", "description": "the query parameter refused"},
        "fix": {"type": "string"},
    },
}
_REFUSED: Final[dict[str, Any]] = {
    "400": {
        "description": "an unknown or invalid query parameter (reason invalid_parameter)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
    "401": {
        "description": "no credentials (reason login_required): log in at /login",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
}
_REPORT: Final = {
    "type": "object",
    "description": "the analyst export's columns (CSV header names) plus cursor, position, "
    "detail and change; null where the content of a restricted report is not listed",
    "required": ["report_id", "cursor", "verdict", "verdict_status", "position"],
    "properties": {
        "report_id": {"type": "string"},
        "cursor": {"type": "integer"},
        "position": {"type": "string", "examples": ["obus.reports.un[0]@7"]},
        "detail": {"type": "string"},
        "change": {"type": "string"},
        "signed_at": {"type": "string", "format": "date-time"},
        "observed_at": {"type": ["string", "null"], "format": "date-time"},
        "org": {"type": "string"},
        "observer_id": {"type": "string"},
        "zone": {"type": "string"},
        "category": {"type": ["string", "null"]},
        "severity": {"type": ["integer", "null"]},
        "lat": {"type": ["number", "null"]},
        "lon": {"type": ["number", "null"]},
        "narrative": {"type": ["string", "null"]},
        "signer_key_id": {"type": "string", "description": "hex"},
        "chain_seq": {"type": "integer"},
        "envelope_sha256": {"type": "string", "description": "hex"},
        "verdict": {"type": "string", "enum": list(STATES)},
        "verdict_status": {"type": "string", "enum": list(STATUSES)},
        "verdict_reason": {"type": "string"},
        "seal_epoch": {"type": ["integer", "null"]},
        "seal_digest": {"type": ["string", "null"], "description": "base64"},
    },
    "additionalProperties": True,
}


def _with_refusals(responses: dict[str, Any]) -> dict[str, Any]:
    return {**responses, **_REFUSED}


def _json_ok(schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"200": {"description": text, "content": {"application/json": {"schema": schema}}}}


def _plain(text: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": text,
            "responses": {
                **_json_ok({"type": "object", "additionalProperties": True}, text),
                "401": _REFUSED["401"],
            },
        }
    }


def openapi_document(org: str) -> dict[str, Any]:
    """The document (module docstring)."""
    filters = filter_parameters()
    exports: dict[str, Any] = {
        fmt: {
            "get": {
                "summary": f"matching reports as {fmt_name}, streamed (no limit)",
                "parameters": filters,
                "responses": _with_refusals(
                    {"200": {"description": fmt_name, "content": {media: {}}}}
                ),
            }
        }
        for fmt, fmt_name, media in (
            ("csv", "CSV (RFC 4180)", "text/csv"),
            ("geojson", "GeoJSON FeatureCollection (RFC 7946)", "application/geo+json"),
            ("hxl", "HXL-tagged CSV", "text/csv"),
        )
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"observer-bus node dashboard API ({org})",
            "version": "1",
            "description": "Read-only. Every route but /login needs a session cookie (POST "
            "/login with user and password) or a trusted reverse proxy's user header.",
        },
        "components": {
            "schemas": {"Error": _ERROR, "Report": _REPORT},
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "obus_session"}
            },
        },
        "security": [{"session": []}],
        "paths": {
            "/api/reports": {
                "get": {
                    "summary": "one page of matching reports, newest first",
                    "parameters": [*filters, _LIMIT],
                    "responses": {
                        **_json_ok(
                            {
                                "type": "object",
                                "required": ["reports", "next_cursor", "limit", "order"],
                                "properties": {
                                    "reports": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Report"},
                                    },
                                    "next_cursor": {
                                        "type": ["integer", "null"],
                                        "description": "pass as cursor for the next page; "
                                        "null: this was the last",
                                    },
                                    "limit": {"type": "integer"},
                                    "order": {"type": "string"},
                                },
                            },
                            "a page",
                        ),
                        **_REFUSED,
                    },
                }
            },
            "/api/reports/{report_id}": {
                "get": {
                    "summary": "one report: envelope facts, verdict, attachments",
                    "parameters": [
                        {
                            "name": "report_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        **_json_ok({"$ref": "#/components/schemas/Report"}, "the report"),
                        "404": {"description": "no such report in this node's store"},
                        **_REFUSED,
                    },
                }
            },
            **{f"/api/reports.{fmt}": spec for fmt, spec in exports.items()},
            "/api/summary": _plain("counts, mandate, policy"),
            "/api/quarantine": _plain("rejected records with reason codes"),
            "/api/seals": _plain("newest final seals, the sealer's state, alarms"),
            "/api/verdicts/changed": _plain("records whose final verdict differs"),
            "/api/decisions": _plain("this organization's decisions"),
            "/api/decisions/others": _plain("other organizations' published decisions"),
            "/api/trends": _plain("early-warning series, reports per day"),
            "/api/statements": _plain("joint statements"),
            "/api/openapi.json": _plain("this document"),
        },
    }
