"""The witness's decisions, pure: one Merkle tree per report partition, the checkpoints to
publish, and the verdict on other organizations' checkpoints.

Every organization node is a witness for the others on the shared log itself. It builds its own
RFC 6962 tree over the exact record values of every report topic-partition, in offset order,
and judges each verified checkpoint (:func:`bus.checkpoint.verify_checkpoint`) against it:

* size <= its own tree size and root == its own ``root_at(size)``: **consistent**; it cosigns
  the checkpoint (once per text) unless its organization already signed that text;
* size <= its own size and another root: **split view** (the operator showed the two
  organizations different histories of that partition, or one of them lies); an alarm;
* size > its own size: **pending**, judged again once its tree has caught up.

Because a witness holds every leaf, comparing roots at the checkpoint's size covers both checks
of C2SP witnesses (same size, same root; and consistency with what it saw before): any two
checkpoints that each match one append-only tree are consistent with each other.

Checkpoints are published every ``checkpoint_every`` records, at exact multiples of it so that
the organizations' checkpoints coincide and cosignatures merge, and after
``checkpoint_interval_ms`` when the tree grew since the last one.
"""

from __future__ import annotations

import enum
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from bus.checkpoint import (
    Checkpoint,
    Note,
    VerifiedCheckpoint,
    cosign,
    key_name,
    origin_for,
    signed_checkpoint,
)
from bus.crypto import SigningKey
from bus.merkle import EMPTY_ROOT, MerkleTree, leaf_hash

__all__ = [
    "Review",
    "SplitViewAlarm",
    "Verdict",
    "WitnessCore",
    "WitnessPolicy",
    "judge",
]

# Texts this witness signed or cosigned, remembered to cosign each text once. Bounded: past the
# bound a very old checkpoint seen again is cosigned again, which is harmless.
_ATTESTED_MEMORY: Final = 65_536


@dataclass(frozen=True, slots=True)
class WitnessPolicy:
    """When to publish checkpoints.

    Args:
        checkpoint_every: publish at every multiple of this many records (>= 1).
        checkpoint_interval_ms: publish the current size when this long has passed since the
            last checkpoint of a partition and it grew meanwhile (>= 0).
    """

    checkpoint_every: int = 1000
    checkpoint_interval_ms: int = 10_000

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1")
        if self.checkpoint_interval_ms < 0:
            raise ValueError("checkpoint_interval_ms must be >= 0")


class Verdict(enum.StrEnum):
    """What a witness concludes about another node's checkpoint."""

    CONSISTENT = "consistent"
    PENDING = "pending"
    SPLIT_VIEW = "split_view"
    UNKNOWN_ORIGIN = "unknown_origin"


def judge(checkpoint: Checkpoint, tree: MerkleTree | None) -> Verdict:
    """Compare a checkpoint with the witness's own tree of its partition (None: no leaves yet).

    Raises:
        BusError: the tree does not store leaves and the size is an older one.
    """
    size = 0 if tree is None else tree.size
    if checkpoint.size > size:
        return Verdict.PENDING
    ours = EMPTY_ROOT if tree is None else tree.root_at(checkpoint.size)
    return Verdict.CONSISTENT if ours == checkpoint.root else Verdict.SPLIT_VIEW


