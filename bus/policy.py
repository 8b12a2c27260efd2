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

Provisional or final. Each rule says which verdicts it acts on (``verdicts`` in the file):

* **final** (the default): the rule sees a report once its final verdict is ``accepted``, the
  verdict every node and auditor reaches on the sealed log (:mod:`bus.judge`), and sees the
  reports in the one canonical order: epoch after epoch (the epoch whose answer accepted the
  report), and inside an epoch the judge's order (reports deferred from the epoch before first,
  then by organization, observer id and seq, then position). Its "now" is *t_e* of that epoch.
  So every node, and every replay of the sealed log by anyone, makes the same final decisions
  with the same ids, evidence (sorted by report id, each with its envelope digest) and
  ``decided_at_ms``, and each names the epoch and final seal it rests on
  (:class:`SealRef`). :meth:`PolicyEngine.on_final` takes the accepted reports of one epoch;
  :func:`decide_all` replays a whole sealed log.
* **provisional**: the rule acts at once on what this node accepted, in the order the node
  stored it (:meth:`PolicyEngine.on_stored`), with the record's log time as its time. Quick,
  and this node's own view: another node, or a replay, may decide otherwise, a verdict that
  changes on sealing is not taken back, and its decisions name no seal.

Corrections and retractions (:mod:`bus.verify`, *Amendments*). A report and the corrections
that follow it are one *line* (its chain and the id of its first version); rules count a line
once, as its latest version, and never a retracted line nor a retraction itself. A correction
takes the earlier version's place: it leaves every window that held the earlier version (which
may be another window or group, when the correction moved the time, place or category) and
enters its own when it matches; a retraction only leaves. A report rule fires at most once per
line (at the first version that matches). What already fired is not taken back (a decision may
be published): a window keeps its decision when a retraction brings it under the threshold, and
its later evidence and counts are without the retracted report.

Nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Final

from bus.errors import ConfigError
from bus.model import PAYLOAD_REPORT, Category, Envelope, Mandate, Report

PRIORITIES: Final = ("low", "medium", "high", "critical")
GROUP_KEYS: Final = ("zone", "category", "sub_type", "org")
KIND_REPORT: Final = "report"
KIND_AGGREGATE: Final = "aggregate"
KIND_TREND: Final = "trend"
KINDS: Final = (KIND_REPORT, KIND_AGGREGATE, KIND_TREND)
# Which verdicts a rule acts on (see the module docstring).
VERDICTS_FINAL: Final = "final"
VERDICTS_PROVISIONAL: Final = "provisional"
VERDICTS: Final = (VERDICTS_FINAL, VERDICTS_PROVISIONAL)
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
    verdicts: str = VERDICTS_FINAL

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
class SealRef:
    """The final seal an epoch's verdicts rest on: the epoch, the seal's digest and *t_e*."""

    epoch: int
    digest: bytes
    time_ms: int


