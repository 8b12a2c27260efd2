"""An organization's own follow-up policy: rules over verified reports -> decisions (pure).

A policy file (TOML) belongs to one organization; nobody else has a say in it. Example::

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

Rule kinds:

* **report** (no window): one decision per matching report.
* **aggregate** (a window): windows are fixed buckets of ``observed_at`` aligned to the Unix
  epoch (``observed_at_ms // window``), per group. One decision per (rule, group, window), made
  at the first report that brings the window to every threshold; its evidence is every matching
  report of that window so far.
* **trend** (a window and ``trend``): early warning. The count of the window a report falls in
  is compared with the mean count of the ``baseline_windows`` windows before it; one decision
  per (rule, group, window) when ``count >= min_count`` and ``count >= factor * baseline``
  (compared exactly, in rational arithmetic). A baseline of zero makes ``min_count`` alone
  decide: activity where there was none.

Determinism. Kafka orders records only within a partition, and nodes interleave partitions
differently, so decisions never depend on arrival order. The node feeds every record to
:class:`CanonicalOrder` with its log position and broker log-append time (the one clock every
reader shares); it releases accepted reports in one total order, ``(effective log time, topic,
partition, offset)``, where a partition's effective time is the running maximum of its records'
log times (so it never goes backwards, whatever the broker clock did), and only up to a
watermark that every partition has passed. :class:`Evaluator` then decides on that order, so
every node and every replay of the same log makes the same decisions with the same ids,
evidence (sorted by report id, each with its envelope digest) and ``decided_at_ms``. The one
assumption: a partition whose end the node has reached gets no later record stamped before
``last fetch - idle margin`` (the broker's clock is not that far behind the node's); a record
that breaks it is counted in :attr:`CanonicalOrder.late` and decided on at once.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import tomllib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from bus.errors import BusError, ConfigError
from bus.model import PAYLOAD_REPORT, Category, Envelope, Mandate, Report, check_id

PRIORITIES: Final = ("low", "medium", "high", "critical")
GROUP_KEYS: Final = ("zone", "category", "sub_type", "org")
KIND_REPORT: Final = "report"
KIND_AGGREGATE: Final = "aggregate"
KIND_TREND: Final = "trend"
KINDS: Final = (KIND_REPORT, KIND_AGGREGATE, KIND_TREND)
# IUGG mean Earth radius (km): haversine distances for `near`; metres don't matter at this scale.
EARTH_RADIUS_KM: Final = 6371.0088
_MINUTE_MS: Final = 60_000
# A window longer than a year is a configuration mistake, not a policy.
MAX_WINDOW_MS: Final = 366 * 24 * 60 * _MINUTE_MS
MAX_BASELINE_WINDOWS: Final = 52

_TOP_KEYS: Final = {"org", "description", "rule"}
_RULE_KEYS: Final = {
    "name", "categories", "sub_types", "min_severity", "max_severity", "min_confidence",
    "min_casualties", "zones", "area", "near", "action", "priority", "publish",
    "count_at_least", "distinct_observers_at_least", "distinct_orgs_at_least",
    "window_minutes", "window_hours", "window_days", "group_by", "trend",
}  # fmt: skip
_AREA_KEYS: Final = ("min_lat", "min_lon", "max_lat", "max_lon")
_NEAR_KEYS: Final = ("lat", "lon", "radius_km")
_TREND_KEYS: Final = ("baseline_windows", "factor", "min_count")


# ---------------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True, slots=True)
class Area:
    """A latitude/longitude bounding box (edges included)."""

    min_lat: float
    min_lon: float
    max_lat: float
    max_lon: float

    def contains(self, lat: float, lon: float) -> bool:
        """True when the point lies in the box."""
        return self.min_lat <= lat <= self.max_lat and self.min_lon <= lon <= self.max_lon


@dataclass(frozen=True, slots=True)
class Near:
    """A circle: centre and radius in kilometres (great-circle distance)."""

    lat: float
    lon: float
    radius_km: float

    def distance_km(self, lat: float, lon: float) -> float:
        """Haversine distance from the centre to the point."""
        p1, p2 = math.radians(self.lat), math.radians(lat)
        dp, dl = p2 - p1, math.radians(lon - self.lon)
        h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))

    def contains(self, lat: float, lon: float) -> bool:
        """True when the point lies within the radius."""
        return self.distance_km(lat, lon) <= self.radius_km


@dataclass(frozen=True, slots=True)
class Match:
    """What a single report must look like; empty sets and None mean "any"."""

    categories: frozenset[Category] = frozenset()
    sub_types: frozenset[str] = frozenset()
    min_severity: int = 1
    max_severity: int = 5
    min_confidence: float = 0.0
    min_casualties: int = 0
    zones: frozenset[str] = frozenset()
    area: Area | None = None
    near: Near | None = None

    def matches(self, r: Report) -> bool:
        """True when the report satisfies every constraint."""
        if self.categories and r.category not in self.categories:
            return False
        if self.sub_types and r.sub_type not in self.sub_types:
            return False
        if not self.min_severity <= r.severity <= self.max_severity:
            return False
        if r.confidence < self.min_confidence:
            return False
        c = r.casualties
        if self.min_casualties and c.killed + c.injured + c.missing < self.min_casualties:
            return False
        if self.zones and r.zone not in self.zones:
            return False
        loc = r.location
        if self.area is not None and not self.area.contains(loc.lat, loc.lon):
            return False
        return self.near is None or self.near.contains(loc.lat, loc.lon)


@dataclass(frozen=True, slots=True)
class Trend:
    """Early warning: a window's count against the mean of the windows before it."""

    baseline_windows: int
    factor: Fraction
    min_count: int

    def fires(self, count: int, baseline_total: int) -> bool:
        """count >= min_count and count >= factor * baseline_total / baseline_windows."""
        return (
            count >= self.min_count
            and count * self.baseline_windows >= self.factor * baseline_total
        )


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule; see the module docstring for the file format."""

    name: str
    action: str
    priority: str = "medium"
    match: Match = field(default_factory=Match)
    publish: bool = False
    window_ms: int = 0
    count_at_least: int = 1
    distinct_observers_at_least: int = 1
    distinct_orgs_at_least: int = 1
    group_by: tuple[str, ...] = ("zone",)
    trend: Trend | None = None

    @property
    def kind(self) -> str:
        """``report``, ``aggregate`` or ``trend``."""
        if self.trend is not None:
            return KIND_TREND
        return KIND_AGGREGATE if self.window_ms else KIND_REPORT

    def matches(self, report: Report) -> bool:
        """True when the report alone satisfies the rule's filters."""
        return self.match.matches(report)

    def group_of(self, report: Report) -> str:
        """The aggregation group of a report, e.g. ``north`` or ``north/shelling``; ``*``: all."""
        values = {
            "zone": report.zone,
            "category": report.category.label,
            "sub_type": report.sub_type or "-",
            "org": report.org,
        }
        return "/".join(values[k] for k in self.group_by) or "*"


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed, validated policy of one organization (immutable; see :class:`Evaluator`)."""

    org: str
    rules: tuple[Rule, ...]
    description: str = ""
    digest: bytes = b""  # SHA-256 of the policy file, named in published decisions

    def __post_init__(self) -> None:
        if not self.rules:
            raise ConfigError("rule", "the policy has no rules", "add at least one [[rule]]")

    def rule(self, name: str) -> Rule | None:
        """The rule with this name, or None."""
        return next((r for r in self.rules if r.name == name), None)

    def check_mandate(self, mandate: Mandate) -> None:
        """Check the policy against the mandate the node runs under.

        Raises:
            ConfigError: the organization is not part of the mandate, or a rule names a zone
                the mandate does not have.
        """
        if mandate.organization(self.org) is None:
            known = ", ".join(o.org for o in mandate.organizations)
            raise ConfigError("org", f"{self.org!r} is not part of the mandate", f"use {known}")
        zone_ids = {z.id for z in mandate.zones}
        for rule in self.rules:
            unknown = sorted(rule.match.zones - zone_ids)
            if unknown:
                raise ConfigError(
                    f"rule[{rule.name}].zones",
                    f"{unknown[0]!r} is not a zone of mandate {mandate.mandate_id}",
                    f"use one of {', '.join(sorted(zone_ids))}",
                )


# ---------------------------------------------------------------------------------------------
# Decisions


@dataclass(frozen=True, slots=True, order=True)
class Evidence:
    """A report a decision rests on: its id and the SHA-256 of its exact envelope bytes."""

    report_id: str
    digest: bytes


@dataclass(frozen=True, slots=True)
class Decision:
    """A follow-up decision of one organization, naming its rule and its evidence.

    ``decided_at_ms`` is the canonical log time of the report that made the rule fire (a
    broker timestamp, the same on every node), not anybody's wall clock.
    """

    org: str
    rule: str
    kind: str
    action: str
    priority: str
    zone: str  # the group's zone, or "*" when the rule does not group by zone
    group: str
    window_start_ms: int  # 0 for report rules
    window_end_ms: int
    evidence: tuple[Evidence, ...]  # sorted by report id
    decided_at_ms: int
    summary: str
    publish: bool = False

    @property
    def decision_id(self) -> str:
        """Stable id: the same log always yields the same id."""
        if self.kind == KIND_REPORT:
            return f"{self.org}:{self.rule}:{self.evidence[0].report_id}"
        return f"{self.org}:{self.rule}:{self.group}:{self.window_start_ms}"

    @property
    def report_ids(self) -> tuple[str, ...]:
        """Report ids of the evidence, sorted."""
        return tuple(e.report_id for e in self.evidence)


@dataclass(frozen=True, slots=True)
class Observation:
    """A verified report with the SHA-256 of its envelope, as the evaluator sees it."""

    report: Report
    digest: bytes


def observation_from_stored(envelope: bytes, digest: bytes) -> Observation | None:
    """What a policy sees of a report record a node stored: the report of a plain envelope.

    A restricted (sealed) report gives ``None``: policies never read restricted content, even
    where this node may decrypt it, because decisions and their evidence are published to
    every organization, and a replay of the log by anyone must reach the same decisions. It
    still counts in the canonical order, as any record does.

    Raises:
        VerificationError: the bytes are not a stored, verified envelope (a corrupt store).
    """
    env = Envelope.decode(envelope)
    if env.payload_type != PAYLOAD_REPORT:
        return None
    return Observation(Report.decode(env.payload), digest)


@dataclass
class _Window:
    reports: dict[str, bytes] = field(default_factory=dict)
    observers: set[str] = field(default_factory=set)
    orgs: set[str] = field(default_factory=set)
    fired: bool = False

    def evidence(self) -> tuple[Evidence, ...]:
        return tuple(Evidence(rid, self.reports[rid]) for rid in sorted(self.reports))


class Evaluator:
    """Applies a policy to reports **given in canonical order** (see :class:`PolicyEngine`).

    State: per (rule, group, window) the matching reports, observers and organizations, and
    whether the window already fired. The same sequence of calls yields the same decisions.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._windows: dict[tuple[str, str, int], _Window] = {}
        self.evaluated = 0

    def evaluate(self, obs: Observation, at_ms: int) -> list[Decision]:
        """Decisions the report triggers at canonical time ``at_ms`` (possibly none)."""
        self.evaluated += 1
        r = obs.report
        out: list[Decision] = []
        for rule in self.policy.rules:
            if not rule.matches(r):
                continue
            if rule.kind == KIND_REPORT:
                out.append(
                    self._decision(
                        rule,
                        r,
                        group="*",
                        window=(0, 0),
                        evidence=(Evidence(r.report_id, obs.digest),),
                        at_ms=at_ms,
                        summary=f"{r.category.label} severity {r.severity} in {r.zone}"
                        f" ({r.location.place or 'no place name'})",
                    )
                )
                continue
            group = rule.group_of(r)
            index = r.observed_at_ms // rule.window_ms
            win = self._windows.setdefault((rule.name, group, index), _Window())
            if r.report_id in win.reports:
                continue
            win.reports[r.report_id] = obs.digest
            win.observers.add(r.observer_id)
            win.orgs.add(r.org)
            if win.fired:
                continue
            summary = self._check(rule, group, index, win)
            if summary is not None:
                win.fired = True
                start = index * rule.window_ms
                out.append(
                    self._decision(
                        rule,
                        r,
                        group=group,
                        window=(start, start + rule.window_ms),
                        evidence=win.evidence(),
                        at_ms=at_ms,
                        summary=summary,
                    )
                )
        return out

    def _check(self, rule: Rule, group: str, index: int, win: _Window) -> str | None:
        count = len(win.reports)
        if rule.trend is not None:
            t = rule.trend
            base = sum(
                len(w.reports)
                for k in range(1, t.baseline_windows + 1)
                if (w := self._windows.get((rule.name, group, index - k))) is not None
            )
            if not t.fires(count, base):
                return None
            mean = Fraction(base, t.baseline_windows)
            ratio = "new activity" if base == 0 else f"x{float(count / mean):.1f}"
            return (
                f"{count} reports in the window against a baseline of {float(mean):g}"
                f" per window over the previous {t.baseline_windows} ({ratio})"
            )
        if (
            count < rule.count_at_least
            or len(win.observers) < rule.distinct_observers_at_least
            or len(win.orgs) < rule.distinct_orgs_at_least
        ):
            return None
        return (
            f"{count} reports in the window by {len(win.observers)} observers of"
            f" {len(win.orgs)} organizations ({', '.join(sorted(win.orgs))})"
        )

    def _decision(
        self,
        rule: Rule,
        r: Report,
        *,
        group: str,
        window: tuple[int, int],
        evidence: tuple[Evidence, ...],
        at_ms: int,
        summary: str,
    ) -> Decision:
        zone = r.zone if rule.kind == KIND_REPORT or "zone" in rule.group_by else "*"
        return Decision(
            org=self.policy.org,
            rule=rule.name,
            kind=rule.kind,
            action=rule.action,
            priority=rule.priority,
            zone=zone,
            group=group if rule.kind != KIND_REPORT else r.zone,
            window_start_ms=window[0],
            window_end_ms=window[1],
            evidence=evidence,
            decided_at_ms=at_ms,
            summary=summary,
            publish=rule.publish,
        )


