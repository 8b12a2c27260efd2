"""The bus reader: the whole sealed bus in, final seals and final verdicts out (pure).

One object every role runs the same way, whatever it does with the answers: the node's sealer
(which also proposes and cosigns), the auditor over a live log or an export, and tests. It
joins the two halves of the core:

* a :class:`~bus.seal.SealChain` over the seals topic, fed in offset order
  (:meth:`BusReader.offer_seal`), derives the final seal of each epoch;
* a :class:`~bus.sealed_reader.SealedReader`, fed every record of every sealed partition in any
  interleaving (:meth:`BusReader.offer_records`), checks each final epoch's roots and judges it.

**Which trust counts a seal's signatures.** The signatures on a seal of epoch *e* are judged
under the key ring in force for *e* (:mod:`bus.seal`, "Which signatures count"): the judge's
ring after epoch *e-1*. So the chain waits for a seal of epoch *e* until the reader has judged
*e-1*, and the reader waits for the chain's final seal of *e*: the two advance in lockstep,
whatever order the records arrive in.

**Seal 1 (bootstrap).** Before any epoch, the root mandate accredits no node key, so nothing
could sign the first seal. An epoch-1 text carries, inside its signed text, the node
accreditations it relies on (:mod:`bus.seal`, "Seal 1"), and its votes are counted under the
root mandate plus those records (:func:`~bus.seal.carried_trust`): a function of the text
alone, so the chain never waits on the log for seal 1, and a proposal claiming registry records
the log will never hold costs a reader nothing but its own verdict. A witness cosigns an
epoch-1 text only once it has read the registry prefix the text seals and the carried set is
exactly the node accreditations of that prefix (:func:`~bus.seal.node_accreditations`); the
proposer carries them. When epoch 1 is judged (its roots checked), a final text whose carried
set is not the sealed prefix's is named (:class:`~bus.seal.SealAlarm`,
``seal_carried_trust_mismatch``, in :attr:`BusUpdate.alarms`) and the final seal stands: k
organizations signed it.

**Forks.** The chain's fork evidence (:class:`~bus.seal.SealAlarm`, ``seal_fork``: k
organizations' votes on a text of the open epoch that does not follow this reader's final
seal, or on a second text of the newest final epoch) comes out in :attr:`BusUpdate.alarms`
too.

**A witness's vote** (:meth:`BusReader.cosign_candidate`): the open round's proposals, in the
seals topic's order, are judged by :func:`~bus.seal.decide_cosign` against what this reader
holds; the first one it accepts is the one to cosign, and a proposal it cannot judge yet
(records not read that far) stops the walk, so every honest witness votes for the same text. A
proposer is a witness like any other: its proposal is no vote (:mod:`bus.seal`), and it cosigns
the first acceptable proposal, its own or one published just before it.
When a round's votes are split so that no text of it can become final, the chain opens the next
round (:class:`~bus.seal.RoundOpened`, in :attr:`BusUpdate.rounds_opened`) at the same record
for every reader; the proposals of the dead round are forgotten and witnesses vote again. The
same happens at a withdrawal (:func:`~bus.seal.sign_withdrawal`, :mod:`bus.seal`,
"Withdrawals") that leaves no text of the round able to reach k: votes split while some
organizations stay silent end that way. A withdrawal is judged by the chain alone (its
verdict, in :attr:`BusUpdate.seal_verdicts`, names the organizations it withdrew); it is no
proposal, so it never enters :meth:`BusReader.proposals`.

**Restarts.** :meth:`BusReader.snapshot` holds the reader's state after the last judged epoch
and that epoch's final seal; :meth:`BusReader.resume` continues from it: feed the seals topic
again from :attr:`BusReader.seals_from` and every partition from
:meth:`BusReader.positions`. Final seals and verdicts come out exactly as for a reader that
never stopped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bus.epoch import FinalSeal, PartitionRef, PartitionSeal
from bus.errors import ConfigError, Reason
from bus.judge import EpochVerdicts, FinalJudge
from bus.merkle import EMPTY_ROOT
from bus.model import Mandate
from bus.seal import (
    ChainUpdate,
    Cosign,
    CosignDecision,
    Disposition,
    Equivocation,
    RecordVerdict,
    RoundOpened,
    SealAlarm,
    SealChain,
    SealProposal,
    carried_trust,
    decide_cosign,
    make_proposal,
    node_accreditations,
    node_electorate,
    parse_seal,
)
from bus.sealed import DecryptionKey
from bus.sealed_reader import PreverifiedSource, SealedReader
from bus.topics import Topics
from bus.trust import KeyRing
from bus.verify import Limits

SNAPSHOT_FORMAT: Final = "obus-bus-reader-v1"
# Epoch-1 texts whose carried trust is kept (each is computed again, alike, when evicted).
_MAX_BOOTSTRAP_RINGS: Final = 64


@dataclass(frozen=True)
class BusUpdate:
    """What one offer produced, in order of discovery.

    Args:
        seal_verdicts: the verdicts on the seals records judged.
        finals: the seals that became final.
        epochs: the epochs judged, each with its verdicts.
        equivocations: evidence of an organization signing two texts in one round.
        rounds_opened: rounds that opened because no text of the round before could become
            final.
        alarms: evidence that the seals contradict this reader's history (``seal_fork``) or
            that seal 1 carried other node accreditations than its registry prefix holds
            (``seal_carried_trust_mismatch``).
    """

    seal_verdicts: tuple[RecordVerdict, ...] = ()
    finals: tuple[FinalSeal, ...] = ()
    epochs: tuple[EpochVerdicts, ...] = ()
    equivocations: tuple[Equivocation, ...] = ()
    rounds_opened: tuple[RoundOpened, ...] = ()
    alarms: tuple[SealAlarm, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.seal_verdicts or self.finals or self.epochs or self.alarms)


@dataclass
class _Collector:
    seal_verdicts: list[RecordVerdict] = field(default_factory=list)
    finals: list[FinalSeal] = field(default_factory=list)
    epochs: list[EpochVerdicts] = field(default_factory=list)
    alarms: list[SealAlarm] = field(default_factory=list)

    def chain(self, update: ChainUpdate) -> list[FinalSeal]:
        self.seal_verdicts.extend(update.verdicts)
        self.finals.extend(update.finals)
        return list(update.finals)

    def done(self) -> BusUpdate:
        return BusUpdate(
            tuple(self.seal_verdicts),
            tuple(self.finals),
            tuple(self.epochs),
            tuple(e for v in self.seal_verdicts for e in v.equivocations),
            tuple(v.opened for v in self.seal_verdicts if v.opened is not None),
            (*(v.alarm for v in self.seal_verdicts if v.alarm is not None), *self.alarms),
        )


class BusReader:
    """Final seals and final verdicts from the seals topic and every sealed partition.

    Args:
        root: the mandate the bus began under (out of band; the same at every reader).
        topics: topic names.
        limits: verification limits.
        decryption_keys: this organization's keys for restricted reports (readability only).
        preverified: signatures verified ahead of the judge, asked for epoch by epoch
            (:class:`~bus.sealed_reader.PreverifiedSource`; the verdicts are the same without).
    """

    def __init__(
        self,
        root: Mandate,
        topics: Topics,
        limits: Limits | None = None,
        *,
        decryption_keys: Mapping[bytes, DecryptionKey] | None = None,
        preverified: PreverifiedSource | None = None,
        _reader: SealedReader | None = None,
        _judged: FinalSeal | None = None,
    ) -> None:
        self._root = root
        self._topics = topics
        self._limits = limits
        self._decryption_keys = dict(decryption_keys or {})
        self._reader = _reader or SealedReader(
            root, topics, limits, decryption_keys=self._decryption_keys, preverified=preverified
        )
        self._judged = _judged  # the final seal of the last judged epoch
        self._finals: dict[int, FinalSeal] = {}  # final, not yet judged, by epoch
        self._chain = SealChain(root.mandate_id, self.trust_for, latest=_judged)
        # The open round's proposals in topic order: (offset, proposal, digest).
        self._proposals: list[tuple[int, SealProposal, bytes]] = []
        self._bootstrap: dict[bytes, KeyRing] = {}
        # Registry records offered before epoch 1 is judged, by partition and offset: what
        # seal 1's carried set is checked against once its roots are (dropped then).
        self._early: dict[PartitionRef, dict[int, bytes | None]] = {}
        self._honest: dict[tuple[tuple[PartitionRef, int], ...], tuple[bytes, ...]] = {}

    # -- reads -------------------------------------------------------------------------------

    @property
    def root(self) -> Mandate:
        """The mandate the bus began under."""
        return self._root

    @property
    def judge(self) -> FinalJudge:
        """The final judge, after the last judged epoch."""
        return self._reader.judge

    @property
    def chain(self) -> SealChain:
        """The seal chain (its newest final seal, open epoch and round, votes, counts)."""
        return self._chain

    @property
    def latest(self) -> FinalSeal | None:
        """The newest final seal (judged or not)."""
        return self._chain.latest

    @property
    def judged(self) -> FinalSeal | None:
        """The final seal of the last judged epoch."""
        return self._judged

    @property
    def seals_from(self) -> int:
        """The next seals-topic offset to offer."""
        return self._chain.next_offset

    def positions(self) -> dict[PartitionRef, int]:
        """Each partition's judged size: where to fetch from after a restart."""
        return self._reader.positions()

    def buffered(self) -> int:
        """Records held that no judged epoch covers yet."""
        return self._reader.buffered()

    # -- feeding -----------------------------------------------------------------------------

    def offer_seal(self, offset: int, value: bytes | None) -> BusUpdate:
        """The next record of the seals topic (offsets increasing)."""
        out = _Collector()
        self._track(self._chain.offer(offset, value), out)
        self._settle(out)
        return out.done()

    def offer_records(
        self, ref: PartitionRef, offset: int, values: Sequence[bytes | None]
    ) -> BusUpdate:
        """Consecutive records of one sealed partition (see
        :meth:`~bus.sealed_reader.SealedReader.offer_records`).

        Raises:
            SealedRootMismatchError: a final epoch's records do not hash to its roots.
            EpochInputError: an offset offered again with other bytes.
        """
        out = _Collector()
        if ref[0] == self._topics.registry and self._reader.judge.epoch == 0:
            early = self._early.setdefault(ref, {})
            for i, value in enumerate(values):
                early.setdefault(offset + i, value)
        out.epochs.extend(self._reader.offer_records(ref, offset, values))
        self._after_judged(out)
        if self._chain.waiting:
            self._track(self._chain.resume(), out)
        self._settle(out)
        return out.done()

    def _track(self, update: ChainUpdate, out: _Collector) -> None:
        chain = self._chain
        for v in update.verdicts:
            if v.final is not None or v.opened is not None:
                self._proposals = []
            elif (
                v.proposal is not None
                and v.digest is not None
                and v.disposition in (Disposition.COUNTED, Disposition.UNCOUNTED)
                and (v.proposal.epoch, v.proposal.round) == (chain.open_epoch, chain.open_round)
                and v.reason is None
                and all(d != v.digest for _, _, d in self._proposals)
            ):
                self._proposals.append((v.offset, v.proposal, v.digest))
        for seal in out.chain(update):
            self._finals[seal.epoch] = seal

    def _settle(self, out: _Collector) -> None:
        """Hand final seals to the reader and resume the chain while either makes progress."""
        while True:
            progressed = False
            for epoch in sorted(self._finals):
                seal = self._finals[epoch]
                if epoch <= self._reader.judge.epoch:
                    continue
                judged = self._reader.offer_final_seal(seal)
                if judged:
                    out.epochs.extend(judged)
                    progressed = True
            self._after_judged(out)
            if self._chain.waiting:
                update = self._chain.resume()
                if update.verdicts:
                    self._track(update, out)
                    progressed = True
            if not progressed:
                return

    def _after_judged(self, out: _Collector) -> None:
        """Forget the final seals the reader has judged; keep the newest as ``judged``."""
        epoch = self._reader.judge.epoch
        for e in sorted(e for e in self._finals if e <= epoch):
            seal = self._finals.pop(e)
            if e == 1:
                self._check_carried(seal, out)
            if e == epoch:
                self._judged = seal

    def _check_carried(self, seal: FinalSeal, out: _Collector) -> None:
        """Name a final seal 1 whose carried set is not its (root-checked) registry prefix's."""
        records = {
            ref: [self._early.get(ref, {}).get(o) for o in range(p.size)]
            for ref, p in seal.partitions.items()
            if ref[0] == self._topics.registry
        }
        self._early.clear()
        self._honest.clear()
        expected = node_accreditations(self._root, self._topics, records)
        if expected == seal.carried:
            return
        missing = len(set(expected) - set(seal.carried))
        extra = len(set(seal.carried) - set(expected))
        out.alarms.append(
            SealAlarm(
                Reason.SEAL_CARRIED_TRUST_MISMATCH,
                1,
                f"the final seal of epoch 1 ({', '.join(sorted(seal.signers))} signed it)"
                f" carries {len(seal.carried)} node accreditations; its sealed registry gives"
                f" {len(expected)}: {missing} missing, {extra} not in it. The seal stands",
                (SealProposal.of_final(seal).text(),),
                seal.offset,
            )
        )

    # -- trust for seals ---------------------------------------------------------------------

    def trust_for(self, proposal: SealProposal) -> KeyRing | None:
        """The key ring that counts signatures on ``proposal`` (module docstring), or None while
        this reader cannot know it yet."""
        judge = self._reader.judge
        if proposal.epoch != judge.epoch + 1:
            return None
        if proposal.epoch > 1:
            return judge.keyring
        return self._bootstrap_ring(proposal)

    def _bootstrap_ring(self, proposal: SealProposal) -> KeyRing:
        """The root mandate plus the node accreditations ``proposal`` carries (module
        docstring): never waits."""
        digest = proposal.digest
        ring = self._bootstrap.get(digest)
        if ring is None:
            if len(self._bootstrap) >= _MAX_BOOTSTRAP_RINGS:
                del self._bootstrap[next(iter(self._bootstrap))]
            ring = self._bootstrap[digest] = carried_trust(self._root, self._topics, proposal)
        return ring

    def _honest_carried(self, proposal: SealProposal) -> tuple[bytes, ...]:
        """The node accreditations of the registry prefix ``proposal`` seals, as this reader
        holds it (it has read that far: :func:`~bus.seal.decide_cosign` asks only then)."""
        sizes = tuple(
            (ref, p.size)
            for ref, p in proposal.partitions.items()
            if ref[0] == self._topics.registry
        )
        return self._carried_at(sizes)

    def _carried_at(self, sizes: tuple[tuple[PartitionRef, int], ...]) -> tuple[bytes, ...]:
        honest = self._honest.get(sizes)
        if honest is None:
            if self._reader.judge.epoch != 0:
                return ()  # epoch 1 is judged: no epoch-1 text is cosigned or proposed any more
            records = {ref: self._reader.buffered_values(ref, size) for ref, size in sizes}
            honest = node_accreditations(self._root, self._topics, records)
            self._honest = {sizes: honest}  # the newest prefix only: it only grows
        return honest

    # -- witnessing --------------------------------------------------------------------------

    def view(self, ends: Mapping[PartitionRef, int] | None = None) -> ReaderView:
        """What this reader holds, as :func:`~bus.seal.decide_cosign` reads it."""
        return ReaderView(self._reader, self._topics, dict(ends or {}))

    def proposals(self) -> list[tuple[int, SealProposal, bytes]]:
        """The open round's proposals seen so far, in topic order: (offset, seal, digest)."""
        return list(self._proposals)

    def electorate(self, proposal: SealProposal) -> frozenset[str] | None:
        """The organizations whose node key could count on ``proposal`` (accredited with role
        NODE in its trust state, usable at its epoch and time: :func:`~bus.seal.node_electorate`,
        the rule the chain counts signatures and opens rounds by), or None while that trust
        state is unknown here. A proposal whose electorate is smaller than the threshold can
        never become final: a witness that voted for it would have burnt its vote for the
        round."""
        ring = self.trust_for(proposal)
        if ring is None:
            return None
        return node_electorate(ring, proposal)

    def _electable(self, proposal: SealProposal, org: str) -> CosignDecision | None:
        """None when ``org``'s vote on ``proposal`` can help make it final, else WAIT or
        REFUSE (``seal_not_electable``)."""
        orgs = self.electorate(proposal)
        if orgs is None:
            return CosignDecision(Cosign.WAIT, detail="its trust state is not known here yet")
        ring = self.trust_for(proposal)
        assert ring is not None
        k = ring.mandate.threshold
        if len(orgs) < k or org not in orgs:
            return CosignDecision(
                Cosign.REFUSE,
                Reason.SEAL_NOT_ELECTABLE,
                f"node keys of {len(orgs)} organizations count on it (k = {k}),"
                f" {org} {'among' if org in orgs else 'not among'} them",
            )
        return None

    def cosign_candidate(
        self,
        *,
        org: str,
        now_ms: int,
        tolerance_ms: int,
        voted: Mapping[tuple[int, int], bytes],
        ends: Mapping[PartitionRef, int] | None = None,
    ) -> tuple[SealProposal | None, list[tuple[int, CosignDecision]]]:
        """The proposal of the open round this witness should cosign now, if any (module
        docstring).

        Args:
            org: the witness's organization.
            now_ms: the witness's clock.
            tolerance_ms: how far *t_e* may be from it.
            voted: (epoch, round) -> digest of the text its organization already signed in
                that round.
            ends: partition end offsets known from the broker (for ``seal_beyond_log``).

        Returns:
            (the proposal to cosign or None, the decisions taken on the way, by offset).
        """
        view = self.view(ends)
        decisions: list[tuple[int, CosignDecision]] = []
        latest = self._chain.latest
        for offset, proposal, _ in self._proposals:
            refusal = self._electable(proposal, org)
            if refusal is not None:
                decisions.append((offset, refusal))
                if refusal.verdict is Cosign.WAIT:
                    return None, decisions
                continue
            d = decide_cosign(
                proposal,
                view,
                latest,
                mandate_id=self._root.mandate_id,
                now_ms=now_ms,
                tolerance_ms=tolerance_ms,
                voted=voted,
                open_round=self._chain.open_round,
                carried=self._honest_carried,
            )
            decisions.append((offset, d))
            if d.verdict is Cosign.COSIGN:
                return proposal, decisions
            if d.verdict in (Cosign.WAIT, Cosign.ALREADY):
                return None, decisions
        return None, decisions

    def sealable(self) -> bool:
        """Whether a proposal would seal something: records beyond the newest final seal's
        sizes, or reports the last judged epoch deferred (cheap: no root is computed)."""
        latest = self._chain.latest
        view = self.view()
        if latest is None:
            return any(view.size(ref) for ref in view.refs())
        if self._reader.judge.deferred and self._reader.judge.epoch == latest.epoch:
            return True
        return any(view.size(ref) > latest.size(ref) for ref in view.refs())

    def electable(self, proposal: SealProposal, org: str) -> bool:
        """Whether ``org``'s vote on ``proposal`` can help make it final: its trust state is
        known here, and node keys of at least k organizations, ``org``'s among them, count on
        it."""
        return self._electable(proposal, org) is None

    def propose(self, *, org: str, now_ms: int, electable_only: bool = True) -> SealProposal | None:
        """A proposal for the open round of the open epoch over everything held now, or None
        when there is nothing new to seal (an epoch with no new record is proposed only when
        the last one deferred reports to it), this reader is behind the newest final seal, the
        clock is not after its time, or (``electable_only``, the default) it could not become
        final with ``org``'s vote (:meth:`electable`)."""
        latest = self._chain.latest
        if latest is not None and now_ms <= latest.time_ms:
            return None
        view = self.view()
        if (
            latest is not None
            and all(view.size(ref) == latest.size(ref) for ref in view.refs())
            and not (self._reader.judge.deferred and self._reader.judge.epoch == latest.epoch)
        ):
            return None  # nothing new, nothing deferred: no empty epoch
        if latest is None and not any(view.size(ref) for ref in view.refs()):
            return None
        carried: tuple[bytes, ...] = ()
        if latest is None:
            sizes = tuple(
                (ref, view.size(ref))
                for ref in sorted(view.refs())
                if ref[0] == self._topics.registry and view.size(ref) > 0
            )
            carried = self._carried_at(sizes)
        proposal = make_proposal(
            view,
            latest,
            mandate_id=self._root.mandate_id,
            now_ms=now_ms,
            open_round=self._chain.open_round,
            carried=carried,
        )
        if proposal is None or (electable_only and self._electable(proposal, org) is not None):
            return None
        return proposal

    # -- restarts ----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The state after the last judged epoch (module docstring), canonical JSON bytes."""
        judged = self._judged
        state: dict[str, Any] = {
            "format": SNAPSHOT_FORMAT,
            "reader": self._reader.snapshot().decode(),
            "judged": None if judged is None else final_to_json(judged),
        }
        return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def resume(
        cls,
        snapshot: bytes,
        root: Mandate,
        topics: Topics,
        limits: Limits | None = None,
        *,
        decryption_keys: Mapping[bytes, DecryptionKey] | None = None,
        preverified: PreverifiedSource | None = None,
    ) -> BusReader:
        """A reader standing where :meth:`snapshot` was taken.

        Raises:
            ConfigError: not a bus reader snapshot, or made with another root, topics, limits.
        """
        try:
            s = json.loads(snapshot)
            ok = s["format"] == SNAPSHOT_FORMAT
            reader_state: str = s["reader"]
            judged = None if s["judged"] is None else final_from_json(s["judged"])
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ConfigError(
                "bus reader snapshot",
                "not a snapshot of a bus reader",
                "resume from what BusReader.snapshot() returned, or read the bus again",
            )
        reader = SealedReader.resume(
            reader_state.encode(),
            root,
            topics,
            limits,
            decryption_keys=decryption_keys,
            preverified=preverified,
        )
        if (judged is None) != (reader.judge.epoch == 0) or (
            judged is not None and judged.digest != reader.judge.seal_digest
        ):
            raise ConfigError(
                "bus reader snapshot",
                "its final seal is not the one its judge stands after",
                "read the bus again from the start",
            )
        return cls(
            root, topics, limits, decryption_keys=decryption_keys, _reader=reader, _judged=judged
        )


