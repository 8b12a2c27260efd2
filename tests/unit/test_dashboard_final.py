"""The dashboard shows every verdict as provisional or final, what sealing changed, and the seals.

No broker: a sealed bus is simulated as in test_bus_reader (partitions as lists, the seals topic
as a list). One node holds two stores, both written by the node's own code paths: its node store
(provisional verdicts, through its Ingestor and NodeStore.commit_batch) and its final store (a
real Sealer's BusReader judges the sealed epochs, FinalStore.record keeps them). The node's
registry view lags: it never received the accreditation of osce's observer, so it quarantines
osce's reports that the sealed log accepts. The dashboard then serves both stores on a free
127.0.0.1 port.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus.crypto import key_id
from bus.epoch import FinalSeal, PartitionRef
from bus.errors import BusError, SealedRootMismatchError
from bus.ingest import Ingestor, RecordRef
from bus.judge import EpochVerdicts, Status
from bus.model import Accreditation, Envelope, Report, Revocation, sha256
from bus.note import key_name
from bus.policy import (
    VERDICTS_PROVISIONAL,
    Observation,
    Policy,
    PolicyEngine,
    Rule,
    SealRef,
    observation_from_stored,
)
from bus.seal import Equivocation, SealProposal, cosign_seal, sign_proposal
from bus.sign import sign_revocation
from bus.store.node import NodeStore
from bus.topics import Topics
from bus.trust import KeyRing
from bus.verify import ChainBook
from nodes.demo.scenario import node_subject
from nodes.org_node.dashboard.config import DashboardConfig
from nodes.org_node.dashboard.final_view import open_final_view
from nodes.org_node.dashboard.metrics import metrics_text, store_snapshot
from nodes.org_node.dashboard.read_model import ReadModel
from nodes.org_node.dashboard.reports_view import ReportsView, dashboard_params, verdict_of
from nodes.org_node.dashboard.server import Dashboard
from nodes.org_node.sealer import Sealer, SealerConfig
from tests.mission import NOW_MS, Mission, make_mission
from tests.unit.test_dashboard_auth import dashboard_auth, logged_in

TOPICS = Topics("obus.")
LATE_ORG = "osce"  # the node never received the accreditation of this organization's observer
MINUTE = 60_000
DAY = 86_400_000


@dataclass
class World:
    """A sealed bus and one node's node store and final store (see the module docstring)."""

    tmp: Path
    m: Mission
    sealer: Sealer
    node: NodeStore
    ingestor: Ingestor
    parts: dict[PartitionRef, list[bytes]] = field(default_factory=dict)
    seals: list[bytes] = field(default_factory=list)
    offsets: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def node_db(self) -> Path:
        return self.tmp / "un.db"

    @property
    def final_db(self) -> Path:
        return self.tmp / "un-final.db"

    def _append(self, ref: PartitionRef, raw: bytes) -> int:
        values = self.parts.setdefault(ref, [])
        values.append(raw)
        offset = len(values) - 1
        # The sealer reads every sealed partition as records arrive.
        self.sealer.reader.offer_records(ref, offset, [raw])
        return offset

    def registry(self, raw: bytes) -> None:
        self._append((TOPICS.registry, 0), raw)

    def report(self, name: str, org: str, raw: bytes, *, log_time_ms: int = NOW_MS) -> None:
        """Publish a report record and let the node's ingest judge it at once (provisional)."""
        topic = TOPICS.reports(org)
        offset = self._append((topic, 0), raw)
        self.offsets[name] = (topic, 0, offset)
        with contextlib.suppress(BusError):
            self.ids[name] = Report.decode(Envelope.decode(raw).payload).report_id
        out = self.ingestor.judge(RecordRef(topic, 0, offset, log_time_ms, None), raw, org)
        self.node.commit_batch([out], self.ingestor.chain.heads(), [], {(topic, 0): offset + 1})

    def _sign(self, p: SealProposal, org: str, now_ms: int, *, propose: bool) -> list[Any]:
        key, name = self.m.scenario.node_keys[org], key_name(org, node_subject(org))
        raw = (
            sign_proposal(p, key, name)
            if propose
            else cosign_seal(p.text(), key, name, now_ms=now_ms)
        )
        self.seals.append(raw)
        return [self.sealer.reader.offer_seal(len(self.seals) - 1, raw)]

    def seal(self, now_ms: int, proposer: str = "un") -> list[EpochVerdicts]:
        """Seal everything published: ``proposer`` proposes, then it and k-1 others cosign
        (proposing is no vote); the epochs judged go to the final store as the sealer stores
        them."""
        p = self.sealer.reader.propose(org=proposer, now_ms=now_ms)
        assert p is not None
        k = self.m.scenario.mandate.threshold
        cosigners = [o for o in sorted(self.m.scenario.org_roots) if o != proposer][: k - 1]
        updates = self._sign(p, proposer, now_ms, propose=True)
        for org in [proposer, *cosigners]:
            updates += self._sign(p, org, now_ms, propose=False)
        return self._store(updates)

    def equivocate(self, now_ms: int, org: str, other: str) -> list[Equivocation]:
        """``org`` proposes and cosigns one text for the open epoch, then cosigns ``other``'s,
        another."""
        a = self.sealer.reader.propose(org=org, now_ms=now_ms)
        b = self.sealer.reader.propose(org=other, now_ms=now_ms + 1000)
        assert a is not None and b is not None and a.digest != b.digest
        updates = self._sign(a, org, now_ms, propose=True)
        updates += self._sign(a, org, now_ms, propose=False)
        updates += self._sign(b, other, now_ms + 1000, propose=True)
        updates += self._sign(b, org, now_ms + 1000, propose=False)
        self._store(updates)
        return [e for u in updates for e in u.equivocations]

    def _store(self, updates: list[Any]) -> list[EpochVerdicts]:
        epochs = [ev for u in updates for ev in u.epochs]
        finals: list[FinalSeal] = [f for u in updates for f in u.finals]
        equivocations = [e for u in updates for e in u.equivocations]
        self.sealer.store.record(epochs, finals, equivocations)
        return epochs

    def config(self, **changes: Any) -> DashboardConfig:
        return DashboardConfig(
            org="un",
            db_path=self.node_db,
            mandate=self.m.scenario.mandate,
            port=0,
            final_db=changes.pop("final_db", self.final_db),
            auth=changes.pop("auth", dashboard_auth()),
            **changes,
        )

    def status(self) -> dict[str, Any]:
        """What NodeExtras.status() answers for a node running this sealer."""
        return {
            "node": {},
            "group": {"state": "unknown", "why": "no consumer in this test"},
            "lag": {},
            "followup": {"pending": 0, "late": 0},
            "seal": self.sealer.status(),
            "running": True,
        }


