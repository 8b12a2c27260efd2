"""The policy file: an organization's follow-up rules in TOML, parsed and validated (pure).

A policy file belongs to one organization; nobody else has a say in it. Example::

    org = "osce"
    description = "OSCE follow-up rules"           # optional

    [[rule]]
    name = "grave-violence"                          # unique id within the file
    # -- what a report must look like (every key optional; absent = no constraint)
    categories = ["shelling", "armed_clash"]         # see bus.model.Category
    sub_types = ["artillery", "mlrs"]
    min_severity = 4                                 # 1..5 (also max_severity)
    min_confidence = 0.5                             # 0.0..1.0
    min_casualties = 1                               # killed + injured + missing
    zones = ["north"]                                # mandate zone ids
    area = { min_lat = 48.0, min_lon = 37.5, max_lat = 48.6, max_lon = 38.5 }
    near = { lat = 48.2, lon = 38.0, radius_km = 15 }
    # -- what the organization does
    action = "escalate"                              # its own word for it
    priority = "high"                                # low | medium | high | critical
    publish = true                                   # sign and publish the decision
    verdicts = "final"                               # final (default) | provisional

    [[rule]]
    name = "corroborated-clashes"
    categories = ["armed_clash"]
    window_hours = 12                                # or window_minutes / window_days
    count_at_least = 3                               # reports in one window ...
    distinct_observers_at_least = 2                  # ... by at least 2 observers ...
    distinct_orgs_at_least = 2                       # ... of at least 2 organizations
    group_by = ["zone"]                              # zone, category, sub_type, org; [] = all
    action = "request_assessment_visit"

    [[rule]]
    name = "ceasefire-escalation"                   # early warning
    categories = ["ceasefire_violation"]
    window_days = 7
    trend = { baseline_windows = 1, factor = 2.0, min_count = 4 }
    action = "early_warning"
    priority = "high"

``verdicts`` says which verdicts a rule acts on. ``final`` (the default): a report counts once
its final verdict is ``accepted`` (its epoch sealed by k organizations and judged), in the one
canonical order of the sealed log, and the decision names the seal it rests on: every node and
every replay decides alike. ``provisional``: the rule acts at once on what this node accepted,
in the order it stored it; faster, this node's view only, and its decisions name no seal.

What the rules mean (report, aggregate and trend rules) and how they are evaluated:
:mod:`bus.policy`. Every mistake in a file is a :class:`~bus.errors.ConfigError` naming the key
(``rule[<name>].<key>``) and the fix.
"""

from __future__ import annotations

import hashlib
import tomllib
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

from bus.errors import BusError, ConfigError
from bus.model import Category, check_id
from bus.policy import (
    GROUP_KEYS,
    PRIORITIES,
    VERDICTS,
    VERDICTS_FINAL,
    Area,
    Match,
    Near,
    Policy,
    Rule,
    Trend,
)

_MINUTE_MS: Final = 60_000
# A window longer than a year is a configuration mistake, not a policy.
MAX_WINDOW_MS: Final = 366 * 24 * 60 * _MINUTE_MS
MAX_BASELINE_WINDOWS: Final = 52

_TOP_KEYS: Final = {"org", "description", "rule"}
_RULE_KEYS: Final = {
    "name", "categories", "sub_types", "min_severity", "max_severity", "min_confidence",
    "min_casualties", "zones", "area", "near", "action", "priority", "publish",
    "count_at_least", "distinct_observers_at_least", "distinct_orgs_at_least",
    "window_minutes", "window_hours", "window_days", "group_by", "trend", "verdicts",
}  # fmt: skip
_AREA_KEYS: Final = ("min_lat", "min_lon", "max_lat", "max_lon")
_NEAR_KEYS: Final = ("lat", "lon", "radius_km")
_TREND_KEYS: Final = ("baseline_windows", "factor", "min_count")


