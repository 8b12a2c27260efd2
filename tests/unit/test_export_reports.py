"""Analyst export (``obus export reports``): CSV, GeoJSON and HXL of a filtered node store, with
verdicts and provenance.

No broker: the bus is simulated as in test_dashboard_final (partitions as lists, the seals topic
as a list). The node's two stores are written by the node's own code paths: its node store by
its Ingestor and NodeStore.commit_batch (provisional verdicts), its final store by a real
Sealer's BusReader judging the sealed epochs (FinalStore.record). Every expected value comes
from the drafts the observers signed, the node store's own reads or the final store's.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import re
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geojson  # type: ignore[import-untyped]
import pytest

from bus.epoch import PartitionRef
from bus.errors import BusError
from bus.ingest import Ingestor, RecordRef
from bus.model import Attachment, Casualties, Category, EncryptionKey, Location, Report
from bus.note import key_name
from bus.seal import cosign_seal, sign_proposal
from bus.sealed import DecryptionKey
from bus.sign import sign_encryption_key
from bus.store.final import FinalStore
from bus.store.node import NodeStore
from bus.store.report_query import FilterError, Page, ReportQuery, parse_params
from bus.topics import Topics
from bus.verify import ChainBook, ChainHead
from nodes.cli.main import main
from nodes.demo.scenario import demo_key, node_subject
from nodes.org_node.export import COLUMNS, Format, write_reports
from nodes.org_node.sealer import Sealer, SealerConfig
from tests.mission import NOW_MS, Mission, make_mission

TOPICS = Topics("obus.")
MINUTE = 60_000
DAY = 86_400_000
TRICKY = 'Shots, then "silence";\nline two, Cyrillic: Обстрел у моста — 3 раненых'  # noqa: RUF001
FORMULA = '=HYPERLINK("http://x.invalid","click")'


def _chained(head: ChainHead | None, draft: Report) -> Report:
    """The draft at the chain position its signer gives it (what the observer signs)."""
    if head is None:
        return draft
    return dataclasses.replace(draft, seq=head.seq + 1, prev_digest=head.digest)


@dataclass
class World:
    """A sealed bus and one UN node's node store and final store (module docstring)."""

    tmp: Path
    m: Mission
    sealer: Sealer
    node: NodeStore
    ingestor: Ingestor
    parts: dict[PartitionRef, list[bytes]] = field(default_factory=dict)
    seals: list[bytes] = field(default_factory=list)
    drafts: dict[str, Report] = field(default_factory=dict)  # name -> the report signed
    positions: dict[str, tuple[str, int, int]] = field(default_factory=dict)

    @property
    def node_db(self) -> Path:
        return self.tmp / "un.db"

    @property
    def final_db(self) -> Path:
        return self.tmp / "un.final.db"

    def _append(self, ref: PartitionRef, raw: bytes) -> int:
        values = self.parts.setdefault(ref, [])
        values.append(raw)
        self.sealer.reader.offer_records(ref, len(values) - 1, [raw])
        return len(values) - 1

    def registry(self, raw: bytes) -> None:
        self._append((TOPICS.registry, 0), raw)

    def publish(self, name: str, org: str, raw: bytes, draft: Report) -> None:
        """A report record on the bus, judged at once by the node's ingest (provisional)."""
        topic = TOPICS.reports(org)
        offset = self._append((topic, 0), raw)
        out = self.ingestor.judge(RecordRef(topic, 0, offset, NOW_MS, None), raw, org)
        self.node.commit_batch([out], self.ingestor.chain.heads(), [], {(topic, 0): offset + 1})
        self.drafts[name] = draft
        self.positions[name] = (topic, 0, offset)

    def report(self, name: str, org: str = "un", i: int = 1, **changes: Any) -> None:
        signer = self.m.signer(org, i)
        chained = _chained(signer.head, self.m.draft(org, i, **changes))
        self.publish(name, org, signer.sign(chained), chained)

    def restricted(self, name: str, recipients: list[str], org: str = "un", **changes: Any) -> None:
        eks = [self.m.keyring.encryption_key(o) for o in recipients]
        signer = self.m.signer(org, 1)
        chained = _chained(signer.head, self.m.draft(org, 1, **changes))
        raw = signer.sign_sealed(chained, [e for e in eks if e is not None])
        self.publish(name, org, raw, chained)

    def _sign(self, text_of: Any, org: str, now_ms: int, *, propose: bool) -> list[Any]:
        key, name = self.m.scenario.node_keys[org], key_name(org, node_subject(org))
        raw = (
            sign_proposal(text_of, key, name)
            if propose
            else cosign_seal(text_of.text(), key, name, now_ms=now_ms)
        )
        self.seals.append(raw)
        return [self.sealer.reader.offer_seal(len(self.seals) - 1, raw)]

    def seal(self, now_ms: int) -> None:
        """UN proposes and k organizations cosign everything published; the judged epochs go
        to the final store as the sealer stores them."""
        p = self.sealer.reader.propose(org="un", now_ms=now_ms)
        assert p is not None
        k = self.m.scenario.mandate.threshold
        others = [o for o in sorted(self.m.scenario.org_roots) if o != "un"][: k - 1]
        updates = self._sign(p, "un", now_ms, propose=True)
        for org in ["un", *others]:
            updates += self._sign(p, org, now_ms, propose=False)
        self.sealer.store.record(
            [ev for u in updates for ev in u.epochs],
            [f for u in updates for f in u.finals],
            [e for u in updates for e in u.equivocations],
        )

    def query(self) -> ReportQuery:
        return ReportQuery(self.node_db, self.final_db)