class ReaderView:
    """A :class:`~bus.seal.LogView` over a :class:`~bus.sealed_reader.SealedReader`: sizes are
    the records held without a gap, roots are computed from the judged frontier on."""

    def __init__(
        self, reader: SealedReader, topics: Topics, ends: Mapping[PartitionRef, int]
    ) -> None:
        self._reader = reader
        self._topics = topics
        self._ends = ends
        self._roots: dict[tuple[PartitionRef, int], bytes] = {}

    def covers(self, topic: str) -> bool:
        """Whether seals cover ``topic``."""
        return self._topics.is_sealed(topic)

    def refs(self) -> Iterable[PartitionRef]:
        """Every partition held."""
        return self._reader.refs()

    def size(self, ref: PartitionRef) -> int:
        """Records held without a gap."""
        return self._reader.read_size(ref)

    def root_at(self, ref: PartitionRef, size: int) -> bytes:
        """The root at ``size`` (cached for this view's life)."""
        if size == 0:
            return EMPTY_ROOT
        key = (ref, size)
        root = self._roots.get(key)
        if root is None:
            root = self._roots[key] = self._reader.root_at(ref, size)
        return root

    def log_end(self, ref: PartitionRef) -> int | None:
        """The broker's end offset, when known."""
        return self._ends.get(ref)


def final_to_json(seal: FinalSeal) -> dict[str, Any]:
    """A final seal as JSON: its exact text (base64), signers and offset."""
    text = SealProposal.of_final(seal).text()
    return {
        "text": base64.b64encode(text).decode(),
        "signers": sorted(seal.signers),
        "offset": seal.offset,
    }


def final_from_json(data: Mapping[str, Any]) -> FinalSeal:
    """The inverse of :func:`final_to_json` (the text is parsed with the seal format's rules).

    Raises:
        VerificationError: the text is not a seal.
        KeyError, TypeError, ValueError: not the JSON :func:`final_to_json` writes.
    """
    text = base64.b64decode(data["text"], validate=True)
    proposal = parse_seal(text)
    return proposal.final(
        digest=proposal.digest,
        signers=[str(s) for s in data["signers"]],
        offset=int(data["offset"]),
    )


__all__ = [
    "BusReader",
    "BusUpdate",
    "PartitionSeal",
    "ReaderView",
    "final_from_json",
    "final_to_json",
]
