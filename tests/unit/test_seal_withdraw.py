"""Withdrawals from a seal round: the byte format, which lines count, and the three properties
of the module docstring of :mod:`bus.seal` ("Withdrawals"): finality stays a function of the
seals topic (any reader, any trust timing, any restart), a split round no longer waits for
silent organizations, and what a fork needs under an operator who shows readers different
seals topics. No broker: records are built and fed in the order a reader would see them."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bus import crypto
from bus.crypto import SigningKey
from bus.epoch import FinalSeal
from bus.errors import Reason, VerificationError
from bus.model import Revocation, Role
from bus.note import NoteSignature, cosign, key_name, parse_note
from bus.seal import (
    MAX_ROUND,
    WITHDRAW_HEADER_PREFIX,
    Disposition,
    RecordVerdict,
    SealChain,
    SealProposal,
    SealWithdrawal,
    parse_seal_record,
    parse_withdrawal,
    parse_withdrawal_record,
    sign_withdrawal,
    verify_seal,
)
from bus.sign import sign_revocation
from bus.trust import KeyRing
from tests.mission import NOW_MS
from tests.unit.test_seal import (
    CSTO,
    EU,
    KR,
    MANDATE,
    MID,
    NATO,
    ORGS,
    OSCE,
    REGISTRY,
    REPORTS_UN,
    SCO,
    UN,
    M,
    chain_of,
    cosigned,
    feed,
    final_of,
    finals,
    keyring,
    line_of,
    merged,
    name,
    node_key,
    proposed,
    seal,
    successor,
)

K = MANDATE.threshold  # 4 of 6


def withdrawn(epoch: int, round_: int, org: str, *, mandate_id: str = MID) -> bytes:
    """``org``'s withdrawal from round ``round_`` of ``epoch``, by its node key."""
    w = SealWithdrawal(mandate_id, epoch, round_)
    return sign_withdrawal(w, node_key(org), name(org), now_ms=NOW_MS + 60_000)


def withdrawn_all(epoch: int, round_: int, orgs: Sequence[str]) -> bytes:
    """One note carrying a withdrawal line of each organization."""
    text = SealWithdrawal(MID, epoch, round_).text()
    return text + b"\n" + b"".join(line_of(withdrawn(epoch, round_, o)) for o in orgs)


# The clock-edge split of the issue: a dishonest proposer (CSTO) publishes T1 first; UN and
# OSCE accept its t_e and vote for it, EU and NATO refuse it and vote for EU's T2; CSTO and SCO
# stay silent. Each text holds 2 votes + 2 silent organizations = k.
T1 = seal(parts={REPORTS_UN: 5, REGISTRY: 2}, time_ms=NOW_MS - 50_000)
T2 = seal(parts={REPORTS_UN: 5, REGISTRY: 2})
SPLIT_2_2 = [
    proposed(T1, CSTO),
    cosigned(T1, UN),
    cosigned(T1, OSCE),
    proposed(T2, EU),
    cosigned(T2, EU),
    cosigned(T2, NATO),
]


# -- the byte format ---------------------------------------------------------------------------


def test_the_withdrawal_text_byte_for_byte() -> None:
    w = SealWithdrawal(MID, 7, 3)
    assert w.text() == f"{WITHDRAW_HEADER_PREFIX}{MID}\n7\n3\n".encode()
    assert parse_withdrawal(w.text()) == w
    record = sign_withdrawal(w, node_key(UN), name(UN), now_ms=NOW_MS)
    parsed = parse_withdrawal_record(record)
    assert (parsed.withdrawal, parsed.text) == (w, w.text())
    (sig,) = parsed.signatures
    assert sig.name == name(UN) and sig.timestamp == NOW_MS // 1000
    assert record == w.text() + b"\n" + sig.line()