@contextlib.contextmanager
def _world(tmp: Path) -> Iterator[World]:
    """Trust published and sealed (epoch 1); encryption keys of UN and OSCE on the registry."""
    m = make_mission(observers_per_org=2)
    mandate = m.scenario.mandate
    un_key = DecryptionKey("un", demo_key("x25519:un").seed)
    for org in ("un", "osce"):
        dk = un_key if org == "un" else DecryptionKey(org, demo_key(f"x25519:{org}").seed)
        ek = EncryptionKey(
            org, dk.public_key, mandate.not_before_ms, mandate.not_after_ms, 1, m.mandate_id
        )
        m.apply(sign_encryption_key(ek, m.scenario.org_roots[org]))
    node = NodeStore(tmp / "un.db")
    sealer = Sealer(
        SealerConfig(
            org="un",
            bootstrap="127.0.0.1:1",  # never contacted: nothing here runs the Kafka loop
            db_path=tmp / "un.final.db",
            root=mandate,
            node_key=None,
            topics=TOPICS,
        )
    )
    ingestor = Ingestor(
        m.keyring,
        ChainBook(node.chain_heads(), node.report_digest),
        decryption_keys={un_key.key_id: un_key},
        clock=m.clock,
    )
    w = World(tmp, m, sealer, node, ingestor)
    for raw in [*m.registry, *m.scenario.node_accreditations]:
        w.registry(raw)
    w.seal(NOW_MS)
    try:
        yield w
    finally:
        sealer.store.close()
        node.close()


