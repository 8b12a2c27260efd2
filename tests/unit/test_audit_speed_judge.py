"""The auditor's faster paths keep the verdicts: the final judge's compact per-report state (a
report id held by one chain or several, a shared amendment state, the chain rule's quick
check), the export reader's JSON and base64 shortcuts, the verdict table's observation day.

Every shortcut is compared with the code it stands for, on the inputs where they could part.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest

from bus.crypto import sign_single
from bus.errors import Reason, VerificationError
from bus.export import _loads, _unb64_field
from bus.judge import FinalJudge
from bus.model import PAYLOAD_REPORT, Revocation, encode
from bus.sign import sign_revocation
from nodes.auditor.sealed import _day
from tests.mission import NOW_MS, make_mission
from tests.sealed_log import TOPICS
from tests.unit.test_corrections import Bus


def _revoke(bus: Bus, i: int) -> None:
    _, key = bus.m.observer("un", i)
    rev = Revocation("un", key.key_id, 0, NOW_MS, "lost", 7, bus.m.mandate_id)
    bus.log.put(TOPICS.registry, sign_revocation(rev, bus.m.scenario.org_roots["un"]).encode())


def test_a_report_id_held_by_two_chains_then_one_then_none(tmp_path: Path) -> None:
    """Two observers of one organization accept a report of the same id (ids are scoped to
    the observer); a correction naming it by another observer (a fresh one each time: a
    refused report breaks its chain) is amend_other_observer while any chain holds it, and
    amend_target_missing once revocations withdrew both."""
    bus = Bus(tmp_path, make_mission(observers_per_org=5))
    a, a_id = bus.report("un", 1)
    b, _ = bus.report("un", 2, report_id=a_id)
    c1, _ = bus.report("un", 3, corrects=a_id)  # both chains hold a_id
    bus.log.seal()
    _revoke(bus, 1)  # takes effect at the next epoch: obs-1's chain is cut
    bus.log.seal()
    c2, _ = bus.report("un", 4, corrects=a_id)  # obs-2's chain alone holds it
    bus.log.seal()
    _revoke(bus, 2)
    bus.log.seal()
    c3, _ = bus.report("un", 5, corrects=a_id)  # no chain holds it any more
    bus.log.seal()
    judge, out = bus.log.judge()
    says = {v.pos: v.reason or v.status.value for ev in out for v in ev.verdicts}
    assert (says[a], says[b]) == ("accepted", "accepted")
    other = Reason.AMEND_OTHER_OBSERVER.value
    assert (says[c1], says[c2], says[c3]) == (other, other, Reason.AMEND_TARGET_MISSING.value)
    assert sorted(c.pos for ev in out for c in ev.changes) == sorted([a, b])
    restored = FinalJudge.restore(judge.snapshot(), bus.log.root, TOPICS)
    assert restored.digest == judge.digest
    assert restored.snapshot() == judge.snapshot()


def test_plain_reports_share_a_state_and_amendments_replace_their_targets(
    tmp_path: Path,
) -> None:
    """A correction of one plain report leaves the others of its chain the latest version:
    correcting another one is accepted, correcting the corrected one again is superseded."""
    bus = Bus(tmp_path)
    a, a_id = bus.report()
    b, b_id = bus.report()
    ca, _ = bus.report(corrects=a_id)
    cb, _ = bus.report(corrects=b_id)
    again, _ = bus.report(corrects=a_id)
    says, _ = bus.final()
    assert says == {
        a: "accepted",
        b: "accepted",
        ca: "accepted",
        cb: "accepted",
        again: Reason.AMEND_SUPERSEDED.value,
    }


def test_a_chain_gap_and_fork_keep_their_reasons(tmp_path: Path) -> None:
    """The chain rule's quick check hands every report that does not follow its head to
    check_link: seq 1 again and a wrong prev_digest are forks, a seq beyond the next and a
    first report at seq 2 are gaps."""
    bus = Bus(tmp_path)

    def signed(i: int, seq: int, prev: bytes) -> bytes:
        draft = bus.m.draft("un", i, seq=seq, prev_digest=prev)
        return sign_single(PAYLOAD_REPORT, encode(draft), bus.m.observer("un", i)[1]).encode()

    first, _ = bus.report("un", 1)
    again = bus.put(signed(1, 1, b""))
    wrong = bus.put(signed(1, 2, b"\x01" * 32))
    ahead = bus.put(signed(1, 5, b"\x01" * 32))
    lonely = bus.put(signed(2, 2, b"\x01" * 32))
    says, _ = bus.final()
    assert says[first] == "accepted"
    assert (says[again], says[wrong]) == (Reason.CHAIN_FORK.value, Reason.CHAIN_FORK.value)
    assert (says[ahead], says[lonely]) == (Reason.CHAIN_GAP.value, Reason.CHAIN_GAP.value)


_LINES = [
    b'{"a":1}\n',
    b'{"a":1}  \t\r\n',
    b'{"a":1} x\n',
    b'{"a":1}{"b":2}\n',
    b'{"a":"\\ud800"}\n',
    b'{"a":"\xff"}\n',
    b'{\x00"a":1}\n',
    b"{\x00\n",
    b"{",
    b"{}",
    b"[1]\n",
    b"  {}\n",
    b'\xef\xbb\xbf{"a":1}\n',
    '{"a":1}'.encode("utf-16"),
    b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"\n",
    b"",
    b"\n",
]


@pytest.mark.parametrize("line", _LINES)
def test_loads_is_json_loads(line: bytes) -> None:
    def outcome(f: object) -> object:
        try:
            return ("ok", f(line))  # type: ignore[operator]
        except (ValueError, RecursionError) as exc:  # the two kinds the reader names
            return ("error", isinstance(exc, RecursionError))

    assert outcome(_loads) == outcome(json.loads)


_TEXTS: list[object] = [
    None,
    "",
    "AAEC",
    "AAE=",
    "AA==",
    "AA=",
    "A",
    "AA==AA==",
    "AB=C",
    "=AAA",
    "AA\nAA",
    "AA AA",
    "AAé=",
    "-_-_",
    "AAEC\x00",
    5,
    b"AAEC",
    ["AAEC"],
]


@pytest.mark.parametrize("text", _TEXTS)
def test_field_base64_is_strict_base64(text: object) -> None:
    expected: object
    if text is None:
        expected = None
    elif not isinstance(text, str):
        expected = "error"
    else:
        try:
            expected = base64.b64decode(text, validate=True)
        except ValueError:
            expected = "error"
    try:
        got: object = _unb64_field(text, 7, "value")
    except VerificationError as exc:
        assert "line 7 value" in str(exc)
        got = "error"
    assert got == expected


@pytest.mark.parametrize(
    "ms",
    [
        0,
        1,
        86_399_999,
        86_400_000,
        NOW_MS,
        NOW_MS // 86_400_000 * 86_400_000 - 1,
        NOW_MS // 86_400_000 * 86_400_000,
        -1,
        -86_400_000,
        253_402_300_799_999,  # 9999-12-31T23:59:59.999Z
    ],
)
def test_observation_day_is_the_utc_day(ms: int) -> None:
    expected = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date().isoformat()
    assert _day(ms) == expected
    assert _day(ms) == expected  # from the cache
