"""The observer's attachments (no broker, no gateway): blobs copied at submit, outbox rows, release."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bus.attachment import MAX_ATTACHMENT_BYTES
from bus.errors import Reason
from bus.model import Envelope, Report
from bus.report_file import ReportFileError
from nodes.observer.device import Home, init_observer, status, store_blob, submit_file
from nodes.observer.outbox import (
    DELIVERED,
    DROPPED,
    EXTERNAL,
    PENDING,
    REFUSED,
    UPLOADED,
    Outbox,
)
from tests.mission import make_mission

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_793_491_200_000 + 21 * 86_400_000  # inside the test mandate's window
PHOTO = bytes(range(256)) * 4000  # ~1 MB


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_store_blob_copies_under_the_hash_atomically(tmp_path: Path) -> None:
    src = tmp_path / "crater.jpg"
    src.write_bytes(PHOTO)
    blobs = tmp_path / "blobs"
    digest, size = store_blob(blobs, src)
    assert (digest, size) == (_sha(PHOTO), len(PHOTO))
    assert (blobs / digest.hex()).read_bytes() == PHOTO
    assert [p.name for p in blobs.iterdir()] == [digest.hex()]  # no temporary file left
    assert store_blob(blobs, src) == (digest, size)  # idempotent


def test_store_blob_does_not_keep_an_oversized_file(tmp_path: Path) -> None:
    src = tmp_path / "video.mp4"
    src.write_bytes(PHOTO)
    digest, size = store_blob(tmp_path / "blobs", src, max_bytes=1000)
    assert (digest, size) == (_sha(PHOTO), len(PHOTO))
    assert list((tmp_path / "blobs").iterdir()) == []


def _home(tmp_path: Path) -> tuple[Home, Outbox, object]:
    m = make_mission(1, now_ms=NOW)
    home = Home(tmp_path / "home")
    key = init_observer(
        home, observer_id="un-obs-7", org="un", mandate_envelope=m.scenario.mandate_envelope,
        gateway="http://127.0.0.1:9", passphrase="correct horse battery", at_ms=NOW,
        scrypt_n=2**10,
    )  # fmt: skip
    return home, Outbox(home.outbox), key


def _report(tmp_path: Path, attachments: str) -> Path:
    text = (ROOT / "examples" / "report.yaml").read_text()
    path = tmp_path / "field" / "report.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text + "\nattachments:\n" + attachments)
    return path


def test_submit_copies_the_file_so_moving_it_changes_nothing(tmp_path: Path) -> None:
    home, box, key = _home(tmp_path)
    (tmp_path / "field").mkdir()
    photo = tmp_path / "field" / "crater.jpg"
    photo.write_bytes(PHOTO)
    other = _sha(b"a pdf delivered last week")
    path = _report(
        tmp_path,
        "  - path: crater.jpg\n"
        f"  - sha256: {other.hex()}\n    size: 25\n    media_type: application/pdf\n",
    )
    entry = submit_file(home, box, key, path, at_ms=NOW)  # type: ignore[arg-type]
    photo.rename(tmp_path / "elsewhere.jpg")  # the observer tidies up
    report = Report.decode(Envelope.decode(entry.envelope).payload)
    assert [(a.sha256, a.size, a.media_type, a.name) for a in report.attachments] == [
        (_sha(PHOTO), len(PHOTO), "image/jpeg", "crater.jpg"),
        (other, 25, "application/pdf", ""),
    ]
    assert home.blob(_sha(PHOTO)).read_bytes() == PHOTO
    assert [(u.sha256, u.state) for u in box.uploads()] == [
        (_sha(PHOTO), PENDING),
        (other, EXTERNAL),
    ]
    # nothing to upload before the report is delivered
    assert box.next_upload() is None
    doc = status(home, box)["attachments"]
    assert doc["counts"][PENDING] == 1 and doc["counts"][EXTERNAL] == 1


def test_an_oversized_attachment_is_a_field_problem(tmp_path: Path) -> None:
    home, box, key = _home(tmp_path)
    (tmp_path / "field").mkdir()
    big = tmp_path / "field" / "video.mp4"
    with big.open("wb") as f:
        f.truncate(MAX_ATTACHMENT_BYTES + 1)
    path = _report(tmp_path, "  - path: video.mp4\n")
    with pytest.raises(ReportFileError) as exc:
        submit_file(home, box, key, path, at_ms=NOW)  # type: ignore[arg-type]
    assert exc.value.reason is Reason.OVERSIZED
    assert exc.value.problems[0].field == "attachments[0]"
    assert box.entries() == [] and list(home.blobs.iterdir()) == []


def test_uploads_release_blobs_only_when_no_pending_row_needs_them(tmp_path: Path) -> None:
    home, box, key = _home(tmp_path)
    (tmp_path / "field").mkdir()
    (tmp_path / "field" / "crater.jpg").write_bytes(PHOTO)
    path = _report(tmp_path, "  - path: crater.jpg\n")
    first = submit_file(home, box, key, path, at_ms=NOW)  # type: ignore[arg-type]
    second = submit_file(home, box, key, path, at_ms=NOW + 1)  # type: ignore[arg-type]
    box.mark_delivered(first.seq, receipt=b"r", receipt_ok=True, http_status=201, now_ms=NOW)
    up = box.next_upload()
    assert up is not None and (up.seq, up.sha256) == (first.seq, _sha(PHOTO))
    box.record_upload_failure(up.seq, up.sha256, "no route")
    box.finish_upload(
        up.seq, up.sha256, state=UPLOADED, http_status=201, now_ms=NOW, release=home.release_blob
    )
    # the second report (still queued) needs the same bytes: kept
    assert home.blob(_sha(PHOTO)).is_file()
    assert box.next_upload() is None
    box.mark_delivered(second.seq, receipt=b"r", receipt_ok=True, http_status=201, now_ms=NOW)
    up = box.next_upload()
    assert up is not None and up.seq == second.seq
    box.finish_upload(
        up.seq, up.sha256, state=UPLOADED, http_status=200, now_ms=NOW, release=home.release_blob
    )
    assert not home.blob(_sha(PHOTO)).exists()
    assert [(u.state, u.attempts) for u in box.uploads()] == [(UPLOADED, 2), (UPLOADED, 1)]


def test_a_rejected_report_drops_its_uploads(tmp_path: Path) -> None:
    home, box, key = _home(tmp_path)
    (tmp_path / "field").mkdir()
    (tmp_path / "field" / "crater.jpg").write_bytes(PHOTO)
    entry = submit_file(home, box, key, _report(tmp_path, "  - path: crater.jpg\n"), at_ms=NOW)  # type: ignore[arg-type]
    box.mark_rejected(
        entry.seq, reason="outside_zone", detail="x", http_status=422, now_ms=NOW
    )  # fmt: skip
    assert [u.state for u in box.uploads()] == [DROPPED]
    assert box.upload_counts()[DROPPED] == 1
    # the bytes stay while the refused report may still be re-signed ...
    assert home.blob(_sha(PHOTO)).exists()
    assert box.head() is None  # the chain rewound: seq 1 is free again
    # ... and go once another report takes its seq (the refused one moves to the history)
    other = submit_file(home, box, key, _report(tmp_path, ""), at_ms=NOW + 1)  # type: ignore[arg-type]
    assert other.seq == entry.seq
    assert box.uploads() == [] and not home.blob(_sha(PHOTO)).exists()
    assert [(rid, seq) for rid, seq, _, _ in box.refused_history()] == [(entry.report_id, 1)]


def test_a_refusal_ends_every_delivered_row_of_those_bytes(tmp_path: Path) -> None:
    home, box, key = _home(tmp_path)
    (tmp_path / "field").mkdir()
    (tmp_path / "field" / "crater.jpg").write_bytes(PHOTO)
    path = _report(tmp_path, "  - path: crater.jpg\n")
    a = submit_file(home, box, key, path, at_ms=NOW)  # type: ignore[arg-type]
    b = submit_file(home, box, key, path, at_ms=NOW + 1)  # type: ignore[arg-type]
    for e in (a, b):
        box.mark_delivered(e.seq, receipt=b"r", receipt_ok=True, http_status=201, now_ms=NOW)
    up = box.next_upload()
    assert up is not None
    box.finish_upload(
        up.seq, up.sha256, state=REFUSED, http_status=413, now_ms=NOW, reason="oversized",
        detail="too big", release=home.release_blob,
    )  # fmt: skip
    assert [u.state for u in box.uploads()] == [REFUSED, REFUSED]
    assert box.next_upload() is None and not home.blob(_sha(PHOTO)).exists()
    assert box.counts()[DELIVERED] == 2