@dataclass(frozen=True, slots=True)
class SplitViewAlarm:
    """Another organization's validly signed checkpoint that contradicts this witness's tree.

    ``offset`` is the position of the checkpoint record on the checkpoints topic.
    """

    origin: str
    topic: str
    partition: int
    size: int
    their_root: bytes
    our_root: bytes
    signed_by: tuple[str, ...]
    offset: int
    detected_at_ms: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (roots in hex)."""
        return {
            "origin": self.origin,
            "topic": self.topic,
            "partition": self.partition,
            "size": self.size,
            "their_root": self.their_root.hex(),
            "our_root": self.our_root.hex(),
            "signed_by": list(self.signed_by),
            "offset": self.offset,
            "detected_at_ms": self.detected_at_ms,
        }


@dataclass(frozen=True, slots=True)
class Review:
    """The verdict on one checkpoint record and what to publish because of it."""

    verdict: Verdict
    cosignature: bytes | None = None  # a note with this witness's cosignature line
    alarm: SplitViewAlarm | None = None


@dataclass
class WitnessCore:
    """Trees, publication schedule and verdicts of one organization's witness (no I/O).

    Args:
        org: this organization.
        subject_id: the node key's accredited subject id (its signed-note key name is
            ``obus/<org>/<subject id>``).
        key: the node key, accredited with role NODE by ``org``.
        mandate_id: the mandate whose origins this witness signs.
        is_report_topic: whether a topic is a report topic of this bus.
        policy: when to publish.
        started_ms: the clock reading the first interval counts from.
    """

    org: str
    subject_id: str
    key: SigningKey
    mandate_id: str
    is_report_topic: Callable[[str], bool]
    policy: WitnessPolicy = field(default_factory=WitnessPolicy)
    started_ms: int = 0
    trees: dict[tuple[str, int], MerkleTree] = field(default_factory=dict)
    # origin -> (size, clock) of the last checkpoint this witness published
    published: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._attested: OrderedDict[bytes, None] = OrderedDict()
        self.name = key_name(self.org, self.subject_id)

    # -- own tree ------------------------------------------------------------------------

    def load(self, topic: str, partition: int, leaf_hashes: Iterable[bytes]) -> None:
        """Restore a partition's tree from saved leaf hashes (in leaf order)."""
        tree = self.trees.setdefault((topic, partition), MerkleTree())
        for h in leaf_hashes:
            tree.append_leaf_hash(h)

    def append(self, topic: str, partition: int, value: bytes | None) -> bytes:
        """Append the next record value of a partition; returns its leaf hash (to persist).

        A null value (a Kafka tombstone) is hashed as empty bytes.
        """
        h = leaf_hash(value or b"")
        self.trees.setdefault((topic, partition), MerkleTree()).append_leaf_hash(h)
        return h

    def origin(self, topic: str, partition: int) -> str:
        """The checkpoint origin of a partition under this mandate."""
        return origin_for(self.mandate_id, topic, partition)

    # -- publishing ----------------------------------------------------------------------

    def due(self, now_ms: int) -> list[tuple[Checkpoint, bytes]]:
        """Checkpoints to publish now, each with its signed record bytes; marks them published.

        For each partition that grew: the newest multiple of ``checkpoint_every`` above the last
        published size, or the current size once ``checkpoint_interval_ms`` has passed. A text
        this witness already cosigned is not published again under its own signature.
        """
        every, interval = self.policy.checkpoint_every, self.policy.checkpoint_interval_ms
        out: list[tuple[Checkpoint, bytes]] = []
        for (topic, partition), tree in sorted(self.trees.items()):
            origin = self.origin(topic, partition)
            last_size, last_ms = self.published.get(origin, (0, self.started_ms))
            n = tree.size
            if n <= last_size:
                continue
            if now_ms - last_ms >= interval:
                target = n
            elif n // every * every > last_size:
                target = n // every * every
            else:
                continue
            cp = Checkpoint(origin, target, tree.root_at(target))
            self.published[origin] = (target, now_ms)
            if self._seen(cp.text()):
                continue  # already cosigned as another organization's checkpoint
            out.append((cp, signed_checkpoint(cp, self.key, self.name)))
            self._remember(cp.text())
        return out

    # -- judging others ------------------------------------------------------------------

    def review(self, vc: VerifiedCheckpoint, *, offset: int, now_ms: int) -> Review:
        """Judge a verified checkpoint record (from any organization, this one included).

        Returns:
            CONSISTENT with a cosignature note when this organization has not yet attested
            the text; PENDING when the tree is behind; SPLIT_VIEW with an alarm;
            UNKNOWN_ORIGIN when the origin's topic is not a report topic of this bus.
        """
        cp = vc.checkpoint
        if vc.mandate_id != self.mandate_id or not self.is_report_topic(vc.topic):
            return Review(Verdict.UNKNOWN_ORIGIN)
        tree = self.trees.get((vc.topic, vc.partition))
        verdict = judge(cp, tree)
        if verdict is Verdict.PENDING:
            return Review(verdict)
        if verdict is Verdict.SPLIT_VIEW:
            ours = EMPTY_ROOT if tree is None else tree.root_at(cp.size)
            alarm = SplitViewAlarm(
                cp.origin,
                vc.topic,
                vc.partition,
                cp.size,
                cp.root,
                ours,
                tuple(sorted(vc.orgs)),
                offset,
                now_ms,
            )
            return Review(verdict, alarm=alarm)
        text = cp.text()
        if self.org in vc.orgs or self._seen(text):
            return Review(verdict)
        self._remember(text)
        line = cosign(text, self.key, self.name, now_ms // 1000)
        return Review(verdict, cosignature=Note(text, (line,)).encode())

    def _seen(self, text: bytes) -> bool:
        return hashlib.sha256(text).digest() in self._attested

    def _remember(self, text: bytes) -> None:
        self._attested[hashlib.sha256(text).digest()] = None
        while len(self._attested) > _ATTESTED_MEMORY:
            self._attested.popitem(last=False)
