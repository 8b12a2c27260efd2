"""An organization's own follow-up policy: rules over verified reports -> decisions (pure).

A policy belongs to one organization; nobody else has a say in it. Its file format (TOML) and
the parser that validates it are in :mod:`bus.policy_file`.

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

import heapq
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Final, Generic, TypeVar

from bus.errors import ConfigError
from bus.model import PAYLOAD_REPORT, Category, Envelope, Mandate, Report

PRIORITIES: Final = ("low", "medium", "high", "critical")
GROUP_KEYS: Final = ("zone", "category", "sub_type", "org")
KIND_REPORT: Final = "report"
KIND_AGGREGATE: Final = "aggregate"
KIND_TREND: Final = "trend"
KINDS: Final = (KIND_REPORT, KIND_AGGREGATE, KIND_TREND)
# IUGG mean Earth radius (km): haversine distances for `near`; metres don't matter at this scale.
EARTH_RADIUS_KM: Final = 6371.0088


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
    """One rule; see :mod:`bus.policy_file` for the file format."""

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