def _err(key: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(key, problem, fix)


def _number(where: str, raw: Any, lo: float, hi: float, fix: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not lo <= raw <= hi:
        raise _err(where, f"{raw!r} is not a number in {lo:g}..{hi:g}", fix)
    return float(raw)


def _whole(where: str, raw: Any, lo: int, hi: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
        raise _err(where, f"{raw!r} is not a whole number in {lo}..{hi}", f"use {lo}..{hi}")
    return raw


def _strings(where: str, raw: Any) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise _err(
            where,
            f"{raw!r} is not a list of strings",
            f'write {where.rsplit(".", maxsplit=1)[-1]} = ["..."]',
        )
    return [x.strip() for x in raw]  # fmt: skip


def _table(where: str, raw: Any, keys: tuple[str, ...], example: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _err(where, "is not a table", f"write {example}")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise _err(f"{where}.{unknown[0]}", "unknown key", f"use only {', '.join(keys)}")
    for k in keys:
        if k not in raw:
            raise _err(f"{where}.{k}", "is missing", f"write {example}")
    return raw


def _match(where: str, raw: dict[str, Any]) -> Match:
    cats: frozenset[Category] = frozenset()
    if "categories" in raw:
        names = _strings(f"{where}.categories", raw["categories"])
        try:
            cats = frozenset(Category.parse(c) for c in names)
        except BusError as exc:
            raise _err(f"{where}.categories", exc.message, "use the allowed names") from exc
    subs = frozenset(_strings(f"{where}.sub_types", raw.get("sub_types", [])))
    zones = frozenset(_strings(f"{where}.zones", raw.get("zones", [])))
    for z in sorted(zones):
        try:
            check_id("zones", z)
        except BusError as exc:
            raise _err(f"{where}.zones", exc.message, "use the mandate's zone ids") from exc
    min_sev = _whole(f"{where}.min_severity", raw.get("min_severity", 1), 1, 5)
    max_sev = _whole(f"{where}.max_severity", raw.get("max_severity", 5), 1, 5)
    if min_sev > max_sev:
        raise _err(f"{where}.max_severity", f"{max_sev} < min_severity {min_sev}", "swap them")
    conf = _number(f"{where}.min_confidence", raw.get("min_confidence", 0.0), 0, 1, "use 0.0..1.0")
    cas = _whole(f"{where}.min_casualties", raw.get("min_casualties", 0), 0, 1_000_000)
    area = None
    if "area" in raw:
        a = _table(
            f"{where}.area", raw["area"], _AREA_KEYS,
            "area = { min_lat = 48.0, min_lon = 37.5, max_lat = 48.6, max_lon = 38.5 }",
        )  # fmt: skip
        lat0 = _number(f"{where}.area.min_lat", a["min_lat"], -90, 90, "a latitude in degrees")
        lat1 = _number(f"{where}.area.max_lat", a["max_lat"], -90, 90, "a latitude in degrees")
        lon0 = _number(f"{where}.area.min_lon", a["min_lon"], -180, 180, "a longitude")
        lon1 = _number(f"{where}.area.max_lon", a["max_lon"], -180, 180, "a longitude")
        if lat0 >= lat1 or lon0 >= lon1:
            raise _err(f"{where}.area", "is empty", "need min_lat < max_lat and min_lon < max_lon")
        area = Area(lat0, lon0, lat1, lon1)
    near = None
    if "near" in raw:
        n = _table(
            f"{where}.near", raw["near"], _NEAR_KEYS,
            "near = { lat = 48.2, lon = 38.0, radius_km = 15 }",
        )  # fmt: skip
        near = Near(
            _number(f"{where}.near.lat", n["lat"], -90, 90, "a latitude in degrees"),
            _number(f"{where}.near.lon", n["lon"], -180, 180, "a longitude in degrees"),
            _number(f"{where}.near.radius_km", n["radius_km"], 0.001, 20_000, "e.g. 15"),
        )
    return Match(cats, subs, min_sev, max_sev, conf, cas, zones, area, near)


def _window_ms(where: str, raw: dict[str, Any]) -> int:
    given = [k for k in ("window_minutes", "window_hours", "window_days") if k in raw]
    if len(given) > 1:
        raise _err(f"{where}.{given[1]}", f"conflicts with {given[0]}", "keep only one window key")
    if not given:
        return 0
    key = given[0]
    unit = {"window_minutes": 1, "window_hours": 60, "window_days": 1440}[key]
    value = _number(f"{where}.{key}", raw[key], 0, MAX_WINDOW_MS / _MINUTE_MS / unit, "e.g. 60")
    ms = round(value * unit * _MINUTE_MS)
    if ms < _MINUTE_MS:
        raise _err(f"{where}.{key}", "is shorter than one minute", "use at least one minute")
    return ms


def _rule(index: int, raw: Any) -> Rule:
    where = f"rule[{index}]"
    if not isinstance(raw, dict):
        raise _err(where, "is not a table", "write it as [[rule]] with key = value lines")
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise _err(
            f"{where}.{unknown[0]}", "unknown key", f"use only: {', '.join(sorted(_RULE_KEYS))}"
        )
    for key in ("name", "action"):
        if key not in raw:
            raise _err(f"{where}.{key}", "is missing", f'add {key} = "..."')
    name = raw["name"]
    if not isinstance(name, str):
        raise _err(f"{where}.name", f"{name!r} is not a string", 'write name = "my-rule"')
    try:
        check_id("name", name)
    except BusError as exc:
        raise _err(f"{where}.name", exc.message, 'use e.g. "ceasefire-pattern"') from exc
    where = f"rule[{name}]"
    action = raw["action"]
    if not isinstance(action, str) or not action.strip() or len(action) > 64:
        raise _err(f"{where}.action", f"{action!r}", 'use a short name, e.g. "escalate"')
    priority = raw.get("priority", "medium")
    if priority not in PRIORITIES:
        raise _err(f"{where}.priority", f"{priority!r}", f"use one of {', '.join(PRIORITIES)}")
    publish = raw.get("publish", False)
    if not isinstance(publish, bool):
        raise _err(f"{where}.publish", f"{publish!r} is not true or false", "publish = true")
    verdicts = raw.get("verdicts", VERDICTS_FINAL)
    if verdicts not in VERDICTS:
        raise _err(
            f"{where}.verdicts",
            f"{verdicts!r} is not final or provisional",
            'write verdicts = "final" (sealed, the same at every node) or "provisional"',
        )
    match = _match(where, raw)
    window = _window_ms(where, raw)
    count = _whole(f"{where}.count_at_least", raw.get("count_at_least", 1), 1, 1_000_000)
    observers = _whole(
        f"{where}.distinct_observers_at_least", raw.get("distinct_observers_at_least", 1), 1, 10_000
    )
    orgs = _whole(f"{where}.distinct_orgs_at_least", raw.get("distinct_orgs_at_least", 1), 1, 1000)
    if max(count, observers, orgs) > 1 and not window:
        key = "count_at_least" if count > 1 else "distinct_observers_at_least"
        raise _err(
            f"{where}.window_minutes",
            f"is required with {key} > 1",
            "add window_minutes, window_hours or window_days (e.g. window_hours = 12)",
        )
    group_by = tuple(_strings(f"{where}.group_by", raw.get("group_by", ["zone"])))
    for g in group_by:
        if g not in GROUP_KEYS:
            raise _err(
                f"{where}.group_by", f"{g!r} is not a group key", f"use {', '.join(GROUP_KEYS)}"
            )
    if len(set(group_by)) != len(group_by):
        raise _err(f"{where}.group_by", "names a key twice", "list each key once")
    trend = None
    if "trend" in raw:
        t = _table(
            f"{where}.trend", raw["trend"], _TREND_KEYS,
            "trend = { baseline_windows = 1, factor = 2.0, min_count = 4 }",
        )  # fmt: skip
        if not window:
            raise _err(f"{where}.window_days", "is required with trend", "add e.g. window_days = 7")
        if max(count, observers, orgs) > 1:
            raise _err(
                f"{where}.trend", "cannot be combined with count or distinct thresholds",
                "use trend.min_count, or split it into two rules",
            )  # fmt: skip
        factor = _number(f"{where}.trend.factor", t["factor"], 1, 1000, "e.g. 2.0 for doubling")
        baseline = _whole(
            f"{where}.trend.baseline_windows", t["baseline_windows"], 1, MAX_BASELINE_WINDOWS
        )
        minimum = _whole(f"{where}.trend.min_count", t["min_count"], 1, 1_000_000)
        # Fraction of the decimal the person wrote, so the comparison is exact.
        trend = Trend(baseline, Fraction(str(factor)), minimum)
    return Rule(
        name=name,
        action=action.strip(),
        priority=str(priority),
        match=match,
        publish=publish,
        window_ms=window,
        count_at_least=count,
        distinct_observers_at_least=observers,
        distinct_orgs_at_least=orgs,
        group_by=group_by,
        trend=trend,
        verdicts=str(verdicts),
    )


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Parse and validate a TOML policy.

    Raises:
        ConfigError: naming the key (``rule[<name>].<key>``) and the fix.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"is not valid TOML ({exc})", "fix the syntax") from exc
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise _err(unknown[0], "unknown top-level key", f"use only {', '.join(sorted(_TOP_KEYS))}")
    org = doc.get("org")
    if not isinstance(org, str):
        raise ConfigError("org", "is missing", 'add org = "<your organization id>" at the top')
    try:
        check_id("org", org)
    except BusError as exc:
        raise _err("org", exc.message, 'use the id the mandate gives, e.g. "osce"') from exc
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list):
        raise _err("rule", "is not a list of tables", "write each rule as [[rule]]")
    rules = tuple(_rule(i, r) for i, r in enumerate(raw_rules))
    seen: set[str] = set()
    for r in rules:
        if r.name in seen:
            raise _err(f"rule[{r.name}].name", "names must be unique", "rename the duplicate rule")
        seen.add(r.name)
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise _err("description", "is not a string", 'write description = "..."')
    return Policy(org, rules, description, hashlib.sha256(text.encode()).digest())


def load_policy(path: Path) -> Policy:
    """Read and parse a policy file (ConfigError names the file when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            "policy", f"cannot read {path}: {exc.strerror}", "pass --policy FILE"
        ) from exc
    return parse_policy(text, source=str(path))
