"""Follow-up policies: matching, aggregation, early warning, provisional and final rules, the
final order, and config errors."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import ConfigError
from bus.model import Casualties, Category, Location, Report
from bus.policy import (
    Decision,
    Evaluator,
    Observation,
    PolicyEngine,
    SealRef,
    decide_all,
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


# -- provisional and final rules, the final order ----------------------------------------------

BOTH = """
org = "un"
[[rule]]
name = "grave-now"
categories = ["shelling"]
min_severity = 4
action = "alert"
verdicts = "provisional"
[[rule]]
name = "grave-sealed"
categories = ["shelling"]
min_severity = 4
action = "escalate"
"""


def _seal(epoch: int) -> SealRef:
    return SealRef(epoch, bytes([epoch]) * 32, NOW_MS + epoch * 1000)


def test_rules_act_on_final_verdicts_unless_they_say_provisional() -> None:
    policy = parse_policy(BOTH)
    assert [r.verdicts for r in policy.rules] == ["provisional", "final"]
    engine = PolicyEngine(policy)
    obs = _obs(make_mission().draft(severity=5))
    [now] = engine.on_stored(obs, NOW_MS - 5)  # at once, as this node stored it
    assert (now.rule, now.decided_at_ms, now.seal_epoch, now.seal_digest) == (
        "grave-now", NOW_MS - 5, 0, b"",
    )  # fmt: skip
    assert not now.final
    assert engine.on_final(_seal(1), []) == []
    [sealed] = engine.on_final(_seal(2), [obs])  # once its final verdict is accepted
    assert (sealed.rule, sealed.decided_at_ms) == ("grave-sealed", _seal(2).time_ms)
    assert (sealed.seal_epoch, sealed.seal_digest) == (2, _seal(2).digest) and sealed.final
    with pytest.raises(ValueError, match="epoch 2 given after epoch 2"):
        engine.on_final(_seal(2), [obs])  # epochs in order, each once
    with pytest.raises(ValueError, match="epoch 4 given after epoch 2"):
        engine.on_final(_seal(4), [obs])


def _epochs(seed: int, n: int = 120) -> list[tuple[SealRef, list[Observation]]]:
    """A sealed stream of a small mission: each epoch's accepted reports in the judge's order."""
    sc = build_scenario(NOW_MS)
    rng = random.Random(seed)
    out: list[tuple[SealRef, list[Observation]]] = []
    batch: list[Observation] = []
    for _ in range(n):
        obs = rng.choice(sc.observers)
        batch.append(Observation(draft_report(rng, obs, sc.mandate, NOW_MS), rng.randbytes(32)))
        if rng.random() < 0.1:
            out.append((_seal(len(out) + 1), batch))
            batch = []
    out.append((_seal(len(out) + 1), batch))
    return out


@pytest.mark.parametrize("org", [o for o, _ in ORGANIZATIONS])
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_final_decisions_are_a_function_of_the_sealed_stream(org: str, seed: int) -> None:
    """A node that evaluates epoch after epoch as seals come (restarting at any epoch, which
    replays the stream from the first) decides exactly as a replay of the whole sealed log."""
    policy = load_policy(POLICIES / f"{org}.toml")
    epochs = _epochs(seed % 7, 300)
    expected = decide_all(policy, epochs)
    restart = random.Random(seed).randrange(len(epochs))
    engine = PolicyEngine(policy)
    got = [d for seal, obs in epochs[:restart] for d in engine.on_final(seal, obs)]
    engine = PolicyEngine(policy)  # restarted: the store keeps decisions by id
    again = [d for seal, obs in epochs for d in engine.on_final(seal, obs)]
    assert got == again[: len(got)]
    assert again == expected
    assert all(d.final and d.decided_at_ms == NOW_MS + d.seal_epoch * 1000 for d in expected)


def test_decisions_differ_across_organizations_on_the_same_log() -> None:
    epochs = _epochs(5, 400)
    sets = {
        org: {
            d.decision_id.split(":", 1)[1]
            for d in decide_all(load_policy(POLICIES / f"{org}.toml"), epochs)
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
    "verdicts not final or provisional": (R + 'verdicts="sealed"', "rule[a].verdicts"),
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
