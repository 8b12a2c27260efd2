"""The portable log export (``obus log export``): its byte format, a writer and a streaming reader.

Pure code over binary streams the caller opens (no Kafka, no asyncio).

Format ``obus-log-export`` version 3 (versions 1 and 2 are still read, see below): JSON Lines
(RFC 8259 objects, UTF-8, one per line, each line ending in ``\\n``; the writer emits sorted keys
and no spaces). Bytes are standard padded base64 (RFC 4648 section 4); ``null`` stands for a
Kafka null key or value.

1. One header line::

       {"format": "obus-log-export", "version": 3, "created_at_ms": <int>,
        "mandate_id": "<id>", "topic_prefix": "<prefix>", "root_mandate": "<base64>"}

   ``root_mandate`` is the signed mandate envelope the exporter started from (its out-of-band
   trust root, the version the bus began under); an auditor should bring its own copy
   (``--mandate``) and uses this one only when it has none, saying so in its report.
2. Record lines, one per Kafka record, in seven sections in this order (:data:`SECTIONS`):
   ``seals`` (the seals topic), ``mandate`` (the mandate topic), ``registry``, ``reports``
   (every report topic), ``decisions`` (every decisions topic), ``statements``,
   ``attachments`` (every attachments topic)::

       {"section": "<section>", "topic": "<topic>", "partition": <int>, "offset": <int>,
        "timestamp_ms": <int>, "key": "<base64>"|null, "value": "<base64>"|null}

   Records of one topic-partition appear in offset order; partitions may interleave. Each
   record sits in the section of its topic (:func:`section_of`); a record elsewhere is a
   problem of the file. Headers are not exported (no reader trusts them), and ``timestamp_ms``
   (the broker's) is information only: no verdict reads it. The seals are read from the broker
   before any other topic, so every genuine seal covers records the file holds: a sealed record
   the file lacks was deleted from the log, not left out by the exporter.
3. One trailer line::

       {"end": true, "counts": {"<section>": <n>, ... every section of the version},
        "sha256": "<hex SHA-256 of every byte before this line>"}

   The counts and digest catch truncation and accidental damage only: anybody can recompute
   them. What the records say is trusted through their signatures and the final seals, which
   the auditor verifies.

Older versions, still read: version 2 has an eighth section, ``checkpoints`` (the records of
``<prefix>checkpoints``, the per-partition checkpoints that seals replaced), between
``registry`` and ``reports`` (:data:`SECTIONS_V2`); version 1 (written before seals existed) has
four, ``mandate``, ``registry``, ``checkpoints``, ``reports`` (:data:`SECTIONS_V1`), and carries
no seals, so no record of it has a final verdict. A reader gets the checkpoints section's
records like any other; the auditor skips them and says so in its report. :class:`ExportReader`
reads every version; :class:`ExportWriter` writes the version its header names (the older ones
for tests of the reader).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final

from bus.errors import Reason, VerificationError
from bus.topics import Topics

__all__ = [
    "FORMAT",
    "MAX_LINE_BYTES",
    "SECTIONS",
    "SECTIONS_V1",
    "SECTIONS_V2",
    "VERSION",
    "VERSIONS",
    "ExportHeader",
    "ExportProblem",
    "ExportReader",
    "ExportWriter",
    "LogRecord",
    "section_of",
    "sections",
]

FORMAT: Final = "obus-log-export"
VERSION: Final = 3
"""The version written by default."""
VERSIONS: Final = (1, 2, 3)
"""Every version the reader reads."""
SECTIONS: Final = (
    "seals", "mandate", "registry", "reports", "decisions", "statements", "attachments",
)  # fmt: skip
"""The sections of version 3, in file order."""
SECTIONS_V2: Final = (
    "seals", "mandate", "registry", "checkpoints", "reports", "decisions", "statements",
    "attachments",
)  # fmt: skip
"""The sections of version 2, in file order."""
SECTIONS_V1: Final = ("mandate", "registry", "checkpoints", "reports")
"""The sections of version 1, in file order."""
_CHECKPOINTS: Final = "checkpoints"  # the section of versions 1 and 2 that seals replaced
# A record value is at most ~1 MiB (Kafka's default message.max.bytes); base64 adds a third.
MAX_LINE_BYTES: Final = 2 * 1024 * 1024
_HOMES_CACHED: Final = 1024  # topics whose section a reader remembers
_RECORD_KEYS: Final = frozenset(
    {"section", "topic", "partition", "offset", "timestamp_ms", "key", "value"}
)


def sections(version: int) -> tuple[str, ...]:
    """The sections of a format version, in file order.

    Raises:
        ValueError: not a version of the format.
    """
    if version == 1:
        return SECTIONS_V1
    if version == 2:
        return SECTIONS_V2
    if version == 3:
        return SECTIONS
    raise ValueError(f"no {FORMAT} version {version}")


def section_of(topics: Topics, topic: str, version: int = VERSION) -> str | None:
    """The section where the records of ``topic`` go in a file of ``version`` (2 or later), or
    None for a topic that is no part of the bus such a file carries."""
    fixed = {
        topics.seals: "seals",
        topics.mandate: "mandate",
        topics.registry: "registry",
        topics.statements: "statements",
    }
    if version == 2:  # the one version with both seals and checkpoints
        fixed[topics.checkpoints] = _CHECKPOINTS
    if topic in fixed:
        return fixed[topic]
    if topics.is_sealed(topic):  # one organization's reports, decisions or attachments
        for section in ("reports", "decisions", "attachments"):
            if topic.startswith(f"{topics.prefix}{section}."):
                return section
    return None


def _corrupt(problem: str, **context: object) -> VerificationError:
    return VerificationError(Reason.EXPORT_CORRUPT, problem, **context)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: object, what: str) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise _corrupt(f"{what} must be base64 text or null")
    try:  # base64.b64decode(text, validate=True), without its wrapper
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError as exc:  # binascii.Error, or a str with non-ASCII characters
        raise _corrupt(f"{what} is not base64") from exc


def _unb64_field(text: object, line_no: int, name: str) -> bytes | None:
    """:func:`_unb64` of a record line's field (what it names built only on error)."""
    if text is None:
        return None
    if isinstance(text, str):
        try:
            return binascii.a2b_base64(text, strict_mode=True)
        except ValueError:
            pass
    return _unb64(text, f"line {line_no} {name}")  # raises, naming the field


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class ExportHeader:
    """The first line: when, which mandate, which topic prefix, the root mandate bytes, and the
    format version (:data:`VERSION` unless reading an older file)."""

    created_at_ms: int
    mandate_id: str
    topic_prefix: str
    root_mandate: bytes
    version: int = VERSION

    def encode(self) -> bytes:
        """The header line."""
        return _line(
            {
                "format": FORMAT,
                "version": self.version,
                "created_at_ms": self.created_at_ms,
                "mandate_id": self.mandate_id,
                "topic_prefix": self.topic_prefix,
                "root_mandate": _b64(self.root_mandate),
            }
        )

    @classmethod
    def decode(cls, line: bytes) -> ExportHeader:
        """Parse the header line.

        Raises:
            VerificationError: ``EXPORT_CORRUPT`` when it is not a header of a version the
                reader reads (:data:`VERSIONS`).
        """
        obj = _json(line, 1)
        version = obj.get("version")
        if obj.get("format") != FORMAT or type(version) is not int or version not in VERSIONS:
            raise _corrupt(f"not an {FORMAT} file of version {' or '.join(map(str, VERSIONS))}")
        created, mid, prefix = (
            obj.get("created_at_ms"),
            obj.get("mandate_id"),
            obj.get("topic_prefix"),
        )
        if type(created) is not int or not isinstance(mid, str) or not isinstance(prefix, str):
            raise _corrupt("header fields created_at_ms, mandate_id, topic_prefix are required")
        root = _unb64(obj.get("root_mandate"), "root_mandate")
        if not root:
            raise _corrupt("header carries no root_mandate")
        return cls(created, mid, prefix, root, version)


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One Kafka record as exported (also what the auditor reads from a live replay)."""

    section: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None

    def encode(self) -> bytes:
        """The record line."""
        return _line(
            {
                "section": self.section,
                "topic": self.topic,
                "partition": self.partition,
                "offset": self.offset,
                "timestamp_ms": self.timestamp_ms,
                "key": _b64(self.key),
                "value": _b64(self.value),
            }
        )

    @classmethod
    def decode(cls, line: bytes, line_no: int = 0) -> LogRecord:
        """Parse a record line.

        Raises:
            VerificationError: ``EXPORT_CORRUPT`` naming the line.
        """
        return cls.from_json(_json(line, line_no), line_no)

    @classmethod
    def from_json(cls, obj: dict[str, Any], line_no: int = 0) -> LogRecord:
        """Build a record from a parsed record line (``EXPORT_CORRUPT`` when malformed)."""
        if obj.keys() != _RECORD_KEYS:
            raise _corrupt(f"line {line_no}: record fields must be {sorted(_RECORD_KEYS)}")
        section, topic = obj["section"], obj["topic"]
        partition, offset, ts = obj["partition"], obj["offset"], obj["timestamp_ms"]
        if section not in SECTIONS_V2 or not isinstance(topic, str) or not topic:
            raise _corrupt(f"line {line_no}: unknown section or empty topic")
        if (
            type(partition) is not int
            or partition < 0
            or type(offset) is not int
            or offset < 0
            or type(ts) is not int
        ):
            raise _corrupt(f"line {line_no}: partition, offset, timestamp_ms must be integers")
        return cls(
            section,
            topic,
            partition,
            offset,
            ts,
            _unb64_field(obj["key"], line_no, "key"),
            _unb64_field(obj["value"], line_no, "value"),
        )


_DECODER: Final = json.JSONDecoder()  # json.loads' own, with its defaults


def _loads(line: bytes) -> Any:
    """``json.loads(line)``.

    Raises:
        ValueError: as json.loads (not JSON, not UTF-8).
        RecursionError: as json.loads.
    """
    if line[:1] != b"{" or line[1:2] == b"\0":
        return json.loads(line)
    # What json.loads does with bytes it detects as UTF-8 (a first byte "{" and a second not
    # NUL), minus the detection; then JSONDecoder.decode (no whitespace before the object).
    text = line.decode("utf-8", "surrogatepass")
    obj, end = _DECODER.raw_decode(text)
    if end != len(text) and text[end:].strip(" \t\n\r"):
        raise ValueError("extra data after the JSON value")
    return obj


def _json(line: bytes, line_no: int) -> dict[str, Any]:
    try:
        obj = _loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(f"line {line_no} is not JSON") from exc
    except RecursionError as exc:  # nesting deeper than the interpreter's stack allows
        raise _corrupt(f"line {line_no} is nested too deeply") from exc
    if not isinstance(obj, dict):
        raise _corrupt(f"line {line_no} is not a JSON object")
    return obj


@dataclass
class ExportWriter:
    """Writes an export to a binary stream: the header now, records, then :meth:`finish`.

    The sections are those of the header's version (:func:`sections`).

    Raises (from write): ValueError when a record's section is not one of the version's, or
    comes before the current one.
    """

    stream: BinaryIO
    header: ExportHeader
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self._sections = sections(self.header.version)
        self.counts = dict.fromkeys(self._sections, 0)
        self._digest = hashlib.sha256()
        self._section = 0
        self._put(self.header.encode())

    def _put(self, data: bytes) -> None:
        self._digest.update(data)
        self.stream.write(data)

    def write(self, record: LogRecord) -> None:
        """Append one record line."""
        if record.section not in self._sections:
            raise ValueError(
                f"no section {record.section} in {FORMAT} version {self.header.version}"
            )
        index = self._sections.index(record.section)
        if index < self._section:
            raise ValueError(f"section {record.section} after {self._sections[self._section]}")
        self._section = index
        self.counts[record.section] += 1
        self._put(record.encode())

    def finish(self) -> None:
        """Write the trailer (counts and digest). Nothing may be written after it."""
        trailer = {"end": True, "counts": self.counts, "sha256": self._digest.hexdigest()}
        self.stream.write(_line(trailer))


@dataclass(frozen=True, slots=True)
class ExportProblem:
    """Something wrong with the file itself (not with what a record says)."""

    line_no: int
    detail: str


class ExportReader:
    """Streams an export: the header at construction, then records and problems in file order.

    Memory stays bounded by one line. Problems (bad lines, a section the file's version does
    not have, sections out of order, from version 2 on a record outside its topic's section, a
    missing or wrong trailer, bytes after it) are yielded as :class:`ExportProblem` in place of
    the damaged line, so a reader can name each and go on.

    Raises (at construction): VerificationError ``EXPORT_CORRUPT`` when the header is unusable.
    """

    def __init__(self, stream: BinaryIO, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._stream = stream
        self._max = max_line_bytes
        self._digest = hashlib.sha256()
        self.bytes_read = 0
        first = self._readline()
        if first is None or not first.endswith(b"\n"):
            raise _corrupt("empty file or header line too long")
        self.header = ExportHeader.decode(first)
        self._sections = sections(self.header.version)
        self._topics = Topics(self.header.topic_prefix)
        self._homes: dict[str, str | None] = {}  # topic -> section_of (cleared when full)
        self._digest.update(first)
        self.line_no = 1

    def _readline(self) -> bytes | None:
        line = self._stream.readline(self._max + 1)
        if not line:
            return None
        self.bytes_read += len(line)
        return line

    def _skip_rest_of_line(self) -> None:
        while True:
            chunk = self._stream.readline(self._max + 1)
            self.bytes_read += len(chunk)
            self._digest.update(chunk)
            if not chunk or chunk.endswith(b"\n"):
                return

    def __iter__(self) -> Iterator[LogRecord | ExportProblem]:
        return self._records()

    def _misplaced(self, rec: LogRecord) -> str | None:
        """Why ``rec`` may not stand where it is (its section), or None."""
        if rec.section not in self._sections:
            return f"no {rec.section} section in version {self.header.version}"
        if self.header.version >= 2:  # version 1 has no per-topic sections
            homes = self._homes
            if rec.topic in homes:
                home = homes[rec.topic]
            else:
                if len(homes) >= _HOMES_CACHED:
                    homes.clear()
                home = homes[rec.topic] = section_of(self._topics, rec.topic, self.header.version)
            if home is None:
                return f"a record of {rec.topic}, not a topic of the bus, in {rec.section}"
            if home != rec.section:
                return f"a record of {rec.topic} in the {rec.section} section, not in {home}"
        return None

    def _records(self) -> Iterator[LogRecord | ExportProblem]:
        counts = dict.fromkeys(self._sections, 0)
        section = 0
        while True:
            line = self._readline()
            if line is None:
                yield ExportProblem(self.line_no + 1, "file ends without a trailer (truncated)")
                return
            self.line_no += 1
            if not line.endswith(b"\n"):
                if len(line) > self._max:
                    self._digest.update(line)
                    self._skip_rest_of_line()
                    yield ExportProblem(self.line_no, "line longer than the limit")
                    continue
                yield ExportProblem(self.line_no, "last line has no newline (truncated)")
                return
            try:
                obj = _json(line, self.line_no)
                if "end" in obj:
                    yield from self._trailer(obj, counts)
                    return
                rec = LogRecord.from_json(obj, self.line_no)
            except VerificationError as exc:
                self._digest.update(line)  # once per line, usable or not
                yield ExportProblem(self.line_no, exc.message)
                continue
            self._digest.update(line)
            misplaced = self._misplaced(rec)
            if misplaced is not None:
                yield ExportProblem(self.line_no, misplaced)
                continue
            index = self._sections.index(rec.section)
            if index < section:
                yield ExportProblem(
                    self.line_no,
                    f"{rec.section} record after the {self._sections[section]} section",
                )
                continue
            section = index
            counts[rec.section] += 1
            yield rec

    def _trailer(self, obj: dict[str, Any], counts: dict[str, int]) -> Iterator[ExportProblem]:
        if obj.get("end") is not True:
            yield ExportProblem(self.line_no, "malformed trailer")
        if obj.get("sha256") != self._digest.hexdigest():
            yield ExportProblem(self.line_no, "trailer digest does not match the file")
        if obj.get("counts") != counts:
            yield ExportProblem(
                self.line_no, f"trailer counts {obj.get('counts')} but the file holds {counts}"
            )
        if self._readline() is not None:
            yield ExportProblem(self.line_no + 1, "data after the trailer")