MALFORMED_WITHDRAWALS = {
    "no newline": f"{WITHDRAW_HEADER_PREFIX}{MID}\n1\n1".encode(),
    "extra line": f"{WITHDRAW_HEADER_PREFIX}{MID}\n1\n1\n1\n".encode(),
    "leading zero": f"{WITHDRAW_HEADER_PREFIX}{MID}\n01\n1\n".encode(),
    "round zero": f"{WITHDRAW_HEADER_PREFIX}{MID}\n1\n0\n".encode(),
    "round too big": f"{WITHDRAW_HEADER_PREFIX}{MID}\n1\n{MAX_ROUND + 1}\n".encode(),
    "bad mandate": f"{WITHDRAW_HEADER_PREFIX}Bad\n1\n1\n".encode(),
    "another prefix": f"obus-seal/v1/{MID}\n1\n1\n".encode(),
    "control byte": f"{WITHDRAW_HEADER_PREFIX}{MID}\n1\t\n1\n".encode(),
    "too long": f"{WITHDRAW_HEADER_PREFIX}{MID}\n1\n1\n".encode() + b"x" * 200,
}


@pytest.mark.parametrize("text", MALFORMED_WITHDRAWALS.values(), ids=MALFORMED_WITHDRAWALS.keys())
def test_malformed_withdrawals_are_refused(text: bytes) -> None:
    with pytest.raises(VerificationError) as exc:
        parse_withdrawal(text)
    assert exc.value.reason is Reason.MALFORMED
    # In the chain: refused with its reason, and the chain goes on.
    chain = chain_of()
    (v,) = feed(chain, [text + b"\n" + line_of(withdrawn(1, 1, UN))])
    assert (v.disposition, v.reason) == (Disposition.REFUSED, Reason.MALFORMED)


def test_a_withdrawal_out_of_range_cannot_be_built() -> None:
    for epoch, round_ in ((0, 1), (1, 0), (1, MAX_ROUND + 1), (2**63, 1)):
        with pytest.raises(VerificationError) as exc:
            SealWithdrawal(MID, epoch, round_)
        assert exc.value.reason is Reason.INVALID_FIELD


def test_withdrawals_and_votes_never_serve_for_each_other() -> None:
    """Domain separation: a withdrawal is no seal, its line verifies on no seal text, and a
    vote's line verifies on no withdrawal text."""
    record = withdrawn(1, 1, UN)
    with pytest.raises(VerificationError) as exc:
        parse_seal_record(record)
    assert exc.value.reason is Reason.MALFORMED
    assert verify_seal(T1.text() + b"\n" + line_of(record), KR).refused == (
        (name(UN), Reason.BAD_SIGNATURE),
    )
    chain = chain_of()
    feed(chain, [cosigned(T1, UN)])
    pasted = SealWithdrawal(MID, 1, 1).text() + b"\n" + line_of(cosigned(T1, UN))
    (v,) = feed(chain, [pasted], start=1)
    assert (v.disposition, v.withdrawn, v.refused_lines) == (
        Disposition.UNCOUNTED, (), ((name(UN), Reason.BAD_SIGNATURE),),
    )  # fmt: skip
    assert chain.withdrawn() == frozenset()


# -- liveness: the split of the issue ----------------------------------------------------------


def test_a_two_two_split_with_two_silent_organizations_ends_after_withdrawals() -> None:
    """k = 4 of 6: the round holds 2 + 2 votes and two organizations never speak. Without
    withdrawals it waits for them forever; once one voter of each text withdraws no text can
    reach k, round 2 opens at that record, and the four honest organizations end the epoch."""
    chain = chain_of()
    verdicts = feed(chain, SPLIT_2_2)
    assert all(v.final is None and v.opened is None for v in verdicts)
    assert chain.open_round == 1 and set(chain.votes()) == {UN, OSCE, EU, NATO}
    # Waiting changes nothing: only records do.
    first = feed(chain, [withdrawn(1, 1, UN)], start=len(SPLIT_2_2))
    (v,) = first
    assert (v.disposition, v.withdrawn, v.opened) == (Disposition.WITHDRAWN, (UN,), None)
    assert (v.epoch, v.round, v.withdrawal) == (1, 1, SealWithdrawal(MID, 1, 1))
    assert chain.withdrawn() == {UN} and chain.votes()[UN] == T1.digest  # voted, for nothing
    (v,) = feed(chain, [withdrawn(1, 1, EU)], start=len(SPLIT_2_2) + 1)
    opened = v.opened
    assert opened is not None and (opened.epoch, opened.round, opened.offset) == (1, 2, 7)
    assert (opened.tallies, opened.undecided, opened.withdrawn) == ((1, 1), 2, 2)
    assert opened.why == (
        "no text of round 1 can reach k = 4: votes per text 1, 1, 0 on texts that can never"
        " be final, 2 organizations yet to vote, 2 withdrawn"
    )
    assert (chain.open_round, chain.votes(), chain.withdrawn()) == (2, {}, frozenset())
    # The others' withdrawals come late: round 1 is dead, they are ignored and counted.
    late = feed(chain, [withdrawn(1, 1, OSCE), withdrawn(1, 1, NATO)], start=8)
    assert [v.reason for v in late] == [Reason.SEAL_ROUND_CLOSED] * 2
    # Round 2: NATO's turn, an honest text every honest witness accepts.
    t = dataclasses.replace(T2, time_ms=NOW_MS + 5_000, round=2)
    tail = [proposed(t, NATO), *(cosigned(t, o) for o in (NATO, UN, OSCE, EU))]
    (final,) = finals(feed(chain, tail, start=10))
    assert (final.epoch, final.round, final.digest) == (1, 2, t.digest)
    assert final.signers == {UN, OSCE, EU, NATO} and chain.equivocations == []