def window_counts(rule: Rule, reports: Iterable[Report]) -> dict[str, dict[int, int]]:
    """Matching reports per group and window start (ms) for a windowed rule (trend charts)."""
    if not rule.window_ms:
        raise ValueError(f"rule {rule.name} has no window")
    out: dict[str, dict[int, int]] = {}
    for r in reports:
        if rule.matches(r):
            start = r.observed_at_ms // rule.window_ms * rule.window_ms
            per = out.setdefault(rule.group_of(r), {})
            per[start] = per.get(start, 0) + 1
    return out


# ---------------------------------------------------------------------------------------------
# Canonical order across partitions

T = TypeVar("T")
TopicPartition = tuple[str, int]


class CanonicalOrder(Generic[T]):
    """Merges per-partition record streams into one total order every reader computes alike.

    Feed *every* record of every partition with :meth:`record`, each partition in offset order
    (interleave partitions any way); items (accepted reports) come out of :meth:`release` in
    the order ``(effective time, topic, partition, offset)``, and only once every partition
    has passed them (the watermark). A partition's effective time is the running maximum of
    its log-append times, so it never goes backwards.
    """

    def __init__(self) -> None:
        self._time: dict[TopicPartition, int] = {}
        self._last: dict[TopicPartition, int] = {}
        self._heap: list[tuple[int, str, int, int, T]] = []
        self.watermark = 0
        self.late = 0  # items that arrived below the released watermark (assumption broken)

    def __len__(self) -> int:
        return len(self._heap)

    def record(
        self, topic: str, partition: int, offset: int, log_time_ms: int, item: T | None
    ) -> int | None:
        """Note one record; returns its effective time, or None when it was seen before."""
        tp = (topic, partition)
        if offset <= self._last.get(tp, -1):
            return None
        self._last[tp] = offset
        eff = max(self._time.get(tp, log_time_ms), log_time_ms)
        self._time[tp] = eff
        if item is not None:
            if eff < self.watermark:
                self.late += 1
            heapq.heappush(self._heap, (eff, topic, partition, offset, item))
        return eff

    def next_offsets(self) -> dict[TopicPartition, int]:
        """The next offset expected of every partition seen so far."""
        return {tp: o + 1 for tp, o in self._last.items()}

    def progress(self) -> dict[TopicPartition, int]:
        """Effective time of every partition seen so far."""
        return dict(self._time)

    def release(self, watermark_ms: int) -> list[tuple[int, T]]:
        """Pop every item whose effective time is below the watermark, in canonical order.

        Strictly below: another partition may still deliver a record at exactly the watermark.
        """
        self.watermark = max(self.watermark, watermark_ms)
        out: list[tuple[int, T]] = []
        while self._heap and self._heap[0][0] < self.watermark:
            eff, _, _, _, item = heapq.heappop(self._heap)
            out.append((eff, item))
        return out


