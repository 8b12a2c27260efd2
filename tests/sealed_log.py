"""Test helpers for the final judge: a sealed log built in memory, and a generator of hostile
logs (several organizations, rotations, revocations, re-keys, expiry, copies on other
partitions, report ids reused across organizations, chained decisions signed by node keys that
are rotated and revoked), with no broker."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bus.crypto import SigningKey
from bus.decision import PublishedDecision, sign_decision
from bus.epoch import GENESIS_DIGEST, FinalSeal, PartitionRef, PartitionSeal
from bus.judge import EpochVerdicts, FinalJudge, RecordPos
from bus.merkle import MerkleTree
from bus.model import Accreditation, Mandate, Revocation, Role, sha256
from bus.policy import Decision, Evidence
from bus.sign import ReportSigner, sign_accreditation, sign_mandate, sign_revocation
from bus.topics import Topics
from bus.uuid7 import uuid7
from bus.verify import ChainHead
from nodes.demo.scenario import node_subject
from tests.mission import NOW_MS, Mission, demo_key, make_mission

TOPICS = Topics("obus.")
DAY_MS = 86_400_000


def make_decision(
    mandate_id: str,
    org: str,
    key: SigningKey,
    after: ChainHead | None,
    *,
    signed_at_ms: int = NOW_MS,
    n: int = 0,
    **changes: object,
) -> bytes:
    """An organization's decision, next after ``after`` in its chain, signed by ``key``
    (``n`` makes the decision, and so its bytes, differ from another at the same place)."""
    d = Decision(
        org=org, rule="civilian-harm", kind="report", action="escalate", priority="high",
        zone="north", group="north", window_start_ms=0, window_end_ms=0,
        evidence=(Evidence(uuid7(NOW_MS, n.to_bytes(10, "big")), bytes(32)),),
        decided_at_ms=signed_at_ms, summary=f"decision {n}", publish=True,
    )  # fmt: skip
    p = PublishedDecision.of(d, mandate_id=mandate_id, after=after, signed_at_ms=signed_at_ms)
    return sign_decision(dataclasses.replace(p, **changes), key)  # type: ignore[arg-type]


def decision_head(raw: bytes, seq: int) -> ChainHead:
    """The chain head a decision at ``seq`` makes."""
    return ChainHead(seq, sha256(raw))


@dataclass
class SealedLog:
    """Partitions of records and the final seals over them, as the seals topic would give."""

    root: Mandate
    partitions: dict[PartitionRef, list[bytes | None]] = field(
        default_factory=lambda: defaultdict(list)
    )
    seals: list[FinalSeal] = field(default_factory=list)
    time_ms: int = NOW_MS

    def put(self, topic: str, value: bytes | None, partition: int = 0) -> RecordPos:
        """Append a record; returns where it sits."""
        records = self.partitions[(topic, partition)]
        records.append(value)
        return (topic, partition, len(records) - 1)

    def seal(self, time_ms: int | None = None) -> FinalSeal:
        """The final seal of the next epoch over everything appended so far."""
        prev = self.seals[-1] if self.seals else None
        t = max(self.time_ms + 1, time_ms or 0) if prev else (time_ms or self.time_ms)
        self.time_ms = t
        parts = {}
        for ref, records in sorted(self.partitions.items()):
            tree = MerkleTree(store_leaves=False)
            for v in records:
                tree.append(v or b"")
            parts[ref] = PartitionSeal(len(records), tree.root())
        epoch = len(self.seals) + 1
        prev_digest = GENESIS_DIGEST if prev is None else prev.digest
        text = json.dumps(
            [epoch, t, prev_digest.hex(), [[*r, p.size, p.root.hex()] for r, p in parts.items()]]
        )
        seal = FinalSeal(
            self.root.mandate_id,
            epoch,
            t,
            parts,
            hashlib.sha256(text.encode()).digest(),
            prev_digest,
            frozenset({"un", "osce", "eu", "nato"}),
        )
        self.seals.append(seal)
        return seal

    def epoch_records(self, epoch: int) -> dict[PartitionRef, list[bytes | None]]:
        """Exactly the records the seal of ``epoch`` adds."""
        seal = self.seals[epoch - 1]
        prev = self.seals[epoch - 2] if epoch > 1 else None
        out = {}
        for ref in seal.partitions:
            start = 0 if prev is None else prev.size(ref)
            out[ref] = self.partitions[ref][start : seal.size(ref)]
        return out

    def judge(self, judge: FinalJudge | None = None) -> tuple[FinalJudge, list[EpochVerdicts]]:
        """The reference run: every sealed epoch handed to a judge in order."""
        judge = judge or FinalJudge(self.root, TOPICS)
        out = [judge.judge_epoch(s, self.epoch_records(s.epoch)) for s in self.seals]
        return judge, out


Projection = tuple[object, ...]


def project(v: EpochVerdicts) -> Projection:
    """Everything a reader's answer for an epoch says, in comparable form."""
    return (
        v.epoch,
        v.seal_digest,
        v.time_ms,
        tuple((x.pos, x.epoch, x.status, x.reason, x.detail, x.observer) for x in v.verdicts),
        tuple(
            (c.pos, c.observer, c.seq, c.report_id, c.key_id, c.at_epoch, c.detail)
            for c in v.changes
        ),
        tuple(sorted(v.heads.items())),
        v.mandate_version,
        v.state_digest,
        tuple(sorted(v.decision_heads.items())),
    )


