"""Seals: one text per epoch that states what the whole bus holds, and which one is final.

Pure code (no I/O, no clock): callers pass records, trust states, their own view of the log and
the time they judge at. :mod:`bus.epoch` holds what a final seal states and the order it
defines; this module makes, signs, parses and judges seals, and derives the final ones.

Byte format of a record on ``<prefix>seals``
--------------------------------------------
Every record value is one C2SP *signed note* (``signed-note.md``, parsed as in
:mod:`bus.note`), UTF-8, whose text is a *seal*, ASCII only::

    obus-seal/v1/<mandate id>\\n            format, version, mandate: obus-seal/v1/jmm-2026
    <epoch>\\n                              1, 2, 3, ...
    <round>\\n                              the epoch's voting round: 1, 2, 3, ...
    <t_e>\\n                                the seal's time, UNIX milliseconds
    <prev>\\n                               base64 of the final seal of epoch-1's digest
    <topic> <partition> <size> <root>\\n    one line per sealed partition (0 to 2048)
    accreditation <base64>\\n               epoch 1 only: a carried node accreditation (0 to 256)
    \\n                                     a blank line ends the text
    \u2014 <key name> <base64(key hash || signature body)>\\n     1 to 100 signature lines

* ``<epoch>`` and ``<t_e>``: ASCII decimal in 1..2^63-1, no sign, no leading zero; ``<round>``
  likewise in 1..2^31-1 (:data:`MAX_ROUND`).
* ``<prev>`` and ``<root>``: standard padded base64 of exactly 32 bytes, canonical (decoding
  and encoding again gives the same 44 characters). ``<prev>`` of epoch 1 is 32 zero bytes
  (:data:`bus.epoch.GENESIS_DIGEST`).
* A partition line: a Kafka topic name (1 to 249 of ``[A-Za-z0-9._-]``), the partition
  (decimal 0..2^31-1), the number of records sealed (decimal 1..2^64-1) and the RFC 6962 root
  (:mod:`bus.merkle`) over their values in offset order (leaf i = value at offset i; a null
  value counts as empty bytes), separated by one space each. Lines are sorted by topic (bytes)
  then partition (number), each partition at most once. A partition with no record is not
  listed, so one state of the log has exactly one text per round.
* A carried line (epoch 1 only, after every partition line): ``accreditation``, one space and
  the canonical standard padded base64 of one registry record's exact bytes (1 to
  :data:`MAX_CARRIED_RECORD_BYTES`); lines sorted (ASCII), each once, at most
  :data:`MAX_CARRIED`. A text of a later epoch with such a line is malformed. See "Seal 1".
* No other byte: no control character but the newlines, no blank line inside the text, no
  trailing space. The signature lines take at most :data:`MAX_SIGNATURE_BLOCK_BYTES` (lines by
  keys named otherwise could never count) and the record at most :data:`MAX_SEAL_RECORD_BYTES`.
* The seal's **digest** is SHA-256 of its exact text (what the next seal's ``<prev>`` names);
  the round is part of it, so a final seal states the round it was final in
  (:attr:`bus.epoch.FinalSeal.round`).

Signature lines are those of :mod:`bus.note`: key names ``obus/<org>/<subject id>`` of
the signer's accreditation; type ``0x01`` (Ed25519 over the text) by the node that proposes the
seal; type ``0x04`` (C2SP ``tlog-cosignature/v1``: 8-byte time in seconds, then Ed25519 over
``cosignature/v1\\ntime <t>\\n`` || text) by every node that cosigns it, the proposer
included. Only cosignatures are votes: the proposer's ``0x01`` line says who published the
text, is parsed like any line and is never verified nor counted (a record with only that line
changes no vote). A cosignature record carries the same text with only the cosigner's line(s);
records with the same text merge into one note (:func:`bus.note.merge_notes`).

The seals topic carries one other kind of record, a *withdrawal* (below, "Withdrawals"): a
signed note whose text is ``obus-seal-withdraw/v1/<mandate id>\n<epoch>\n<round>\n`` (the same
number rules) with type ``0x04`` lines by node keys.

Domain separation: DSSE signs bytes beginning ``DSSEv1 ``, seal texts begin
``obus-seal/v1/``, withdrawal texts ``obus-seal-withdraw/v1/`` and cosignatures
``cosignature/v1``: a node key's signature made for one use never verifies for another (a
withdrawal is no seal, :func:`parse_seal_record` refuses it, and a vote's line pasted under a
withdrawal text, or the reverse, does not verify).

Which signatures count (:func:`verify_seal`, :class:`SealChain`)
-----------------------------------------------------------------
The trust state of a seal of epoch *e >= 2* is the key ring in force for epoch *e*: the
mandate and registry as of the final seal of epoch *e-1* (trust records logged in an epoch take
effect from the next); that of an epoch-1 text is the one it carries ("Seal 1"). The caller
supplies it per proposal (:data:`TrustFor`). Only cosignature lines (type
``0x04``) are judged; a type ``0x01`` line is skipped like a line by an unknown key. A
cosignature counts only when its key is accredited there with role ``NODE`` by an organization
of that mandate, inside the accreditation's validity window at *t_e*, and not revoked **at an
epoch**: a node key revoked with ``last_valid_seq = L`` counts on seals of epochs ``<= L`` and
for nothing on later ones (for node keys the "seq" is the epoch). Lines by keys the trust state
does not know are ignored. Each line is judged on its own: one that fails counts for nothing and
is reported with its reason, the others still count (a record may carry several organizations'
lines, and one bad line must not cancel another organization's). Work per record is bounded: at
most one cosignature line per key id is tried (a second one by the same key is skipped), a
key's standing is checked before its signature, so a line that could not count costs no
verification, and a line whose organization's vote in that round is already settled is not
verified again.

The **electorate** of a text (:func:`node_electorate`) is the organizations of the mandate
with a node key that could count on it by the rule above: accredited with role ``NODE``, inside
the window at its *t_e*, not revoked at its epoch. The electorate of an epoch
(:func:`epoch_electorate`) holds every organization that could be in the electorate of some
text of the epoch that may become final (*t_e* after *t_{e-1}*).

Finality (:class:`SealChain`): a pure function of the seals topic
-----------------------------------------------------------------
A reader feeds every record of the single-partition seals topic in offset order. Epochs open one
at a time and, inside the open epoch, voting **rounds** open one at a time: epoch *e* is *open*
in round 1 from the record that made epoch *e-1* final (from the start for epoch 1); round *r+1*
opens at the record that made round *r* **dead** (below). A record for an epoch already final
(``seal_epoch_final``) or not yet open (``seal_epoch_ahead``), or for a round of the open epoch
that is dead (``seal_round_closed``) or not yet open (``seal_round_ahead``), is ignored and
counted, never verified for finality (another text of the newest final epoch is verified for
the fork watch only, "Forks"). In the open round:

* an organization's **first** counted cosignature in the round (in topic order, on any text
  of that epoch and round, valid or not) is its **vote** in the round; a cosignature on another
  text of the same round is **equivocation**, kept as evidence (:class:`Equivocation`: both
  texts, both lines, both offsets) and never counted; the same text again changes nothing.
  Cosignatures in different rounds are different votes, never equivocation;
* proposing is not voting: a proposer's type 0x01 line counts for nothing, so two proposals
  published at the same moment cost no organization its vote (every witness, both proposers
  included, cosigns the first of them in topic order, below), and a proposer votes for its own
  text only by cosigning it, once like anyone else;
* the **final seal of epoch e** is the first text, in topic order, to hold votes of ``k``
  distinct organizations in its round, ``k`` the threshold of the mandate in force for *e*,
  among texts that name the mandate, whose ``<prev>`` is the final seal of *e-1*'s digest, whose
  *t_e* is strictly after *t_{e-1}* and whose sizes never shrink (every partition of *e-1* is
  listed again, with at least its size). Texts breaking a rule never become final
  (``seal_wrong_prev``, ``seal_time_not_increasing``, ``seal_size_shrinks``), and votes on them
  are still votes;
* a counted **withdrawal** (below) by an organization that voted in the round takes its vote
  off its text from that record on; the organization still counts as having voted (for no
  text). ``votes(t)`` below are a text's votes not withdrawn, and a text is final at the first
  record at which it holds ``k`` of them (a withdrawal after that changes nothing: the epoch
  is final);
* round *r* is **dead** once no text of it can reach ``k`` any more, whoever votes next. With
  ``V`` the organizations that voted in round *r* (withdrawn or not): every text *t* of the
  round that may become final has ``votes(t) + |E(t) - V| < k`` (``E(t)`` its electorate),
  and a text nobody signed
  yet could not reach ``k`` either: ``|E - V| < k``, ``E`` the epoch's electorate (for epoch 1,
  whose trust state may differ from text to text, :data:`TrustFor`, every organization of the
  mandate). ``V`` only grows and ``votes(t)`` only grows by votes of organizations leaving
  ``E(t) - V``, so no record makes a text able to reach ``k`` again: a dead round stays
  dead; the record whose vote or withdrawal made it dead opens round *r+1*
  (:class:`RoundOpened` on its verdict). A record of the dead round that
  comes later could have changed no final seal, which is why it is not looked at (a second text
  signed there is not reported as equivocation: it could never count). Round
  :data:`MAX_ROUND` never dies.

Nothing else enters: not a reader's clock, nor how it batches or interleaves topics, nor when it
learnt a trust state (a record that needs one the caller does not have yet waits, and the
records after it wait behind it), so every reader of one seals topic derives the same final
seals, counts the same withdrawals and opens the same rounds at the same records. A
withdrawal's effect depends only on the records before it (which votes it can take back) and
on the trust state of the text its organization voted for, which that reader already had to
count the vote: a withdrawal never waits, and never makes a reader wait.

**Why a minority can neither forge nor block finality.** Say *f* organizations are dishonest
(or their keys stolen) and ``f <= min(k - 1, n - k)`` of the mandate's *n*. *Forge*: a final
text holds *k* votes of one round, so at least ``k - f >= 1`` honest organization voted for it,
and an honest witness only cosigns a text that matches its own log (:func:`decide_cosign`); the
minority's own signatures, however many texts and rounds they sign, never add up to *k*:
nothing it signs counts unless it is a cosignature, one per organization and round, and its
proposals count for nothing at all.
*Block*: the ``n - f >= k`` honest organizations vote for the same text of a round when honest
witnesses follow the rule below, and nothing the minority publishes can cancel an honest vote:
its signatures on other texts burn only its own votes, its withdrawals take back only its own
(a withdrawal line counts only by the organization's own node key), a copy of an honest line on
another text does not verify, a copy on the same text changes nothing, and records of other
rounds are not looked at. Nor can it kill a round in which the honest votes go to one text
*T*: honest votes on *T* plus honest organizations yet to vote are always ``n - f >= k`` until
honest organizations withdraw, which they do only when *T* is not final a timeout after their
vote, so *T* reaches *k* first whenever honest nodes read each other within the timeout.
*Change*: among texts honest organizations vote for, the first to reach *k* wins; the
minority can hurry that text (its votes count), and can decide between two honest texts only
when the honest votes are split so that neither reaches *k* without it.

**What an operator who hides records can do, without withdrawals.** (The bounds this design
had before withdrawals; "Withdrawals", (c), says what they change.) The seals topic is one
partition, but its operator may show readers different seals topics (records left out, in
another order). Without withdrawals, two readers derive different final seals of one epoch
only when organizations signed two texts of one round, each such pair of signatures an
:class:`Equivocation` once the views meet:

* *in one round*: two texts with *k* votes each need ``2k - n`` organizations that signed both;
* *across rounds*: text *T* of round *r* is final for reader A with signers *S*
  (``|S| >= k``, all in ``E(T)``), and round *r* is dead for reader B. Hiding a vote makes its
  organization one that has not voted yet, so it never makes a round look *more* dead; B sees
  round *r* dead only because of votes it was shown. For *T* in B, ``votes(T) + |E(T) - V| < k``
  (or ``|E - V| < k`` when B was shown no vote for *T*, and ``E(T)`` is within ``E``), so fewer
  than *k* members of *S* voted for *T* or have not voted in B's view: at least
  ``|S| - k + 1`` of them voted in round *r* for another text in B's view, while in A's view the
  same organization's vote in round *r* is for *T*. An honest organization signs one text per
  round, so each is an equivocating organization, named by its two signatures.

That second bound is at least one organization, where a fork inside one round needs
``2k - n`` (two for 4 of 6). It is the price of reopening an epoch at all: a round may only die
once its best text misses *k* by one vote; asking for a margin of ``2k - n`` votes would keep
the commonest split, two texts with ``n / 2`` votes each, open for good at 4 of 6. So, without
withdrawals, a fork names at least one organization that equivocated, and needs the operator's
help; with them, a withdrawal may stand where the second signature stood ("Withdrawals", (c)).

**What one vote per round costs.** Two proposers at once split nothing by themselves: neither
proposal is a vote, and every witness cosigns the first acceptable one in topic order, which
all read alike. Honest votes still split when witnesses judge the first proposal differently (a
*t_e* at the edge of some witnesses' clock tolerance, a network partition), which may leave no
text able to reach *k*; once every organization that could still change that has voted, the
round is dead and the next one opens, at the same record for every reader, with another
proposer's turn (below). A round also stays open while some text could still reach *k* with
the votes of organizations that have not voted: when they stay silent (their nodes down, or a
dishonest minority that withholds its votes after splitting the honest ones), the voters'
withdrawals end it ("Withdrawals", (b)).

Seal 1
------
Before any epoch the root mandate accredits no node key, so the first seal's votes need a trust
state no final seal has fixed yet. An epoch-1 text therefore **carries** the node accreditations
it relies on, inside its signed text (the carried lines), and its votes are counted under the
root mandate plus those records (:func:`carried_trust`), verified and applied with exactly the
judge's rules for registry records (:class:`bus.judge.FinalJudge`: signed by the
organization's root key in the root mandate, for a subject in its namespace, role ``NODE``,
the first accreditation of a key wins; the window is judged at *t_e* like every vote). That is
a function of the text alone: no reader waits on the log to count seal-1 votes, so a proposal
claiming registry records that will never exist (any organization may write the seals topic)
costs every reader one verdict and nothing else. Revocations logged in epoch 1, like every
trust record, take effect from epoch 2: they never enter seal 1's trust.

*The honest set* (:func:`node_accreditations`): the registry records of the prefix the text
seals that the judge applies as accreditations with role ``NODE``, each once, at most
:data:`MAX_CARRIED_RECORD_BYTES` long, each organization's first
``min(MAX_CARRIED_PER_ORG, max(1, MAX_CARRIED // n))`` in the judge's order (so one
organization that accredits hundreds of node keys takes only its own places, never another's).
The proposer carries it (:func:`make_proposal`); a witness cosigns an epoch-1 text only once it
has read every partition the text seals up to its size (it waits until then, as for any seal)
and the carried set is exactly the one it computes from that prefix (else
``seal_carried_trust_mismatch``, :func:`decide_cosign`). So a final seal 1, holding at least one
honest vote whenever fewer than *k* organizations are dishonest, carries the sealed registry's
node accreditations. When epoch 1 is judged (its roots checked), every reader compares the
final text's carried set with the sealed prefix (:mod:`bus.bus_reader`) and names a mismatch
(``seal_carried_trust_mismatch``); the final seal stands: *k* organizations signed it, and
finality is a function of the seals topic alone.

Forks
-----
A reader names a fork (:class:`SealAlarm`, ``seal_fork``, on the verdict of the record that
completed the evidence, and in :attr:`SealChain.alarms`) when it sees *k* organizations' votes
(cosignatures that count under the trust state of the text) on

* a text of the open round of the open epoch whose ``<prev>`` is not its own final seal's
  digest (``seal_wrong_prev``: no honest witness signs one, so *k* of them mean a second
  history; "Withdrawals", (c)); or
* another text of its newest final epoch (two final-looking texts for one epoch). Records of
  that epoch are no longer counted for finality; their lines are verified for this watch only,
  under the trust state that made the epoch final, at most one try per key and record and on
  at most eight texts per organization (work and memory stay bounded whatever a hostile
  organization writes). After a restart from a final seal the watch starts at the next final
  seal (the trust state of the one restarted from is not at hand).

The alarm keeps both notes: this reader's final seal (its text with the lines that made it
final here) and the other text with the *k* lines; anyone can verify them again. Texts of
other rounds of the open epoch, or of older epochs, are not watched: the two sides of a fork
number rounds apart, and the next epoch's texts of the other side carry the evidence again.

Withdrawals
-----------
Why they exist: a round stays open while some text could still reach ``k`` with the votes of
organizations that have not voted, and nothing in the seals topic tells a silent organization
from a slow one. So at ``k = 4`` of ``n = 6``, when honest votes split 2-2 (a *t_e* at the edge
of some witnesses' clock tolerance, published first by a dishonest proposer, or by accident)
and two organizations stay silent (dishonest, or merely their nodes down), each text holds
``2 + 2 = k`` and the epoch would wait for the silent ones for ever: two organizations would
block finality for everyone. A withdrawal lets the organizations that did vote take their
votes back, so the silent ones stop mattering.

*The record*: the text above, with one ``0x04`` (tlog-cosignature/v1) line per withdrawing
organization, by any of its node keys; :func:`sign_withdrawal` makes one. *Which lines count*
(:meth:`SealChain.offer`), for the open round of the open epoch only (others are ignored and
counted like seals records, never verified):

* the line's key name ``obus/<org>/<subject>`` names the organization; an organization with no
  counted vote in the round gets ``seal_withdraw_no_vote`` and nothing changes (not verified:
  abstaining without having voted would let an organization count as decided without looking
  at a text, and an honest sealer never does it), nor does one already withdrawn;
* the line is judged under the trust state of the text that organization voted for, by the
  standing rule of votes on that text (a node key of the organization, accredited, inside
  its window at that text's *t_e*, not revoked at the epoch) and then verified; a key that
  trust state does not know is ignored; at most one line per key id is tried and one
  withdrawal per organization and round counts. Work per record: dictionary look-ups, and at
  most one verification per organization with a live vote;
* a counted withdrawal takes the organization's vote off its text from this record on (the
  vote stays its vote: a cosignature on another text of the round later is equivocation, the
  same text again changes nothing); death is then checked as above, so a withdrawal may open
  the next round.

*The honest rule* (:mod:`nodes.org_node.sealer`): an organization withdraws from a round only
after its vote there is a timeout old on its own clock (several seal intervals), only while
the epoch is not final in its view, and never votes again in that round. Timeouts and clocks
enter nobody's verdict: they only decide when an honest organization publishes a record,
and every reader judges the record where it stands in the topic.

**(a) Determinism.** Finality, rounds and withdrawals are a function of the seals topic and the
trust states (above); ``tests/unit/test_seal_withdraw.py`` checks the rule against a naive
oracle and any reader (trust learnt late, restarts from any final seal) against a straight
one, over random schedules of votes, proposals and withdrawals and random ``k`` and
electorates.

**(b) Liveness.** Say at least ``max(k, n - k + 1)`` organizations run honestly (so the others,
silent, down or dishonest, number at most ``k - 1``), read each other's records within the
timeout, and propose and vote in each round (a witness that refuses every proposal proposes
its own, and cosigns the first acceptable one). In any round that is not final, each honest
organization votes and, a timeout later, withdraws. Once they all have, every honest
organization is in ``V`` and holds no vote on any text, so for every text ``votes(t) + |E(t) -
V|`` counts only the others: at most ``k - 1``. The round is dead, at the latest at the last
honest withdrawal, whatever the others did. A round ends in finality when the honest votes
go to one text: every honest witness accepts the round's first proposal when it is honest
(clocks within each other's tolerance, one log), which the turns make the common case. A
dishonest organization that publishes a clock-edge text first in *every* round can keep the
honest votes split, each time at the cost of one timeout per round; binding a round's votes to
the proposal of the organization whose turn it is would confine that to its own turns, and is
not built.

**(c) Safety under an operator who shows readers different seals topics** (the fork analysis
of "Finality" above, with withdrawals). A fork of epoch *e* is two readers holding different
final seals of *e*.

* *In one round*: two texts with ``k`` votes each need ``2k - n`` organizations that signed
  both, each an :class:`Equivocation`. Unchanged: a withdrawal never adds a vote.
* *Across rounds*: *T* final in round *r* for reader A with signers *S*, round *r* dead for
  reader B. Hiding a vote or a withdrawal never makes a round look more dead (a hidden vote
  leaves its organization undecided, which counts for every text; a withdrawal only takes
  away). So fewer than ``k`` members of *S* still hold their vote on *T* or have not voted in
  B's view: at least ``|S| - k + 1`` of them, in B's view, **signed another text of round
  r (equivocation) or withdrew**. Withdrawing is what an honest organization does when it
  has not seen its text final within the timeout. So, unlike before withdrawals, *the operator
  alone* can fork one epoch: it keeps *T*'s finality from ``|S| - k + 1`` of its honest signers
  for longer than their timeout (hiding the others' votes from them), shows them their
  withdrawals and round *r+1*, and shows reader A the votes before the withdrawals. No
  signature names anyone; the two readers hold one record at different offsets, or records the
  other was never shown, which names the operator to whoever compares them.
* *Beyond epoch e*: each honest organization holds one final seal per epoch for good (its
  view only grows, its sealer keeps the final seals it judged) and cosigns only texts naming
  that seal as ``<prev>`` (:func:`decide_cosign`). Both sides of a fork continuing to *e+1*
  need ``k`` cosignatures each on texts of *e+1* naming two different ``<prev>``, so at least
  ``2k - n`` organizations signed texts of one epoch naming two different previous seals,
  which no honest organization does in any round; each is named by its two lines (on records
  of the two sides' final seals of *e+1*). The claim that they signed two texts *of one
  round* would be wrong: the two sides count rounds of *e+1* separately, and signing texts of
  two rounds is honest; it is the ``<prev>`` that convicts. With fewer than ``2k - n``
  dishonest organizations only one side ever passes epoch *e*; the other sees no final seal
  again (a stall every node's health shows, not a quiet divergence), and the first text of
  the other side it is shown carries ``k`` cosignatures over a ``<prev>`` that is not its
  final seal (``seal_wrong_prev``, its votes void): evidence of the fork at *e*.

So withdrawals weaken one bound: a fork confined to one epoch no longer needs an equivocating
organization, only an operator who withholds records from the honest sealers for longer than
their withdrawal timeout. It is the right trade because without them two silent
organizations (or two nodes down at a clock edge, a fault the field will produce) block
finality for everyone for good, with no evidence and nothing any honest party can do, which
breaks the rule "a minority cannot block"; with them, a fork needs the operator's active
partitioning for a configured time, stays within one epoch unless ``2k - n`` organizations
sign conflicting histories (named), and shows at the losing side as a stall. The timeout is the
knob: it must be well above the time a healthy round takes, and the longer it is, the longer
the operator must hide records. Two alternatives were weighed: asking a dead round for a margin
of ``2k - n`` does nothing against silence; Tendermint-style locks (a voter keeps voting for
its text in later rounds until a quorum certificate releases it) keep the per-epoch bound but
need a second voting phase and certificates carried across rounds, with their own liveness
rules, far beyond one record kind.

The witness's rule (:func:`decide_cosign`)
------------------------------------------
A witness cosigns a proposal for the open round of the epoch after its newest final seal only
when: the mandate matches; the proposal is of the round open at this witness (an earlier round
is refused, ``seal_round_closed``: its votes can no longer make a seal final; a later one is
waited on); its organization has not signed another text in that round (at most one vote per
round); the text follows the previous final seal (prev digest, time, sizes, as above); *t_e* is
within its clock tolerance of its own now; every sealed partition is of a bus topic, the witness
has read it at least up to the sealed size and its own root at that size is the sealed one; and
its own roots at the previous final seal's sizes are that seal's. It *waits* while it has not
read far enough, and *refuses* for good otherwise. To keep honest votes together, a witness
judges the open round's proposals in topic order and cosigns the first it accepts, **its own
proposal included**: a proposer does not vote by proposing, it reads the seals topic and
cosigns the first acceptable proposal like every witness, which is often its own and may be
another's published just before. It waits on a proposal it cannot judge yet rather than
skipping it. Proposers should take turns, round *r* of epoch *e* first by organization number
``(e + r - 1) mod n`` (so each new round has another first proposer), the others later by their
place after it, the delays counted from when the round opened; a proposer proposes at most once
per round. Turns only make a second proposal rare: when two appear, every reader sees them in
the same order and the votes still go to the first. A witness whose vote in the open round has
waited a timeout on its clock while the epoch is not final withdraws it and never votes again
in that round ("Withdrawals").
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol

from bus import crypto
from bus.crypto import SigningKey
from bus.epoch import GENESIS_DIGEST, FinalSeal, PartitionRef, PartitionSeal
from bus.errors import Reason, VerificationError
from bus.judge import FinalJudge, Status, Verdict
from bus.merkle import EMPTY_ROOT, HASH_SIZE, MAX_TREE_SIZE, MerkleTree
from bus.model import PAYLOAD_ACCREDITATION, Accreditation, Mandate, Role, check_id
from bus.note import (
    MAX_SIGNATURES,
    SIG_COSIGNATURE_V1,
    Note,
    NoteKeys,
    NoteSignature,
    Verifier,
    cosign,
    cosignature_message,
    key_name,
    parse_note,
    sign_note,
)
from bus.topics import Topics
from bus.trust import KeyRing, decode_registry_record

__all__ = [
    "CARRIED_PREFIX",
    "MAX_CARRIED",
    "MAX_CARRIED_PER_ORG",
    "MAX_CARRIED_RECORD_BYTES",
    "MAX_EPOCH",
    "MAX_PARTITION",
    "MAX_ROUND",
    "MAX_SEAL_PARTITIONS",
    "MAX_SEAL_RECORD_BYTES",
    "MAX_SEAL_TEXT_BYTES",
    "MAX_SIGNATURE_BLOCK_BYTES",
    "SEAL_HEADER_PREFIX",
    "WITHDRAW_HEADER_PREFIX",
    "ChainUpdate",
    "Cosign",
    "CosignDecision",
    "Disposition",
    "Equivocation",
    "LogView",
    "RecordVerdict",
    "RoundOpened",
    "SealChain",
    "SealProposal",
    "SealRecord",
    "SealSignature",
    "SealWithdrawal",
    "TreeView",
    "TrustFor",
    "VerifiedSeal",
    "WithdrawalRecord",
    "carried_trust",
    "check_successor",
    "cosign_seal",
    "decide_cosign",
    "epoch_electorate",
    "make_proposal",
    "node_accreditations",
    "node_electorate",
    "parse_seal",
    "parse_seal_record",
    "parse_withdrawal",
    "parse_withdrawal_record",
    "sign_proposal",
    "sign_withdrawal",
    "verify_seal",
]

SEAL_HEADER_PREFIX: Final = "obus-seal/v1/"
"""Start of every seal text: the format and its version, then the mandate id."""
WITHDRAW_HEADER_PREFIX: Final = "obus-seal-withdraw/v1/"
"""Start of every withdrawal text (module docstring, "Withdrawals")."""
MAX_SEAL_PARTITIONS: Final = 2048
"""Partition lines a seal may hold (every partition of every bus topic fits many times over)."""
MAX_EPOCH: Final = 2**63 - 1
"""Largest epoch number and largest *t_e* in milliseconds (a signed 64-bit integer)."""
MAX_PARTITION: Final = 2**31 - 1
"""Largest Kafka partition number (an int32)."""
MAX_ROUND: Final = 2**31 - 1
"""Largest round number (an int32); this round of an epoch never dies."""
MAX_CARRIED: Final = 256
"""Accreditation lines an epoch-1 text may carry (module docstring, "Seal 1")."""
MAX_CARRIED_PER_ORG: Final = 8
"""Node accreditations of one organization an honest epoch-1 text carries, at most."""
MAX_CARRIED_RECORD_BYTES: Final = 512
"""A carried registry record is at most this long (a node accreditation with the longest ids
is under 400 bytes); a longer one is never carried."""
CARRIED_PREFIX: Final = "accreditation "
"""Start of a carried-accreditation line of an epoch-1 text."""
# The longest partition line: topic, partition, size (uint64: 20 digits), root, three spaces
# and the newline; the longest header: the prefix, a mandate id, epoch, round, t_e and prev.
_MAX_LINE_BYTES: Final = 249 + 10 + 20 + 44 + 3 + 1
_MAX_HEADER_BYTES: Final = len(SEAL_HEADER_PREFIX) + 63 + 1 + 2 * (19 + 1) + 10 + 1 + 44 + 1
# A carried line: the prefix, base64 of at most MAX_CARRIED_RECORD_BYTES, the newline.
_MAX_CARRIED_LINE_BYTES: Final = len(CARRIED_PREFIX) + 4 * -(-MAX_CARRIED_RECORD_BYTES // 3) + 1
MAX_SEAL_TEXT_BYTES: Final = (
    _MAX_HEADER_BYTES
    + MAX_SEAL_PARTITIONS * _MAX_LINE_BYTES
    + MAX_CARRIED * _MAX_CARRIED_LINE_BYTES
)
"""No valid seal text is longer (a bound checked before anything is split)."""
_MAX_SIGNATURE_LINE_BYTES: Final = 256  # a key name of obus/<org>/<subject> and a 0x04 body
MAX_SIGNATURE_BLOCK_BYTES: Final = MAX_SIGNATURES * _MAX_SIGNATURE_LINE_BYTES
"""The signature lines of a seals record take at most this many bytes: 100 lines by keys named
``obus/<org>/<subject id>`` fit (242 bytes each at most); longer lines could never count."""
MAX_SEAL_RECORD_BYTES: Final = MAX_SEAL_TEXT_BYTES + 1 + MAX_SIGNATURE_BLOCK_BYTES
"""A seals record is at most this long (under 900 kB, within Kafka's default 1 MiB limit)."""
# A withdrawal text: the prefix and a mandate id, epoch and round, each line with its newline.
_MAX_WITHDRAW_TEXT_BYTES: Final = len(WITHDRAW_HEADER_PREFIX) + 63 + 1 + 19 + 1 + 10 + 1
_WITHDRAW_PREFIX_BYTES: Final = WITHDRAW_HEADER_PREFIX.encode()
_KEY_NAME_RE: Final = re.compile(r"obus/(?P<org>[a-z0-9][a-z0-9_-]{0,62})/[^/]+")

_MANDATE_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_TOPIC_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")
_NUMBER_RE: Final = re.compile(r"[1-9][0-9]{0,18}")  # 1..10^19-1; range checked after
_HASH_B64_RE: Final = re.compile(r"[A-Za-z0-9+/]{43}=")
_LINE_RE: Final = re.compile(
    r"(?P<topic>[A-Za-z0-9._-]{1,249}) (?P<partition>0|[1-9][0-9]{0,9})"
    r" (?P<size>[1-9][0-9]{0,19}) (?P<root>[A-Za-z0-9+/]{43}=)"
)
_CARRIED_RE: Final = re.compile(
    r"accreditation (?P<b64>(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?)"
)
_NOT_TEXT_BYTE: Final = re.compile(rb"[^\x20-\x7e\n]")  # printable ASCII and newlines only
_HEADER_LINES: Final = 5
_TIMESTAMP_BYTES: Final = 8


def _malformed(problem: str, **context: object) -> VerificationError:
    return VerificationError(Reason.MALFORMED, f"seal: {problem}", **context)


def _invalid(problem: str, **context: object) -> VerificationError:
    return VerificationError(Reason.INVALID_FIELD, f"seal: {problem}", **context)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------------------------------------
# The seal text


@dataclass(frozen=True, slots=True)
class SealProposal:
    """A seal's content: what one node proposes, and every organization cosigns, for an epoch.

    Args:
        mandate_id: the mandate the bus runs under.
        epoch: the epoch this seal closes (1, 2, ...).
        time_ms: *t_e*, the proposer's clock when it proposed, in UNIX milliseconds.
        prev_digest: the digest of the final seal of ``epoch - 1`` (:data:`GENESIS_DIGEST`
            for epoch 1).
        partitions: every sealed partition (size >= 1) with its size and RFC 6962 root; stored
            as a read-only mapping in canonical order.
        round: the epoch's voting round it is proposed in (1, 2, ...; the text's second
            number line, after the epoch).
        carried: epoch 1 only: the registry records accrediting node keys its votes are
            counted under (module docstring, "Seal 1"), each 1 to
            :data:`MAX_CARRIED_RECORD_BYTES` bytes, at most :data:`MAX_CARRIED`; stored sorted
            by their lines, each once.

    Raises:
        VerificationError: ``INVALID_FIELD`` when a field is out of the format's range.
    """

    mandate_id: str
    epoch: int
    time_ms: int
    prev_digest: bytes
    partitions: Mapping[PartitionRef, PartitionSeal]
    round: int = 1
    carried: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        check_id("mandate_id", self.mandate_id)
        for name, value in (("epoch", self.epoch), ("time_ms", self.time_ms)):
            if type(value) is not int or not 1 <= value <= MAX_EPOCH:
                raise _invalid(f"{name} must be in 1..2^63-1", field=name)
        if type(self.round) is not int or not 1 <= self.round <= MAX_ROUND:
            raise _invalid("round must be in 1..2^31-1", field="round")
        if len(self.prev_digest) != HASH_SIZE:
            raise _invalid(f"prev digest must be {HASH_SIZE} bytes", field="prev_digest")
        if len(self.partitions) > MAX_SEAL_PARTITIONS:
            raise _invalid(f"more than {MAX_SEAL_PARTITIONS} partitions", field="partitions")
        for (topic, partition), sealed in self.partitions.items():
            if not _TOPIC_RE.fullmatch(topic):
                raise _invalid(f"{topic[:60]!r} is not a Kafka topic name", field="partitions")
            if type(partition) is not int or not 0 <= partition <= MAX_PARTITION:
                raise _invalid(f"partition {partition!r} of {topic}", field="partitions")
            if type(sealed.size) is not int or not 1 <= sealed.size <= MAX_TREE_SIZE:
                raise _invalid(f"size of {topic}/{partition} must be in 1..2^64-1")
            if len(sealed.root) != HASH_SIZE:
                raise _invalid(f"root of {topic}/{partition} must be {HASH_SIZE} bytes")
        if self.carried and self.epoch != 1:
            raise _invalid("only an epoch-1 seal carries accreditations", field="carried")
        if len(self.carried) > MAX_CARRIED:
            raise _invalid(f"more than {MAX_CARRIED} carried records", field="carried")
        for raw in self.carried:
            if not isinstance(raw, bytes) or not 1 <= len(raw) <= MAX_CARRIED_RECORD_BYTES:
                raise _invalid(
                    f"a carried record is 1..{MAX_CARRIED_RECORD_BYTES} bytes", field="carried"
                )
        ordered = dict(sorted(self.partitions.items()))
        # frozen dataclass: __post_init__ is the one place that may set a field.
        object.__setattr__(self, "partitions", MappingProxyType(ordered))
        object.__setattr__(self, "carried", tuple(sorted(set(self.carried), key=_b64)))

    def text(self) -> bytes:
        """The exact seal text (see the module docstring)."""
        lines = [
            SEAL_HEADER_PREFIX + self.mandate_id,
            str(self.epoch),
            str(self.round),
            str(self.time_ms),
            _b64(self.prev_digest),
        ]
        lines.extend(f"{t} {p} {s.size} {_b64(s.root)}" for (t, p), s in self.partitions.items())
        lines.extend(CARRIED_PREFIX + _b64(raw) for raw in self.carried)
        return ("\n".join(lines) + "\n").encode()

    @property
    def digest(self) -> bytes:
        """SHA-256 of :meth:`text`."""
        return hashlib.sha256(self.text()).digest()

    def size(self, ref: PartitionRef) -> int:
        """Records of ``ref`` sealed (0 when not listed)."""
        sealed = self.partitions.get(ref)
        return 0 if sealed is None else sealed.size

    def final(self, *, digest: bytes, signers: Iterable[str], offset: int) -> FinalSeal:
        """This seal as the final one of its epoch (``digest`` is its text's, passed in so that
        it is not computed twice)."""
        return FinalSeal(
            mandate_id=self.mandate_id,
            epoch=self.epoch,
            time_ms=self.time_ms,
            partitions=self.partitions,
            digest=digest,
            prev_digest=self.prev_digest,
            signers=frozenset(signers),
            offset=offset,
            round=self.round,
            carried=self.carried,
        )

    @classmethod
    def of_final(cls, final: FinalSeal) -> SealProposal:
        """The seal a final seal was made from (``text()`` hashes to ``final.digest``)."""
        return cls(
            final.mandate_id,
            final.epoch,
            final.time_ms,
            final.prev_digest,
            final.partitions,
            final.round,
            final.carried,
        )


def _decimal(line: str, what: str, maximum: int) -> int:
    if not _NUMBER_RE.fullmatch(line) or int(line) > maximum:
        raise _malformed(f"{what} {line[:30]!r} is not a decimal in 1..{maximum}")
    return int(line)


def _hash(b64: str, what: str) -> bytes:
    # The regex admits 43 base64 characters and "=": 32 bytes, whose last character carries 2
    # unused bits; canonical base64 has them zero, which encoding again checks.
    raw = base64.b64decode(b64, validate=True)
    if _b64(raw) != b64:
        raise _malformed(f"{what} is not canonical base64")
    return raw


def parse_seal(text: bytes) -> SealProposal:
    """Parse a seal text strictly (the byte format of the module docstring).

    Raises:
        VerificationError: ``MALFORMED`` for any text that is not exactly a seal: not ASCII, a
            control character, no final newline, a wrong first line, a number that is not
            canonical decimal or out of range, a hash that is not canonical base64 of 32
            bytes, a partition line of another shape, lines unsorted or repeated, more than
            :data:`MAX_SEAL_PARTITIONS` lines, longer than :data:`MAX_SEAL_TEXT_BYTES`; a
            carried line that is not canonical base64 of 1 to
            :data:`MAX_CARRIED_RECORD_BYTES` bytes, before a partition line, unsorted or
            repeated, more than :data:`MAX_CARRIED`, or in a text of an epoch after 1.
    """
    if not isinstance(text, bytes):
        raise _malformed("text must be bytes")
    if len(text) > MAX_SEAL_TEXT_BYTES:
        raise _malformed(f"longer than {MAX_SEAL_TEXT_BYTES} bytes")
    if _NOT_TEXT_BYTE.search(text):
        raise _malformed("only printable ASCII and newlines")
    if not text.endswith(b"\n"):
        raise _malformed("text must end with a newline")
    lines = text[:-1].decode("ascii").split("\n")
    if len(lines) < _HEADER_LINES:
        raise _malformed("needs header, epoch, round, time and prev lines")
    if len(lines) - _HEADER_LINES > MAX_SEAL_PARTITIONS + MAX_CARRIED:
        raise _malformed(f"more than {MAX_SEAL_PARTITIONS + MAX_CARRIED} lines")
    header, epoch_s, round_s, time_s, prev_s = lines[:_HEADER_LINES]
    if not header.startswith(SEAL_HEADER_PREFIX):
        raise _malformed(f"first line must start with {SEAL_HEADER_PREFIX!r}")
    mandate_id = header[len(SEAL_HEADER_PREFIX) :]
    if not _MANDATE_RE.fullmatch(mandate_id):
        raise _malformed(f"{mandate_id[:70]!r} is not a mandate id")
    epoch = _decimal(epoch_s, "epoch", MAX_EPOCH)
    round_ = _decimal(round_s, "round", MAX_ROUND)
    time_ms = _decimal(time_s, "time", MAX_EPOCH)
    if not _HASH_B64_RE.fullmatch(prev_s):
        raise _malformed("prev must be base64 of 32 bytes")
    prev = _hash(prev_s, "prev")
    partitions: dict[PartitionRef, PartitionSeal] = {}
    last: PartitionRef | None = None
    body = lines[_HEADER_LINES:]
    split = len(body)
    while split and _is_carried_line(body[split - 1]):
        split -= 1  # a partition line has three spaces, a carried line one
    carried = _parse_carried(body[split:], epoch)
    if len(body) - len(carried) > MAX_SEAL_PARTITIONS:
        raise _malformed(f"more than {MAX_SEAL_PARTITIONS} partition lines")
    for line in body[:split]:
        m = _LINE_RE.fullmatch(line)
        if m is None:
            raise _malformed(f"partition line {line[:80]!r} is not '<topic> <p> <size> <root>'")
        ref = (m["topic"], int(m["partition"]))
        size = int(m["size"])
        if ref[1] > MAX_PARTITION or size > MAX_TREE_SIZE:
            raise _malformed(f"partition or size out of range in {line[:80]!r}")
        if last is not None and ref <= last:
            raise _malformed(f"partition lines unsorted or repeated at {ref[0]}/{ref[1]}")
        partitions[ref] = PartitionSeal(size, _hash(m["root"], "root"))
        last = ref
    return SealProposal(mandate_id, epoch, time_ms, prev, partitions, round_, carried)


def _is_carried_line(line: str) -> bool:
    return line.startswith(CARRIED_PREFIX) and " " not in line[len(CARRIED_PREFIX) :]


def _parse_carried(lines: list[str], epoch: int) -> tuple[bytes, ...]:
    """The carried-accreditation lines at the end of a text (strictly: sorted, each once)."""
    if not lines:
        return ()
    if epoch != 1:
        raise _malformed("only an epoch-1 seal carries accreditations")
    if len(lines) > MAX_CARRIED:
        raise _malformed(f"more than {MAX_CARRIED} carried accreditations")
    out: list[bytes] = []
    previous = ""
    for line in lines:
        m = _CARRIED_RE.fullmatch(line)
        if m is None or not m["b64"]:
            raise _malformed(f"carried line {line[:80]!r} is not 'accreditation <base64>'")
        if line <= previous:
            raise _malformed("carried lines unsorted or repeated")
        raw = base64.b64decode(m["b64"], validate=True)
        if _b64(raw) != m["b64"] or len(raw) > MAX_CARRIED_RECORD_BYTES:
            raise _malformed(
                f"a carried record is canonical base64 of 1..{MAX_CARRIED_RECORD_BYTES} bytes"
            )
        out.append(raw)
        previous = line
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SealRecord:
    """A seals record parsed, nothing verified: the seal, its exact text and digest, and the
    note's signature lines in order."""

    proposal: SealProposal
    text: bytes
    digest: bytes
    signatures: tuple[NoteSignature, ...]


def parse_seal_record(
    data: bytes, *, known: Mapping[bytes, SealProposal] | None = None
) -> SealRecord:
    """Split a seals record into seal and signature lines, verifying nothing.

    The note is split where :func:`bus.note.parse_note` splits it (the last blank
    line); the text is parsed first, so that a record that is no seal is refused at the cost of
    one regular expression, then the signature lines by ``parse_note``.

    Args:
        data: the record value.
        known: texts parsed before, by digest: a text with one of these digests is that text,
            and is not parsed again (every cosignature record repeats its seal's text).

    Raises:
        VerificationError: ``OVERSIZED`` beyond :data:`MAX_SEAL_RECORD_BYTES`; ``MALFORMED``
            for a text :func:`parse_seal` refuses, signature lines longer than
            :data:`MAX_SIGNATURE_BLOCK_BYTES`, or lines ``parse_note`` refuses (more than 100
            included).
    """
    if not isinstance(data, bytes):
        raise _malformed("record must be bytes")
    if len(data) > MAX_SEAL_RECORD_BYTES:
        raise VerificationError(
            Reason.OVERSIZED, f"seal record of {len(data)} bytes > {MAX_SEAL_RECORD_BYTES}"
        )
    split = data.rfind(b"\n\n")
    if split < 0:
        raise _malformed("no blank line before the signatures")
    text, block = data[: split + 1], data[split + 2 :]
    digest = hashlib.sha256(text).digest() if len(text) <= MAX_SEAL_TEXT_BYTES else b""
    proposal = known.get(digest) if known else None
    if proposal is None:
        proposal = parse_seal(text)
    if len(block) > MAX_SIGNATURE_BLOCK_BYTES:
        raise _malformed(f"signature lines longer than {MAX_SIGNATURE_BLOCK_BYTES} bytes")
    # The block holds no blank line (the split is the last one) and cannot start with a
    # newline (the split would be one byte later), so this note splits exactly there too.
    note = parse_note(b"\n\n" + block, max_signatures=MAX_SIGNATURES)
    return SealRecord(proposal, text, digest, note.signatures)


def _successor_problem(proposal: SealProposal, previous: FinalSeal | None) -> Reason | None:
    try:
        check_successor(proposal, previous)
    except VerificationError as exc:
        return exc.reason
    return None


def check_successor(proposal: SealProposal, previous: FinalSeal | None) -> None:
    """Check the rules a seal must keep with the final seal before it (None: epoch 1).

    Raises:
        VerificationError: ``SEAL_WRONG_PREV`` (prev digest or epoch number do not follow),
            ``SEAL_TIME_NOT_INCREASING``, ``SEAL_SIZE_SHRINKS`` (a partition of the previous
            seal smaller or absent).
    """
    if previous is None:
        if proposal.epoch != 1 or proposal.prev_digest != GENESIS_DIGEST:
            raise VerificationError(
                Reason.SEAL_WRONG_PREV, "the first seal is epoch 1 with the genesis digest"
            )
        return
    if proposal.epoch != previous.epoch + 1 or proposal.prev_digest != previous.digest:
        raise VerificationError(
            Reason.SEAL_WRONG_PREV,
            f"seal of epoch {proposal.epoch} does not follow the final seal of {previous.epoch}",
            epoch=proposal.epoch,
        )
    if proposal.time_ms <= previous.time_ms:
        raise VerificationError(
            Reason.SEAL_TIME_NOT_INCREASING,
            f"t_e {proposal.time_ms} is not after {previous.time_ms}",
            epoch=proposal.epoch,
        )
    for ref, sealed in previous.partitions.items():
        if proposal.size(ref) < sealed.size:
            raise VerificationError(
                Reason.SEAL_SIZE_SHRINKS,
                f"{ref[0]}/{ref[1]} sealed {sealed.size} records, now {proposal.size(ref)}",
                topic=ref[0],
                partition=ref[1],
            )


# ---------------------------------------------------------------------------------------------
# Seal 1: the trust it carries


def _node_accreditation(raw: bytes | None) -> Accreditation | None:
    """The node accreditation a registry record claims (decoded, not verified), or None."""
    try:
        env = decode_registry_record(raw or b"")
        if env.payload_type != PAYLOAD_ACCREDITATION:
            return None
        acc = Accreditation.decode(env.payload)
    except VerificationError:
        return None
    return acc if acc.role is Role.NODE else None


def _registry_epoch(
    root: Mandate, topics: Topics, records: Mapping[PartitionRef, Sequence[bytes | None]]
) -> tuple[FinalJudge, tuple[Verdict, ...]]:
    """A scratch judge that judged ``records`` (registry partitions from offset 0) as epoch 1,
    by the judge's own rules for registry records."""
    judge = FinalJudge(root, topics)
    parts = {ref: list(v) for ref, v in records.items() if ref[0] == topics.registry and v}
    if not parts:
        return judge, ()
    sizes = {ref: PartitionSeal(len(v), EMPTY_ROOT) for ref, v in parts.items()}
    seal = FinalSeal(root.mandate_id, 1, 1, sizes, GENESIS_DIGEST, GENESIS_DIGEST)
    return judge, judge.judge_epoch(seal, parts).verdicts


def node_accreditations(
    root: Mandate, topics: Topics, records: Mapping[PartitionRef, Sequence[bytes | None]]
) -> tuple[bytes, ...]:
    """The registry records an honest epoch-1 text carries (module docstring, "Seal 1").

    Args:
        root: the mandate the bus began under.
        topics: topic names (which topic is the registry).
        records: the registry prefix the text seals: each registry partition's values from
            offset 0 up to its sealed size (other topics are ignored).

    Returns:
        The exact bytes of every record the judge applies as an accreditation with role NODE
        (:class:`~bus.judge.FinalJudge`: under the root mandate, signed by the organization's
        root key, in its namespace, the first accreditation of a key wins), at most
        :data:`MAX_CARRIED_RECORD_BYTES` long, each once, each organization's first ``c`` in
        the judge's order (``c = min(MAX_CARRIED_PER_ORG, max(1, MAX_CARRIED // n))``, ``n``
        the root's organizations; beyond :data:`MAX_CARRIED` in all, the organizations first
        in id order), sorted as the text lists them.
    """
    _, verdicts = _registry_epoch(root, topics, records)
    cap = min(MAX_CARRIED_PER_ORG, max(1, MAX_CARRIED // len(root.organizations)))
    taken: dict[str, list[bytes]] = {}
    for v in verdicts:
        acc = v.trust
        if v.status is not Status.APPLIED or not isinstance(acc, Accreditation):
            continue
        raw = records[(v.pos[0], v.pos[1])][v.pos[2]]
        mine = taken.setdefault(acc.org, [])
        if (
            acc.role is not Role.NODE
            or raw is None
            or len(raw) > MAX_CARRIED_RECORD_BYTES
            or raw in mine
            or len(mine) >= cap
        ):
            continue
        mine.append(raw)
    chosen = [raw for org in sorted(taken) for raw in taken[org]][:MAX_CARRIED]
    return tuple(sorted(set(chosen), key=_b64))


def carried_trust(root: Mandate, topics: Topics, proposal: SealProposal) -> KeyRing:
    """The trust state an epoch-1 text's votes are counted under: the root mandate plus the
    node accreditations the text carries, verified and applied by the judge's rules for
    registry records, in the text's order (a carried record that is no node accreditation, or
    that the judge quarantines, counts for nothing). A function of the text alone."""
    node = [raw for raw in proposal.carried if _node_accreditation(raw) is not None]
    judge, _ = _registry_epoch(root, topics, {(topics.registry, 0): node})
    return judge.keyring


# ---------------------------------------------------------------------------------------------
# Signing


def sign_proposal(proposal: SealProposal, key: SigningKey, name: str) -> bytes:
    """The record a proposer publishes: the seal with its type 0x01 line by ``key``."""
    text = proposal.text()
    return Note(text, (sign_note(text, key, name),)).encode()


def cosign_seal(text: bytes, key: SigningKey, name: str, *, now_ms: int) -> bytes:
    """The record a witness publishes: the seal text with its tlog-cosignature/v1 line, timed
    ``now_ms // 1000`` seconds."""
    return Note(text, (cosign(text, key, name, now_ms // 1000),)).encode()


# ---------------------------------------------------------------------------------------------
# Withdrawals


@dataclass(frozen=True, slots=True)
class SealWithdrawal:
    """An organization's withdrawal from one round of an epoch (module docstring,
    "Withdrawals"): from its record on, that organization's vote in the round counts for no
    text.

    Raises:
        VerificationError: ``INVALID_FIELD`` when a field is out of the format's range.
    """

    mandate_id: str
    epoch: int
    round: int

    def __post_init__(self) -> None:
        check_id("mandate_id", self.mandate_id)
        if type(self.epoch) is not int or not 1 <= self.epoch <= MAX_EPOCH:
            raise _invalid("epoch must be in 1..2^63-1", field="epoch")
        if type(self.round) is not int or not 1 <= self.round <= MAX_ROUND:
            raise _invalid("round must be in 1..2^31-1", field="round")

    def text(self) -> bytes:
        """The exact withdrawal text."""
        return f"{WITHDRAW_HEADER_PREFIX}{self.mandate_id}\n{self.epoch}\n{self.round}\n".encode()


def parse_withdrawal(text: bytes) -> SealWithdrawal:
    """Parse a withdrawal text strictly: ``obus-seal-withdraw/v1/<mandate>``, the epoch and the
    round, each line ended by a newline, nothing else.

    Raises:
        VerificationError: ``MALFORMED`` for any other bytes.
    """
    if not isinstance(text, bytes) or len(text) > _MAX_WITHDRAW_TEXT_BYTES:
        raise _malformed(f"a withdrawal text is bytes, at most {_MAX_WITHDRAW_TEXT_BYTES}")
    if _NOT_TEXT_BYTE.search(text) or not text.endswith(b"\n"):
        raise _malformed("a withdrawal text is printable ASCII lines, each ending in a newline")
    lines = text[:-1].decode("ascii").split("\n")
    if len(lines) != 3 or not lines[0].startswith(WITHDRAW_HEADER_PREFIX):
        raise _malformed(f"a withdrawal is {WITHDRAW_HEADER_PREFIX}<mandate>, epoch and round")
    mandate_id = lines[0][len(WITHDRAW_HEADER_PREFIX) :]
    if not _MANDATE_RE.fullmatch(mandate_id):
        raise _malformed(f"{mandate_id[:70]!r} is not a mandate id")
    epoch = _decimal(lines[1], "epoch", MAX_EPOCH)
    round_ = _decimal(lines[2], "round", MAX_ROUND)
    return SealWithdrawal(mandate_id, epoch, round_)


@dataclass(frozen=True, slots=True)
class WithdrawalRecord:
    """A withdrawal record parsed, nothing verified: the withdrawal, its exact text and the
    note's signature lines in order."""

    withdrawal: SealWithdrawal
    text: bytes
    signatures: tuple[NoteSignature, ...]


def parse_withdrawal_record(data: bytes) -> WithdrawalRecord:
    """Split a withdrawal record into text and signature lines, verifying nothing.

    Raises:
        VerificationError: ``OVERSIZED`` beyond :data:`MAX_SEAL_RECORD_BYTES`; ``MALFORMED``
            for a text :func:`parse_withdrawal` refuses or signature lines ``parse_note``
            refuses (more than 100, or longer than :data:`MAX_SIGNATURE_BLOCK_BYTES`).
    """
    if not isinstance(data, bytes):
        raise _malformed("record must be bytes")
    if len(data) > MAX_SEAL_RECORD_BYTES:
        raise VerificationError(
            Reason.OVERSIZED, f"seal record of {len(data)} bytes > {MAX_SEAL_RECORD_BYTES}"
        )
    split = data.rfind(b"\n\n")
    if split < 0:
        raise _malformed("no blank line before the signatures")
    text, block = data[: split + 1], data[split + 2 :]
    withdrawal = parse_withdrawal(text)
    if len(block) > MAX_SIGNATURE_BLOCK_BYTES:
        raise _malformed(f"signature lines longer than {MAX_SIGNATURE_BLOCK_BYTES} bytes")
    note = parse_note(b"\n\n" + block, max_signatures=MAX_SIGNATURES)
    return WithdrawalRecord(withdrawal, text, note.signatures)


def sign_withdrawal(
    withdrawal: SealWithdrawal, key: SigningKey, name: str, *, now_ms: int
) -> bytes:
    """The record an organization publishes to withdraw from a round: the withdrawal text with
    its tlog-cosignature/v1 line by its node key, timed ``now_ms // 1000`` seconds."""
    text = withdrawal.text()
    return Note(text, (cosign(text, key, name, now_ms // 1000),)).encode()


# ---------------------------------------------------------------------------------------------
# Which signatures count


@dataclass(frozen=True, slots=True)
class SealSignature:
    """One organization's verified cosignature line (type 0x04) on a seal text: its vote."""

    org: str
    subject_id: str
    key_id: bytes
    line: bytes


@dataclass(frozen=True, slots=True)
class VerifiedSeal:
    """A seals record with the lines that count under one trust state.

    ``signatures`` holds the first counted cosignature of each organization, in line order;
    ``refused`` every cosignature line by a known key that counted for nothing: (key name,
    reason). Type 0x01 lines are in neither.
    """

    record: SealRecord
    signatures: tuple[SealSignature, ...]
    refused: tuple[tuple[str, Reason], ...]

    @property
    def orgs(self) -> frozenset[str]:
        """Organizations with a counted signature."""
        return frozenset(s.org for s in self.signatures)


class _Keys:
    """The signed-note index of one trust state, and the state itself."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring
        self.notes = NoteKeys(keyring)


def _verify_cosignature(verifier: Verifier, text: bytes, sig: NoteSignature) -> None:
    ts = sig.timestamp
    if ts is None:
        raise VerificationError(Reason.BAD_SIGNATURE, "cosignature has the wrong length")
    crypto.verify(verifier.public_key, cosignature_message(text, ts), sig.body[_TIMESTAMP_BYTES:])


def _standing(keyring: KeyRing, acc: Accreditation, proposal: SealProposal) -> None:
    """Whether a key may count on this seal at all (before its signature is checked)."""
    if keyring.mandate.organization(acc.org) is None:
        raise VerificationError(Reason.WRONG_ORG, f"{acc.org} is not in the mandate")
    keyring.check_usable(acc, role=Role.NODE, at_ms=proposal.time_ms, seq=proposal.epoch)


def node_electorate(keyring: KeyRing, proposal: SealProposal) -> frozenset[str]:
    """The organizations whose node key could count on ``proposal`` under ``keyring`` (its trust
    state): accredited with role NODE by an organization of the mandate, inside the window at
    its *t_e*, not revoked at its epoch (exactly the standing a signature line needs)."""
    orgs: set[str] = set()
    for acc in keyring.accreditations(Role.NODE):
        if acc.org in orgs:
            continue
        try:
            _standing(keyring, acc, proposal)
        except VerificationError:
            continue
        orgs.add(acc.org)
    return frozenset(orgs)


def epoch_electorate(keyring: KeyRing, epoch: int, after_ms: int) -> frozenset[str]:
    """Every organization in the electorate (:func:`node_electorate`) of some text of ``epoch``
    that may become final under ``keyring``: a text whose *t_e* is after ``after_ms``
    (*t_{e-1}*). A node key counts there when it is usable at some time after ``after_ms``."""
    orgs: set[str] = set()
    for acc in keyring.accreditations(Role.NODE):
        if acc.org in orgs or keyring.mandate.organization(acc.org) is None:
            continue
        earliest = max(after_ms + 1, acc.not_before_ms)
        try:
            keyring.check_usable(acc, role=Role.NODE, at_ms=earliest, seq=epoch)
        except VerificationError:
            continue
        orgs.add(acc.org)
    return frozenset(orgs)


def _judge_lines(
    record: SealRecord, keys: _Keys, settled: Callable[[str], bool]
) -> tuple[list[SealSignature], list[tuple[str, Reason]]]:
    """Verify the cosignature lines of a record that can still change something (type 0x01
    lines are no votes and are skipped unverified).

    ``settled(org)`` says that a further signature by that organization needs no check. At
    most one cosignature line per key id is tried, and one counted line per organization is
    returned.
    """
    counted: list[SealSignature] = []
    refused: list[tuple[str, Reason]] = []
    tried: set[bytes] = set()
    done: set[str] = set()
    notes = keys.notes
    for sig in record.signatures:
        verifier = notes.by_name_hash.get((sig.name, sig.key_hash))
        if verifier is None or verifier.sig_type != SIG_COSIGNATURE_V1:
            # A key this trust state does not know is ignored (C2SP signed-note); a proposer's
            # type 0x01 line is no vote, so it is not verified and takes no key's turn.
            continue
        key_id = notes.key_id[(sig.name, sig.key_hash)]
        if key_id in tried:
            continue
        tried.add(key_id)
        acc = notes.accreditation(verifier)
        try:
            _standing(keys.keyring, acc, record.proposal)
        except VerificationError as exc:
            refused.append((sig.name, exc.reason))
            continue
        if acc.org in done or settled(acc.org):
            continue
        try:
            _verify_cosignature(verifier, record.text, sig)
        except VerificationError:
            refused.append((sig.name, Reason.BAD_SIGNATURE))
            continue
        done.add(acc.org)
        counted.append(SealSignature(acc.org, acc.subject_id, acc.key_id, sig.line()))
    return counted, refused


def verify_seal(data: bytes, keyring: KeyRing) -> VerifiedSeal:
    """Parse one seals record and verify its lines under the trust state in force for its epoch.

    Whether the seal is *final* is not decided here (that needs the whole seals topic:
    :class:`SealChain`); this says who cosigned it (a proposer's type 0x01 line is no vote and
    is neither verified nor listed).

    Raises:
        VerificationError: what :func:`parse_seal_record` raises; ``WRONG_MANDATE`` when the
            seal names another mandate than ``keyring``'s.
    """
    record = parse_seal_record(data)
    if record.proposal.mandate_id != keyring.mandate.mandate_id:
        raise VerificationError(
            Reason.WRONG_MANDATE, f"seal for mandate {record.proposal.mandate_id!r}"
        )
    counted, refused = _judge_lines(record, _Keys(keyring), lambda _org: False)
    return VerifiedSeal(record, tuple(counted), tuple(refused))


# ---------------------------------------------------------------------------------------------
# Finality


TrustFor = Callable[[SealProposal], KeyRing | None]
"""The trust state a seal is judged under, or None while the caller cannot tell yet.

Called with a proposal of the open epoch and round. For epoch *e >= 2* it returns the key ring
in force for *e*: the mandate and registry records up to the sizes of the final seal of *e-1*,
the same object for every proposal of that epoch, whatever its round (the chain relies on it to
bound who could still vote on a text not signed yet). Before the first seal no trust record has
taken effect and the mandate alone accredits no node key, so for epoch 1 it returns the trust
the text carries (:func:`carried_trust`, module docstring "Seal 1": a function of the text,
which is why the proposal is passed, not the epoch; the chain then counts every organization of
the mandate as able to vote on a text not signed yet). What it returns for a proposal must
never change afterwards (a later trust record must go into another key ring), or readers that
asked at different moments would count different signatures. Returning None makes the chain
wait on that record (and every record after it) until :meth:`SealChain.resume`.
"""


@dataclass(frozen=True, slots=True)
class Equivocation:
    """One organization's two signatures on different texts of one round of an epoch: evidence.

    ``first`` is the signature that counts (the earlier one in the seals topic), ``second``
    the one that never counts. Each (text, line) pair is a note anyone can verify again
    (:meth:`notes`).
    """

    org: str
    epoch: int
    round: int
    first_text: bytes
    first: SealSignature
    first_offset: int
    second_text: bytes
    second: SealSignature
    second_offset: int

    def notes(self) -> tuple[bytes, bytes]:
        """The two signed notes: each text with its one line."""
        return (
            Note(self.first_text, ()).encode() + self.first.line,
            Note(self.second_text, ()).encode() + self.second.line,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (texts as ASCII strings, lines as UTF-8, key ids in hex)."""
        return {
            "org": self.org,
            "epoch": self.epoch,
            "round": self.round,
            "first": {
                "offset": self.first_offset,
                "text": self.first_text.decode(),
                "line": self.first.line.decode(),
                "key_id": self.first.key_id.hex(),
            },
            "second": {
                "offset": self.second_offset,
                "text": self.second_text.decode(),
                "line": self.second.line.decode(),
                "key_id": self.second.key_id.hex(),
            },
        }


@dataclass(frozen=True, slots=True)
class SealAlarm:
    """Evidence that the seals contradict this reader's history (module docstring, "Forks"),
    or that its final seal 1 carried other node accreditations than its registry held.

    Args:
        reason: ``seal_fork`` or ``seal_carried_trust_mismatch``.
        epoch: the epoch concerned.
        detail: one sentence for humans.
        notes: signed notes anyone can verify again: for a fork, this reader's final seal (its
            text with the lines that made it final here; the text alone after a restart, or
            nothing before seal 1) and the other text with the lines of the organizations that
            signed it; for a carried mismatch, the final text of epoch 1.
        offset: the seals record that completed the evidence.
        signers: the organizations whose lines on the other text count (a fork).
    """

    reason: Reason
    epoch: int
    detail: str
    notes: tuple[bytes, ...]
    offset: int
    signers: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (notes as UTF-8 text)."""
        return {
            "reason": self.reason.value,
            "epoch": self.epoch,
            "detail": self.detail,
            "offset": self.offset,
            "signers": sorted(self.signers),
            "notes": [n.decode() for n in self.notes],
        }


class Disposition(enum.StrEnum):
    """What a :class:`SealChain` made of one record."""

    FINAL = "final"  # its signatures made its text the final seal of its epoch
    COUNTED = "counted"  # it carries at least one organization's vote in the open round
    WITHDRAWN = "withdrawn"  # it withdrew at least one organization's vote in the open round
    UNCOUNTED = "uncounted"  # judged in the open round; no line in it changes anything
    IGNORED = "ignored"  # not for the open round, or for another mandate: not verified
    REFUSED = "refused"  # not a seals record (malformed, oversized, null)


@dataclass(frozen=True, slots=True)
class RoundOpened:
    """Round ``round`` of ``epoch`` opened at the record at ``offset``: with its vote, no text
    of the round before could reach ``threshold`` any more.

    Args:
        epoch: the open epoch.
        round: the round that opened (the dead one is ``round - 1``).
        offset: the seals record whose vote made the round before dead.
        threshold: *k*.
        tallies: the votes of each text of the dead round that could have become final, most
            first.
        void: votes on texts of the dead round that could never become final.
        undecided: organizations of the epoch's electorate that had not voted in it.
        withdrawn: organizations that had withdrawn their vote in it.
    """

    epoch: int
    round: int
    offset: int
    threshold: int
    tallies: tuple[int, ...]
    void: int
    undecided: int
    withdrawn: int = 0

    @property
    def why(self) -> str:
        """Why the round before died, in words."""
        tallies = ", ".join(str(n) for n in self.tallies) or "none"
        withdrawn = f", {self.withdrawn} withdrawn" if self.withdrawn else ""
        return (
            f"no text of round {self.round - 1} can reach k = {self.threshold}: votes per text"
            f" {tallies}, {self.void} on texts that can never be final, {self.undecided}"
            f" organizations yet to vote{withdrawn}"
        )


@dataclass(frozen=True, slots=True)
class RecordVerdict:
    """The verdict on one seals record.

    Args:
        offset: the record's offset on the seals topic.
        disposition: see :class:`Disposition`.
        reason: why it was ignored or refused; for a judged record, why its text can never be
            final (``seal_wrong_prev``, ``seal_time_not_increasing``, ``seal_size_shrinks``).
        proposal: the parsed seal (None when refused); a witness judges it with
            :func:`decide_cosign` when its epoch and round are the open ones.
        digest: the seal text's digest.
        counted: organizations whose vote in the open round this record carries.
        refused_lines: (key name, reason) of each line by a known key that counted for
            nothing; ``seal_equivocation`` for an organization's signature on a second text of
            the round.
        final: the final seal it made, if any.
        equivocations: evidence this record completed.
        opened: the round its votes (or withdrawals) opened, when they made the open round
            dead.
        withdrawal: the withdrawal, for a withdrawal record (``proposal`` is None then).
        withdrawn: organizations whose vote in the open round this record withdrew.
        alarm: the fork evidence this record completed (module docstring, "Forks").
    """

    offset: int
    disposition: Disposition
    reason: Reason | None = None
    proposal: SealProposal | None = None
    digest: bytes | None = None
    counted: tuple[str, ...] = ()
    refused_lines: tuple[tuple[str, Reason], ...] = ()
    final: FinalSeal | None = None
    equivocations: tuple[Equivocation, ...] = ()
    opened: RoundOpened | None = None
    withdrawal: SealWithdrawal | None = None
    withdrawn: tuple[str, ...] = ()
    alarm: SealAlarm | None = None

    @property
    def epoch(self) -> int | None:
        """The epoch the record names (None when refused)."""
        named = self.proposal or self.withdrawal
        return None if named is None else named.epoch

    @property
    def round(self) -> int | None:
        """The round the record names (None when refused)."""
        named = self.proposal or self.withdrawal
        return None if named is None else named.round


@dataclass(frozen=True, slots=True)
class ChainUpdate:
    """The verdicts on the records an :meth:`SealChain.offer` or ``resume`` judged, in order."""

    verdicts: tuple[RecordVerdict, ...] = ()

    @property
    def finals(self) -> tuple[FinalSeal, ...]:
        """Seals that became final, in epoch order."""
        return tuple(v.final for v in self.verdicts if v.final is not None)

    @property
    def equivocations(self) -> tuple[Equivocation, ...]:
        """Equivocation evidence found."""
        return tuple(e for v in self.verdicts for e in v.equivocations)

    @property
    def rounds_opened(self) -> tuple[RoundOpened, ...]:
        """Rounds that opened, in order."""
        return tuple(v.opened for v in self.verdicts if v.opened is not None)

    @property
    def alarms(self) -> tuple[SealAlarm, ...]:
        """Fork evidence found, in order."""
        return tuple(v.alarm for v in self.verdicts if v.alarm is not None)


@dataclass
class _Candidate:
    """A text of the open round that is some organization's vote."""

    record: SealRecord
    problem: Reason | None  # why it can never be final (None: it can)
    electorate: frozenset[str]  # organizations whose signature could count on it
    threshold: int  # k of its trust state
    votes: dict[str, SealSignature] = field(default_factory=dict)


@dataclass
class _OpenRound:
    """Votes in the open round of the open epoch. Texts are kept only when they are someone's
    vote, so at most one per organization of the mandate."""

    epoch: int
    round: int
    candidates: dict[bytes, _Candidate] = field(default_factory=dict)
    # organization -> (digest of the text of its vote, offset, signature)
    votes: dict[str, tuple[bytes, int, SealSignature]] = field(default_factory=dict)
    equivocated: set[str] = field(default_factory=set)
    # organization -> offset of its counted withdrawal (its vote stays in ``votes``: it has
    # voted in the round, for no text)
    withdrawn: dict[str, int] = field(default_factory=dict)


@dataclass
class _Watched:
    """Another text of the newest final epoch, with the votes verified on it (fork watch)."""

    record: SealRecord
    votes: dict[str, SealSignature] = field(default_factory=dict)


_NOT_FOLLOWING: Final = "does not follow"
_ANOTHER: Final = "is another than"
_MAX_WATCHED_PER_ORG: Final = 8
"""Texts of the newest final epoch one organization's lines are verified on (fork watch)."""


def _note(text: bytes, lines: Iterable[bytes]) -> bytes:
    return Note(text, ()).encode() + b"".join(lines)


def _final_text(latest: FinalSeal | None) -> dict[bytes, SealProposal]:
    """The newest final seal's text by digest (a cosignature record of it is not parsed)."""
    return {} if latest is None else {latest.digest: SealProposal.of_final(latest)}


class _TrustUnknownError(Exception):
    """The open epoch's trust state is not available yet (control flow inside the chain)."""


class SealChain:
    """Final seals derived from the seals topic alone (see the module docstring, "Finality").

    Feed :meth:`offer` every record of the seals topic in offset order; each call returns the
    verdicts on the records it could judge, with the seals that became final, the rounds that
    opened and the equivocations found. Holds only the newest final seal and the open round's
    votes: the caller keeps the final seals it is handed.

    Args:
        mandate_id: the mandate of the bus; seals naming another are ignored.
        trust: the trust state of each proposal (:data:`TrustFor`).
        latest: to continue after a restart, the newest final seal the caller kept (its
            ``offset`` set); then feed records from :attr:`next_offset`. The open epoch's
            rounds and votes are rebuilt from the records after the one that made ``latest``
            final, so the chain continues exactly as if it had read everything.
    """

    def __init__(
        self, mandate_id: str, trust: TrustFor, *, latest: FinalSeal | None = None
    ) -> None:
        if latest is not None and (
            latest.offset < 0
            or latest.mandate_id != mandate_id
            or SealProposal.of_final(latest).digest != latest.digest
        ):
            raise ValueError("latest must be a final seal of this mandate, its digest, its offset")
        self.mandate_id = mandate_id
        self._trust = trust
        self._latest = latest
        self._open = _OpenRound(1 if latest is None else latest.epoch + 1, 1)
        self._last_offset = -1 if latest is None else latest.offset
        self._queue: deque[tuple[int, bytes | None]] = deque()
        self._keys: tuple[KeyRing, _Keys] | None = None
        # Texts parsed already, by digest: the newest final seal's and the open round's votes.
        self._parsed = _final_text(latest)
        self.equivocations: list[Equivocation] = []
        """Every equivocation found, in topic order."""
        self.alarms: list[SealAlarm] = []
        """Every fork found, in topic order (module docstring, "Forks")."""
        # The fork watch: the lines and trust state that made the newest final seal final
        # (unknown after a restart until the next one), and the other texts of its epoch.
        self._final_lines: tuple[bytes, ...] = ()
        self._final_keys: _Keys | None = None
        self._watch: dict[bytes, _Watched] = {}
        self._forked: set[bytes] = set()
        self.counts: Counter[str] = Counter()
        """Records by disposition, and by reason for those with one."""

    # -- reads -------------------------------------------------------------------------------

    @property
    def latest(self) -> FinalSeal | None:
        """The newest final seal (None before the first)."""
        return self._latest

    @property
    def open_epoch(self) -> int:
        """The epoch whose votes are being counted."""
        return self._open.epoch

    @property
    def open_round(self) -> int:
        """The round of the open epoch whose votes are being counted."""
        return self._open.round

    @property
    def next_offset(self) -> int:
        """The offset after the last record offered."""
        return self._last_offset + 1

    @property
    def waiting(self) -> bool:
        """True while a record waits for its trust state (call :meth:`resume` once known)."""
        return bool(self._queue)

    @property
    def queued(self) -> int:
        """Records offered and waiting for their trust state (the caller bounds how many it
        offers while they wait: each is held until then)."""
        return len(self._queue)

    def votes(self) -> Mapping[str, bytes]:
        """Each organization's vote in the open round: the digest of the text it signed first,
        withdrawn or not.

        A witness reads its own organization's here: a vote it cast before a restart counts,
        and it must not sign another text in the same round.
        """
        return {org: digest for org, (digest, _, _) in self._open.votes.items()}

    def withdrawn(self) -> frozenset[str]:
        """Organizations that withdrew their vote in the open round."""
        return frozenset(self._open.withdrawn)

    # -- feeding -----------------------------------------------------------------------------

    def offer(self, offset: int, value: bytes | None) -> ChainUpdate:
        """Judge the next record of the seals topic (offsets strictly increasing; gaps allowed).

        Raises:
            ValueError: ``offset`` is not after the previous one.
        """
        if offset <= self._last_offset:
            raise ValueError(f"offset {offset} is not after {self._last_offset}")
        self._last_offset = offset
        self._queue.append((offset, value))
        return self.resume()

    def resume(self) -> ChainUpdate:
        """Judge the records that waited for a trust state, as far as trust is known now."""
        verdicts: list[RecordVerdict] = []
        while self._queue:
            offset, value = self._queue[0]
            try:
                verdict = self._judge(offset, value)
            except _TrustUnknownError:
                break
            self._queue.popleft()
            self.counts[verdict.disposition.value] += 1
            if verdict.reason is not None:
                self.counts[verdict.reason.value] += 1
            verdicts.append(verdict)
        return ChainUpdate(tuple(verdicts))

    # -- judging -----------------------------------------------------------------------------

    def _keys_for(self, record: SealRecord) -> _Keys:
        keyring = self._trust(record.proposal)
        if keyring is None:
            raise _TrustUnknownError
        if keyring.mandate.mandate_id != self.mandate_id:
            raise ValueError("the trust state is of another mandate")
        cached = self._keys
        if cached is None or cached[0] is not keyring or cached[1].notes.stale():
            cached = self._keys = (keyring, _Keys(keyring))
        return cached[1]

    def _judge(self, offset: int, value: bytes | None) -> RecordVerdict:
        if value is None:
            return RecordVerdict(offset, Disposition.REFUSED, Reason.MALFORMED)
        if value.startswith(_WITHDRAW_PREFIX_BYTES):
            return self._judge_withdrawal(offset, value)
        try:
            record = parse_seal_record(value, known=self._parsed)
        except VerificationError as exc:
            return RecordVerdict(offset, Disposition.REFUSED, exc.reason)
        p = record.proposal
        if p.mandate_id != self.mandate_id:
            return RecordVerdict(
                offset, Disposition.IGNORED, Reason.WRONG_MANDATE, p, record.digest
            )
        open_ = self._open
        if p.epoch != open_.epoch:
            reason = Reason.SEAL_EPOCH_FINAL if p.epoch < open_.epoch else Reason.SEAL_EPOCH_AHEAD
            watched = self._watch_final(offset, record)
            return RecordVerdict(
                offset, Disposition.IGNORED, reason, p, record.digest, alarm=watched
            )
        if p.round != open_.round:
            reason = Reason.SEAL_ROUND_CLOSED if p.round < open_.round else Reason.SEAL_ROUND_AHEAD
            watched = self._watch_other_round(offset, record)
            return RecordVerdict(
                offset, Disposition.IGNORED, reason, p, record.digest, alarm=watched
            )
        keys = self._keys_for(record)  # may wait: nothing changed yet

        def settled(org: str) -> bool:
            vote = open_.votes.get(org)
            return org in open_.equivocated or (vote is not None and vote[0] == record.digest)

        signatures, refused = _judge_lines(record, keys, settled)
        candidate = open_.candidates.get(record.digest)
        problem = _successor_problem(p, self._latest) if candidate is None else candidate.problem
        counted: list[str] = []
        evidence: list[Equivocation] = []
        for sig in signatures:
            vote = open_.votes.get(sig.org)
            if vote is not None:  # settled() let it through: a signature on another text
                first_digest, first_offset, first_sig = vote
                evidence.append(
                    Equivocation(
                        sig.org,
                        p.epoch,
                        p.round,
                        open_.candidates[first_digest].record.text,
                        first_sig,
                        first_offset,
                        record.text,
                        sig,
                        offset,
                    )
                )
                open_.equivocated.add(sig.org)
                refused.append((key_name(sig.org, sig.subject_id), Reason.SEAL_EQUIVOCATION))
                continue
            if candidate is None:
                candidate = open_.candidates[record.digest] = _Candidate(
                    record,
                    problem,
                    node_electorate(keys.keyring, p),
                    keys.keyring.mandate.threshold,
                )
                self._parsed[record.digest] = p
            open_.votes[sig.org] = (record.digest, offset, sig)
            candidate.votes[sig.org] = sig
            counted.append(sig.org)
        self.equivocations.extend(evidence)
        final: FinalSeal | None = None
        opened: RoundOpened | None = None
        alarm: SealAlarm | None = None
        if problem is Reason.SEAL_WRONG_PREV and signatures:
            alarm = self._watch_add(
                offset, record, signatures, keys.keyring.mandate.threshold, _NOT_FOLLOWING
            )
        if (
            candidate is not None
            and problem is None
            and counted
            and len(candidate.votes) >= candidate.threshold
        ):
            final = p.final(digest=record.digest, signers=candidate.votes, offset=offset)
            self._latest = final
            self._final_lines = tuple(v.line for v in candidate.votes.values())
            self._final_keys = keys
            # The other texts of the epoch now final: those watched already (named another
            # prev) and the round's other candidates, with their votes.
            watch = {d: w for d, w in self._watch.items() if w.record.proposal.epoch == p.epoch}
            for d, c in open_.candidates.items():
                if d != record.digest:
                    watch.setdefault(d, _Watched(c.record)).votes.update(c.votes)
            self._watch = watch
            self._open = _OpenRound(p.epoch + 1, 1)
            self._parsed = {record.digest: p}
        elif counted:
            opened = self._dead(open_, keys.keyring, offset)
            if opened is not None:
                self._open = _OpenRound(p.epoch, opened.round)
                self._parsed = _final_text(self._latest)
        if final is not None:
            disposition = Disposition.FINAL
        elif counted:
            disposition = Disposition.COUNTED
        else:
            disposition = Disposition.UNCOUNTED
        return RecordVerdict(
            offset,
            disposition,
            problem,
            p,
            record.digest,
            tuple(counted),
            tuple(refused),
            final,
            tuple(evidence),
            opened,
            alarm=alarm,
        )

    def _watch_add(
        self, offset: int, record: SealRecord, signatures: Iterable[SealSignature], k: int, how: str
    ) -> SealAlarm | None:
        """Add verified lines to a watched text's votes (module docstring, "Forks"); k of them
        make a fork."""
        if record.digest in self._forked:
            return None
        watched = self._watch.get(record.digest)
        per_org = Counter(org for w in self._watch.values() for org in w.votes)
        for sig in signatures:
            if watched is not None and sig.org in watched.votes:
                continue
            if per_org[sig.org] >= _MAX_WATCHED_PER_ORG:
                continue
            if watched is None:
                watched = self._watch[record.digest] = _Watched(record)
            watched.votes[sig.org] = sig
            per_org[sig.org] += 1
        if watched is None or len(watched.votes) < k:
            return None
        return self._fork(offset, record, watched.votes, how)

    def _watched_lines(self, record: SealRecord, keys: _Keys) -> list[SealSignature]:
        """The lines of ``record`` that could still add to the watch, verified (bounded like
        any record's: one try per key id, none for an organization already counted on it or
        at its cap)."""
        watched = self._watch.get(record.digest)
        per_org = Counter(org for w in self._watch.values() for org in w.votes)

        def settled(org: str) -> bool:
            on_it = watched is not None and org in watched.votes
            return on_it or per_org[org] >= _MAX_WATCHED_PER_ORG

        signatures, _ = _judge_lines(record, keys, settled)
        return signatures

    def _watch_other_round(self, offset: int, record: SealRecord) -> SealAlarm | None:
        """A text of another round of the open epoch that names another prev than this
        reader's final seal: its votes go to the watch when its trust state is at hand (never
        waited on: the record is ignored for finality)."""
        p = record.proposal
        if record.digest in self._forked or _successor_problem(p, self._latest) not in (
            Reason.SEAL_WRONG_PREV,
        ):
            return None
        try:
            keys = self._keys_for(record)
        except _TrustUnknownError:
            return None
        k = keys.keyring.mandate.threshold
        return self._watch_add(offset, record, self._watched_lines(record, keys), k, _NOT_FOLLOWING)

    def _fork(
        self, offset: int, record: SealRecord, votes: Mapping[str, SealSignature], how: str
    ) -> SealAlarm | None:
        """Fork evidence for ``record``'s text, once per text."""
        if record.digest in self._forked:
            return None
        self._forked.add(record.digest)
        latest = self._latest
        ours = (
            ()
            if latest is None
            else (_note(SealProposal.of_final(latest).text(), self._final_lines),)
        )
        mine = "none" if latest is None else f"epoch {latest.epoch}'s"
        alarm = SealAlarm(
            Reason.SEAL_FORK,
            record.proposal.epoch,
            f"{', '.join(sorted(votes))} signed a text of epoch {record.proposal.epoch} (round"
            f" {record.proposal.round}) that {how} this reader's final seal ({mine}): two"
            " histories of the bus exist",
            (*ours, _note(record.text, (v.line for v in votes.values()))),
            offset,
            frozenset(votes),
        )
        self.alarms.append(alarm)
        return alarm

    def _watch_final(self, offset: int, record: SealRecord) -> SealAlarm | None:
        """Count the votes on another text of the newest final epoch (module docstring,
        "Forks"): k of them make it a second final-looking text."""
        latest, keys = self._latest, self._final_keys
        if (
            latest is None
            or keys is None
            or record.proposal.epoch != latest.epoch
            or record.digest == latest.digest
            or record.digest in self._forked
        ):
            return None
        k = keys.keyring.mandate.threshold
        return self._watch_add(offset, record, self._watched_lines(record, keys), k, _ANOTHER)

    def _judge_withdrawal(self, offset: int, value: bytes) -> RecordVerdict:
        """A withdrawal record (module docstring, "Withdrawals"). Its lines are judged under
        the trust state of the text each organization voted for, by the standing rule of votes
        on that text; a line of an organization with no live vote in the round is not
        verified."""
        try:
            record = parse_withdrawal_record(value)
        except VerificationError as exc:
            return RecordVerdict(offset, Disposition.REFUSED, exc.reason)
        w = record.withdrawal
        if w.mandate_id != self.mandate_id:
            return RecordVerdict(offset, Disposition.IGNORED, Reason.WRONG_MANDATE, withdrawal=w)
        open_ = self._open
        if w.epoch != open_.epoch:
            reason = Reason.SEAL_EPOCH_FINAL if w.epoch < open_.epoch else Reason.SEAL_EPOCH_AHEAD
            return RecordVerdict(offset, Disposition.IGNORED, reason, withdrawal=w)
        if w.round != open_.round:
            reason = Reason.SEAL_ROUND_CLOSED if w.round < open_.round else Reason.SEAL_ROUND_AHEAD
            return RecordVerdict(offset, Disposition.IGNORED, reason, withdrawal=w)
        withdrawn: list[str] = []
        refused: list[tuple[str, Reason]] = []
        tried: set[bytes] = set()
        keyring: KeyRing | None = None
        for sig in record.signatures:
            m = _KEY_NAME_RE.fullmatch(sig.name)
            if m is None:
                continue  # no obus node key is named so: a key nobody here knows
            org = m["org"]
            vote = open_.votes.get(org)
            if vote is None:
                refused.append((sig.name, Reason.SEAL_WITHDRAW_NO_VOTE))
                continue
            if org in open_.withdrawn or org in withdrawn:
                continue  # withdrawn already: nothing left to change
            candidate = open_.candidates[vote[0]]
            keys = self._keys_for(candidate.record)  # known: it counted the vote
            verifier = keys.notes.by_name_hash.get((sig.name, sig.key_hash))
            if verifier is None or verifier.sig_type != SIG_COSIGNATURE_V1:
                continue
            key_id = keys.notes.key_id[(sig.name, sig.key_hash)]
            if key_id in tried:
                continue
            tried.add(key_id)
            acc = keys.notes.accreditation(verifier)
            if acc.org != org:
                continue
            try:
                _standing(keys.keyring, acc, candidate.record.proposal)
                _verify_cosignature(verifier, record.text, sig)
            except VerificationError as exc:
                refused.append((sig.name, exc.reason))
                continue
            withdrawn.append(org)
            keyring = keys.keyring
        for org in withdrawn:
            open_.candidates[open_.votes[org][0]].votes.pop(org, None)
            open_.withdrawn[org] = offset
        opened: RoundOpened | None = None
        if keyring is not None:
            opened = self._dead(open_, keyring, offset)
            if opened is not None:
                self._open = _OpenRound(open_.epoch, opened.round)
                self._parsed = _final_text(self._latest)
        no_vote = not withdrawn and any(r is Reason.SEAL_WITHDRAW_NO_VOTE for _, r in refused)
        return RecordVerdict(
            offset,
            Disposition.WITHDRAWN if withdrawn else Disposition.UNCOUNTED,
            Reason.SEAL_WITHDRAW_NO_VOTE if no_vote else None,
            refused_lines=tuple(refused),
            opened=opened,
            withdrawal=w,
            withdrawn=tuple(withdrawn),
        )

    def _dead(self, open_: _OpenRound, keyring: KeyRing, offset: int) -> RoundOpened | None:
        """The next round, when no text of the open round can reach k any more (module
        docstring, "Finality"); None while one still can. ``keyring`` is the trust state of
        the record just counted."""
        if open_.round == MAX_ROUND:
            return None
        voted = open_.votes.keys()
        tallies: list[int] = []
        void = 0
        for c in open_.candidates.values():
            if c.problem is not None:
                void += len(c.votes)
            elif len(c.votes) + len(c.electorate.difference(voted)) >= c.threshold:
                return None
            else:
                tallies.append(len(c.votes))
        latest = self._latest
        if latest is None:
            # Epoch 1: each text's trust state may be its own (TrustFor), so a text not signed
            # yet could be counted under node keys of any organization of the mandate.
            electorate = frozenset(o.org for o in keyring.mandate.organizations)
        else:
            electorate = epoch_electorate(keyring, open_.epoch, latest.time_ms)
        undecided = len(electorate.difference(voted))
        threshold = keyring.mandate.threshold
        if undecided >= threshold:
            return None
        return RoundOpened(
            open_.epoch,
            open_.round + 1,
            offset,
            threshold,
            tuple(sorted(tallies, reverse=True)),
            void,
            undecided,
            len(open_.withdrawn),
        )


# ---------------------------------------------------------------------------------------------
# The witness and the proposer


class LogView(Protocol):
    """What a witness or proposer has read of the bus, as :func:`decide_cosign` needs it."""

    def covers(self, topic: str) -> bool:
        """Whether seals cover this topic (a topic of the bus)."""
        ...

    def refs(self) -> Iterable[PartitionRef]:
        """Every partition read so far."""
        ...

    def size(self, ref: PartitionRef) -> int:
        """Records of ``ref`` read and hashed, in offset order from offset 0."""
        ...

    def root_at(self, ref: PartitionRef, size: int) -> bytes:
        """The RFC 6962 root of the first ``size`` records read (``size <= self.size(ref)``)."""
        ...

    def log_end(self, ref: PartitionRef) -> int | None:
        """Records the partition holds, as far as known (None: unknown)."""
        ...


@dataclass(frozen=True)
class TreeView:
    """A :class:`LogView` over per-partition Merkle trees (as a reader that keeps every
    partition's tree holds them).

    Args:
        trees: each partition's tree of the values read (trees must store their leaves).
        covers_topic: whether a topic is a bus topic.
        ends: each partition's end offset where known (from the broker).
    """

    trees: Mapping[PartitionRef, MerkleTree]
    covers_topic: Callable[[str], bool]
    ends: Mapping[PartitionRef, int] = field(default_factory=dict)

    def covers(self, topic: str) -> bool:
        """Whether seals cover this topic."""
        return self.covers_topic(topic)

    def refs(self) -> Iterable[PartitionRef]:
        """Every partition with a tree."""
        return self.trees.keys()

    def size(self, ref: PartitionRef) -> int:
        """The tree's size (0 without a tree)."""
        tree = self.trees.get(ref)
        return 0 if tree is None else tree.size

    def root_at(self, ref: PartitionRef, size: int) -> bytes:
        """The tree's root at ``size``."""
        tree = self.trees.get(ref)
        return EMPTY_ROOT if tree is None or size == 0 else tree.root_at(size)

    def log_end(self, ref: PartitionRef) -> int | None:
        """The known end offset, if any."""
        return self.ends.get(ref)


class Cosign(enum.StrEnum):
    """What a witness does with a proposal."""

    COSIGN = "cosign"  # publish a cosignature (:func:`cosign_seal`) and remember the vote
    ALREADY = "already"  # this organization already voted for this very text: nothing to do
    WAIT = "wait"  # not judgeable yet (read further, or its epoch or round is not open here)
    REFUSE = "refuse"  # never cosign this text; ``reason`` says why


@dataclass(frozen=True, slots=True)
class CosignDecision:
    """A witness's decision on one proposal; ``ref`` names the partition it turned on."""

    verdict: Cosign
    reason: Reason | None = None
    detail: str = ""
    ref: PartitionRef | None = None


def _refuse(reason: Reason, detail: str, ref: PartitionRef | None = None) -> CosignDecision:
    return CosignDecision(Cosign.REFUSE, reason, detail, ref)


def decide_cosign(
    proposal: SealProposal,
    view: LogView,
    previous: FinalSeal | None,
    *,
    mandate_id: str,
    now_ms: int,
    tolerance_ms: int,
    voted: Mapping[tuple[int, int], bytes],
    open_round: int,
    carried: Callable[[SealProposal], Sequence[bytes]] | None = None,
) -> CosignDecision:
    """Whether a witness cosigns a proposal (the rule of the module docstring).

    Args:
        proposal: a seal read on the seals topic (its signatures already counted or not).
        view: what this witness has read of the bus.
        previous: its newest final seal (None before the first).
        mandate_id: the mandate it serves.
        now_ms: its clock.
        tolerance_ms: how far *t_e* may be from ``now_ms``, either way.
        voted: (epoch, round) -> digest of the text this witness's organization already
            signed in that round (:meth:`SealChain.votes` for the open round, plus what it
            signed and has not read back yet).
        open_round: the round of the open epoch open at this witness
            (:attr:`SealChain.open_round`).
        carried: for an epoch-1 proposal, the node accreditations this witness computes from
            the registry prefix the proposal seals (:func:`node_accreditations`); called only
            once the witness has read every sealed partition up to its size. None: it expects
            none (a log whose registry accredits no node key).

    Returns:
        COSIGN, ALREADY, WAIT, or REFUSE with a reason: ``WRONG_MANDATE``,
        ``SEAL_EPOCH_FINAL``, ``SEAL_ROUND_CLOSED``, ``SEAL_ALREADY_COSIGNED``,
        ``SEAL_WRONG_PREV``,
        ``SEAL_TIME_NOT_INCREASING``, ``SEAL_SIZE_SHRINKS``, ``SEAL_TIME_OUT_OF_TOLERANCE``,
        ``SEAL_UNKNOWN_PARTITION``, ``SEAL_BEYOND_LOG``, ``SEAL_ROOT_MISMATCH`` (its own log
        differs at a sealed size: a split view), ``SEAL_FINAL_MISMATCH`` (its own log differs
        from the previous final seal), ``SEAL_CARRIED_TRUST_MISMATCH`` (an epoch-1 text that
        carries other node accreditations than its sealed registry prefix holds).
    """
    if proposal.mandate_id != mandate_id:
        return _refuse(Reason.WRONG_MANDATE, f"seal for mandate {proposal.mandate_id!r}")
    open_epoch = 1 if previous is None else previous.epoch + 1
    if proposal.epoch < open_epoch:
        return _refuse(Reason.SEAL_EPOCH_FINAL, f"epoch {proposal.epoch} is final")
    if proposal.epoch > open_epoch:
        return CosignDecision(Cosign.WAIT, detail=f"epoch {proposal.epoch - 1} not final here")
    if proposal.round < open_round:
        return _refuse(
            Reason.SEAL_ROUND_CLOSED, f"round {proposal.round} of epoch {open_epoch} is dead"
        )
    if proposal.round > open_round:
        return CosignDecision(Cosign.WAIT, detail=f"round {proposal.round} not open here")
    digest = proposal.digest
    mine = voted.get((proposal.epoch, proposal.round))
    if mine is not None:
        if mine == digest:
            return CosignDecision(Cosign.ALREADY)
        return _refuse(
            Reason.SEAL_ALREADY_COSIGNED,
            f"voted for another text in round {open_round} of epoch {open_epoch}",
        )
    try:
        check_successor(proposal, previous)
    except VerificationError as exc:
        return _refuse(exc.reason, exc.message)
    if abs(proposal.time_ms - now_ms) > tolerance_ms:
        return _refuse(
            Reason.SEAL_TIME_OUT_OF_TOLERANCE,
            f"t_e {proposal.time_ms} is {proposal.time_ms - now_ms} ms from this clock",
        )
    behind: PartitionRef | None = None
    for ref, sealed in proposal.partitions.items():
        if not view.covers(ref[0]):
            return _refuse(Reason.SEAL_UNKNOWN_PARTITION, f"{ref[0]} is not a bus topic", ref)
        if sealed.size > view.size(ref):
            end = view.log_end(ref)
            if end is not None and sealed.size > end:
                return _refuse(
                    Reason.SEAL_BEYOND_LOG, f"{sealed.size} records sealed, {end} in the log", ref
                )
            behind = behind or ref
        elif view.root_at(ref, sealed.size) != sealed.root:
            return _refuse(Reason.SEAL_ROOT_MISMATCH, f"another root at size {sealed.size}", ref)
    if previous is not None:
        for ref, sealed in previous.partitions.items():
            if sealed.size > view.size(ref):
                behind = behind or ref
            elif view.root_at(ref, sealed.size) != sealed.root:
                return _refuse(
                    Reason.SEAL_FINAL_MISMATCH,
                    f"own root at size {sealed.size} differs from final seal {previous.epoch}'s",
                    ref,
                )
    if behind is not None:
        return CosignDecision(Cosign.WAIT, detail="not read up to the sealed size", ref=behind)
    if proposal.epoch == 1:
        expected = tuple(sorted(set(carried(proposal) if carried else ()), key=_b64))
        if proposal.carried != expected:
            return _refuse(
                Reason.SEAL_CARRIED_TRUST_MISMATCH,
                f"carries {len(proposal.carried)} node accreditations, the sealed registry"
                f" gives {len(expected)}, {len(set(expected) - set(proposal.carried))} of them"
                " missing",
            )
    return CosignDecision(Cosign.COSIGN)


def make_proposal(
    view: LogView,
    previous: FinalSeal | None,
    *,
    mandate_id: str,
    now_ms: int,
    open_round: int = 1,
    carried: Sequence[bytes] = (),
) -> SealProposal | None:
    """The seal a proposer publishes now, in ``open_round`` of the epoch after ``previous``:
    every covered partition it has read, at its size; for epoch 1, ``carried``: the node
    accreditations of the registry it seals (:func:`node_accreditations`).

    Returns:
        The proposal (sign it with :func:`sign_proposal`), or None while the proposer has not
        read every partition up to the previous final seal's sizes.

    Raises:
        VerificationError: ``SEAL_TIME_NOT_INCREASING`` when ``now_ms`` is not after *t_{e-1}*;
            ``SEAL_FINAL_MISMATCH`` when its own log differs from the previous final seal's;
            ``INVALID_FIELD`` beyond :data:`MAX_SEAL_PARTITIONS` partitions.
    """
    if previous is not None:
        if any(view.size(ref) < s.size for ref, s in previous.partitions.items()):
            return None
        if now_ms <= previous.time_ms:
            raise VerificationError(
                Reason.SEAL_TIME_NOT_INCREASING, f"now {now_ms} is not after {previous.time_ms}"
            )
    partitions: dict[PartitionRef, PartitionSeal] = {}
    for ref in view.refs():
        size = view.size(ref)
        if size > 0 and view.covers(ref[0]):
            partitions[ref] = PartitionSeal(size, view.root_at(ref, size))
    proposal = SealProposal(
        mandate_id,
        1 if previous is None else previous.epoch + 1,
        now_ms,
        GENESIS_DIGEST if previous is None else previous.digest,
        partitions,
        open_round,
        tuple(carried) if previous is None else (),
    )
    decision = decide_cosign(
        proposal,
        view,
        previous,
        mandate_id=mandate_id,
        now_ms=now_ms,
        tolerance_ms=0,
        voted={},
        open_round=open_round,
        carried=lambda p: p.carried,
    )
    if decision.verdict is not Cosign.COSIGN:
        raise VerificationError(
            decision.reason or Reason.INVALID_FIELD, decision.detail, ref=decision.ref
        )
    return proposal