def watermark(
    progress: Mapping[TopicPartition, int],
    assigned: Iterable[TopicPartition],
    caught_up: Mapping[TopicPartition, int],
    idle_margin_ms: int,
) -> int:
    """The time up to which every assigned partition is known.

    Args:
        progress: effective time per partition (:meth:`CanonicalOrder.progress`).
        assigned: every partition the reader consumes.
        caught_up: partitions whose end the reader has reached, with the reader's clock at the
            fetch that showed that end: nothing stamped before it, less the margin, can follow.
        idle_margin_ms: how far the broker's clock may run behind the reader's.

    Returns:
        The minimum over assigned partitions (0 when there are none or one is unread).
    """
    values = []
    for tp in assigned:
        t = progress.get(tp, 0)
        if tp in caught_up:
            t = max(t, caught_up[tp] - idle_margin_ms)
        values.append(t)
    return min(values, default=0)


class PolicyEngine:
    """Canonical order plus evaluator: what a node (or a replay) runs.

    ``record()`` every record as it is read, then ``advance(watermark)`` for the decisions the
    released reports make. Nothing here reads a clock.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.order: CanonicalOrder[Observation] = CanonicalOrder()
        self.evaluator = Evaluator(policy)

    def record(
        self,
        topic: str,
        partition: int,
        offset: int,
        log_time_ms: int,
        observation: Observation | None,
    ) -> None:
        """Note a record (observation None for a quarantined one)."""
        self.order.record(topic, partition, offset, log_time_ms, observation)

    def advance(self, watermark_ms: int) -> list[Decision]:
        """Evaluate every report released by the watermark, in canonical order."""
        out: list[Decision] = []
        for at_ms, obs in self.order.release(watermark_ms):
            out.extend(self.evaluator.evaluate(obs, at_ms))
        return out

    @property
    def pending(self) -> int:
        """Reports read but not yet evaluated (waiting for the watermark)."""
        return len(self.order)


def decide_all(
    policy: Policy,
    records: Iterable[tuple[str, int, int, int, Observation | None]],
) -> list[Decision]:
    """Every decision over a complete log: ``(topic, partition, offset, log time, obs)``.

    Each partition's records must come in offset order; partitions may interleave any way.
    """
    engine = PolicyEngine(policy)
    for topic, partition, offset, log_time, obs in records:
        engine.record(topic, partition, offset, log_time, obs)
    return engine.advance(2**63 - 1)


# ---------------------------------------------------------------------------------------------
# Parsing and validation


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


def caught_up_partitions(
    assigned: Collection[TopicPartition],
    positions: Mapping[TopicPartition, int],
    highwater: Mapping[TopicPartition, int | None],
    polled_at: Mapping[TopicPartition, int | None],
) -> dict[TopicPartition, int]:
    """Partitions read to the end of what the last fetch showed, with that fetch's time."""
    out: dict[TopicPartition, int] = {}
    for tp in assigned:
        hw, at = highwater.get(tp), polled_at.get(tp)
        if hw is not None and at is not None and positions.get(tp, 0) >= hw:
            out[tp] = at
    return out
