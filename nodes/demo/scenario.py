"""A reproducible mission: six organizations, a mandate, accredited observers and their reports.

Used by ``make demo`` and the integration tests. Keys are derived from a seed string so runs are
reproducible; that is for demonstrations only: real keys come from ``SigningKey.generate()``.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace
from typing import Final

from bus.crypto import SigningKey
from bus.model import (
    Accreditation,
    Casualties,
    Category,
    Location,
    Mandate,
    Organization,
    Report,
    Role,
    Zone,
)
from bus.sign import ReportSigner, sign_accreditation, sign_mandate
from bus.uuid7 import uuid7

ORGANIZATIONS: Final = (
    ("un", "United Nations"),
    ("osce", "Organization for Security and Co-operation in Europe"),
    ("eu", "European Union"),
    ("nato", "North Atlantic Treaty Organization"),
    ("csto", "Collective Security Treaty Organization"),
    ("sco", "Shanghai Cooperation Organisation"),
)
ZONES: Final = (
    Zone("north", "River Line", 48.00, 37.50, 48.60, 38.50),
    Zone("east", "Hill Country", 47.40, 38.50, 48.00, 39.50),
    Zone("south", "Coastal Plain", 46.80, 37.00, 47.40, 38.50),
)
DAY_MS: Final = 86_400_000

# (category, sub-types, severity weights for 1..5, narrative template)
_EVENTS: Final = (
    (Category.CEASEFIRE_VIOLATION, ("small_arms", "sniper"), (3, 4, 3, 1, 0),
     "Ceasefire violation: {sub} fire heard {dist} km {dir} of {place}."),
    (Category.SHELLING, ("artillery", "mortar", "mlrs"), (0, 1, 3, 4, 2),
     "{sub} impacts counted near {place}; craters fresh, direction of fire {dir}."),
    (Category.ARMED_CLASH, ("infantry", "skirmish"), (0, 1, 2, 3, 2),
     "Exchange of fire between armed groups {dist} km {dir} of {place}."),
    (Category.TROOP_MOVEMENT, ("convoy", "redeployment"), (2, 3, 2, 1, 0),
     "Column of {n} vehicles moving {dir} through {place}."),
    (Category.HEAVY_WEAPONS, ("tanks", "howitzers"), (0, 2, 3, 2, 1),
     "{n} heavy weapons observed outside agreed storage near {place}."),
    (Category.CIVILIAN_CASUALTIES, ("shelling_victims",), (0, 0, 1, 3, 3),
     "Hospital in {place} reports civilian casualties after overnight {sub}."),
    (Category.HUMANITARIAN_ACCESS, ("checkpoint_denial", "road_closed"), (3, 3, 2, 1, 0),
     "Humanitarian convoy denied passage at checkpoint {dist} km {dir} of {place}."),
    (Category.DETENTION, ("arbitrary",), (1, 2, 2, 1, 0),
     "Two civilians detained at a checkpoint near {place}."),
    (Category.PROTEST, ("peaceful",), (4, 2, 1, 0, 0),
     "About {n}0 residents gathered peacefully in {place}."),
)  # fmt: skip
_PLACES: Final = {
    "north": ("Riverford", "Old Mill", "Bridgeton"),
    "east": ("Highcross", "Stone Ridge", "Eastwood"),
    "south": ("Saltmarsh", "Port Ellen", "Dunes"),
}


def demo_key(label: str) -> SigningKey:
    """A key derived from a label (demonstrations and tests only)."""
    return SigningKey.from_seed(hashlib.sha256(f"obus-demo-key:{label}".encode()).digest())


@dataclass(frozen=True)
class ObserverIdentity:
    """An accredited observer: id, organization and key."""

    observer_id: str
    org: str
    key: SigningKey


@dataclass
class Scenario:
    """Everything a mission needs before the first report."""

    mandate: Mandate
    mandate_envelope: bytes
    org_roots: dict[str, SigningKey]
    observers: list[ObserverIdentity]
    accreditations: list[bytes]
    signers: dict[str, ReportSigner] = field(default_factory=dict)
    # One node key per organization, accredited with role NODE (subject "<org>-node-1"): it
    # signs the sealer's seal proposals and cosignatures, and published decisions.
    node_keys: dict[str, SigningKey] = field(default_factory=dict)
    node_accreditations: list[bytes] = field(default_factory=list)


def build_scenario(
    now_ms: int,
    *,
    observers_per_org: int = 3,
    threshold: int = 4,
    seed: str = "demo",
    max_delivery_lag_ms: int = 0,
) -> Scenario:
    """Six organizations, a mandate signed by all of them, and accredited observers.

    ``max_delivery_lag_ms`` is the mandate's maximum delivery lag (0: the default of 7 days):
    a mission whose reports were signed longer ago than that, like the escalation of
    :func:`escalation_reports`, needs a longer one, or their final verdict is ``delivery_lag``.
    """
    roots = {org: demo_key(f"{seed}:root:{org}") for org, _ in ORGANIZATIONS}
    mandate = Mandate(
        mandate_id="jmm-2026",
        version=1,
        zones=ZONES,
        not_before_ms=now_ms - 30 * DAY_MS,
        not_after_ms=now_ms + 365 * DAY_MS,
        organizations=tuple(
            Organization(org, name, roots[org].public_key) for org, name in ORGANIZATIONS
        ),
        threshold=threshold,
        description="Joint monitoring mission (demonstration)",
        max_delivery_lag_ms=max_delivery_lag_ms,
    )
    envelope = sign_mandate(mandate, roots.values()).encode()
    observers: list[ObserverIdentity] = []
    accreditations: list[bytes] = []
    for org, _ in ORGANIZATIONS:
        for i in range(1, observers_per_org + 1):
            oid = f"{org}-obs-{i}"
            key = demo_key(f"{seed}:observer:{oid}")
            observers.append(ObserverIdentity(oid, org, key))
            acc = Accreditation(
                subject_id=oid,
                org=org,
                role=Role.OBSERVER,
                public_key=key.public_key,
                not_before_ms=mandate.not_before_ms,
                not_after_ms=mandate.not_after_ms,
                serial=i,
                mandate_id=mandate.mandate_id,
            )
            accreditations.append(sign_accreditation(acc, roots[org]).encode())
    scenario = Scenario(mandate, envelope, roots, observers, accreditations)
    scenario.signers = {o.observer_id: ReportSigner(o.key) for o in observers}
    for org, _ in ORGANIZATIONS:
        key = scenario.node_keys[org] = demo_key(f"{seed}:node:{org}")
        acc = Accreditation(
            subject_id=node_subject(org),
            org=org,
            role=Role.NODE,
            public_key=key.public_key,
            not_before_ms=mandate.not_before_ms,
            not_after_ms=mandate.not_after_ms,
            serial=100,
            mandate_id=mandate.mandate_id,
        )
        scenario.node_accreditations.append(sign_accreditation(acc, roots[org]).encode())
    return scenario


def node_subject(org: str) -> str:
    """The accredited subject id of an organization's demonstration node key."""
    return f"{org}-node-1"