def _populate(w: World) -> None:
    """Epoch 2 (final): a mix of zones, categories, severities, organizations and texts, and
    restricted reports; epoch 3 (eight days later): a report accepted here and quarantined
    finally (delivery_lag); not sealed: two provisional reports."""
    w.report(
        "shelling",
        narrative=TRICKY,
        attachments=(Attachment(bytes(range(32)), 2048, "image/jpeg", "crater.jpg"),),
        casualties=Casualties(killed=1, injured=3, missing=0, civilian=True),
    )
    w.report(
        "clash",
        i=2,
        zone="east",
        location=Location(47.7, 39.1, 250, "Hill 203"),
        category=Category.ARMED_CLASH,
        severity=5,
        narrative="Small arms fire near the checkpoint.",
    )
    w.report(
        "formula",
        zone="south",
        location=Location(47.0, 37.5, 50, "+cmd|' /C calc'!A0"),
        category=Category.PROTEST,
        severity=2,
        narrative=FORMULA,
        sub_type="@sum(1+1)",
    )
    w.report("osce", org="osce", severity=3, narrative="Convoy of trucks moving west.")
    w.restricted("mine", ["un", "osce"], severity=5, narrative="Restricted: detainees seen.")
    w.restricted("theirs", ["osce"], severity=5, narrative="Only OSCE may read this.")
    w.seal(NOW_MS + MINUTE)
    w.report("late", severity=4, narrative="Filed late.")
    w.seal(NOW_MS + 8 * DAY)
    w.report("fresh", severity=1, narrative="Quiet night at the bridge.")
    w.report("fresh2", org="osce", i=2, zone="south", location=Location(47.1, 37.9, 0, "Port"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with _world(tmp_path_factory.mktemp("export")) as w:
        _populate(w)
        yield w


def _export(w: World, fmt: Format, **params: Any) -> str:
    filt, page = parse_params(
        {k: v if isinstance(v, list) else [str(v)] for k, v in params.items()}, max_limit=None
    )
    out = io.StringIO(newline="")
    with w.query() as q:
        write_reports(q.rows(filt, page), out, fmt)
    return out.getvalue()


def _csv(w: World, **params: Any) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(_export(w, Format.CSV, **params), newline="")))


def _names(w: World, rows: list[dict[str, str]]) -> list[str]:
    by_id = {d.report_id: n for n, d in w.drafts.items()}
    return [by_id[r["report_id"]] for r in rows]


# -- CSV: values round-trip, provenance matches the stores --------------------------------


def test_csv_round_trips_every_value_and_matches_the_stores(world: World) -> None:
    text = _export(world, Format.CSV)
    assert "\r\n" in text and text.startswith("report_id,signed_at,")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert list(rows[0]) == [c.name for c in COLUMNS]
    assert _names(world, rows) == [
        "shelling", "clash", "formula", "osce", "mine", "theirs", "late", "fresh", "fresh2",
    ]  # fmt: skip
    by = dict(zip(_names(world, rows), rows, strict=True))
    s, d = by["shelling"], world.drafts["shelling"]
    assert s["narrative"] == TRICKY  # commas, quotes, a line break and Cyrillic, unchanged
    assert (s["observer_id"], s["org"], s["zone"], s["category"], s["sub_type"]) == (
        d.observer_id, "un", "north", "shelling", "artillery",
    )  # fmt: skip
    assert (float(s["lat"]), float(s["lon"]), int(s["precision_m"]), s["place"]) == (
        48.2, 38.0, 100, "Riverford",
    )  # fmt: skip
    assert (s["severity"], float(s["confidence"]), s["killed"], s["injured"], s["missing"]) == (
        "4", 0.9, "1", "3", "0",
    )  # fmt: skip
    assert s["civilian"] == "true"
    assert s["signed_at"] == "2026-10-31T23:10:00.000Z"  # NOW - 50 min, UTC, milliseconds
    assert s["observed_at"] == "2026-10-31T23:00:00.000Z"
    assert (s["attachments"], s["attachment_sha256"]) == ("1", bytes(range(32)).hex())
    # provenance: the node store's own reads, and the final store's
    final = FinalStore(world.final_db, read_only=True)
    try:
        for name, row in by.items():
            topic, part, off = world.positions[name]
            assert (row["topic"], row["partition"], row["offset"]) == (topic, str(part), str(off))
            assert row["chain_seq"] == str(world.drafts[name].seq)
            assert bytes.fromhex(row["envelope_sha256"]) == world.node.report_digest(
                world.drafts[name].report_id
            )
            key = next(
                o.key for o in world.m.scenario.observers if o.observer_id == row["observer_id"]
            )
            assert row["signer_key_id"] == key.key_id.hex()
            verdict = final.verdict(topic, part, off)
            if verdict is None:  # not sealed yet
                assert (row["verdict"], row["verdict_status"], row["seal_epoch"]) == (
                    "provisional", "accepted", "",
                )  # fmt: skip
                continue
            seals = {s["epoch"]: s["digest"] for s in final.seals()}
            assert row["verdict"] == "final"
            assert (row["verdict_status"], row["verdict_reason"]) == (
                verdict["status"], verdict["reason"],
            )  # fmt: skip
            assert row["sealed_epoch"] == str(verdict["epoch"])
            assert row["seal_epoch"] == str(verdict["judged_epoch"])
            assert row["seal_digest"] == seals[verdict["judged_epoch"]]
    finally:
        final.close()
    assert (by["shelling"]["seal_epoch"], by["late"]["seal_epoch"]) == ("2", "3")
    late = by["late"]  # accepted here by its broker time, eight days late by the sealed clock
    assert (late["verdict_status"], late["verdict_reason"], late["verdict_changed"]) == (
        "quarantined", "delivery_lag", "true",
    )  # fmt: skip
    assert (late["provisional_status"], by["shelling"]["verdict_changed"]) == ("accepted", "false")


