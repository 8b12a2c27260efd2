"""Follow-up policies: matching, aggregation, early warning, canonical order and config errors."""

from __future__ import annotations

import dataclasses
import itertools
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import ConfigError
from bus.model import Casualties, Category, Location, Report
from bus.policy import (
    CanonicalOrder,
    Decision,
    Evaluator,
    Observation,
    PolicyEngine,
    caught_up_partitions,
    decide_all,
    watermark,
    window_counts,
)
from bus.policy_file import load_policy, parse_policy
from bus.uuid7 import uuid7
from nodes.demo.scenario import ORGANIZATIONS, build_scenario, draft_report
from tests.mission import NOW_MS, make_mission

POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "policies"
HOUR = 3_600_000
DAY = 24 * HOUR
WEEK = 7 * DAY

SIMPLE = """
org = "un"
[[rule]]
name = "grave"
categories = ["shelling"]
min_severity = 4
zones = ["north"]
action = "escalate"
priority = "high"
[[rule]]
name = "pattern"
categories = ["ceasefire_violation"]
min_severity = 1
count_at_least = 3
window_minutes = 60
action = "visit"
"""


def _obs(r: Report) -> Observation:
    return Observation(r, bytes(32))


def _run(policy_text: str, reports: list[Report]) -> list[Decision]:
    ev = Evaluator(parse_policy(policy_text))
    return [d for i, r in enumerate(reports) for d in ev.evaluate(_obs(r), NOW_MS + i)]


def _rid(rng: random.Random, at: int) -> str:
    return uuid7(at, rng.randbytes(10))


# -- matching ----------------------------------------------------------------------------------


def test_single_report_rule_matches_filters() -> None:
    m = make_mission()
    assert [d.rule for d in _run(SIMPLE, [m.draft()])] == ["grave"]
    assert _run(SIMPLE, [m.draft(severity=3)]) == []
    assert _run(SIMPLE, [m.draft(zone="east")]) == []


MATCH_CASES: dict[str, tuple[str, dict[str, Any], bool]] = {
    # name: (rule lines, report changes, matches?)
    "sub_type listed": ('sub_types = ["artillery"]', {}, True),
    "sub_type not listed": ('sub_types = ["mortar"]', {}, False),
    "severity above max": ("max_severity = 3", {"severity": 4}, False),
    "severity in range": ("min_severity = 2\nmax_severity = 4", {"severity": 4}, True),
    "confidence too low": ("min_confidence = 0.95", {"confidence": 0.9}, False),
    "confidence enough": ("min_confidence = 0.9", {"confidence": 0.9}, True),
    "casualties none": ("min_casualties = 1", {}, False),
    "casualties some": ("min_casualties = 3", {"casualties": Casualties(killed=1, injured=2)}, True),
    "in area": ("area = { min_lat = 48.0, min_lon = 37.9, max_lat = 48.3, max_lon = 38.1 }", {}, True),
    "area edge included": ("area = { min_lat = 48.2, min_lon = 38.0, max_lat = 48.3, max_lon = 38.1 }", {}, True),
    "outside area": ("area = { min_lat = 47.0, min_lon = 37.0, max_lat = 47.5, max_lon = 37.5 }", {}, False),
    "near (10 km)": ("near = { lat = 48.25, lon = 38.05, radius_km = 10 }", {}, True),
    "not near (5 km)": ("near = { lat = 48.25, lon = 38.05, radius_km = 5 }", {}, False),
    "category not listed": ('categories = ["protest"]', {}, False),
    "no constraint": ("", {}, True),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MATCH_CASES))
def test_matching_table(name: str) -> None:
    lines, changes, expected = MATCH_CASES[name]
    text = f'org = "un"\n[[rule]]\nname = "r"\naction = "a"\n{lines}\n'
    m = make_mission()
    assert bool(_run(text, [m.draft(**changes)])) is expected  # Riverford, 48.2 N 38.0 E


def test_near_uses_great_circle_distance() -> None:
    p = parse_policy(
        'org="un"\n[[rule]]\nname="r"\naction="a"\nnear={lat=48.0,lon=38.0,radius_km=111.3}'
    )
    near = p.rules[0].match.near
    assert near is not None
    assert near.distance_km(49.0, 38.0) == pytest.approx(111.19, abs=0.01)  # one degree of latitude
    assert near.contains(49.0, 38.0)


# -- aggregation -------------------------------------------------------------------------------


