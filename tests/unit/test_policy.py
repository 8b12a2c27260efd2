"""Follow-up policies: matching, aggregation, determinism and configuration errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bus.errors import ConfigError
from bus.model import Category
from bus.policy import load_policy, parse_policy
from nodes.scenario import build_scenario, draft_report
from tests.mission import NOW_MS, make_mission

POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "policies"

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


def test_single_report_rule_matches_filters() -> None:
    m = make_mission()
    p = parse_policy(SIMPLE)
    assert [d.rule for d in p.evaluate(m.draft())] == ["grave"]
    assert p.evaluate(m.draft(severity=3)) == []
    assert p.evaluate(m.draft(zone="east")) == []


def test_aggregating_rule_fires_once_per_window_at_the_count() -> None:
    m = make_mission()
    p = parse_policy(SIMPLE)
    base = NOW_MS - NOW_MS % 3_600_000
    fired = []
    for i in range(7):
        r = m.draft(category=Category.CEASEFIRE_VIOLATION, severity=1, observed_at_ms=base + i)
        fired += p.evaluate(r)
    assert len(fired) == 1
    assert len(fired[0].evidence) == 3
    later = m.draft(category=Category.CEASEFIRE_VIOLATION, observed_at_ms=base + 3_600_000)
    assert p.evaluate(later) == []  # a new window starts counting from one


def test_same_reports_same_decisions() -> None:
    sc = build_scenario(NOW_MS)
    rng = random.Random(3)
    reports = [draft_report(rng, o, sc.mandate, NOW_MS) for o in sc.observers for _ in range(5)]
    runs = []
    for _ in range(2):
        p = load_policy(POLICIES / "osce.toml")
        runs.append([d for r in reports for d in p.evaluate(r)])
    assert runs[0] == runs[1]
    assert runs[0]


@pytest.mark.parametrize("org", ["un", "osce", "eu", "nato", "csto", "sco"])
def test_shipped_policies_parse(org: str) -> None:
    assert load_policy(POLICIES / f"{org}.toml").org == org


BAD = {
    "no org": ("[[rule]]\nname='a'", "org"),
    "no rules": ('org = "un"', "rule"),
    "unknown key": ('org="un"\n[[rule]]\nname="a"\ncategories=["shelling"]\nmin_severity=1\naction="x"\ncolour="red"', "rule[0].colour"),
    "unknown category": ('org="un"\n[[rule]]\nname="a"\ncategories=["bombing"]\nmin_severity=1\naction="x"', "rule[a]"),
    "severity out of range": ('org="un"\n[[rule]]\nname="a"\ncategories=["shelling"]\nmin_severity=7\naction="x"', "rule[a].min_severity"),
    "count without window": ('org="un"\n[[rule]]\nname="a"\ncategories=["shelling"]\nmin_severity=1\naction="x"\ncount_at_least=3', "rule[a].window_minutes"),
    "bad priority": ('org="un"\n[[rule]]\nname="a"\ncategories=["shelling"]\nmin_severity=1\naction="x"\npriority="urgent"', "rule[a].priority"),
    "missing action": ('org="un"\n[[rule]]\nname="a"\ncategories=["shelling"]\nmin_severity=1', "rule[0].action"),
    "not toml": ("org = ", "<policy>"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BAD))
def test_config_errors_name_the_key_and_the_fix(name: str) -> None:
    text, key = BAD[name]
    with pytest.raises(ConfigError) as exc:
        parse_policy(text)
    assert exc.value.key == key
    assert exc.value.fix