def test_formula_cells_are_neutralized_and_numbers_are_not(world: World) -> None:
    row = next(r for r in _csv(world) if r["report_id"] == world.drafts["formula"].report_id)
    assert row["narrative"] == "'" + FORMULA
    assert row["place"] == "'+cmd|' /C calc'!A0"
    assert row["sub_type"] == "'@sum(1+1)"
    for r in _csv(world):
        for name, cell in r.items():
            if name not in ("lat", "lon"):
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (name, cell)


# -- restricted reports -------------------------------------------------------------------


def test_restricted_content_is_listed_only_when_asked_and_readable(world: World) -> None:
    content = ("category", "severity", "lat", "lon", "place", "narrative", "observed_at")
    by = dict(zip(_names(world, rows := _csv(world)), rows, strict=True))
    for name, shown in (("mine", "withheld"), ("theirs", "unreadable")):
        r = by[name]
        assert (r["restricted"], r["content"]) == ("true", shown)
        assert all(r[c] == "" for c in content), name
        assert (r["zone"], r["org"], r["signed_at"]) == ("north", "un", "2026-10-31T23:10:00.000Z")
    assert by["mine"]["recipients"] == "un osce" and by["theirs"]["readability"] == "not_recipient"
    assert "detainees" not in _export(world, Format.GEOJSON)
    asked = dict(zip(_names(world, rows := _csv(world, restricted_content=1)), rows, strict=True))
    assert asked["mine"]["content"] == "included"
    assert (asked["mine"]["narrative"], asked["mine"]["severity"]) == (
        "Restricted: detainees seen.", "5",
    )  # fmt: skip
    assert asked["theirs"]["narrative"] == "" and asked["theirs"]["content"] == "unreadable"
    # a filter on content never lists a report whose content is hidden
    assert _names(world, _csv(world, min_severity=5)) == ["clash"]
    assert _names(world, _csv(world, min_severity=5, restricted_content=1)) == ["clash", "mine"]
    assert _names(world, _csv(world, text="detainees")) == []
    # clear fields filter them like any report
    assert "theirs" in _names(world, _csv(world, zone="north", org="un"))


# -- filters and paging -------------------------------------------------------------------