# -- the hostile log generator --------------------------------------------------------------

ORGS = ("un", "osce", "eu")
OPS = (
    "report", "report", "report", "report", "report", "report", "report", "report",
    "seal", "seal", "seal", "tick", "copy", "copy", "squat", "revoke", "rekey", "expire",
    "rotate", "reaccredit", "junk", "late", "other_topic",
    "decide", "decide", "decide", "decide", "node_rekey", "node_revoke", "decision_copy",
    "decision_fork", "node_thief",
)  # fmt: skip
"""Operation names a log is generated from (repeated for weight)."""


@dataclass
class _Observer:
    org: str
    observer_id: str
    key: SigningKey
    signer: ReportSigner
    chain: list[ChainHead] = field(default_factory=list)  # what the observer signed, by seq


@dataclass
class _Node:
    org: str
    subject: str
    key: SigningKey
    head: ChainHead | None = None  # of the decisions it signed
    before: ChainHead | None = None  # the head before that
    revoked: list[SigningKey] = field(default_factory=list)  # its keys revoked so far


class LogGenerator:
    """Builds a hostile sealed log from a list of operation names and a seed.

    Epoch 1 publishes the root mandate and the accreditations of ``observers_per_org``
    observers in each of :data:`ORGS`; then each operation appends records (or seals, or moves
    the clock). Every choice an operation makes comes from ``random.Random(seed)``.
    """

    def __init__(self, seed: int, observers_per_org: int = 2, partitions: int = 2) -> None:
        self.rng = random.Random(seed)
        self.m: Mission = make_mission(observers_per_org=observers_per_org)
        self.m.rng = random.Random(seed + 1)
        sc = self.m.scenario
        self.log = SealedLog(sc.mandate)
        self.partitions = partitions
        self.now = NOW_MS
        self.mandate = sc.mandate
        self.roots = dict(sc.org_roots)
        self.serial = 1000
        self.observers: list[_Observer] = []
        self.reports: list[tuple[str, bytes, str]] = []  # (topic, bytes, report id)
        self.nodes = {org: _Node(org, node_subject(org), sc.node_keys[org]) for org in ORGS}
        self.decisions: list[tuple[str, bytes]] = []  # (topic, bytes)
        self.log.put(TOPICS.mandate, sc.mandate_envelope)
        for org in ORGS:
            for i in range(1, observers_per_org + 1):
                oid, key = self.m.observer(org, i)
                self.observers.append(_Observer(org, oid, key, ReportSigner(key)))
        for raw in sc.accreditations:
            self.log.put(TOPICS.registry, raw)
        for raw in sc.node_accreditations:
            self.log.put(TOPICS.registry, raw)
        self.seal()

    # -- operations ------------------------------------------------------------------------

    def run(self, ops: Sequence[str]) -> SealedLog:
        """Apply the operations, then seal what remains (the last seal may cover nothing)."""
        table: dict[str, Callable[[], None]] = {
            "report": self.report,
            "seal": self.seal,
            "tick": self.tick,
            "copy": self.copy,
            "squat": self.squat,
            "revoke": self.revoke,
            "rekey": self.rekey,
            "expire": self.expire,
            "rotate": self.rotate,
            "reaccredit": self.reaccredit,
            "junk": self.junk,
            "late": self.late,
            "other_topic": self.other_topic,
            "decide": self.decide,
            "node_rekey": self.node_rekey,
            "node_revoke": self.node_revoke,
            "decision_copy": self.decision_copy,
            "decision_fork": self.decision_fork,
            "node_thief": self.node_thief,
        }
        for op in ops:
            table[op]()
        self.seal()
        return self.log

    def seal(self) -> None:
        self.log.seal(self.now + self.rng.randrange(0, 60_000))

    def tick(self) -> None:
        self.now += self.rng.choice((1_000, 60_000, 3_600_000, 2 * DAY_MS, 8 * DAY_MS))

    def _observer(self) -> _Observer:
        return self.rng.choice(self.observers)

    def _sign(self, o: _Observer, **changes: object) -> bytes:
        signed_at = self.now - self.rng.randrange(0, 600_000)
        fields: dict[str, object] = {
            "signed_at_ms": signed_at,
            "observed_at_ms": signed_at - 60_000,
        }
        fields.update(changes)
        draft = dataclasses.replace(self.m.draft(o.org, 1), observer_id=o.observer_id, **fields)  # type: ignore[arg-type]
        raw = o.signer.sign(draft)
        assert o.signer.head is not None
        o.chain.append(o.signer.head)
        return raw

    def _put_report(self, o: _Observer, raw: bytes, report_id: str) -> None:
        topic = TOPICS.reports(o.org)
        self.log.put(topic, raw, self.rng.randrange(self.partitions))
        self.reports.append((topic, raw, report_id))

    def report(self) -> None:
        o = self._observer()
        rid = self.m.draft(o.org, 1).report_id
        self._put_report(o, self._sign(o, report_id=rid), rid)

    def late(self) -> None:
        """A report delivered after more than the delivery lag, or from the future."""
        o = self._observer()
        rid = self.m.draft(o.org, 1).report_id
        when = self.now + self.rng.choice((-8 * DAY_MS, 3_600_000))
        raw = self._sign(o, report_id=rid, signed_at_ms=when, observed_at_ms=when - 60_000)
        self._put_report(o, raw, rid)

    def copy(self) -> None:
        """A byte-identical copy of an earlier report on some partition of its topic."""
        if self.reports:
            topic, raw, _ = self.rng.choice(self.reports)
            self.log.put(topic, raw, self.rng.randrange(self.partitions))

    def squat(self) -> None:
        """A report that reuses another organization's report id."""
        o = self._observer()
        others = [r for r in self.reports if not r[0].endswith(f".{o.org}")]
        if others:
            rid = self.rng.choice(others)[2]
            self._put_report(o, self._sign(o, report_id=rid), rid)

    def _accredit(self, o: _Observer, key: SigningKey, **changes: object) -> None:
        self.serial += 1
        m = self.mandate
        acc = Accreditation(o.observer_id, o.org, Role.OBSERVER, key.public_key,
                            m.not_before_ms, m.not_after_ms, self.serial, m.mandate_id)  # fmt: skip
        acc = dataclasses.replace(acc, **changes)  # type: ignore[arg-type]
        self.log.put(TOPICS.registry, sign_accreditation(acc, self.roots[o.org]).encode())

    def _new_key(self, o: _Observer) -> SigningKey:
        self.serial += 1
        return demo_key(f"gen:{o.observer_id}:{self.serial}")

    def revoke(self) -> None:
        """The organization revokes an observer's key a little behind its head; the observer
        continues from the last valid report with a new key."""
        o = self._observer()
        lvs = max(0, len(o.chain) - self.rng.randrange(0, 3))
        self.serial += 1
        rev = Revocation(o.org, o.key.key_id, lvs, self.now, "lost", self.serial,
                         self.mandate.mandate_id)  # fmt: skip
        self.log.put(TOPICS.registry, sign_revocation(rev, self.roots[o.org]).encode())
        key = self._new_key(o)
        self._accredit(o, key)
        del o.chain[lvs:]
        o.key = key
        o.signer = ReportSigner(key, o.chain[-1] if o.chain else None)

    def rekey(self) -> None:
        o = self._observer()
        key = self._new_key(o)
        self._accredit(o, key)
        o.key = key
        o.signer = ReportSigner(key, o.signer.head)

    def expire(self) -> None:
        """The current key's accreditation again, with a window that ends before now."""
        o = self._observer()
        self._accredit(o, o.key, not_after_ms=self.now - self.rng.randrange(1, DAY_MS))

    def rotate(self) -> None:
        """The next mandate version, with one organization's root key replaced."""
        org = self.rng.choice(ORGS)
        self.serial += 1
        new_root = demo_key(f"gen:root:{org}:{self.serial}")
        orgs = tuple(
            dataclasses.replace(o, root_public_key=new_root.public_key) if o.org == org else o
            for o in self.mandate.organizations
        )
        self.mandate = dataclasses.replace(
            self.mandate, version=self.mandate.version + 1, organizations=orgs
        )
        signers = [*self.roots.values(), new_root]
        self.log.put(TOPICS.mandate, sign_mandate(self.mandate, signers).encode())
        self.roots[org] = new_root

    def reaccredit(self) -> None:
        """An organization accredits its observers' and its node's keys again (after its root
        key changed, they count again from the next epoch)."""
        org = self.rng.choice(ORGS)
        for o in self.observers:
            if o.org == org:
                self._accredit(o, o.key)
        self._node_accredit(self.nodes[org], self.nodes[org].key)

    def junk(self) -> None:
        """Trust records that are not their signer's to write, or not records at all."""
        un = next(o for o in self.observers if o.org == "un")
        kind = self.rng.randrange(6)
        m = self.mandate
        if kind == 0:
            self.log.put(TOPICS.registry, None)
        elif kind == 1:
            self.log.put(TOPICS.registry, self.rng.randbytes(40))
        elif kind == 2:  # EU accredits UN's observer key as its own subject
            acc = Accreditation("eu-obs-9", "eu", Role.OBSERVER, un.key.public_key,
                                m.not_before_ms, m.not_after_ms, 1, m.mandate_id)  # fmt: skip
            self.log.put(TOPICS.registry, sign_accreditation(acc, self.roots["eu"]).encode())
        elif kind == 3:  # EU revokes UN's observer key
            rev = Revocation("eu", un.key.key_id, 0, self.now, "hostile", 1, m.mandate_id)
            self.log.put(TOPICS.registry, sign_revocation(rev, self.roots["eu"]).encode())
        elif kind == 4:
            self.log.put(TOPICS.mandate, None)
        else:  # the root version replayed after whatever came since
            self.log.put(TOPICS.mandate, self.m.scenario.mandate_envelope)

    def other_topic(self) -> None:
        self.log.put(self.rng.choice((TOPICS.statements, TOPICS.decisions("un"))),
                     self.rng.randbytes(20))  # fmt: skip

    # -- decisions ---------------------------------------------------------------------------

    def decide(self) -> None:
        """An organization's node publishes the next decision of its chain, now or (rarely)
        signed too long ago or ahead of time."""
        node = self.nodes[self.rng.choice(ORGS)]
        raw = self._decision(node, node.head)
        node.before, node.head = node.head, decision_head(raw, self._seq_after(node.head))
        topic = TOPICS.decisions(node.org)
        self.log.put(topic, raw, self.rng.randrange(self.partitions))
        self.decisions.append((topic, raw))

    @staticmethod
    def _seq_after(head: ChainHead | None) -> int:
        return 1 if head is None else head.seq + 1

    def _decision(self, node: _Node, after: ChainHead | None) -> bytes:
        self.serial += 1
        when = self.now - self.rng.choice((0, 0, 0, 1_000, 60_000, 8 * DAY_MS, -3_600_000))
        return make_decision(self.mandate.mandate_id, node.org, node.key, after,
                             signed_at_ms=when, n=self.serial)  # fmt: skip

    def decision_fork(self) -> None:
        """A second, different decision at the seq of the organization's last one."""
        node = self.nodes[self.rng.choice(ORGS)]
        if node.head is not None:
            topic = TOPICS.decisions(node.org)
            self.log.put(topic, self._decision(node, node.before), self.rng.randrange(2))

    def _node_accredit(self, node: _Node, key: SigningKey | None = None) -> SigningKey:
        self.serial += 1
        if key is None:
            key = demo_key(f"gen:node:{node.org}:{self.serial}")
            node.subject = f"{node.org}-node-{self.serial}"
        m = self.mandate
        acc = Accreditation(node.subject, node.org, Role.NODE, key.public_key,
                            m.not_before_ms, m.not_after_ms, self.serial, m.mandate_id)  # fmt: skip
        self.log.put(TOPICS.registry, sign_accreditation(acc, self.roots[node.org]).encode())
        return key

    def node_rekey(self) -> None:
        """A node key rotation: the chain continues under the new key at once."""
        node = self.nodes[self.rng.choice(ORGS)]
        node.key = self._node_accredit(node)

    def node_revoke(self) -> None:
        """The organization revokes its node key at an epoch around the current one and the
        node continues its chain with a new key."""
        node = self.nodes[self.rng.choice(ORGS)]
        self.serial += 1
        last_epoch = max(0, len(self.log.seals) + self.rng.randrange(-1, 3))
        rev = Revocation(node.org, node.key.key_id, last_epoch, self.now, "stolen", self.serial,
                         self.mandate.mandate_id)  # fmt: skip
        self.log.put(TOPICS.registry, sign_revocation(rev, self.roots[node.org]).encode())
        node.revoked.append(node.key)
        node.key = self._node_accredit(node)

    def node_thief(self) -> None:
        """Whoever holds a revoked node key publishes the organization's next decision."""
        node = self.nodes[self.rng.choice(ORGS)]
        if node.revoked:
            self.serial += 1
            raw = make_decision(self.mandate.mandate_id, node.org, self.rng.choice(node.revoked),
                                node.head, signed_at_ms=self.now, n=self.serial)  # fmt: skip
            self.log.put(TOPICS.decisions(node.org), raw, self.rng.randrange(self.partitions))

    def decision_copy(self) -> None:
        """A byte-identical copy of an earlier decision on some partition of its topic."""
        if self.decisions:
            topic, raw = self.rng.choice(self.decisions)
            self.log.put(topic, raw, self.rng.randrange(self.partitions))


def generate(seed: int, ops: Sequence[str], **kwargs: int) -> SealedLog:
    """A hostile sealed log (see :class:`LogGenerator`)."""
    return LogGenerator(seed, **kwargs).run(ops)


__all__ = [
    "DAY_MS",
    "NOW_MS",
    "OPS",
    "ORGS",
    "TOPICS",
    "LogGenerator",
    "SealedLog",
    "decision_head",
    "generate",
    "make_decision",
    "project",
]