def test_aggregating_rule_fires_once_per_window_at_the_count() -> None:
    m = make_mission()
    base = NOW_MS - NOW_MS % HOUR
    reports = [
        m.draft(category=Category.CEASEFIRE_VIOLATION, severity=1, observed_at_ms=base + i)
        for i in range(7)
    ]
    fired = _run(SIMPLE, reports)
    assert len(fired) == 1
    d = fired[0]
    assert d.kind == "aggregate"
    assert d.report_ids == tuple(sorted(r.report_id for r in reports[:3]))
    assert (d.window_start_ms, d.window_end_ms) == (base, base + HOUR)
    assert d.decision_id == f"un:pattern:north:{base}"
    later = m.draft(category=Category.CEASEFIRE_VIOLATION, observed_at_ms=base + HOUR)
    assert _run(SIMPLE, [*reports, later]) == fired  # a new window starts counting from one


DISTINCT = """
org = "eu"
[[rule]]
name = "corroborated"
categories = ["armed_clash"]
window_hours = 24
count_at_least = 2
distinct_observers_at_least = 2
distinct_orgs_at_least = 2
group_by = ["zone", "category"]
action = "council_briefing"
"""


def test_distinct_observers_and_organizations_must_corroborate() -> None:
    m = make_mission()
    base = NOW_MS - NOW_MS % DAY
    clash = {"category": Category.ARMED_CLASH, "observed_at_ms": base + HOUR}
    same_obs = [m.draft("un", 1, **clash), m.draft("un", 1, **clash)]
    same_org = [m.draft("un", 1, **clash), m.draft("un", 2, **clash)]
    two_orgs = [m.draft("un", 1, **clash), m.draft("osce", 1, **clash)]
    assert _run(DISTINCT, same_obs) == []
    assert _run(DISTINCT, same_org) == []
    [d] = _run(DISTINCT, two_orgs)
    assert d.group == "north/armed_clash"
    assert "of 2 organizations (osce, un)" in d.summary


# -- early warning -----------------------------------------------------------------------------

TREND = """
org = "osce"
[[rule]]
name = "escalation"
categories = ["ceasefire_violation"]
window_days = 7
trend = { baseline_windows = 2, factor = 2.0, min_count = 4 }
action = "early_warning"
priority = "critical"
"""


def _weekly(m, zone: str, counts: dict[int, int]) -> list[Report]:  # type: ignore[no-untyped-def]
    week0 = NOW_MS - NOW_MS % WEEK
    return [
        m.draft(
            category=Category.CEASEFIRE_VIOLATION,
            zone=zone,
            observed_at_ms=week0 + week * WEEK + i * HOUR,
            report_id=_rid(m.rng, week0 + week * WEEK + i),
        )
        for week, n in counts.items()
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("name", "counts", "fires_in_week"),
    [
        ("doubling against a 2-week mean", {-2: 3, -1: 3, 0: 6}, 0),  # 6 >= 2 * 3
        ("rise but not double", {-2: 3, -1: 3, 0: 5}, None),
        ("below min_count", {-1: 1, 0: 3}, None),
        ("no baseline: min_count decides", {0: 4}, 0),
        ("earlier week fires first", {-3: 1, -2: 5, -1: 5}, -2),
    ],
)
def test_trend_rule(name: str, counts: dict[int, int], fires_in_week: int | None) -> None:
    m = make_mission()
    fired = _run(TREND, _weekly(m, "east", counts))
    if fires_in_week is None:
        assert fired == [], name
        return
    week0 = NOW_MS - NOW_MS % WEEK
    assert fired, name
    assert fired[0].window_start_ms == week0 + fires_in_week * WEEK
    assert fired[0].kind == "trend"
    assert fired[0].zone == "east"


def test_trend_counts_are_exact_rationals() -> None:
    # 5 >= 2.5 * 2 exactly; a float 2.5 * mean could land either side in other cases.
    text = TREND.replace("factor = 2.0", "factor = 2.5").replace(
        "baseline_windows = 2", "baseline_windows = 1"
    )
    m = make_mission()
    assert _run(text, _weekly(m, "east", {-1: 2, 0: 5}))
    assert not _run(text, _weekly(make_mission(), "east", {-1: 2, 0: 4}))


def test_window_counts_for_trend_charts() -> None:
    m = make_mission()
    p = parse_policy(TREND)
    counts = window_counts(p.rules[0], _weekly(m, "east", {-1: 2, 0: 5}))
    week0 = NOW_MS - NOW_MS % WEEK
    assert counts == {"east": {week0 - WEEK: 2, week0: 5}}


# -- canonical order and determinism -----------------------------------------------------------


def test_canonical_order_releases_below_the_watermark_in_key_order() -> None:
    order: CanonicalOrder[str] = CanonicalOrder()
    order.record("t", 1, 0, 100, "b0")
    order.record("t", 0, 0, 100, "a0")
    order.record("t", 0, 1, 90, "a1")  # broker clock stepped back: effective time stays 100
    order.record("t", 0, 1, 90, "dup")  # the same offset again is ignored
    order.record("t", 1, 1, 120, None)  # a quarantined record still moves time on
    assert order.progress() == {("t", 0): 100, ("t", 1): 120}
    assert order.release(100) == []  # strictly below: another record may still come at 100
    assert order.release(101) == [(100, "a0"), (100, "a1"), (100, "b0")]
    order.record("t", 2, 0, 50, "late")
    assert order.late == 1
    assert order.release(101) == [(50, "late")]