def test_filters_combine(world: World) -> None:
    def names(**params: Any) -> list[str]:
        return _names(world, _csv(world, **params))

    assert names(zone="south") == ["formula", "fresh2"]
    assert names(zone=["south", "east"]) == ["clash", "formula", "fresh2"]
    assert names(zone="north", min_severity=4, org="un") == ["shelling", "late"]
    assert names(category="shelling", org="osce") == ["osce", "fresh2"]
    assert names(observer=world.drafts["clash"].observer_id) == ["clash"]
    assert names(text="BRIDGE") == ["fresh"]  # narrative, any case
    assert names(text="hill") == ["clash"]  # place name
    assert names(text="мост") == ["shelling"]
    assert names(verdict="provisional") == ["fresh", "fresh2"]
    assert names(verdict="final", status="quarantined") == ["late"]
    assert names(reason="delivery_lag") == ["late"]
    assert names(verdict="final", zone="south") == ["formula"]
    # signed_at range: ISO 8601 or milliseconds, since inclusive, until exclusive
    assert names(since="2026-10-31T23:10:00Z", until=NOW_MS - 50 * MINUTE + 1, org="osce") == [
        "osce", "fresh2",
    ]  # fmt: skip
    assert names(until="2026-10-31T23:10:00Z") == []
    assert names(since="2026-11-01") == []


def test_paging_is_stable_while_reports_arrive(tmp_path: Path) -> None:
    with _world(tmp_path) as w:
        for k in range(7):
            w.report(f"r{k}", i=1 + k % 2, severity=1 + k % 5)
        before = [w.drafts[f"r{k}"].report_id for k in range(7)]
        everything = parse_params({})[0]
        for order, newest_first in (("old", False), ("new", True)):
            seen: list[str] = []
            cursor = None
            for turn in range(10):
                with w.query() as q:
                    page = q.page(everything, Page(3, cursor, newest_first))
                seen += [r.report_id for r in page.rows]
                if turn < 2:  # a report stored between two pages
                    w.report(f"{order}{turn}")
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            new = [w.drafts[f"{order}{k}"].report_id for k in range(2)]
            if newest_first:  # stored after the first page: before it, never inside later ones
                assert seen == list(reversed(before))
            else:  # appended: they come at the end, once
                assert seen == [*before, *new]
            before = [*before, *new]
        # a filter pages the same way: severity 1 of the first seven (r0, r5) one by one
        sev1 = parse_params({"min_severity": ["1"], "status": ["accepted"]})[0]
        assert sev1.min_severity == 1
        with w.query() as q:
            first = q.page(parse_params({"observer": [w.drafts["r1"].observer_id]})[0], Page(2))
            second = q.page(
                parse_params({"observer": [w.drafts["r1"].observer_id]})[0],
                Page(2, first.next_cursor),
            )
        assert [r.report_id for r in first.rows + second.rows] == [
            w.drafts[n].report_id for n in ("r1", "r3", "r5")
        ]
        assert second.next_cursor is None


def test_wrong_filters_are_refused_with_the_parameter_named(world: World) -> None:
    cases = {
        "zonee": {"zonee": ["north"]},
        "since": {"since": ["yesterday"]},
        "category": {"category": ["bombing"]},
        "min_severity": {"min_severity": ["9"]},
        "verdict": {"verdict": ["maybe"]},
        "reason": {"reason": ["no_such_code"]},
        "limit": {"limit": ["5000"]},
        "cursor": {"cursor": ["-1"]},
        "until": {"since": ["2026-11-02"], "until": ["2026-11-01"]},
    }
    for key, params in cases.items():
        with pytest.raises(FilterError) as exc:
            parse_params(params)
        assert exc.value.key == key, params
    assert parse_params({})[1].limit == 1000  # the API's page is bounded by default


# -- GeoJSON and HXL ----------------------------------------------------------------------


def test_geojson_is_valid_with_lon_lat_points_and_null_geometry(world: World) -> None:
    text = _export(world, Format.GEOJSON)
    fc = geojson.loads(text)
    assert fc.is_valid, fc.errors()
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 9
    by = {f["id"]: f for f in fc["features"]}
    for name, d in world.drafts.items():
        f = by[d.report_id]
        assert f["type"] == "Feature" and set(f["properties"]) == {c.name for c in COLUMNS}
        if name in ("mine", "theirs"):
            assert f["geometry"] is None and f["properties"]["content"] != "plain"
            continue
        assert geojson.Point(f["geometry"]["coordinates"]).is_valid
        assert f["geometry"]["coordinates"] == [d.location.lon, d.location.lat]
        assert f["properties"]["narrative"] == d.narrative  # JSON: no formula prefix needed
        assert f["properties"]["severity"] == d.severity
    shelling = by[world.drafts["shelling"].report_id]["properties"]
    assert shelling["attachment_sha256"] == [bytes(range(32)).hex()]
    assert shelling["civilian"] is True and shelling["verdict"] == "final"
    filtered = geojson.loads(_export(world, Format.GEOJSON, zone="east"))
    assert [f["id"] for f in filtered["features"]] == [world.drafts["clash"].report_id]
    assert geojson.loads(_export(world, Format.GEOJSON, zone="nowhere"))["features"] == []


