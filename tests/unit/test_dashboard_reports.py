"""The dashboard's reports for a real day (no browser, no broker): filters and keyset paging in
/api/reports and the page, unknown parameters refused, a report's detail with its photo checked
against its SHA-256, the analyst export from the API, and the OpenAPI document.

The node store is written by the node's own code paths (Ingestor -> NodeStore.commit_batch), the
photo by its attachment store (chunks in, settled against the accepted report), and the
dashboard serves them on a free 127.0.0.1 port. :func:`build_day` also builds the 20,000-report
store of the browser test (tests/integration/test_dashboard_day.py).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from bus.attachment import split
from bus.crypto import key_id
from bus.ingest import Ingestor, RecordRef
from bus.model import Attachment, Category, Location, Mandate, Report, sha256
from bus.store.node import NodeStore
from bus.store.report_query import PARAMS
from bus.verify import ChainBook
from nodes.org_node.attachment_store import AttachmentStore, ChunkRecord
from nodes.org_node.attachments import default_paths
from nodes.org_node.dashboard.config import DashboardConfig
from nodes.org_node.dashboard.server import Dashboard
from tests.mission import NOW_MS, Mission, make_mission
from tests.unit.test_dashboard_auth import dashboard_auth, logged_in
from tests.unit.test_export_reports import _populate, _world

HOUR = 3_600_000
SPAN_MS = 6 * 24 * HOUR  # signed within the mandate's delivery lag (7 days)
WORDS = ("bridge", "checkpoint", "market", "school", "depot", "ridge")
CATEGORIES = [c for c in Category if c is not Category.OTHER]


def png(width: int = 96, height: int = 64) -> bytes:
    """A small real PNG (an RGB gradient) that a browser decodes."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 160)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@dataclass
class Day:
    """A node store of ``len(drafts)`` reports of every organization (module docstring)."""

    db: Path
    m: Mission
    drafts: list[Report] = field(default_factory=list)  # in storage order
    photo: bytes = b""
    photo_id: str = ""
    missing_id: str = ""  # references an attachment that never arrived
    offsets: dict[str, int] = field(default_factory=dict)

    @property
    def mandate(self) -> Mandate:
        return self.m.scenario.mandate

    def config(self, **changes: Any) -> DashboardConfig:
        return DashboardConfig(
            org="un",
            db_path=self.db,
            mandate=self.mandate,
            port=0,
            auth=dashboard_auth(),
            **changes,
        )

    def add(self, count: int, *, batch: int = 500) -> None:
        """``count`` more reports, stored in batches as the node stores them."""
        store = NodeStore(self.db)
        try:
            ing = Ingestor(
                self.m.keyring,
                ChainBook(store.chain_heads(), store.report_digest),
                clock=self.m.clock,
            )
            orgs = [o.org for o in self.mandate.organizations]
            zones = self.mandate.zones
            pending: list[Any] = []
            positions: dict[tuple[str, int], int] = {}
            for _ in range(count):
                k = len(self.drafts)
                org, i = orgs[k % len(orgs)], 1 + (k // len(orgs)) % 2
                zone = zones[k % len(zones)]
                lat = zone.min_lat + (zone.max_lat - zone.min_lat) * ((k * 37) % 100) / 100
                lon = zone.min_lon + (zone.max_lon - zone.min_lon) * ((k * 61) % 100) / 100
                signed = NOW_MS - SPAN_MS + (k * 7919 * 1000) % SPAN_MS
                attachments: tuple[Attachment, ...] = ()
                if k == 15:
                    attachments = (
                        Attachment(sha256(self.photo), len(self.photo), "image/png", "crater.png"),
                    )
                elif k == 4:
                    lost = b"never sent"
                    attachments = (
                        Attachment(sha256(lost), len(lost), "application/pdf", "log.pdf"),
                    )
                changes = {
                    "zone": zone.id,
                    "category": CATEGORIES[k % len(CATEGORIES)],
                    "severity": 1 + k % 5,
                    "location": Location(round(lat, 5), round(lon, 5), 100, f"Place {k % 40}"),
                    "narrative": f"report {k}: shots near the {WORDS[k % len(WORDS)]}",
                    "signed_at_ms": signed,
                    "observed_at_ms": signed - 600_000,
                    "attachments": attachments,
                }
                signer = self.m.signer(org, i)
                draft = self.m.draft(org, i, **changes)
                head = signer.head
                if head is not None:
                    draft = dataclasses.replace(draft, seq=head.seq + 1, prev_digest=head.digest)
                raw = signer.sign(draft)
                topic = f"obus.reports.{org}"
                offset = self.offsets.get(topic, 0)
                self.offsets[topic] = offset + 1
                out = ing.judge(RecordRef(topic, 0, offset, signed + 1000, None), raw, org)
                pending.append(out)
                positions[(topic, 0)] = offset + 1
                self.drafts.append(draft)
                if k == 15:
                    self.photo_id = draft.report_id
                if k == 4:
                    self.missing_id = draft.report_id
                if len(pending) >= batch:
                    store.commit_batch(pending, ing.chain.heads(), [], dict(positions))
                    pending.clear()
            if pending:
                store.commit_batch(pending, ing.chain.heads(), [], dict(positions))
        finally:
            store.close()

    def deliver_photo(self) -> None:
        """The photo's chunks, reassembled and kept as the node's reassembler keeps them."""
        db, blobs = default_paths(self.db)
        store = AttachmentStore(db, blobs, self.db)
        try:
            records = [
                ChunkRecord("obus.attachments.un", 0, n, c.encode())
                for n, c in enumerate(split(self.photo))
            ]
            touched = store.ingest(records, now_ms=NOW_MS)
            store.refresh_refs()
            for layout in touched:
                assert store.settle(layout, now_ms=NOW_MS) == "stored"
        finally:
            store.close()


def build_day(tmp: Path, count: int) -> Day:
    """A store of ``count`` reports (at least 16) with one photo kept (module docstring)."""
    day = Day(tmp / "un.db", make_mission(), photo=png())
    day.add(count)
    day.deliver_photo()
    return day


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Day, str]]:
    day = build_day(tmp_path, 60)
    dash = Dashboard(day.config())
    await dash.start()
    try:
        yield day, dash.url
    finally:
        await dash.stop()


