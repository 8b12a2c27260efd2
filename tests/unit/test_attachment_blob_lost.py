"""A node's attachment files lost or unwritable: the store stops with a StoreError naming the fix.

The attachment database says an attachment was kept; when its file is gone (the blob directory
lost, or restored without the database) a chunk of it arriving again cannot be judged against
it. Quarantining the chunk as contradicting would be a false verdict, so the batch is refused
(nothing of it stored, positions unchanged) and the reassembler stops with a clear message.
"""

from __future__ import annotations

import errno
import shutil
import tempfile
from pathlib import Path

import pytest

from bus.errors import StoreError
from tests.unit.test_attachment_store import DATA, TOPIC, World, _records, _ref, _sha


def _stored_world(tmp_path: Path) -> tuple[World, list[bytes]]:
    w = World(tmp_path)
    w.accept_report(_ref())
    raws = _records()
    assert w.feed(raws) == {"stored": 1}
    return w, raws


def test_lost_blob_directory_stops_the_store_with_the_fix(tmp_path: Path) -> None:
    w, raws = _stored_world(tmp_path)
    shutil.rmtree(tmp_path / "blobs")
    positions = w.store.positions()
    with pytest.raises(StoreError) as exc:
        w.feed(raws[:1])  # the gateway re-publishes a chunk after a crash
    path = w.store.path_of(_sha(DATA))
    assert str(path) in exc.value.message
    assert f"restore {tmp_path / 'blobs'}" in exc.value.message
    assert exc.value.context["path"] == str(path)
    # nothing of the batch was stored, and no false verdict was recorded
    assert w.store.positions() == positions
    assert w.reasons() == []
    assert w.store.open_assemblies() == []


def test_restored_blob_lets_the_same_chunk_through(tmp_path: Path) -> None:
    w, raws = _stored_world(tmp_path)
    path = w.store.path_of(_sha(DATA))
    path.unlink()
    with pytest.raises(StoreError):
        w.store.ingest(w.records(raws[:1]))
    path.write_bytes(DATA)  # the operator restores the file
    w.offset -= 1  # the same record is read again after the restart
    assert w.feed(raws[:1]) == {}
    assert w.store.positions() == {(TOPIC, 0): len(raws) + 1}
    assert w.reasons() == []


def test_unreadable_blob_is_a_store_error(tmp_path: Path) -> None:
    w, raws = _stored_world(tmp_path)
    path = w.store.path_of(_sha(DATA))
    path.unlink()
    path.mkdir()  # opening a directory for reading: IsADirectoryError, another OSError
    with pytest.raises(StoreError):
        w.feed(raws[:1])


def test_unwritable_blob_directory_is_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path)
    w.accept_report(_ref())
    raws = _records()

    def disk_full(*_args: object, **_kwargs: object) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", disk_full)
    with pytest.raises(StoreError) as exc:
        w.feed(raws)
    assert "No space left" in exc.value.message and str(tmp_path / "blobs") in exc.value.message
    assert w.store.stored(_sha(DATA)) is None
    monkeypatch.undo()
    # the chunks were kept: once there is space, settling again stores the attachment
    assert w.store.sweep() == {"stored": 1}
    item = w.store.stored(_sha(DATA))
    assert item is not None and item.path.read_bytes() == DATA


def test_verify_file_says_false_for_a_lost_file_and_names_an_unreadable_one(
    tmp_path: Path,
) -> None:
    w, _ = _stored_world(tmp_path)
    item = w.store.stored(_sha(DATA))
    assert item is not None and w.store.verify_file(item)
    item.path.unlink()
    assert not w.store.verify_file(item)
    item.path.mkdir()  # exists, but reading it fails (EISDIR)
    with pytest.raises(StoreError) as exc:
        w.store.verify_file(item)
    assert str(item.path) in exc.value.message
