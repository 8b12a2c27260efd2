"""An organization's own follow-up policy: rules over verified reports -> decisions (pure).

A rules file (TOML) belongs to one organization and is never shared. Example::

    org = "un"

    [[rule]]
    name = "grave-violence"          # unique within the file
    categories = ["shelling", "armed_clash"]
    min_severity = 4
    zones = ["north"]                # optional: all zones when absent
    min_confidence = 0.5             # optional
    action = "escalate"              # the organization's own word for what it does
    priority = "high"                # low | medium | high | critical

    [[rule]]
    name = "ceasefire-pattern"
    categories = ["ceasefire_violation"]
    min_severity = 2
    count_at_least = 3               # optional: aggregate before deciding
    window_minutes = 60              # with count_at_least: a fixed window on observed_at
    action = "request_assessment_visit"
    priority = "medium"

A rule without ``count_at_least`` decides on every matching report. An aggregating rule decides
once per (zone, window) when the number of matching reports in that window reaches the count;
windows are fixed buckets of observed_at, so replaying the same log yields the same decisions.
"""

from __future__ import annotations

import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bus.errors import BusError, ConfigError
from bus.model import Category, Report, check_id

PRIORITIES: Final = ("low", "medium", "high", "critical")
_RULE_KEYS: Final = {
    "name",
    "categories",
    "min_severity",
    "zones",
    "min_confidence",
    "action",
    "priority",
    "count_at_least",
    "window_minutes",
}


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule; see the module docstring for the file format."""

    name: str
    categories: frozenset[Category]
    min_severity: int
    action: str
    priority: str
    zones: frozenset[str] = frozenset()
    min_confidence: float = 0.0
    count_at_least: int = 1
    window_ms: int = 0

    def matches(self, report: Report) -> bool:
        """True when the report alone satisfies the rule's filters."""
        return (
            report.category in self.categories
            and report.severity >= self.min_severity
            and report.confidence >= self.min_confidence
            and (not self.zones or report.zone in self.zones)
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """A follow-up decision of one organization, with its evidence (report ids)."""

    org: str
    rule: str
    action: str
    priority: str
    zone: str
    evidence: tuple[str, ...]
    decided_at_ms: int

    @property
    def decision_id(self) -> str:
        """Stable id: the same log always yields the same id."""
        return f"{self.org}:{self.rule}:{self.zone}:{self.evidence[-1]}"


@dataclass
class Policy:
    """A parsed policy and the aggregation state it needs while evaluating."""

    org: str
    rules: tuple[Rule, ...]
    _windows: dict[tuple[str, str, int], list[str]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def __post_init__(self) -> None:
        if not self.rules:
            raise ConfigError("rule", "the policy has no rules", "add at least one [[rule]]")

    def evaluate(self, report: Report) -> list[Decision]:
        """Decisions the report triggers (possibly none)."""
        out: list[Decision] = []
        for rule in self.rules:
            if not rule.matches(report):
                continue
            if rule.count_at_least <= 1:
                out.append(self._decide(rule, report, (report.report_id,)))
                continue
            bucket = report.observed_at_ms // rule.window_ms
            seen = self._windows[(rule.name, report.zone, bucket)]
            seen.append(report.report_id)
            if len(seen) == rule.count_at_least:
                out.append(self._decide(rule, report, tuple(seen)))
        return out

    def _decide(self, rule: Rule, report: Report, evidence: tuple[str, ...]) -> Decision:
        return Decision(
            org=self.org,
            rule=rule.name,
            action=rule.action,
            priority=rule.priority,
            zone=report.zone,
            evidence=evidence,
            decided_at_ms=report.observed_at_ms,
        )


def _rule(index: int, raw: Any) -> Rule:
    where = f"rule[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(where, "is not a table", "write it as [[rule]] with key = value lines")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ConfigError(
            f"{where}.{sorted(unknown)[0]}",
            "unknown key",
            f"use only: {', '.join(sorted(_RULE_KEYS))}",
        )
    for key in ("name", "categories", "min_severity", "action"):
        if key not in raw:
            raise ConfigError(f"{where}.{key}", "is missing", f"add {key} = ...")
    name = raw["name"]
    where = f"rule[{name}]"
    try:
        check_id("name", str(name))
        cats = frozenset(Category.parse(str(c)) for c in raw["categories"])
    except BusError as exc:
        raise ConfigError(f"{where}", exc.message, "see the allowed values above") from exc
    sev = raw["min_severity"]
    if not isinstance(sev, int) or not 1 <= sev <= 5:
        raise ConfigError(
            f"{where}.min_severity", f"{sev!r} is not 1..5", "use a whole number 1..5"
        )
    priority = raw.get("priority", "medium")
    if priority not in PRIORITIES:
        raise ConfigError(
            f"{where}.priority", f"{priority!r}", f"use one of {', '.join(PRIORITIES)}"
        )
    count = raw.get("count_at_least", 1)
    window = raw.get("window_minutes", 0)
    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"{where}.count_at_least", f"{count!r}", "use a whole number >= 1")
    if count > 1 and (not isinstance(window, int | float) or window <= 0):
        raise ConfigError(
            f"{where}.window_minutes", "is required with count_at_least > 1", "e.g. 60"
        )
    conf = raw.get("min_confidence", 0.0)
    if not isinstance(conf, int | float) or not 0 <= conf <= 1:
        raise ConfigError(f"{where}.min_confidence", f"{conf!r}", "use a number 0.0..1.0")
    return Rule(
        name=str(name),
        categories=cats,
        min_severity=sev,
        action=str(raw["action"]),
        priority=str(priority),
        zones=frozenset(str(z) for z in raw.get("zones", [])),
        min_confidence=float(conf),
        count_at_least=count,
        window_ms=int(float(window) * 60_000),
    )


def parse_policy(text: str, *, source: str = "<policy>") -> Policy:
    """Parse a TOML policy.

    Raises:
        ConfigError: naming the key and the fix.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"is not valid TOML ({exc})", "fix the syntax") from exc
    org = doc.get("org")
    if not isinstance(org, str):
        raise ConfigError("org", "is missing", 'add org = "<your organization id>" at the top')
    rules = tuple(_rule(i, r) for i, r in enumerate(doc.get("rule", [])))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ConfigError("rule.name", "names must be unique", "rename the duplicate rule")
    return Policy(org, rules)


def load_policy(path: Path) -> Policy:
    """Read and parse a policy file (ConfigError names the file when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            "policy", f"cannot read {path}: {exc.strerror}", "pass --policy FILE"
        ) from exc
    return parse_policy(text, source=str(path))
