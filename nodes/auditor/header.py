"""The header of an audit report: what a reader needs to reproduce the audit and check its source.

Every output of ``obus audit`` (console, JSON, HTML) opens with the same :class:`AuditHeader`:

* the audit's time: when it began and when it ended, UTC, as ISO 8601 with milliseconds and as
  milliseconds since the Unix epoch;
* the tool: the installed ``observer-bus`` package's version (its metadata);
* the exact command line (argv), the values of options that carry a secret replaced by
  ``<redacted>`` (:func:`redact_argv`);
* the mandate: the root the audit started from and the version in force at the last final
  seal, each by id, version and digest (SHA-256 of the mandate's canonical payload, the digest
  signers compared out of band when they signed it: ``obus mandate sign`` prints it in hex);
* the source: for an export file, its path, size and SHA-256 over every byte the audit read
  (the whole file: the hex form ``sha256sum`` prints); for a live audit, the bootstrap, the
  topic prefix and the log's end positions as audited (every partition's size: the offset
  after the last record read) and the newest judged final seal (epoch, *t_e*, digest).

Encodings (:data:`LEGEND`): digests, roots and key ids in standard padded base64, as the seal
texts, ``obus audit prove`` and ``obus node final-state`` print them; the two digests also
compared with tools that print hex (the export file's SHA-256, for ``sha256sum``; the mandate
digest, for ``obus mandate sign``) are given in hex beside their base64.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, BinaryIO, Final

from bus.ceremony import Draft
from bus.epoch import PartitionRef
from bus.model import Mandate
from nodes.auditor.sealed import b64

__all__ = [
    "LEGEND",
    "PACKAGE",
    "REDACTED",
    "AuditHeader",
    "ExportSource",
    "HashingReader",
    "LiveSource",
    "MandateRef",
    "iso_ms",
    "redact_argv",
    "tool_version",
]

PACKAGE: Final = "observer-bus"
REDACTED: Final = "<redacted>"
# An option whose value is a secret itself (a file that holds one is not: its path is shown).
_SECRET: Final = re.compile(r"^--?[\w-]*(passphrase|password|secret|token)(?!-file)[\w-]*$", re.I)

LEGEND: Final[tuple[tuple[str, str], ...]] = (
    ("audit time", "UTC, ISO 8601 with milliseconds, and milliseconds since the Unix epoch"),
    ("t_e", "an epoch's time: milliseconds since the Unix epoch, UTC (the seals' clock)"),
    (
        "seal digest, state digest, mandate digest, Merkle roots, key ids",
        "standard padded base64 (as seal texts, obus audit prove and obus node final-state)",
    ),
    ("mandate digest (hex)", "the same SHA-256 in hex, as obus mandate sign prints it"),
    ("export file SHA-256", "hex, as sha256sum prints it, and base64"),
    ("reason codes", "in full, as bus/errors.py defines them"),
)


def iso_ms(ms: int) -> str:
    """``ms`` since the Unix epoch as UTC ISO 8601 with milliseconds (``...T12:00:00.123Z``)."""
    t = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def tool_version() -> str:
    """The installed package's version, from its metadata ("unknown" when not installed)."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the value of every option that carries a secret (``--...passphrase``,
    ``--...password``, ``--...secret``, ``--...token``, but not ``--...-file``, whose value is a
    path) replaced by :data:`REDACTED`, in both ``--opt VALUE`` and ``--opt=VALUE`` forms."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if _SECRET.match(flag):
            if eq:
                out.append(f"{flag}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(arg)
    return out


@dataclass(frozen=True, slots=True)
class MandateRef:
    """One mandate version: id, version and the SHA-256 of its canonical payload."""

    mandate_id: str
    version: int
    digest: bytes

    @classmethod
    def of(cls, mandate: Mandate) -> MandateRef:
        """The reference of a mandate (its digest as :class:`bus.ceremony.Draft` computes it)."""
        return cls(mandate.mandate_id, mandate.version, Draft.of(mandate).digest)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready; the digest in base64 and hex."""
        return {
            "mandate_id": self.mandate_id,
            "version": self.version,
            "digest": b64(self.digest),
            "digest_hex": self.digest.hex(),
        }

    def text(self) -> str:
        """One line: id, version, digest (base64, then hex)."""
        return (
            f"{self.mandate_id} version {self.version}, digest {b64(self.digest)}"
            f" (hex {self.digest.hex()})"
        )


class HashingReader:
    """A binary stream's ``readline`` and ``read`` that feed SHA-256 with every byte returned,
    so the digest covers exactly the bytes the audit read (:meth:`drain` reads the rest)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.size = 0

    def readline(self, limit: int = -1) -> bytes:
        """As :meth:`io.BufferedReader.readline`."""
        return self._take(self._stream.readline(limit))

    def read(self, n: int = -1) -> bytes:
        """As :meth:`io.BufferedReader.read`."""
        return self._take(self._stream.read(n))

    def drain(self) -> bytes:
        """Read to the end of the stream; the SHA-256 of every byte read."""
        while self.read(1 << 20):
            pass
        return self._hash.digest()

    def _take(self, data: bytes) -> bytes:
        self._hash.update(data)
        self.size += len(data)
        return data


@dataclass(frozen=True, slots=True)
class ExportSource:
    """An audited export file: its path, size in bytes and SHA-256."""

    path: str
    size: int
    sha256: bytes

    def to_json(self) -> dict[str, Any]:
        """JSON-ready; the SHA-256 in hex (as sha256sum prints it) and base64."""
        return {
            "kind": "export",
            "path": self.path,
            "size": self.size,
            "sha256_hex": self.sha256.hex(),
            "sha256": b64(self.sha256),
        }

    def lines(self) -> list[tuple[str, str]]:
        """(label, value) rows for the console and the HTML page."""
        return [
            ("export file", f"{self.path} ({self.size} bytes)"),
            ("export SHA-256 (hex)", self.sha256.hex()),
            ("export SHA-256 (base64)", b64(self.sha256)),
        ]


@dataclass(frozen=True, slots=True)
class LiveSource:
    """A live audit's log as read: every partition's end (the offset after the last record
    audited) and the newest judged final seal (epoch 0, no digest: none)."""

    bootstrap: str
    prefix: str
    ends: Mapping[PartitionRef, int]
    seal_epoch: int
    seal_time_ms: int | None
    seal_digest: bytes | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready; partitions in (topic, partition) order, the digest in base64."""
        return {
            "kind": "live",
            "bootstrap": self.bootstrap,
            "topic_prefix": self.prefix,
            "ends": [
                {"topic": t, "partition": p, "size": n} for (t, p), n in sorted(self.ends.items())
            ],
            "final_seal": {
                "epoch": self.seal_epoch,
                "t_e": self.seal_time_ms,
                "digest": None if self.seal_digest is None else b64(self.seal_digest),
            },
        }

    def lines(self) -> list[tuple[str, str]]:
        """(label, value) rows for the console and the HTML page."""
        seal = "none"
        if self.seal_digest is not None and self.seal_time_ms is not None:
            seal = (
                f"epoch {self.seal_epoch}, t_e {self.seal_time_ms}"
                f" ({iso_ms(self.seal_time_ms)}), digest {b64(self.seal_digest)}"
            )
        rows = [
            ("live log", f"kafka {self.bootstrap}, topic prefix {self.prefix}"),
            ("newest final seal", seal),
        ]
        rows += [(f"end of {t}[{p}]", str(n)) for (t, p), n in sorted(self.ends.items())]
        return rows


@dataclass(frozen=True, slots=True)
class AuditHeader:
    """Everything the module docstring lists; :meth:`lines` is what every output shows."""

    started_ms: int
    finished_ms: int
    tool_version: str
    command: tuple[str, ...]
    root: MandateRef
    in_force: MandateRef
    source: ExportSource | LiveSource
    legend: tuple[tuple[str, str], ...] = field(default=LEGEND)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (the ``header`` of the JSON report)."""
        return {
            "audit_started": iso_ms(self.started_ms),
            "audit_started_ms": self.started_ms,
            "audit_finished": iso_ms(self.finished_ms),
            "audit_finished_ms": self.finished_ms,
            "tool": PACKAGE,
            "tool_version": self.tool_version,
            "command": list(self.command),
            "root_mandate": self.root.to_json(),
            "mandate_in_force": self.in_force.to_json(),
            "source": self.source.to_json(),
            "encodings": dict(self.legend),
        }

    def lines(self) -> list[tuple[str, str]]:
        """(label, value) rows, in the order every output shows them."""
        return [
            ("audit time", f"{iso_ms(self.started_ms)} ({self.started_ms} ms)"),
            ("audit finished", f"{iso_ms(self.finished_ms)} ({self.finished_ms} ms)"),
            ("tool", f"{PACKAGE} {self.tool_version}"),
            ("command", shlex.join(self.command)),
            ("root mandate", self.root.text()),
            ("mandate in force at the last final seal", self.in_force.text()),
            *self.source.lines(),
        ]