def _node_keyring(m: Mission) -> KeyRing:
    """Every accreditation of the mission but that of LATE_ORG's observer."""
    ring = KeyRing(m.scenario.mandate)
    for raw in m.scenario.accreditations:
        env = Envelope.decode(raw)
        if Accreditation.decode(env.payload).org != LATE_ORG:
            ring.apply(env)
    return ring


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[World]:
    """The node's stores before anything is sealed: trust published, nothing proposed."""
    m = make_mission(observers_per_org=1)
    node = NodeStore(tmp_path / "un.db")
    sealer = Sealer(
        SealerConfig(
            org="un",
            bootstrap="127.0.0.1:1",  # never contacted: nothing here runs the Kafka loop
            db_path=tmp_path / "un-final.db",
            root=m.scenario.mandate,
            node_key=None,
            topics=TOPICS,
        )
    )
    chain = ChainBook(node.chain_heads(), node.report_digest)
    ingestor = Ingestor(_node_keyring(m), chain, clock=m.clock)
    w = World(tmp_path, m, sealer, node, ingestor)
    for raw in [*m.scenario.accreditations, *m.scenario.node_accreditations]:
        w.registry(raw)
    try:
        yield w
    finally:
        sealer.store.close()
        node.close()


@pytest.fixture
def world(bare: World) -> World:
    """Three sealed epochs and one report waiting for a seal.

    * epoch 1: the trust records (they take effect from epoch 2);
    * epoch 2: un's reports u1, u2 (accepted both times); osce's o1 (quarantined unknown_key
      here, accepted finally) and o2 (its signature broken: unknown_key here, bad_signature
      finally); an undecodable record (malformed both times);
    * epoch 3, sealed eight days later: un's u3 (accepted here by its broker time, quarantined
      delivery_lag finally);
    * not sealed yet: un's u4 (provisional).
    """
    w, m = bare, bare.m
    w.seal(NOW_MS)
    w.report("u1", "un", m.next_report("un", 1))
    w.report("u2", "un", m.next_report("un", 1))
    w.report("o1", "osce", m.next_report("osce", 1))
    broken = bytearray(m.next_report("osce", 1))
    broken[-5] ^= 1
    w.report("o2", "osce", bytes(broken))
    w.report("junk", "un", b"not an envelope")
    w.seal(NOW_MS + MINUTE)
    w.report("u3", "un", m.next_report("un", 1))
    w.seal(NOW_MS + 8 * DAY)
    w.report("u4", "un", m.next_report("un", 1))
    return w