def test_without_withdrawals_the_split_round_stays_open() -> None:
    """The hole itself: nothing but a withdrawal (or a silent organization speaking) can end
    the round."""
    chain = chain_of()
    filler = [proposed(T1, CSTO)] * 20  # proposals are no votes
    verdicts = feed(chain, [*SPLIT_2_2, *filler])
    assert chain.open_round == 1 and chain.latest is None
    assert all(v.opened is None for v in verdicts)


def test_a_withdrawal_after_finality_changes_nothing() -> None:
    records = [merged(T2, (UN, OSCE, EU, NATO)), withdrawn(1, 1, UN)]
    verdicts = feed(chain_of(), records)
    assert verdicts[0].final is not None and verdicts[0].final.signers == {UN, OSCE, EU, NATO}
    assert (verdicts[1].disposition, verdicts[1].reason) == (
        Disposition.IGNORED, Reason.SEAL_EPOCH_FINAL,
    )  # fmt: skip


def test_a_withdrawn_vote_counts_for_no_text_and_the_first_text_to_hold_k_wins() -> None:
    """The votes a text holds at a record decide; a withdrawn vote is gone from that record
    on, and a later vote of another organization can still make the text final."""
    records = [
        merged(T2, (UN, OSCE, EU)),
        withdrawn(1, 1, UN),  # T2 holds 2 votes
        cosigned(T2, NATO),  # 3
        cosigned(T2, UN),  # UN again: its vote is settled, nothing changes
        cosigned(T2, CSTO),  # 4: final without UN
    ]
    verdicts = feed(chain_of(), records)
    assert [v.disposition for v in verdicts] == [
        Disposition.COUNTED, Disposition.WITHDRAWN, Disposition.COUNTED,
        Disposition.UNCOUNTED, Disposition.FINAL,
    ]  # fmt: skip
    final = verdicts[-1].final
    assert final is not None and final.signers == {OSCE, EU, NATO, CSTO}


def test_a_withdrawn_organization_cannot_vote_again_in_the_round() -> None:
    """Withdrawing frees no vote: a second text signed after it is equivocation, kept as
    evidence and never counted."""
    chain = chain_of()
    records = [cosigned(T1, UN), withdrawn(1, 1, UN), cosigned(T2, UN)]
    verdicts = feed(chain, records)
    assert verdicts[2].counted == () and verdicts[2].refused_lines == (
        (name(UN), Reason.SEAL_EQUIVOCATION),
    )
    (eq,) = chain.equivocations
    assert (eq.org, eq.round, eq.first_offset, eq.second_offset) == (UN, 1, 0, 2)