def draft_report(
    rng: random.Random, observer: ObserverIdentity, mandate: Mandate, now_ms: int
) -> Report:
    """A realistic report draft (seq and prev_digest are filled in by the signer)."""
    category, subs, weights, template = rng.choice(_EVENTS)
    zone = rng.choice(mandate.zones)
    lat = round(rng.uniform(zone.min_lat, zone.max_lat), 5)
    lon = round(rng.uniform(zone.min_lon, zone.max_lon), 5)
    place = rng.choice(_PLACES.get(zone.id, ("the area",)))
    observed = now_ms - rng.randrange(0, 2 * DAY_MS)
    sub = rng.choice(subs)
    narrative = template.format(
        sub=sub.replace("_", " "),
        place=place,
        dir=rng.choice(("north", "east", "south", "west")),
        dist=rng.randint(1, 15),
        n=rng.randint(2, 30),
    )
    killed = rng.randint(0, 3) if category is Category.CIVILIAN_CASUALTIES else 0
    return Report(
        report_id=uuid7(observed, rng.randbytes(10)),
        mandate_id=mandate.mandate_id,
        zone=zone.id,
        observer_id=observer.observer_id,
        org=observer.org,
        seq=1,
        prev_digest=b"",
        observed_at_ms=observed,
        signed_at_ms=observed + rng.randrange(60_000, 3_600_000),
        location=Location(lat, lon, rng.choice((50, 100, 500, 1000)), place),
        category=category,
        severity=rng.choices(range(1, 6), weights)[0],
        confidence=round(rng.uniform(0.5, 1.0), 2),
        sub_type=sub,
        casualties=Casualties(killed=killed, injured=killed * 2, civilian=killed > 0),
        narrative=narrative,
    )