@pytest.fixture
async def served(world: World) -> AsyncIterator[tuple[World, str]]:
    dash = Dashboard(world.config(), status=world.status)
    await dash.start()
    try:
        yield world, dash.url
    finally:
        await dash.stop()


async def _get(url: str) -> tuple[int, Any]:
    async with logged_in(url) as http, http.get(url) as resp:
        body = await (resp.json() if "json" in resp.content_type else resp.text())
        return resp.status, body


def _metrics(w: World, status: dict[str, Any]) -> str:
    """The node's metrics of this store and live status (served on its ops port)."""
    return metrics_text(store_snapshot(w.node_db, w.final_db, "un"), status).decode()


def _verdicts(w: World) -> dict[int, dict[str, Any]]:
    """Each listed report's verdict as the page shows it, by chain seq."""
    rows = ReportsView(w.config()).page(*dashboard_params({})).rows
    return {r.seq: verdict_of(r) for r in rows}


class _Rows(HTMLParser):
    """A page's table rows (attributes, and each cell's attributes and text) and its
    paragraphs and tiles (``p`` and ``div``) with an id (attributes and text)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[dict[str, str], list[tuple[dict[str, str], str]]]] = []
        self.ids: dict[str, tuple[dict[str, str], str]] = {}
        self._cell: tuple[dict[str, str], list[str]] | None = None
        self._para: tuple[dict[str, str], list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "tr":
            self.rows.append((a, []))
        elif tag == "td" and self.rows:
            self._cell = (a, [])
        elif tag in ("p", "div") and "id" in a:
            self._para = (a, [])

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1][1].append((self._cell[0], "".join(self._cell[1]).strip()))
            self._cell = None
        elif tag in ("p", "div") and self._para is not None:
            self.ids[self._para[0]["id"]] = (self._para[0], "".join(self._para[1]).strip())
            self._para = None

    def handle_data(self, data: str) -> None:
        for open_element in (self._cell, self._para):
            if open_element is not None:
                open_element[1].append(data)


def _parse(page: str) -> _Rows:
    parser = _Rows()
    parser.feed(page)
    return parser


def _verdict_cells(page: _Rows, attr: str) -> dict[str, dict[str, str]]:
    """Per row carrying ``attr`` (data-report-id, data-reason...): its verdict cell's attributes
    and its text (under "text")."""
    out = {}
    for row, cells in page.rows:
        if attr in row:
            cell = next(({**a, "text": t} for a, t in cells if "verdict" in a.get("class", "")))
            out[row[attr]] = cell
    return out


# -- per record: provisional, final, changed -----------------------------------------------


async def test_reports_api_shows_final_provisional_and_changed(served: tuple[World, str]) -> None:
    w, url = served
    status, body = await _get(url + "api/reports")
    assert status == 200
    rows = body["reports"]
    by_pos = {r["position"]: r for r in rows}

    def at(name: str) -> dict[str, Any]:
        t, p, o = w.offsets[name]
        return dict(by_pos[f"{t}[{p}]@{o}"])

    def verdict(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["verdict"], r["verdict_status"], r["verdict_reason"], r["sealed_epoch"]

    for name in ("u1", "u2"):  # accepted at once, and the sealed log agrees
        r = at(name)
        assert verdict(r) == ("final", "accepted", "", 2)
        assert r["verdict_changed"] is False and r["provisional_status"] == "accepted"
        assert r["seal_epoch"] == 2 and len(r["seal_digest"]) == 44  # base64 of 32 bytes
    u3 = at("u3")  # accepted by its broker time, eight days late by the sealed clock
    assert u3["provisional_status"] == "accepted" and u3["content"] == "plain"
    assert verdict(u3) == ("final", "quarantined", "delivery_lag", 3)
    assert u3["verdict_changed"] is True
    assert "accepted → quarantined (delivery_lag)" in u3["change"]
    u4 = at("u4")  # read, not sealed yet
    assert verdict(u4) == ("provisional", "accepted", "", None)
    assert u4["verdict_changed"] is False and u4["seal_digest"] is None
    # o1 (quarantined here, accepted finally) and o2 (rejected both times) are no reports this
    # node accepted: not in the feed (o1 is shown beside it, test_page_marks_every_row...).
    assert len(rows) == 4 and {r["org"] for r in rows} == {"un"}
    assert [r["cursor"] for r in rows] == sorted((r["cursor"] for r in rows), reverse=True)
    _, north = await _get(url + "api/reports?zone=north")
    assert {r["report_id"] for r in north["reports"]} == {
        r["report_id"] for r in rows if r["zone"] == "north"
    }
    _, final = await _get(url + "api/reports?verdict=final&status=quarantined")
    assert [r["report_id"] for r in final["reports"]] == [w.ids["u3"]]
    _, provisional = await _get(url + "api/reports?verdict=provisional")
    assert [r["report_id"] for r in provisional["reports"]] == [w.ids["u4"]]
    _, lag = await _get(url + "api/reports?reason=delivery_lag")
    assert [r["report_id"] for r in lag["reports"]] == [w.ids["u3"]]


async def test_quarantine_api_shows_each_rejection_final_or_changed(
    served: tuple[World, str],
) -> None:
    w, url = served
    _, q = await _get(url + "api/quarantine")
    by_offset = {(r["topic"], r["offset"]): r["verdict"] for r in q["records"]}

    def at(name: str) -> dict[str, Any]:
        t, _, o = w.offsets[name]
        return dict(by_offset[(t, o)])

    assert at("junk")["status"] == "quarantined" and at("junk")["reason"] == "malformed"
    assert at("junk")["state"] == "final" and at("junk")["changed"] is False
    assert at("o1")["status"] == "accepted" and at("o1")["changed"] is True
    o2 = at("o2")  # another reason code is a change too
    assert (o2["state"], o2["status"], o2["reason"], o2["changed"]) == (
        "final",
        "quarantined",
        "bad_signature",
        True,
    )
    assert o2["provisional"] == {"status": "quarantined", "reason": "unknown_key"}
    assert o2["change"] == "quarantined (unknown_key) → quarantined (bad_signature)"


async def test_changed_verdicts_api_pages_and_refuses_unknown_parameters(
    served: tuple[World, str],
) -> None:
    w, url = served
    status, body = await _get(url + "api/verdicts/changed")
    assert status == 200 and body["available"] is True
    assert body["total"] == 3 and body["by_kind"] == {"report": 3, "board": 0}
    got = {(r["topic"], r["offset"]): r["verdict"]["change"] for r in body["records"]}
    want = {w.offsets[n][0::2] for n in ("u3", "o1", "o2")}
    assert set(got) == want
    assert body["records"][0]["verdict"]["epoch"] == 3  # newest epoch first
    u3 = body["records"][0]  # quarantined finally: who it is comes from the node's report
    assert (u3["org"], u3["observer_id"], u3["seq"], u3["report_id"]) == (
        "un",
        "un-obs-1",
        3,
        w.ids["u3"],
    )
    _, first = await _get(url + "api/verdicts/changed?limit=2")
    _, rest = await _get(url + "api/verdicts/changed?limit=2&offset=2")
    assert len(first["records"]) == 2 and len(rest["records"]) == 1
    paged = [(r["topic"], r["offset"]) for r in first["records"] + rest["records"]]
    assert paged == [(r["topic"], r["offset"]) for r in body["records"]]
    for query, name in [
        ("zone=north", "'zone'"),
        ("limit=2&sort=epoch", "'sort'"),
        ("limit=x", "'limit'"),
        ("offset=-1", "'offset'"),
        ("limit=1&limit=2", "'limit'"),
        ("limit=" + "9" * 30, "'limit'"),
    ]:
        status, text = await _get(url + "api/verdicts/changed?" + query)
        assert status == 400 and name in text, (query, status, text)


async def test_page_marks_every_row_final_provisional_or_changed(
    served: tuple[World, str],
) -> None:
    w, url = served
    ids = w.ids
    status, html = await _get(url)
    assert status == 200
    page = _parse(html)
    feed = _verdict_cells(page, "data-report-id")
    assert feed[ids["u1"]]["data-state"] == "final" and feed[ids["u1"]]["data-changed"] == "no"
    assert feed[ids["u4"]]["data-state"] == "provisional"
    assert feed[ids["u3"]]["data-changed"] == "yes" and "delivery_lag" in feed[ids["u3"]]["text"]
    assert feed[ids["o1"]]["data-changed"] == "yes" and "accepted" in feed[ids["o1"]]["text"]
    assert "Content not shown" in html
    rejected = _verdict_cells(page, "data-reason")
    assert rejected["malformed"]["data-state"] == "final"
    assert rejected["malformed"]["data-changed"] == "no"
    changed_rows = [r for r, _ in page.rows if "data-position" in r]
    assert len(changed_rows) == 3


async def test_revocation_final_change_is_shown_unless_the_node_saw_it(bare: World) -> None:
    w, m = bare, bare.m
    w.seal(NOW_MS)
    for i in range(1, 4):
        w.report(f"u{i}", "un", m.next_report("un", 1))
    w.seal(NOW_MS + MINUTE)
    _, key = m.observer("un", 1)
    revocation = Revocation("un", key_id(key.public_key), 1, NOW_MS, "lost", 5, m.mandate_id)
    w.registry(sign_revocation(revocation, m.scenario.org_roots["un"]).encode())
    w.seal(NOW_MS + 2 * MINUTE)
    model = ReadModel(w.config())
    # The node never applied the revocation: u2 and u3 are withdrawn finally, a change.
    verdicts = _verdicts(w)
    assert verdicts[1]["status"] == "accepted" and not verdicts[1]["changed"]
    for seq in (2, 3):
        v = verdicts[seq]
        assert (v["state"], v["status"], v["epoch"], v["revoked_at_epoch"]) == (
            "final",
            "revoked_after_acceptance",
            2,
            4,
        )
        assert v["changed"] and "accepted → revoked_after_acceptance" in v["change"]
    assert model.verdict_changes()["total"] == 2
    # Once the node applies the revocation too, the final verdict no longer differs.
    w.node.mark_revoked(revocation.key_id, 1, "un", "revoked")
    verdicts = _verdicts(w)
    assert {verdicts[s]["status"] for s in (2, 3)} == {"revoked_after_acceptance"}
    assert not any(v["changed"] for v in verdicts.values())
    assert model.verdict_changes()["total"] == 0
    assert store_snapshot(w.node_db, w.final_db, "un")["verdict_changes"] == {
        "report": 0,
        "board": 0,
    }


async def test_a_deferred_report_stays_provisional_until_the_next_epoch(bare: World) -> None:
    w, m = bare, bare.m
    w.report("u1", "un", m.next_report("un", 1))  # sealed with the trust that accredits it
    w.seal(NOW_MS)
    [v] = _verdicts(w).values()
    assert (v["state"], v["status"], v["epoch"], v["deferred"]) == (
        "provisional",
        "accepted",
        1,
        True,
    )
    w.report("u2", "un", m.next_report("un", 1))
    w.seal(NOW_MS + MINUTE, proposer="osce")  # epoch 2 judges the deferred report first
    verdicts = _verdicts(w)
    assert [(v["state"], v["status"], v["epoch"]) for _, v in sorted(verdicts.items())] == [
        ("final", "accepted", 1),
        ("final", "accepted", 2),
    ]


# -- the seals panel ---------------------------------------------------------------------------


async def test_seals_api_and_panel_show_the_newest_final_seals(served: tuple[World, str]) -> None:
    w, url = served
    status, body = await _get(url + "api/seals")
    assert status == 200
    assert body["state"] == "sealed" and body["alarms"] == []
    assert [s["epoch"] for s in body["seals"]] == [3, 2, 1]
    newest = body["seals"][0]
    assert newest["time"] == "2026-11-09 00:00:00Z"  # NOW_MS + 8 days, to the second
    assert len(newest["signers"]) == w.m.scenario.mandate.threshold
    assert len(newest["digest"]) == 44 and newest["digest"].endswith("=")  # 32 bytes, base64
    assert len(newest["state_digest"]) == 44
    assert body["sealer"]["judged_epoch"] == 3 and body["sealer"]["open_epoch"] == 4
    assert body["sealer"]["buffered"] == 1  # u4 waits for a seal
    assert body["provisional_records"] == {"report": 1, "board": 0}
    assert body["verdicts_changed"] == {"report": 3, "board": 0}
    _, html = await _get(url)
    page = _parse(html)
    attrs, text = page.ids["seal-state"]
    assert attrs["data-state"] == "sealed" and attrs["class"] == "ok"
    assert "epoch 3 is final" in text
    seal_rows = [r for r, _ in page.rows if "data-epoch" in r]
    assert [r["data-epoch"] for r in seal_rows] == ["3", "2", "1"]
    assert newest["digest"] in html and newest["state_digest"] in html
    assert 'class="alarm"' not in html


async def test_no_green_without_a_final_seal(bare: World) -> None:
    """No sealer, a final store not created yet, and one with no seal: never "sealed"; and
    no other panel or route (the checkpoint witness's are gone) says the log is witnessed."""
    w = bare
    w.report("u1", "un", w.m.next_report("un", 1))
    cases = [
        (w.config(final_db=None), "no_sealer"),
        (w.config(final_db=w.tmp / "absent.db"), "unsealed"),
        (w.config(), "unsealed"),  # the sealer's store exists, no epoch judged yet
    ]
    for config, state in cases:
        dash = Dashboard(config, status=w.status)
        await dash.start()
        try:
            _, body = await _get(dash.url + "api/seals")
            _, html = await _get(dash.url)
            _, reports = await _get(dash.url + "api/reports")
            _, changed = await _get(dash.url + "api/verdicts/changed")
            gone, _ = await _get(dash.url + "api/checkpoints")
        finally:
            await dash.stop()
        assert body["state"] == state and body["seals"] == [] and body["why"]
        assert gone == 404 and 'id="checkpoints"' not in html and "witnessed" not in html
        attrs, _ = _parse(html).ids["seal-state"]
        assert attrs["data-state"] == state and attrs["class"] != "ok", state
        assert 'class="ok" id="seal-state"' not in html
        assert [r["verdict"] for r in reports["reports"]] == ["provisional"]
        assert changed["total"] == 0
        assert changed["available"] is (config.final_db == w.final_db)


async def test_alarm_and_equivocation_are_red_and_never_sealed(world: World) -> None:
    w = world
    w.report("u5", "un", w.m.next_report("un", 1))
    found = w.equivocate(NOW_MS + 9 * DAY, "un", "nato")
    assert [(e.org, e.epoch) for e in found] == [("un", 4)]
    model = ReadModel(w.config())
    body = model.seals(w.sealer.status())
    assert body["state"] == "equivocation"
    assert body["equivocations"][0]["org"] == "un" and body["equivocations"][0]["epoch"] == 4
    assert any("un" in a and "epoch 4" in a for a in body["alarms"])
    # A sealed record altered: the sealer keeps the alarm (Sealer.alarm) and stops judging.
    w.sealer.alarm = {
        "reason": "sealed_root_mismatch",
        "detail": "obus.reports.un[0] does not hash to the root epoch 3 sealed",
        "partition": "obus.reports.un/0",
    }
    dash = Dashboard(w.config(), status=w.status)
    await dash.start()
    try:
        _, seals = await _get(dash.url + "api/seals")
        _, html = await _get(dash.url)
    finally:
        await dash.stop()
    metrics = _metrics(w, w.status())
    assert seals["state"] == "alarm"
    assert "sealed_root_mismatch" in seals["alarms"][0]
    page = _parse(html)
    attrs, _ = page.ids["seal-state"]
    assert attrs["data-state"] == "alarm" and attrs["class"] == "bad"
    alarms = [text for ident, (_, text) in page.ids.items() if ident.startswith("alarm-")]
    assert any("sealed_root_mismatch" in a for a in alarms)
    assert any("un signed two seal texts for epoch 4" in a for a in alarms)
    equivocations = [r for r, _ in page.rows if r.get("class") == "equivocation"]
    assert [r["data-org"] for r in equivocations] == ["un"]
    samples = {s.name: s.value for f in text_string_to_metric_families(metrics) for s in f.samples}
    assert samples["obus_seal_alarm"] == 1.0


# -- /metrics ------------------------------------------------------------------------------


async def test_metrics_export_sealing_and_verdict_changes(served: tuple[World, str]) -> None:
    w, _ = served
    text = _metrics(w, w.status())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    kinds = {
        "obus_seal_epochs_judged": "counter",
        "obus_seal_proposals_published": "counter",
        "obus_seal_cosignatures_published": "counter",
        "obus_seal_equivocations": "counter",
        "obus_seal_final_epoch": "gauge",
        "obus_seal_open_epoch": "gauge",
        "obus_seal_buffered_records": "gauge",
        "obus_seal_alarm": "gauge",
        "obus_verdict_changes": "gauge",
    }
    for name, kind in kinds.items():
        assert families[name].type == kind, name
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("obus_seal_final_epoch", ())] == 3.0
    assert samples[("obus_seal_open_epoch", ())] == 4.0
    assert samples[("obus_seal_buffered_records", ())] == 1.0
    assert samples[("obus_seal_alarm", ())] == 0.0
    assert ("obus_seal_epochs_judged_total", ()) in samples  # counters end in _total
    assert ("obus_seal_equivocations_total", ()) in samples
    assert samples[("obus_verdict_changes", (("kind", "report"),))] == 3.0
    assert samples[("obus_verdict_changes", (("kind", "board"),))] == 0.0