HASHTAG = re.compile(r"#[a-z][a-z0-9_]*(\+[a-z][a-z0-9_]*)*")


def test_hxl_second_row_is_a_hashtag_for_every_column(world: World) -> None:
    rows = list(csv.reader(io.StringIO(_export(world, Format.HXL, org="un"), newline="")))
    header, tags, data = rows[0], rows[1], rows[2:]
    assert header == [c.name for c in COLUMNS]
    assert len(tags) == len(header) and all(HASHTAG.fullmatch(t) for t in tags), tags
    assert len(set(tags)) == len(tags)  # every column its own tag
    col = dict(zip(tags, range(len(tags)), strict=True))
    for tag in ("#event+id", "#date+reported", "#org+code", "#loc+name", "#geo+lat",
                "#geo+lon", "#affected+killed", "#affected+injured", "#event+type",
                "#severity", "#description", "#meta+signer+key", "#meta+seal+digest"):  # fmt: skip
        assert tag in col
    csv_rows = list(csv.reader(io.StringIO(_export(world, Format.CSV, org="un"), newline="")))
    assert data == csv_rows[1:]  # the same data rows as the CSV
    assert len(data) == 7


# -- streaming, and the command -----------------------------------------------------------


class _Sink(io.TextIOBase):
    """Counts what is written and keeps nothing."""

    def __init__(self) -> None:
        self.chars = 0

    def write(self, s: str) -> int:
        self.chars += len(s)
        return len(s)


def test_export_streams_in_bounded_memory(tmp_path: Path) -> None:
    with _world(tmp_path) as w:
        long = "x" * 4000
        for k in range(600):
            w.report(f"r{k}", i=1 + k % 2, narrative=long)
        filt, page = parse_params({}, max_limit=None)
        for fmt in Format:
            sink = _Sink()
            with w.query() as q:
                tracemalloc.start()
                n = write_reports(q.rows(filt, page), sink, fmt)
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            assert n == 600 and sink.chars > 600 * 4000
            assert peak < sink.chars / 10, (fmt, peak, sink.chars)  # rows are not kept


def test_obus_export_reports_writes_each_format(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for fmt in Format:
        out = tmp_path / f"north.{fmt.value}"
        code = main(
            ["export", "reports", "--store", str(world.node_db), "--format", fmt.value,
             "--zone", "north", "--min-severity", "4", "-o", str(out)]
        )  # fmt: skip
        assert code == 0
        err = capsys.readouterr().err
        assert f"2 reports written as {fmt.value}" in err  # shelling, late (final db beside)
        body = out.read_text(encoding="utf-8")
        if fmt is Format.GEOJSON:
            assert len(json.loads(body)["features"]) == 2
        else:
            assert TRICKY.split("\n")[1] in body
        assert not list(tmp_path.glob(".*.part"))
    code = main(
        ["export", "reports", "--store", str(world.node_db), "--format", "csv",
         "--limit", "2", "-o", str(tmp_path / "p1.csv")]
    )  # fmt: skip
    assert code == 0 and "--cursor" in capsys.readouterr().err
    code = main(["export", "reports", "--store", str(world.node_db), "--format", "csv",
                 "--since", "soon"])  # fmt: skip
    assert code == 2 and "since" in capsys.readouterr().err
    with pytest.raises(BusError):
        ReportQuery(tmp_path / "missing.db")