@dataclass(frozen=True, slots=True)
class Decision:
    """A follow-up decision of one organization, naming its rule and its evidence.

    ``decided_at_ms`` is, for a final rule, *t_e* of the epoch whose verdicts made the rule
    fire (the same on every node), and that epoch and its final seal's digest are
    ``seal_epoch`` and ``seal_digest``; for a provisional rule, the log time of the report that
    made it fire as this node read it, with ``seal_epoch`` 0 and no digest. Never anybody's
    wall clock.
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
    seal_epoch: int = 0
    seal_digest: bytes = b""

    @property
    def final(self) -> bool:
        """Whether it rests on final verdicts (a final rule's decision)."""
        return self.seal_epoch > 0

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


# A report's line (module docstring): (organization, observer id, id of the first version).
Line = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class _Entry:
    report_id: str  # the line's latest version
    digest: bytes
    observer_id: str
    org: str


@dataclass
class _Window:
    entries: dict[Line, _Entry] = field(default_factory=dict)
    fired: bool = False

    @property
    def count(self) -> int:
        return len(self.entries)

    def observers(self) -> int:
        return len({(e.org, e.observer_id) for e in self.entries.values()})

    def orgs(self) -> set[str]:
        return {e.org for e in self.entries.values()}

    def evidence(self) -> tuple[Evidence, ...]:
        return tuple(sorted(Evidence(e.report_id, e.digest) for e in self.entries.values()))


class Lines:
    """Which line each report belongs to (module docstring), fed reports in order."""

    def __init__(self) -> None:
        # (org, observer id, id of a correction) -> the id of its line's first version
        self._first: dict[Line, str] = {}

    def line_of(self, r: Report) -> Line:
        """The line ``r`` continues (a retraction: the line it retracts), remembering it."""
        org, observer = r.org, r.observer_id
        target = r.amends
        if not target:
            return (org, observer, r.report_id)
        first = self._first.get((org, observer, target), target)
        if r.corrects:
            self._first[(org, observer, r.report_id)] = first
        return (org, observer, first)


def latest_versions(reports: Iterable[Report]) -> list[Report]:
    """The latest version of every line in ``reports`` (given in their order), without
    retracted lines and retractions, each where its line first appeared."""
    lines = Lines()
    latest: dict[Line, Report | None] = {}
    for r in reports:
        line = lines.line_of(r)
        latest[line] = None if r.retracts or (line in latest and latest[line] is None) else r
    return [r for r in latest.values() if r is not None]


class Evaluator:
    """Applies a policy's rules to reports in the order given (see :class:`PolicyEngine`).

    State: per (rule, group, window) the matching reports, observers and organizations, and
    whether the window already fired. The same sequence of calls yields the same decisions.

    Args:
        policy: the policy.
        verdicts: evaluate only the rules acting on these verdicts (:data:`VERDICTS`); None:
            every rule.
    """

    def __init__(self, policy: Policy, verdicts: str | None = None) -> None:
        self.policy = policy
        self.rules = tuple(r for r in policy.rules if verdicts is None or r.verdicts == verdicts)
        self._windows: dict[tuple[str, str, int], _Window] = {}
        self._lines = Lines()
        self._placed: dict[Line, set[tuple[str, str, int]]] = {}  # line -> windows holding it
        self._fired_lines: set[tuple[str, Line]] = set()  # (report rule, line) that fired
        self._retracted: set[Line] = set()
        self.evaluated = 0

    def evaluate(self, obs: Observation, at_ms: int, seal: SealRef | None = None) -> list[Decision]:
        """Decisions the report triggers at time ``at_ms`` (possibly none), resting on
        ``seal`` when the report's verdict is final."""
        self.evaluated += 1
        r = obs.report
        line = self._lines.line_of(r)
        if line in self._retracted:
            return []
        if r.amends:  # the earlier version leaves every window that held it
            for key in self._placed.pop(line, ()):
                del self._windows[key].entries[line]
        if r.retracts:
            self._retracted.add(line)
            return []
        out: list[Decision] = []
        for rule in self.rules:
            if not rule.matches(r):
                continue
            if rule.kind == KIND_REPORT:
                if (rule.name, line) in self._fired_lines:
                    continue
                self._fired_lines.add((rule.name, line))
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
                        seal=seal,
                    )
                )
                continue
            group = rule.group_of(r)
            index = r.observed_at_ms // rule.window_ms
            key = (rule.name, group, index)
            win = self._windows.setdefault(key, _Window())
            held = win.entries.get(line)
            if held is not None and held.report_id == r.report_id:
                continue
            win.entries[line] = _Entry(r.report_id, obs.digest, r.observer_id, r.org)
            self._placed.setdefault(line, set()).add(key)
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
                        seal=seal,
                    )
                )
        return out

    def _check(self, rule: Rule, group: str, index: int, win: _Window) -> str | None:
        count = win.count
        if rule.trend is not None:
            t = rule.trend
            base = sum(
                w.count
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
        observers, orgs = win.observers(), win.orgs()
        if (
            count < rule.count_at_least
            or observers < rule.distinct_observers_at_least
            or len(orgs) < rule.distinct_orgs_at_least
        ):
            return None
        return (
            f"{count} reports in the window by {observers} observers of"
            f" {len(orgs)} organizations ({', '.join(sorted(orgs))})"
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
        seal: SealRef | None,
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
            seal_epoch=0 if seal is None else seal.epoch,
            seal_digest=b"" if seal is None else seal.digest,
        )


def window_counts(rule: Rule, reports: Iterable[Report]) -> dict[str, dict[int, int]]:
    """Matching reports per group and window start (ms) for a windowed rule (trend charts),
    each line counted once as its latest version and retracted ones not at all."""
    if not rule.window_ms:
        raise ValueError(f"rule {rule.name} has no window")
    out: dict[str, dict[int, int]] = {}
    for r in latest_versions(reports):
        if rule.matches(r):
            start = r.observed_at_ms // rule.window_ms * rule.window_ms
            per = out.setdefault(rule.group_of(r), {})
            per[start] = per.get(start, 0) + 1
    return out


# ---------------------------------------------------------------------------------------------
# Provisional and final evaluation


class PolicyEngine:
    """A policy's provisional and final rules, each fed its own stream (module docstring).

    ``on_stored`` every report as the node stores it, for the provisional rules; ``on_final``
    every epoch's accepted reports, in the judge's order and epoch after epoch, for the final
    rules. Nothing here reads a clock.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.provisional = Evaluator(policy, VERDICTS_PROVISIONAL)
        self.final = Evaluator(policy, VERDICTS_FINAL)
        self.final_epoch = 0  # the last epoch whose verdicts the final rules saw

    def on_stored(self, observation: Observation, now_ms: int) -> list[Decision]:
        """Decisions the provisional rules make on a report this node just accepted, at
        ``now_ms``: when the node stored it, by its own clock (never a broker timestamp)."""
        if not self.provisional.rules:
            return []
        return self.provisional.evaluate(observation, now_ms)

    def on_final(self, seal: SealRef, observations: Iterable[Observation]) -> list[Decision]:
        """Decisions the final rules make on the reports accepted by epoch ``seal.epoch``'s
        answer, given in the judge's order.

        Raises:
            ValueError: the epoch is not the one after :attr:`final_epoch`.
        """
        if seal.epoch != self.final_epoch + 1:
            raise ValueError(f"epoch {seal.epoch} given after epoch {self.final_epoch}")
        self.final_epoch = seal.epoch
        out: list[Decision] = []
        if self.final.rules:
            for obs in observations:
                out.extend(self.final.evaluate(obs, seal.time_ms, seal))
        return out


def decide_all(
    policy: Policy, epochs: Iterable[tuple[SealRef, Sequence[Observation]]]
) -> list[Decision]:
    """Every decision a policy's final rules make over a sealed log: each epoch's seal with
    its accepted reports in the judge's order, epochs in order from the first."""
    engine = PolicyEngine(policy)
    out: list[Decision] = []
    for seal, observations in epochs:
        out.extend(engine.on_final(seal, observations))
    return out