def test_metrics_leave_out_sealing_when_the_node_runs_no_sealer(world: World) -> None:
    snapshot = store_snapshot(world.node_db, None, "un")
    text = metrics_text(snapshot, {**world.status(), "seal": None}).decode()
    assert "obus_seal_" not in text and "obus_verdict_changes" not in text


# -- read only ---------------------------------------------------------------------------------


def _fingerprint(db: Path) -> tuple[str, int]:
    wal = db.with_name(db.name + "-wal")
    return hashlib.sha256(db.read_bytes()).hexdigest(), wal.stat().st_size if wal.exists() else 0


async def test_every_route_leaves_both_stores_unchanged(world: World) -> None:
    w = world
    status = w.status()
    w.sealer.store.close()
    w.node.close()
    for db in (w.node_db, w.final_db):  # everything into the main files
        with sqlite3.connect(db) as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = [_fingerprint(w.node_db), _fingerprint(w.final_db)]
    dash = Dashboard(w.config(), status=lambda: status)
    paths = sorted(
        {
            info["path"]
            for r in dash.app().router.routes()
            if r.method == "GET" and "path" in (info := r.get_info())
        }
    )
    await dash.start()
    try:
        for path in [*paths, f"/reports/{w.ids['u3']}", f"/api/reports/{w.ids['u3']}"]:
            code, _ = await _get(dash.url.rstrip("/") + path)
            assert code == 200, path
    finally:
        await dash.stop()
    assert {"/api/seals", "/api/verdicts/changed"} <= set(paths)
    assert [_fingerprint(w.node_db), _fingerprint(w.final_db)] == before
    with (
        open_final_view(w.node_db, w.final_db) as view,
        pytest.raises(sqlite3.OperationalError, match="readonly"),
    ):
        assert view is not None
        view._db.execute("DELETE FROM final.verdicts")  # the connection the dashboard reads with


