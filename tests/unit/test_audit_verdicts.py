"""The auditor's verdict table: rows on disk, replaced and changed as epochs are judged."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes.auditor.verdicts import FinalRow, VerdictTable

R = "obus.reports.un"


def test_rows_are_replaced_changed_counted_and_read_in_log_order(tmp_path: Path) -> None:
    table = VerdictTable(tmp_path)
    table.put([
        ((R, 1, 0), FinalRow(1, "accepted", "", "", None, "north", "2026-11-01")),
        ((R, 0, 1), FinalRow(1, "deferred", "", "waits", None, "", "")),
        ((R, 0, 0), FinalRow(1, "quarantined", "chain_gap", "gap", None, "north", "2026-11-01")),
        (("obus.registry", 0, 0), FinalRow(1, "applied", "", "")),
    ])  # fmt: skip
    # The next epoch judges the deferred report; a revocation withdraws an accepted one.
    table.put([((R, 0, 1), FinalRow(2, "accepted", "", "", None, "south", ""))])
    table.change([((R, 1, 0), "revoked_after_acceptance", "key revoked", 2)])
    assert len(table) == 4
    assert table[(R, 0, 1)] == FinalRow(2, "accepted", "", "", None, "south", "")
    assert table[(R, 1, 0)] == FinalRow(
        1, "revoked_after_acceptance", "", "key revoked", 2, "north", "2026-11-01"
    )
    with pytest.raises(KeyError):
        table[(R, 9, 9)]
    assert [pos for pos, _ in table.items()] == [
        ("obus.registry", 0, 0), (R, 0, 0), (R, 0, 1), (R, 1, 0),
    ]  # fmt: skip
    assert [pos for pos, _ in table.failed()] == [(R, 0, 0), (R, 1, 0)]
    assert table.by_status() == {"accepted": 1, "applied": 1, "quarantined": 1,
                                 "revoked_after_acceptance": 1}  # fmt: skip
    assert list(table.counts()) == [
        ("obus.registry", "applied", "", "", 1),
        (R, "accepted", "south", "", 1),
        (R, "quarantined", "north", "2026-11-01", 1),
        (R, "revoked_after_acceptance", "north", "2026-11-01", 1),
    ]
    table.close()
    assert list(tmp_path.iterdir()) == []  # the file and its directory are gone