def test_watermark_is_the_slowest_partition_unless_caught_up() -> None:
    progress = {("t", 0): 100, ("t", 1): 300}
    assigned = [("t", 0), ("t", 1), ("t", 2)]
    assert watermark(progress, assigned, {}, 10) == 0  # partition 2 not read at all
    assert watermark(progress, assigned, {("t", 2): 500}, 10) == 100
    assert watermark(progress, assigned, {("t", 0): 250, ("t", 2): 500}, 10) == 240
    assert watermark(progress, [], {}, 10) == 0
    caught = caught_up_partitions(
        assigned,
        {("t", 0): 5, ("t", 1): 3},
        {("t", 0): 5, ("t", 1): 9, ("t", 2): None},
        {("t", 0): 1000, ("t", 1): 1000, ("t", 2): 1000},
    )
    assert caught == {("t", 0): 1000}


def _log(seed: int, n: int = 120) -> list[list[tuple[str, int, int, int, Observation | None]]]:
    """Per-partition record streams of a small mission (some records quarantined)."""
    sc = build_scenario(NOW_MS)
    rng = random.Random(seed)
    parts: dict[tuple[str, int], list[tuple[str, int, int, int, Observation | None]]] = {}
    clock = NOW_MS
    for _ in range(n):
        obs = rng.choice(sc.observers)
        r = draft_report(rng, obs, sc.mandate, NOW_MS)
        tp = (f"obus.reports.{obs.org}", hash(obs.observer_id) % 2)
        clock += rng.randrange(0, 3)  # ties across partitions are common
        stream = parts.setdefault(tp, [])
        item = None if rng.random() < 0.1 else Observation(r, rng.randbytes(32))
        stream.append((tp[0], tp[1], len(stream), clock, item))
    return list(parts.values())


def _interleave(streams, rng: random.Random):  # type: ignore[no-untyped-def]
    cursors = [0] * len(streams)
    out = []
    while any(c < len(s) for c, s in zip(cursors, streams, strict=True)):
        i = rng.choice([i for i, s in enumerate(streams) if cursors[i] < len(s)])
        out.append(streams[i][cursors[i]])
        cursors[i] += 1
    return out


@pytest.mark.parametrize("org", [o for o, _ in ORGANIZATIONS])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_same_log_same_decisions_whatever_the_interleaving(org: str, seed: int) -> None:
    policy = load_policy(POLICIES / f"{org}.toml")
    streams = _log(seed % 7)
    expected = decide_all(policy, itertools.chain.from_iterable(streams))
    got = decide_all(policy, _interleave(streams, random.Random(seed)))
    assert got == expected


def test_incremental_release_equals_one_pass() -> None:
    """A node releasing in many small steps decides exactly as a replay of the whole log."""
    policy = load_policy(POLICIES / "osce.toml")
    streams = _log(3, 300)
    assert decide_all(policy, itertools.chain.from_iterable(streams))
    rng = random.Random(1)
    engine = PolicyEngine(policy)
    got = []
    for rec in _interleave(streams, rng):
        engine.record(*rec)
        if rng.random() < 0.2:
            w = watermark(
                engine.order.progress(), {(r[0], r[1]) for s in streams for r in s[:1]}, {}, 0
            )
            got += engine.advance(w)
    got += engine.advance(2**62)
    assert got == decide_all(policy, itertools.chain.from_iterable(streams))
    assert engine.order.late == 0


def test_decisions_differ_across_organizations_on_the_same_log() -> None:
    streams = _log(5, 400)
    sets = {
        org: {
            d.decision_id.split(":", 1)[1]
            for d in decide_all(
                load_policy(POLICIES / f"{org}.toml"), itertools.chain.from_iterable(streams)
            )
        }
        for org, _ in ORGANIZATIONS
    }
    assert len({frozenset(s) for s in sets.values()}) == len(sets)


# -- shipped files and configuration errors ----------------------------------------------------


@pytest.mark.parametrize("org", [o for o, _ in ORGANIZATIONS])
def test_shipped_policies_parse_and_fit_the_demo_mandate(org: str) -> None:
    p = load_policy(POLICIES / f"{org}.toml")
    assert p.org == org
    p.check_mandate(build_scenario(NOW_MS).mandate)
    assert len(p.digest) == 32


def test_policy_against_mandate_names_unknown_zone() -> None:
    p = parse_policy('org="un"\n[[rule]]\nname="a"\naction="x"\nzones=["west"]')
    with pytest.raises(ConfigError) as exc:
        p.check_mandate(build_scenario(NOW_MS).mandate)
    assert exc.value.key == "rule[a].zones"
    assert "north" in exc.value.fix