def test_a_withdrawal_without_a_vote_changes_nothing_and_is_not_verified(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bytes] = []
    real = crypto.verify

    def counting(public_key: bytes, message: bytes, signature: bytes) -> None:
        calls.append(public_key)
        real(public_key, message, signature)

    monkeypatch.setattr(crypto, "verify", counting)
    chain = chain_of()
    (v,) = feed(chain, [withdrawn(1, 1, SCO)])
    assert (v.disposition, v.reason, v.refused_lines) == (
        Disposition.UNCOUNTED, Reason.SEAL_WITHDRAW_NO_VOTE,
        ((name(SCO), Reason.SEAL_WITHDRAW_NO_VOTE),),
    )  # fmt: skip
    assert calls == [] and chain.withdrawn() == frozenset()
    # SCO may still vote afterwards: nothing was counted.
    (v,) = feed(chain, [cosigned(T1, SCO)], start=1)
    assert v.counted == (SCO,)
    calls.clear()
    # One line per key is tried, one withdrawal per organization counts, a second one costs
    # nothing, and a key nobody accredited costs nothing.
    stranger = SigningKey.from_seed(b"\x33" * 32)
    w = SealWithdrawal(MID, 1, 1)
    odd = sign_withdrawal(w, stranger, key_name(SCO, "sco-node-x"), now_ms=NOW_MS)
    record = w.text() + b"\n" + line_of(odd) + line_of(withdrawn(1, 1, SCO)) * 30
    (v,) = feed(chain, [record], start=2)
    assert (v.disposition, v.withdrawn, len(calls)) == (Disposition.WITHDRAWN, (SCO,), 1)
    calls.clear()
    (v,) = feed(chain, [withdrawn(1, 1, SCO)], start=3)
    assert (v.disposition, v.withdrawn, calls) == (Disposition.UNCOUNTED, (), [])


def test_withdrawal_lines_are_judged_by_the_standing_rule_of_votes() -> None:
    """A bad signature, an observer's key, a node key revoked at the epoch: counted for
    nothing, with the reason; the vote stays."""
    p1 = seal()
    first = final_of(p1)
    p2 = successor(p1)
    kr = keyring()
    un_node = KR.lookup(node_key(UN).key_id)
    kr.apply(sign_revocation(Revocation(UN, un_node.key_id, 1, NOW_MS, "lost", 1, MID),
                             M.scenario.org_roots[UN]))  # fmt: skip
    # UN's vote in epoch 2 never counted (its key is out at 2): its withdrawal is no-vote.
    chain = chain_of(kr, latest=first)
    start = first.offset + 1
    verdicts = feed(chain, [cosigned(p2, UN), cosigned(p2, OSCE), withdrawn(2, 1, UN)], start)
    assert verdicts[0].refused_lines == ((name(UN), Reason.KEY_REVOKED),)
    assert verdicts[2].reason is Reason.SEAL_WITHDRAW_NO_VOTE
    # A broken line, an observer's line.
    good = parse_note(withdrawn(2, 1, OSCE)).signatures[0]
    broken = NoteSignature(good.name, good.key_hash, good.body[:-1] + bytes([good.body[-1] ^ 1]))
    oid, okey = M.observer(EU)
    text = SealWithdrawal(MID, 2, 1).text()
    observer = cosign(text, okey, key_name(EU, oid), NOW_MS // 1000)
    feed(chain, [cosigned(p2, EU)], start + 3)
    (v,) = feed(chain, [text + b"\n" + broken.line() + observer.line()], start + 4)
    assert v.refused_lines == (
        (name(OSCE), Reason.BAD_SIGNATURE),
        (key_name(EU, oid), Reason.WRONG_ROLE),
    )
    assert v.disposition is Disposition.UNCOUNTED and chain.withdrawn() == frozenset()


def test_withdrawals_of_other_rounds_epochs_and_mandates_are_ignored() -> None:
    chain = chain_of()
    feed(chain, [cosigned(T1, UN)])
    other_mandate = withdrawn(1, 1, UN, mandate_id="another-mission")
    records = [withdrawn(1, 2, UN), withdrawn(2, 1, UN), other_mandate]
    got = feed(chain, records, start=1)
    assert [(v.disposition, v.reason) for v in got] == [
        (Disposition.IGNORED, Reason.SEAL_ROUND_AHEAD),
        (Disposition.IGNORED, Reason.SEAL_EPOCH_AHEAD),
        (Disposition.IGNORED, Reason.WRONG_MANDATE),
    ]
    assert chain.withdrawn() == frozenset()


# -- (a) determinism: random schedules ---------------------------------------------------------


def _ring(orgs: Sequence[str], k: int) -> KeyRing:
    """Node keys of ``orgs`` only, under a mandate with threshold ``k``."""
    kr = KeyRing(dataclasses.replace(MANDATE, version=2, threshold=k))
    for acc in KR.accreditations(Role.NODE):
        if acc.org in orgs:
            kr.add_accreditation(acc)
    return kr


@dataclasses.dataclass
class Schedule:
    """One epoch (epoch 2, after ``first``) under a ring with node keys of ``electorate`` and
    threshold ``k``: each step is (org, action, text index) with action one of ``vote``,
    ``propose``, ``withdraw``."""

    k: int
    electorate: tuple[str, ...]
    steps: list[tuple[str, str, int]]

    @property
    def ring(self) -> KeyRing:
        return _ring(self.electorate, self.k)


P1 = seal()
FIRST: FinalSeal = final_of(P1)
TEXTS = [successor(P1, parts={REPORTS_UN: 13 + i, REGISTRY: 5}) for i in range(3)]


def _text(i: int, round_: int) -> SealProposal:
    return dataclasses.replace(TEXTS[i], round=round_)


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    electorate = tuple(draw(st.lists(st.sampled_from(ORGS), min_size=1, unique=True)))
    k = draw(st.integers(1, len(ORGS)))
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from(ORGS),
                st.sampled_from(["vote", "vote", "propose", "withdraw"]),
                st.integers(0, 2),
            ),
            max_size=24,
        )
    )
    return Schedule(k, electorate, steps)