async def _get_json(url: str) -> tuple[int, Any]:
    async with logged_in(url) as http, http.get(url) as resp:
        return resp.status, await resp.json()


def _newest_first(drafts: list[Report]) -> list[str]:
    return [d.report_id for d in reversed(drafts)]


async def test_filters_match_what_the_observers_signed(served: tuple[Day, str]) -> None:
    day, url = served
    d = day.drafts
    since, until = NOW_MS - 4 * 24 * HOUR, NOW_MS - 2 * 24 * HOUR
    cases: list[tuple[str, list[Report]]] = [
        ("", d),
        ("zone=east", [r for r in d if r.zone == "east"]),
        ("zone=east&zone=south", [r for r in d if r.zone in ("east", "south")]),
        ("category=shelling", [r for r in d if r.category is Category.SHELLING]),
        ("min_severity=4", [r for r in d if r.severity >= 4]),
        ("org=osce&org=sco", [r for r in d if r.org in ("osce", "sco")]),
        ("observer=" + d[1].observer_id, [r for r in d if r.observer_id == d[1].observer_id]),
        ("text=BRIDGE", [r for r in d if "bridge" in r.narrative]),
        ("text=place%2012", [r for r in d if r.location.place == "Place 12"]),
        (
            f"since={since}&until={until}",
            [r for r in d if since <= r.signed_at_ms < until],
        ),
        (
            "zone=north&min_severity=3&text=shots&verdict=provisional&status=accepted",
            [r for r in d if r.zone == "north" and r.severity >= 3],
        ),
        ("verdict=final", []),  # no sealer here: nothing is final
        ("status=quarantined", []),
    ]
    for query, want in cases:
        status, body = await _get_json(f"{url}api/reports?limit=1000&{query}")
        assert status == 200, query
        assert [r["report_id"] for r in body["reports"]] == _newest_first(want), query
        assert body["next_cursor"] is None
    # ISO 8601 times filter the same as milliseconds.
    _, iso = await _get_json(f"{url}api/reports?limit=1000&since=2026-10-28T00:00Z")
    assert {r["report_id"] for r in iso["reports"]} == {
        r.report_id for r in d if r.signed_at_ms >= NOW_MS - 4 * 24 * HOUR
    }