R = 'org="un"\n[[rule]]\nname="a"\naction="x"\n'
BAD = {
    "not toml": ("org = ", "<policy>"),
    "no org": ("[[rule]]\nname='a'", "org"),
    "org not an id": ('org = "U N"\n[[rule]]\nname="a"\naction="x"', "org"),
    "unknown top-level key": ('org="un"\nrules=[]', "rules"),
    "no rules": ('org = "un"', "rule"),
    "rule not a table list": ('org="un"\nrule="x"', "rule"),
    "missing name": ('org="un"\n[[rule]]\naction="x"', "rule[0].name"),
    "missing action": ('org="un"\n[[rule]]\nname="a"\ncategories=["shelling"]\nmin_severity=1', "rule[0].action"),
    "bad name": ('org="un"\n[[rule]]\nname="A B"\naction="x"', "rule[0].name"),
    "unknown key": (R + 'colour="red"', "rule[0].colour"),
    "unknown category": (R + 'categories=["bombing"]', "rule[a].categories"),
    "categories not a list": (R + 'categories="shelling"', "rule[a].categories"),
    "severity out of range": (R + "min_severity=7", "rule[a].min_severity"),
    "severity not whole": (R + "min_severity=2.5", "rule[a].min_severity"),
    "severity range inverted": (R + "min_severity=4\nmax_severity=2", "rule[a].max_severity"),
    "confidence out of range": (R + "min_confidence=1.5", "rule[a].min_confidence"),
    "bad priority": (R + 'priority="urgent"', "rule[a].priority"),
    "publish not bool": (R + 'publish="yes"', "rule[a].publish"),
    "count without window": (R + "count_at_least=3", "rule[a].window_minutes"),
    "distinct without window": (R + "distinct_orgs_at_least=2", "rule[a].window_minutes"),
    "two windows": (R + "window_hours=1\nwindow_days=1", "rule[a].window_days"),
    "window too short": (R + "window_minutes=0.5", "rule[a].window_minutes"),
    "window negative": (R + "window_hours=-1", "rule[a].window_hours"),
    "bad group key": (R + 'window_hours=1\ngroup_by=["place"]', "rule[a].group_by"),
    "area missing key": (R + "area={min_lat=1,min_lon=1,max_lat=2}", "rule[a].area.max_lon"),
    "area empty": (R + "area={min_lat=2,min_lon=1,max_lat=1,max_lon=2}", "rule[a].area"),
    "area unknown key": (R + "area={min_lat=1,min_lon=1,max_lat=2,max_lon=2,srid=4326}", "rule[a].area.srid"),
    "near bad latitude": (R + "near={lat=95,lon=1,radius_km=3}", "rule[a].near.lat"),
    "near zero radius": (R + "near={lat=45,lon=1,radius_km=0}", "rule[a].near.radius_km"),
    "trend without window": (R + "trend={baseline_windows=1,factor=2.0,min_count=3}", "rule[a].window_days"),
    "trend factor below 1": (R + "window_days=7\ntrend={baseline_windows=1,factor=0.5,min_count=3}", "rule[a].trend.factor"),
    "trend missing key": (R + "window_days=7\ntrend={baseline_windows=1,factor=2.0}", "rule[a].trend.min_count"),
    "trend with count": (R + "window_days=7\ncount_at_least=2\ntrend={baseline_windows=1,factor=2.0,min_count=3}", "rule[a].trend"),
    "trend baseline too long": (R + "window_days=7\ntrend={baseline_windows=99,factor=2.0,min_count=3}", "rule[a].trend.baseline_windows"),
    "duplicate rule name": (R + '[[rule]]\nname="a"\naction="y"', "rule[a].name"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BAD))
def test_config_errors_name_the_key_and_the_fix(name: str) -> None:
    text, key = BAD[name]
    with pytest.raises(ConfigError) as exc:
        parse_policy(text)
    assert exc.value.key == key
    assert exc.value.fix
    assert key in str(exc.value) and "fix:" in str(exc.value)


def test_bad_policy_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(R + "window_hours = 'twelve'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_policy(path)
    assert exc.value.key == "rule[a].window_hours"
    with pytest.raises(ConfigError) as exc:
        load_policy(tmp_path / "missing.toml")
    assert exc.value.key == "policy"


def test_report_fields_used_by_rules_are_the_wire_fields() -> None:
    """Rules read only verified report fields (no header, no arrival order)."""
    r = make_mission().draft()
    assert {f.name for f in dataclasses.fields(Report)} >= {
        "category", "sub_type", "severity", "confidence", "zone", "location", "casualties",
        "observed_at_ms", "observer_id", "org",
    }  # fmt: skip
    assert isinstance(r.location, Location)