def _records(s: Schedule) -> list[bytes]:
    """The schedule as records, each aimed at the round open when it is published (a model
    of nodes that follow the rounds: a reader that fed the records before decides)."""
    chain = chain_of(s.ring, latest=FIRST)
    out: list[bytes] = []
    for org, action, i in s.steps:
        if chain.latest is not None and chain.latest.epoch == 2:
            break
        r = chain.open_round
        if action == "withdraw":
            record = withdrawn(2, r, org)
        elif action == "propose":
            record = proposed(_text(i, r), org)
        else:
            record = cosigned(_text(i, r), org)
        out.append(record)
        chain.offer(FIRST.offset + len(out), record)
    return out


def _oracle(s: Schedule, records: Sequence[bytes]) -> list[tuple[str, int, int]]:
    """What the docstring's rule says, computed naively: ('final', offset, round) and
    ('opened', offset, round) events, in order."""
    events: list[tuple[str, int, int]] = []
    r = 1
    votes: dict[str, int] = {}  # org -> text index (its first vote in the round)
    gone: set[str] = set()  # withdrawn
    for step_no, ((org, action, i), _) in enumerate(zip(s.steps, records, strict=False)):
        offset = FIRST.offset + 1 + step_no
        counts = org in s.electorate
        changed = False
        if action == "vote" and counts and org not in votes:
            votes[org] = i
            changed = True
        elif action == "withdraw" and counts and org in votes and org not in gone:
            gone.add(org)
            changed = True
        if not changed:
            continue
        tally = Counter(t for o, t in votes.items() if o not in gone)
        if action == "vote" and tally[i] >= s.k:
            events.append(("final", offset, r))
            break
        undecided = len(set(s.electorate) - set(votes))
        if max([*tally.values(), 0]) + undecided < s.k:
            r += 1
            events.append(("opened", offset, r))
            votes, gone = {}, set()
    return events


def _events(verdicts: Sequence[RecordVerdict]) -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    for v in verdicts:
        if v.final is not None:
            out.append(("final", v.offset, v.final.round))
        if v.opened is not None:
            out.append(("opened", v.offset, v.opened.round))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=schedules())