async def test_pages_are_stable_while_reports_arrive(served: tuple[Day, str]) -> None:
    day, url = served
    seen: list[str] = []
    cursor = None
    pages = 0
    async with logged_in(url) as http:
        while True:
            query = "limit=7" + (f"&cursor={cursor}" if cursor is not None else "")
            async with http.get(f"{url}api/reports?{query}") as resp:
                body = await resp.json()
            seen += [r["report_id"] for r in body["reports"]]
            pages += 1
            if pages == 2:
                day.add(5)  # five new reports arrive while the analyst pages
            cursor = body["next_cursor"]
            if cursor is None:
                break
        # Every report of before exactly once, newest first; the new ones only on a new first page.
        assert seen == _newest_first(day.drafts[:60])
        assert pages == 9
        async with http.get(f"{url}api/reports?limit=7") as resp:
            first = [r["report_id"] for r in (await resp.json())["reports"]]
        assert first[:5] == _newest_first(day.drafts[60:])
        # The page's "older" link carries the filters and the cursor.
        async with http.get(f"{url}?zone=east&limit=3&since=&text=") as resp:
            page = await resp.text()
        assert resp.status == 200
        east = [r.report_id for r in reversed(day.drafts) if r.zone == "east"]
        assert all(f'data-report-id="{i}"' in page for i in east[:3])
        assert f'data-report-id="{east[3]}"' not in page
        assert 'id="next-page" href="/?zone=east&amp;limit=3&amp;cursor=' in page
        assert "<option selected>east</option>" in page


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("sort=epoch", "sort"),
        ("zone=north&Zone=north", "Zone"),
        ("min_severity=9", "min_severity"),
        ("since=yesterday", "since"),
        ("since=2026-11-02&until=2026-11-01", "until"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("cursor=-1", "cursor"),
        ("category=picnic", "category"),
        ("verdict=maybe", "verdict"),
        ("order=random", "order"),
        ("text=" + "x" * 201, "text"),
        ("limit=1&limit=2", "limit"),
    ],
)
async def test_unknown_or_wrong_parameters_are_refused_naming_them(
    served: tuple[Day, str], query: str, parameter: str
) -> None:
    _, url = served
    async with logged_in(url) as http:
        exports = ("api/reports.csv", "api/reports.geojson") if parameter != "limit" else ()
        for path in ("api/reports", "map.svg", *exports):  # an export has no page limit
            async with http.get(f"{url}{path}?{query}") as resp:
                assert resp.status == 400, (path, query)
                body = await resp.json()
                assert body["parameter"] == parameter and body["reason"] == "invalid_parameter"
        async with http.get(f"{url}?{query}") as resp:
            assert resp.status == 400 and repr(parameter) in await resp.text()


async def test_detail_shows_envelope_facts_and_the_checked_photo(served: tuple[Day, str]) -> None:
    day, url = served
    draft = next(d for d in day.drafts if d.report_id == day.photo_id)
    status, body = await _get_json(f"{url}api/reports/{day.photo_id}")
    assert status == 200
    oid, key = day.m.observer(draft.org, 1)  # report 15: nato's first observer's second
    assert draft.seq == 2 and draft.prev_digest
    assert oid == draft.observer_id
    signer_key_id = key_id(key.public_key).hex()
    assert body["signer_key_id"] == signer_key_id
    assert (body["org"], body["observer_id"], body["chain_seq"]) == (
        draft.org,
        draft.observer_id,
        draft.seq,
    )
    assert body["prev_digest"] == draft.prev_digest.hex()
    assert body["verdict"] == "provisional" and body["seal_epoch"] is None
    [photo] = body["attachments"]
    assert photo == {
        "sha256": sha256(day.photo).hex(),
        "size": len(day.photo),
        "media_type": "image/png",
        "name": "crater.png",
        "check": "verified",
        "url": f"/attachments/{sha256(day.photo).hex()}",
    }
    async with logged_in(url) as http:
        async with http.get(url.rstrip("/") + photo["url"]) as resp:
            assert resp.status == 200 and resp.content_type == "image/png"
            assert await resp.read() == day.photo
            assert resp.headers["Content-Disposition"].startswith("inline")
        async with http.get(f"{url}reports/{day.photo_id}") as resp:
            page = await resp.text()
        assert f'<img src="{photo["url"]}"' in page and "hash verified" in page
        assert signer_key_id in page and draft.prev_digest.hex() in page
        # The report whose attachment never arrived: listed, missing, not served.
        async with http.get(f"{url}api/reports/{day.missing_id}") as resp:
            [lost] = (await resp.json())["attachments"]
        assert (lost["check"], lost["url"]) == ("missing", None)
        async with http.get(f"{url}attachments/{lost['sha256']}") as resp:
            assert resp.status == 404
        # A kept file altered on disk is no longer served, and the detail says so.
        _, blobs = default_paths(day.db)
        h = sha256(day.photo).hex()
        (blobs / h[:2] / h).write_bytes(day.photo[:-1] + b"\x00")
        async with http.get(url.rstrip("/") + photo["url"]) as resp:
            assert resp.status == 404
        async with http.get(f"{url}api/reports/{day.photo_id}") as resp:
            assert (await resp.json())["attachments"][0]["check"] == "mismatch"
        for bad in ("nope", "0" * 64, "zz" * 32):
            async with http.get(f"{url}attachments/{bad}") as resp:
                assert resp.status == 404
        async with http.get(f"{url}api/reports/no-such-report") as resp:
            assert resp.status == 404 and (await resp.json())["reason"] == "not_found"
        async with http.get(f"{url}reports/no-such-report") as resp:
            assert resp.status == 404