# -- own decisions: the seal each rests on ---------------------------------------------------------


def _observation(w: World, pos: tuple[str, int, int]) -> Observation:
    raw = w.parts[(pos[0], pos[1])][pos[2]]
    obs = observation_from_stored(raw, sha256(raw))
    assert obs is not None
    return obs


async def test_own_decisions_name_the_final_seal_they_rest_on(bare: World) -> None:
    """One final rule and one provisional rule over un's two reports, decided by the node's
    policy engine as its follow-up does (final: epoch by epoch on the sealed verdicts; and
    provisional: on what the node stored) and stored in its node store: the API and the page
    name epoch 2's final seal for the final decisions, "provisional" for the others."""
    w, m = bare, bare.m
    epochs = w.seal(NOW_MS)
    w.report("u1", "un", m.next_report("un", 1))
    w.report("u2", "un", m.next_report("un", 1))
    epochs += w.seal(NOW_MS + MINUTE)
    policy = Policy(
        "un",
        (
            Rule("on-final", "review", priority="high", publish=True),
            Rule("on-provisional", "alert", priority="low", verdicts=VERDICTS_PROVISIONAL),
        ),
    )
    engine = PolicyEngine(policy)
    decisions = [
        d for n in ("u1", "u2") for d in engine.on_stored(_observation(w, w.offsets[n]), NOW_MS)
    ]
    for ev in epochs:
        accepted = [
            _observation(w, v.pos)
            for v in ev.verdicts
            if v.status is Status.ACCEPTED and v.report is not None
        ]
        decisions += engine.on_final(SealRef(ev.epoch, ev.seal_digest, ev.time_ms), accepted)
    assert len(decisions) == 4
    w.node.add_decisions(decisions)
    dash = Dashboard(w.config(policy=policy), status=w.status)
    await dash.start()
    try:
        status, api = await _get(dash.url + "api/decisions")
        _, seals = await _get(dash.url + "api/seals")
        _, html = await _get(dash.url)
    finally:
        await dash.stop()
    assert status == 200
    epoch2 = next(s for s in seals["seals"] if s["epoch"] == 2)
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for d in api:
        by_rule.setdefault(d["rule"], []).append(d)
    for d in by_rule["on-final"]:
        assert (d["verdicts"], d["seal_epoch"], d["seal_digest"]) == ("final", 2, epoch2["digest"])
        assert d["decided_at"] == "2026-11-01 00:01Z"  # t_e of epoch 2, not a log time
    for d in by_rule["on-provisional"]:
        assert (d["verdicts"], d["seal_epoch"], d["seal_digest"]) == ("provisional", 0, None)
    assert {r for r, ds in by_rule.items() if len(ds) == 2} == {"on-final", "on-provisional"}
    rows = {
        row["data-decision-id"]: (row, cells)
        for row, cells in _parse(html).rows
        if "data-decision-id" in row
    }
    for d in api:
        row, cells = rows[d["decision_id"]]
        [(attrs, text)] = [c for c in cells if "seal-ref" in c[0].get("class", "")]
        assert row["data-seal-epoch"] == str(d["seal_epoch"])
        if d["seal_epoch"]:
            assert text == f"final seal of epoch 2{epoch2['digest']}"
        else:
            assert text == "provisional" and "provisional" in attrs["class"]