def test_finals_and_rounds_are_the_rule_s_whatever_the_schedule(s: Schedule) -> None:
    """Random votes, proposals and withdrawals, random k and electorate: the chain ends rounds
    and the epoch exactly where the naive rule does (a round dies when no text can reach k
    with withdrawn votes removed and withdrawn organizations counted as having voted)."""
    records = _records(s)
    got = _events(feed(chain_of(s.ring, latest=FIRST), records, FIRST.offset + 1))
    want = _oracle(s, records)
    event(f"{len([e for e in want if e[0] == 'opened'])} rounds opened, final: "
          f"{any(e[0] == 'final' for e in want)}")  # fmt: skip
    assert got == want


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=schedules(), data=st.data())
def test_every_reader_derives_the_same_rounds_withdrawals_and_finals(
    s: Schedule, data: st.DataObject
) -> None:
    """Whenever a reader learns the trust state (records wait for it) and wherever it restarts
    from a final seal, its verdicts are a straight reader's."""
    records = [merged(P1, ORGS[:4]), *_records(s)]
    ring = s.ring

    # Epoch 1 under the full ring, epoch 2 under the drawn one.
    def trust(known: set[int]) -> Callable[[SealProposal], KeyRing | None]:
        return lambda p: None if p.epoch not in known else (KR if p.epoch == 1 else ring)

    baseline = feed(SealChain(MID, trust({1, 2})), records)
    known: set[int] = set()
    chain = SealChain(MID, trust(known))
    got: list[RecordVerdict] = []
    for offset, value in enumerate(records):
        got.extend(chain.offer(offset, value).verdicts)
        if data.draw(st.booleans()):
            known.add(data.draw(st.integers(1, 2)))
            got.extend(chain.resume().verdicts)
    known.update({1, 2})
    got.extend(chain.resume().verdicts)
    assert got == baseline
    (first, *_) = finals(baseline)
    again = SealChain(MID, trust({1, 2}), latest=first)
    rest = feed(again, records[first.offset + 1 :], start=first.offset + 1)
    assert rest == baseline[first.offset + 1 :]


# -- (b) liveness ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_once_every_honest_voter_withdrew_the_round_is_dead(data: st.DataObject) -> None:
    """At least max(k, n - k + 1) honest organizations vote in the round, split over texts in
    any way, then withdraw; the others (at most k - 1: silent, down or dishonest) do anything
    before, between and after. The round dies at the latest with the last honest withdrawal,
    or a text became final first."""
    n = len(ORGS)
    k = data.draw(st.integers(1, n))
    orgs = data.draw(st.permutations(ORGS))
    n_honest = data.draw(st.integers(max(k, n - k + 1), n))
    honest, others = orgs[:n_honest], orgs[n_honest:]
    ring = _ring(ORGS, k)
    records = [cosigned(_text(data.draw(st.integers(0, 2)), 1), org) for org in honest]
    records.extend(withdrawn(2, 1, org) for org in honest)
    for _ in range(data.draw(st.integers(0, 8))):
        if not others:
            break
        org = data.draw(st.sampled_from(others))
        kind = data.draw(st.sampled_from(["vote", "withdraw", "propose"]))
        i = data.draw(st.integers(0, 2))
        record = {
            "vote": cosigned(_text(i, 1), org),
            "withdraw": withdrawn(2, 1, org),
            "propose": proposed(_text(i, 1), org),
        }[kind]
        records.insert(data.draw(st.integers(0, len(records))), record)
    # The honest organizations' own order: each votes before it withdraws.
    last_honest = max(i for i, r in enumerate(records) for o in honest if r == withdrawn(2, 1, o))
    chain = chain_of(ring, latest=FIRST)
    verdicts = feed(chain, records[: last_honest + 1], FIRST.offset + 1)
    done = [v for v in verdicts if v.final is not None or v.opened is not None]
    event("final" if any(v.final for v in done) else "round 2")
    assert done, "the round outlived every honest withdrawal"


# -- (c) safety under an operator who shows readers different seals topics ---------------------


