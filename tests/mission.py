"""Test helpers: a small fixed mission and ways to make good and bad report records."""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field

from bus.crypto import SigningKey
from bus.ingest import RecordRef
from bus.model import (
    PAYLOAD_REPORT,
    Accreditation,
    Category,
    Envelope,
    Location,
    Report,
    Role,
    encode,
)
from bus.sign import ReportSigner, sign_accreditation, sign_envelope
from bus.trust import KeyRing
from bus.uuid7 import uuid7
from nodes.demo.scenario import Scenario, build_scenario, demo_key

# Fixed clock for reproducible tests: 2026-11-01T00:00:00Z.
NOW_MS = 1_793_491_200_000


@dataclass
class Mission:
    """A scenario with a keyring and a per-observer signer, plus record builders.

    ``base`` shifts observer numbers so that several views of one mission (see :meth:`view`)
    use disjoint observers; ``registry`` collects every registry envelope made, so a test can
    publish the same trust state to a real broker.
    """

    scenario: Scenario
    keyring: KeyRing
    now: int = NOW_MS
    base: int = 0
    registry: list[bytes] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def clock(self) -> int:
        """The mission's "now": the clock a node judging this mission's records reads."""
        return self.now

    def view(self, base: int) -> Mission:
        """The same mission (shared keys, signers and registry) with observers shifted by base."""
        return dataclasses.replace(self, base=base)

    def sid(self, name: str) -> str:
        """A subject id unique to this view."""
        return f"{name}-{self.base}"

    @property
    def mandate_id(self) -> str:
        return self.scenario.mandate.mandate_id

    def observer(self, org: str = "un", i: int = 1) -> tuple[str, SigningKey]:
        oid = f"{org}-obs-{i + self.base}"
        return oid, next(o.key for o in self.scenario.observers if o.observer_id == oid)

    def draft(self, org: str = "un", i: int = 1, **changes: object) -> Report:
        oid, _ = self.observer(org, i)
        base = Report(
            report_id=uuid7(self.now - 3_600_000, self.rng.randbytes(10)),
            mandate_id=self.mandate_id,
            zone="north",
            observer_id=oid,
            org=org,
            seq=1,
            prev_digest=b"",
            observed_at_ms=self.now - 3_600_000,
            signed_at_ms=self.now - 3_000_000,
            location=Location(48.2, 38.0, 100, "Riverford"),
            category=Category.SHELLING,
            severity=4,
            confidence=0.9,
            sub_type="artillery",
            narrative="Impacts counted.",
        )
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    def signer(self, org: str = "un", i: int = 1) -> ReportSigner:
        oid, _ = self.observer(org, i)
        return self.scenario.signers[oid]

    def next_report(self, org: str = "un", i: int = 1, **changes: object) -> bytes:
        """The observer's next chained, correctly signed envelope bytes."""
        return self.signer(org, i).sign(self.draft(org, i, **changes))

    def accredit(
        self, subject: str, org: str, key: SigningKey, role: Role, **changes: object
    ) -> None:
        m = self.scenario.mandate
        acc = Accreditation(
            subject, org, role, key.public_key, m.not_before_ms, m.not_after_ms, 99, m.mandate_id
        )
        acc = dataclasses.replace(acc, **changes)  # type: ignore[arg-type]
        self.apply(sign_accreditation(acc, self.scenario.org_roots[org]))

    def apply(self, envelope: Envelope) -> None:
        """Apply a registry envelope to the keyring and remember it for publishing."""
        self.keyring.apply(envelope)
        self.registry.append(envelope.encode())


def ref(topic: str = "obus.reports.un", offset: int = 0, log_time_ms: int = NOW_MS) -> RecordRef:
    """A record's position; ``log_time_ms`` is the broker's timestamp it carries, which no
    verdict of a node reads (only the auditor's legacy log-time audit)."""
    return RecordRef(topic, 0, offset, log_time_ms, None)


def make_mission(observers_per_org: int = 2, now_ms: int = NOW_MS) -> Mission:
    sc = build_scenario(now_ms, observers_per_org=observers_per_org)
    kr = KeyRing(sc.mandate)
    for raw in sc.accreditations:
        kr.apply(Envelope.decode(raw))
    return Mission(sc, kr, now=now_ms, registry=list(sc.accreditations))


def live_mission(observers_per_org: int = 2) -> Mission:
    """A mission whose "now" is this machine's clock: for tests that run real nodes, which
    judge provisionally on their own clock (reports of a mission fixed in the past would be
    older than the delivery lag)."""
    return make_mission(observers_per_org, now_ms=time.time_ns() // 1_000_000)


def raw_report_envelope(
    payload: bytes, key: SigningKey, payload_type: str = PAYLOAD_REPORT
) -> bytes:
    """Sign arbitrary payload bytes as a report (for invariant-breaking payloads)."""
    return sign_envelope(payload_type, payload, [key]).encode()


__all__ = [
    "NOW_MS",
    "Mission",
    "demo_key",
    "encode",
    "live_mission",
    "make_mission",
    "raw_report_envelope",
    "ref",
]