# -- the follow-up, seal rounds and health ---------------------------------------------------------


async def test_followup_tiles_and_metrics_say_epochs_and_reports_not_kept(world: World) -> None:
    status = {**world.status(), "followup": {"pending": 2, "late": 5}}
    dash = Dashboard(world.config(), status=lambda: status)
    await dash.start()
    try:
        _, html = await _get(dash.url)
    finally:
        await dash.stop()
    metrics = _metrics(world, status)
    assert "watermark" not in html and "watermark" not in metrics
    tiles = _parse(html).ids
    assert tiles["t-pend"][1] == "2final epochs awaiting our policy"
    assert tiles["t-late"][1] == "5finally accepted reports not kept"
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    pending, late = families["obus_policy_pending_reports"], families["obus_policy_late_records"]
    assert pending.type == "gauge" and "Final epochs" in pending.documentation
    assert late.type == "counter" and "Finally accepted reports" in late.documentation
    assert [s.value for s in pending.samples] == [2.0]
    assert [s.value for s in late.samples if s.name.endswith("_total")] == [5.0]


async def test_a_split_vote_opens_round_2_shown_in_metrics_and_the_panel(world: World) -> None:
    """Four organizations propose epoch 4 at once and each cosigns its own (four texts, one
    vote each: none can reach k = 4 of 6 any more): the node's sealer opens round 2 and counts
    it."""
    w = world
    proposers = sorted(w.m.scenario.org_roots)[:4]
    updates = []
    for i, org in enumerate(proposers):
        p = w.sealer.reader.propose(org=org, now_ms=NOW_MS + 9 * DAY + i)
        assert p is not None and p.round == 1
        updates += w._sign(p, org, NOW_MS + 9 * DAY + i, propose=True)
        updates += w._sign(p, org, NOW_MS + 9 * DAY + i, propose=False)
    await w.sealer._store(updates)  # what the sealer's loop does with what it read
    live = w.sealer.status()
    assert (live["open_epoch"], live["open_round"], live["rounds_opened"]) == (4, 2, 1)
    dash = Dashboard(w.config(), status=w.status)
    await dash.start()
    try:
        _, html = await _get(dash.url)
        _, seals = await _get(dash.url + "api/seals")
    finally:
        await dash.stop()
    metrics = _metrics(w, w.status())
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    assert families["obus_seal_open_round"].type == "gauge"
    assert families["obus_seal_rounds_opened"].type == "counter"
    samples = {s.name: s.value for f in families.values() for s in f.samples}
    assert samples["obus_seal_open_round"] == 2.0
    assert samples["obus_seal_rounds_opened_total"] == 1.0
    [cells] = [cells for row, cells in _parse(html).rows if row.get("id") == "seal-round"]
    assert cells[1][1] == "round 2 (1)"
    assert seals["sealer"]["open_round"] == 2 and seals["state"] == "sealed"