async def test_exports_from_the_api_carry_the_same_filters(served: tuple[Day, str]) -> None:
    day, url = served
    want = _newest_first([r for r in day.drafts if r.zone == "south" and r.severity >= 2])
    async with logged_in(url) as http:
        query = "zone=south&min_severity=2"
        async with http.get(f"{url}api/reports.csv?{query}") as resp:
            assert resp.content_type == "text/csv"
            assert "attachment" in resp.headers["Content-Disposition"]
            rows = list(csv.DictReader(io.StringIO(await resp.text())))
        async with http.get(f"{url}api/reports.hxl?{query}") as resp:
            hxl = list(csv.reader(io.StringIO(await resp.text())))
        async with http.get(f"{url}api/reports.geojson?{query}") as resp:
            assert resp.content_type == "application/geo+json"
            collection = json.loads(await resp.text())
    assert [r["report_id"] for r in rows] == want
    assert {r["verdict"] for r in rows} == {"provisional"}
    assert all(r["signer_key_id"] and r["envelope_sha256"] for r in rows)
    assert hxl[1][0] == "#event+id" and [r[0] for r in hxl[2:]] == want
    assert [f["id"] for f in collection["features"]] == want
    assert collection["features"][0]["geometry"]["type"] == "Point"


async def test_openapi_document_is_valid_and_names_every_route_and_filter(
    served: tuple[Day, str],
) -> None:
    _, url = served
    status, doc = await _get_json(f"{url}api/openapi.json")
    assert status == 200
    validate(doc)
    dash = Dashboard(served[0].config())
    api_routes = {
        info.get("path") or info.get("formatter")
        for r in dash.app().router.routes()
        if r.method == "GET"
        and (info := r.get_info())
        and str(info.get("path") or info.get("formatter")).startswith("/api/")
    }
    documented = {p.replace("{report_id}", "{report_id}") for p in doc["paths"]}
    assert api_routes == documented
    params = {p["name"] for p in doc["paths"]["/api/reports"]["get"]["parameters"]}
    assert params == set(PARAMS)


async def test_restricted_reports_are_shown_without_content_when_unreadable(
    tmp_path: Path,
) -> None:
    """The export test's sealed world (tests/unit/test_export_reports.py): "mine" is sealed to
    un and osce (this node reads it), "theirs" to osce only (it cannot)."""
    with _world(tmp_path) as w:
        _populate(w)
        config = DashboardConfig(
            org="un",
            db_path=w.node_db,
            final_db=w.final_db,
            mandate=w.m.scenario.mandate,
            port=0,
            auth=dashboard_auth(),
        )
        dash = Dashboard(config)
        await dash.start()
        try:
            mine, theirs = w.drafts["mine"].report_id, w.drafts["theirs"].report_id
            async with logged_in(dash.url) as http:
                async with http.get(dash.url + "api/reports?limit=100") as resp:
                    rows = {r["report_id"]: r for r in (await resp.json())["reports"]}
                async with http.get(dash.url + f"reports/{theirs}") as resp:
                    hidden = await resp.text()
                async with http.get(dash.url + f"api/reports/{theirs}") as resp:
                    hidden_json = await resp.json()
                async with http.get(dash.url) as resp:
                    page = await resp.text()
                async with http.get(dash.url + "api/reports?verdict=final&limit=100") as resp:
                    final = (await resp.json())["reports"]
                async with http.get(dash.url + "api/summary") as resp:
                    summary = await resp.json()
        finally:
            await dash.stop()
    assert rows[mine]["content"] == "included"
    assert rows[mine]["narrative"] == "Restricted: detainees seen."
    assert rows[theirs]["content"] == "unreadable" and rows[theirs]["narrative"] is None
    assert rows[theirs]["org"] == "un" and rows[theirs]["signer_key_id"]  # clear fields shown
    assert "Only OSCE may read this." not in hidden + page + json.dumps(hidden_json)
    assert 'id="content-hidden"' in hidden and "cannot read its content" in hidden
    # Its chain position is in clear: seq and the previous report's digest.
    assert hidden_json["prev_digest"] == w.drafts["theirs"].prev_digest.hex() != ""
    assert hidden_json["attachments"] == []
    assert "content not readable by this node" in page
    # The counts take restricted reports in (the read model never decodes them as plain).
    assert summary["reports_verified"] == len(rows) == len(w.drafts)
    # Final verdicts name the seal they rest on (epoch and base64 digest).
    assert final and all(r["seal_epoch"] and len(r["seal_digest"]) == 44 for r in final)