def signed_reports(
    scenario: Scenario, per_observer: int, now_ms: int, rng: random.Random
) -> list[tuple[ObserverIdentity, str, bytes]]:
    """Signed, chained reports for every observer, interleaved as they would arrive.

    Returns:
        (observer, report id, envelope bytes) in publishing order.
    """
    queue = [o for o in scenario.observers for _ in range(per_observer)]
    rng.shuffle(queue)
    out: list[tuple[ObserverIdentity, str, bytes]] = []
    for obs in queue:
        draft = draft_report(rng, obs, scenario.mandate, now_ms)
        # signed_at must not precede earlier reports' for a tidy chain; keep it near now.
        draft = replace(draft, signed_at_ms=min(draft.signed_at_ms, now_ms))
        out.append((obs, draft.report_id, scenario.signers[obs.observer_id].sign(draft)))
    return out


WEEK_MS: Final = 7 * DAY_MS
ESCALATION_ZONE: Final = "east"


def escalation_reports(
    scenario: Scenario, now_ms: int, rng: random.Random, *, baseline: int = 3, surge: int = 9
) -> list[tuple[ObserverIdentity, str, bytes]]:
    """Ceasefire violations in the east zone: ``baseline`` two weeks ago, ``surge`` last week.

    Weeks are the policies' windows (7 days aligned to the Unix epoch), so last week's count is
    at least double the week before: the OSCE policy's early-warning rule fires on it. Observers
    of several organizations report them; each chain continues where ``signed_reports`` left it.
    Both weeks end before the random reports of :func:`signed_reports` begin at most two days
    ago, except that these can only add to last week.
    """
    zone = scenario.mandate.zone(ESCALATION_ZONE)
    assert zone is not None
    week = now_ms - now_ms % WEEK_MS  # this week's start
    reporters = [o for o in scenario.observers if o.org in ("osce", "un", "eu")]
    out: list[tuple[ObserverIdentity, str, bytes]] = []
    for start, n in ((week - 2 * WEEK_MS, baseline), (week - WEEK_MS, surge)):
        for i in range(n):
            obs = reporters[i % len(reporters)]
            observed = start + (i + 1) * (WEEK_MS // (n + 2))
            place = rng.choice(_PLACES[ESCALATION_ZONE])
            draft = replace(
                draft_report(rng, obs, scenario.mandate, now_ms),
                report_id=uuid7(observed, rng.randbytes(10)),
                zone=zone.id,
                observed_at_ms=observed,
                signed_at_ms=observed + 3_600_000,
                location=Location(
                    round(rng.uniform(zone.min_lat, zone.max_lat), 5),
                    round(rng.uniform(zone.min_lon, zone.max_lon), 5),
                    100,
                    place,
                ),
                category=Category.CEASEFIRE_VIOLATION,
                sub_type="small_arms",
                severity=rng.choice((2, 3)),
                casualties=Casualties(),
                narrative=f"Ceasefire violation: small arms fire exchanged near {place}.",
            )
            out.append((obs, draft.report_id, scenario.signers[obs.observer_id].sign(draft)))
    return out