async def test_seals_panel_says_judging_stopped_when_a_sealed_record_was_altered(
    world: World,
) -> None:
    """The node restarts its sealer on a fresh final store and reads the log again, where the
    operator altered a sealed report of epoch 2: its reader finds the sealed root broken, the
    sealer keeps the alarm, and the dashboard turns red naming it, never sealed; the healthy
    node before it is sealed (its ops port's readiness says the same: nodes/runtime/ops.py)."""
    w = world
    dash = Dashboard(w.config(), status=w.status)
    await dash.start()
    try:
        _, healthy = await _get(dash.url + "api/seals")
    finally:
        await dash.stop()
    assert healthy["state"] == "sealed" and healthy["alarms"] == []
    restarted = Sealer(
        SealerConfig(
            org="un",
            bootstrap="127.0.0.1:1",
            db_path=w.tmp / "un-final-2.db",
            root=w.m.scenario.mandate,
            node_key=None,
            topics=TOPICS,
        )
    )
    try:
        for offset, raw in enumerate(w.seals):
            restarted.reader.offer_seal(offset, raw)
        topic, part, at = w.offsets["u2"]
        tampered = list(w.parts[(topic, part)])
        tampered[at] = w.m.next_report("un", 1)  # other bytes at a sealed position
        with pytest.raises(SealedRootMismatchError) as caught:
            for ref, values in sorted(w.parts.items()):
                changed = tampered if ref == (topic, part) else values
                restarted.reader.offer_records(ref, 0, changed)
        # The sealer's alarm on this error, as its loop keeps it (Sealer._raise_alarm).
        exc = caught.value
        context = {k: str(v) for k, v in exc.context.items()}
        restarted.alarm = {"reason": "sealed_root_mismatch", "detail": exc.message, **context}
        dash = Dashboard(
            w.config(final_db=restarted.config.db_path),
            status=lambda: {**w.status(), "seal": restarted.status()},
        )
        await dash.start()
        try:
            _, body = await _get(dash.url + "api/seals")
            _, html = await _get(dash.url)
        finally:
            await dash.stop()
    finally:
        restarted.store.close()
    assert body["state"] == "alarm"
    assert body["alarms"][0].startswith("sealed log broken: sealed_root_mismatch")
    assert body["alarms"][0].endswith("judging stopped")
    attrs, _ = _parse(html).ids["seal-state"]
    assert attrs["data-state"] == "alarm" and attrs["class"] == "bad"