def test_the_operator_alone_can_fork_one_epoch_but_not_extend_it() -> None:
    """The price of withdrawals, shown exactly (module docstring, "What an operator who hides
    records can do"): every organization honest, the operator hides each one's vote from the
    others until their timeouts pass. Reader A is shown the four votes on T2 first: final.
    The honest sealers are shown the withdrawals first: round 1 dies for them and epoch 1 ends
    on another text in round 2. Nobody equivocated. To extend A's epoch 1, k organizations
    must cosign a text of epoch 2 naming A's final seal; the honest ones all hold the other,
    so 2k - n organizations would have to sign texts of epoch 2 naming two different
    previous seals, which no honest organization does in any round."""
    votes = [cosigned(T2, o) for o in (UN, OSCE, EU, NATO)]
    outs = [withdrawn(1, 1, o) for o in (UN, OSCE, EU, NATO)]
    (final_a,) = finals(feed(chain_of(), [*votes, *outs]))
    assert final_a.digest == T2.digest
    t_b = dataclasses.replace(T2, time_ms=NOW_MS + 1, round=2)
    view_b = [votes[0], votes[1], outs[0], votes[2], outs[1], votes[3], outs[2],
              merged(t_b, (UN, OSCE, EU, NATO))]  # fmt: skip
    chain_b = chain_of()
    verdicts_b = feed(chain_b, view_b)
    (final_b,) = finals(verdicts_b)
    assert (final_b.digest, final_b.round) == (t_b.digest, 2) != (final_a.digest, 1)
    assert chain_b.equivocations == [] and [v.opened for v in verdicts_b if v.opened]
    # Epoch 2 on B's side: the honest organizations extend final_b. Shown to A, their
    # cosignatures are on a text naming another previous seal: never final at A, whose round
    # dies of them; A stays at epoch 1 (no finality: a stall, not a silent fork).
    next_b = successor(SealProposal.of_final(final_b))
    chain_a = chain_of()
    feed(chain_a, votes)
    (v,) = feed(chain_a, [merged(next_b, ORGS[:4])], start=4)
    assert (v.reason, v.final, chain_a.latest) == (Reason.SEAL_WRONG_PREV, None, final_a)
    assert v.opened is not None and v.opened.void == K
    # Extending A's epoch 1 takes k cosignatures on a text naming final_a: with final_b's
    # successor signed by k organizations, 2k - n of them sign both, texts of one epoch naming
    # two previous seals (in different rounds here: no round-level equivocation).
    next_a = dataclasses.replace(successor(SealProposal.of_final(final_a)), round=2)
    a_signers = ORGS[2:]
    assert len(set(a_signers) & set(ORGS[:4])) == 2 * K - len(ORGS)
    (v,) = feed(chain_a, [merged(next_a, a_signers)], start=5)
    assert v.final is not None and v.final.prev_digest == final_a.digest != next_b.prev_digest
    assert chain_a.equivocations == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_round_final_for_one_reader_dies_for_another_only_by_withdrawals_or_equivocation(
    data: st.DataObject,
) -> None:
    """An operator shows two readers different subsets of one round's records (votes and
    withdrawals), in any order. Honest organizations sign one text and may withdraw; dishonest
    ones sign anything. When reader A finds T final with signers S and reader B finds the round
    dead, at least |S| - k + 1 members of S withdrew or equivocated in B's view, and the
    equivocators are dishonest."""
    orgs = data.draw(st.permutations(ORGS))
    dishonest = set(orgs[: data.draw(st.integers(0, 3))])
    texts = [_text(i, 1) for i in range(3)]
    records: list[bytes] = []
    signed: dict[str, set[int]] = {o: set() for o in ORGS}
    pick = st.sampled_from([0, 0, 0, 1, 2])
    for org in ORGS:
        choices = (
            data.draw(st.lists(pick, min_size=1, max_size=3, unique=True))
            if org in dishonest
            else [data.draw(pick)]
        )
        for t in choices:
            signed[org].add(t)
            records.append(cosigned(texts[t], org))
        if data.draw(st.booleans()):
            records.append(withdrawn(2, 1, org))

    def view() -> list[bytes]:
        shown = data.draw(st.permutations(records))
        return shown[: len(shown) - data.draw(st.integers(0, 2))]

    view_a, view_b = view(), view()
    finals_a = finals(feed(chain_of(latest=FIRST), view_a, FIRST.offset + 1))
    chain_b = chain_of(latest=FIRST)
    verdicts_b = feed(chain_b, view_b, FIRST.offset + 1)
    opened_b = [v.opened for v in verdicts_b if v.opened is not None]
    event(f"final for A: {bool(finals_a)}, round 2 for B: {bool(opened_b)}")
    if finals_a and opened_b:
        final = finals_a[0]
        dead_at = opened_b[0].offset
        gone = {o for v in verdicts_b if v.offset <= dead_at for o in v.withdrawn}
        t = next(i for i, p in enumerate(texts) if p.digest == final.digest)
        equivocators = {o for o in final.signers if len(signed[o]) > 1 and t in signed[o]}
        assert len(equivocators | (gone & final.signers)) >= len(final.signers) - K + 1
        assert equivocators <= dishonest
