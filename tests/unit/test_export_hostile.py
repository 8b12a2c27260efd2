"""Hostile export files end as ``export_corrupt``, never as a foreign exception or a traceback.

Two inputs the standard library answers with something other than what the format reader
catches: non-ASCII text where base64 is expected (``ValueError``, not ``binascii.Error``) and a
line nested deeper than the interpreter's stack (``RecursionError`` from ``json.loads``).
"""

from __future__ import annotations

import io
import json

import pytest

from bus.errors import Reason, VerificationError
from bus.export import (
    MAX_LINE_BYTES,
    ExportHeader,
    ExportProblem,
    ExportReader,
    ExportWriter,
    LogRecord,
)
from tests.fuzz_targets import TARGETS, run

HEADER = ExportHeader(
    created_at_ms=1, mandate_id="m", topic_prefix="obus.", root_mandate=b"root mandate"
)
RECORD = LogRecord("reports", "obus.reports.un", 0, 0, 1, b"k", b"v")
NON_ASCII_BASE64 = "aGVsbG8=é"  # valid base64 but for one non-ASCII character
DEEP = b"[" * 100_000


def _line(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _file(*record_lines: bytes) -> bytes:
    """A header, the given record lines, and a trailer with the right digest for them."""
    buf = io.BytesIO()
    w = ExportWriter(buf, HEADER)
    for line in record_lines:
        w._put(line)
    w.counts["reports"] = len(record_lines)
    w.finish()
    return buf.getvalue()


@pytest.mark.parametrize("field", ["key", "value"])
def test_non_ascii_base64_in_a_record_is_corrupt(field: str) -> None:
    obj = json.loads(RECORD.encode())
    obj[field] = NON_ASCII_BASE64
    with pytest.raises(VerificationError) as exc:
        LogRecord.decode(_line(obj), 2)
    assert exc.value.reason is Reason.EXPORT_CORRUPT
    assert "not base64" in exc.value.message


def test_non_ascii_base64_in_a_record_is_a_problem_the_reader_names() -> None:
    obj = json.loads(RECORD.encode())
    obj["value"] = NON_ASCII_BASE64
    items = list(ExportReader(io.BytesIO(_file(RECORD.encode(), _line(obj)))))
    assert items[0] == RECORD
    assert isinstance(items[1], ExportProblem)
    assert items[1].line_no == 3 and "not base64" in items[1].detail
    assert len(items) == 3  # then the trailer, whose counts say 2 records where 1 is usable
    assert isinstance(items[2], ExportProblem) and "counts" in items[2].detail
    assert not any("digest" in i.detail for i in items if isinstance(i, ExportProblem))


def test_non_ascii_base64_in_the_header_is_corrupt() -> None:
    obj = json.loads(HEADER.encode())
    obj["root_mandate"] = NON_ASCII_BASE64
    with pytest.raises(VerificationError) as exc:
        ExportHeader.decode(_line(obj))
    assert exc.value.reason is Reason.EXPORT_CORRUPT
    with pytest.raises(VerificationError) as exc:
        ExportReader(io.BytesIO(_line(obj)))
    assert exc.value.reason is Reason.EXPORT_CORRUPT


def test_deeply_nested_line_is_corrupt() -> None:
    assert len(DEEP) < MAX_LINE_BYTES
    with pytest.raises(VerificationError) as exc:
        LogRecord.decode(DEEP + b"\n", 2)
    assert exc.value.reason is Reason.EXPORT_CORRUPT
    assert "nested too deeply" in exc.value.message


def test_deeply_nested_header_is_corrupt() -> None:
    with pytest.raises(VerificationError) as exc:
        ExportHeader.decode(DEEP + b"\n")
    assert exc.value.reason is Reason.EXPORT_CORRUPT
    with pytest.raises(VerificationError) as exc:
        ExportReader(io.BytesIO(DEEP + b"\n"))
    assert exc.value.reason is Reason.EXPORT_CORRUPT


def test_deeply_nested_record_line_is_a_problem_the_reader_names() -> None:
    data = _file(DEEP + b"\n", RECORD.encode())
    items = list(ExportReader(io.BytesIO(data)))
    assert isinstance(items[0], ExportProblem)
    assert items[0].line_no == 2 and "nested too deeply" in items[0].detail
    assert items[1] == RECORD  # the reader goes on after the damaged line


@pytest.mark.parametrize("depth", [100, 500, 900, 980, 995, 2000])
def test_deeply_nested_trailer_values_do_not_escape(depth: int) -> None:
    # A trailer (it has "end") whose counts nest about as deep as json.loads accepts: the
    # reader compares and names them, it must not overflow the stack doing so.
    clean = _file()
    body = clean[: clean.rindex(b'{"counts"')]
    nested = b"[" * depth + b"]" * depth
    data = body + b'{"counts":' + nested + b',"end":true,"sha256":"x"}\n'
    items = list(ExportReader(io.BytesIO(data)))
    assert items and all(isinstance(i, ExportProblem) for i in items)


@pytest.mark.parametrize(
    ("target", "data"),
    [
        ("export_record", RECORD.encode().replace(b'"value":"dg=="', b'"value":"dg==\\u00e9"')),
        ("export_header", HEADER.encode().replace(b'"root_mandate":"', b'"root_mandate":"\\u00e9')),
        ("export_record", DEEP),
        ("export_header", DEEP),
        ("export_reader", HEADER.encode() + DEEP + b"\n"),
        ("export_reader", DEEP + b"\n"),
    ],
    ids=[
        "record_not_ascii",
        "header_not_ascii",
        "record_deep",
        "header_deep",
        "file_deep",
        "file_header_deep",
    ],
)
def test_fuzz_targets_keep_the_invariant(target: str, data: bytes) -> None:
    run(TARGETS[target], data)
