"""Attachments: chunking for the bus, reassembly and the checks against the referencing report.

Pure: no I/O. The observer's outbox keeps the bytes, the gateway publishes them with
:func:`split`, and every organization node puts them back together with :class:`Assembly`
(persisted by :mod:`nodes.org_node.attachment_store`; :class:`Reassembler` is the same logic
in memory).

Trust. A chunk (``schemas/obus/v1/attachment.proto``) carries no signature: the observer's
signed report commits to the attachment's SHA-256 and size, and an attachment is kept only when
the reassembled bytes hash to that SHA-256 (:func:`check_reference`). Whoever forges or alters a
chunk can make an attachment fail (``attachment_hash_mismatch``), never pass with other bytes.

Layout. Every chunk but the last holds ``chunk_size`` bytes; chunk ``i`` holds bytes
``[i * chunk_size, min(total_size, (i + 1) * chunk_size))``; ``count`` is
``ceil(total_size / chunk_size)`` (1 for an empty attachment). Each chunk states the whole
layout (SHA-256, total size, chunk size, index, count), so it is checked on its own and chunks
of one attachment may arrive in any order, more than once.

An :class:`Assembly` gathers the chunks of one layout. A second, *different* chunk for an index
already held (a forgery, or bytes altered in transit) is kept as another candidate instead of
replacing the first, so a forged chunk read before the genuine one cannot block the attachment:
on completion every combination of candidates is tried (at most :data:`MAX_COMBINATIONS`) and
the one that hashes right wins.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from google.protobuf.message import DecodeError

from bus._pb.obus.v1 import attachment_pb2
from bus.errors import Reason, VerificationError
from bus.model import DIGEST_BYTES, Attachment

# 512 KiB: half of Kafka's default per-record limit (message.max.bytes = 1048588 bytes), so a
# chunk plus its framing always fits, whatever the broker's default; the attachments topics are
# also created with max.message.bytes = TOPIC_MAX_MESSAGE_BYTES, and the gateway reads that
# setting at start and refuses a chunk size that would not fit.
CHUNK_BYTES: Final = 512 * 1024
# What a chunk record adds to its data: protobuf framing (< 40 bytes), the 64-byte key, the
# record and batch headers (~100 bytes) and CloudEvents-style headers. 4 KiB is generous.
CHUNK_OVERHEAD_BYTES: Final = 4096
TOPIC_MAX_MESSAGE_BYTES: Final = 1024 * 1024
# A chunk larger than this is refused when read, whatever it claims: no broker default lets it
# through, and it bounds the memory one record can take.
MAX_CHUNK_BYTES: Final = TOPIC_MAX_MESSAGE_BYTES
# Photos and documents from the field; short videos do not fit and are refused (``oversized``)
# by the observer at submit, by the gateway and by every node unless configured higher.
MAX_ATTACHMENT_BYTES: Final = 32 * 1024 * 1024
# Distinct versions of one chunk kept per index (the genuine one plus forgeries), and how many
# combinations are hashed on completion. 4 per index covers a forged chunk on either side of
# the genuine one and a re-publication; beyond that a further version is refused on arrival.
MAX_CANDIDATES: Final = 4
MAX_COMBINATIONS: Final = 64
# An attachment whose chunks verified but that no accepted report references is kept this long
# before it is quarantined as attachment_unreferenced (the report is read by another consumer
# of the node and usually arrives within seconds; a week covers a node catching up from far
# behind). Chunks still missing after the same time make it attachment_incomplete. Both stay
# kept: a referencing report or the missing chunks arriving later still complete it.
UNREFERENCED_TTL_MS: Final = 7 * 24 * 3600 * 1000
INCOMPLETE_TTL_MS: Final = 7 * 24 * 3600 * 1000
CHUNK_CONTENT_TYPE: Final = "application/vnd.obus.attachment-chunk.v1+protobuf"
_HEX_RE: Final = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class AttachmentLimits:
    """Limits of a node's (or a gateway's) attachment handling.

    Raises (at construction):
        ValueError: a limit is out of range.
    """

    max_bytes: int = MAX_ATTACHMENT_BYTES
    chunk_bytes: int = CHUNK_BYTES
    unreferenced_ttl_ms: int = UNREFERENCED_TTL_MS
    incomplete_ttl_ms: int = INCOMPLETE_TTL_MS

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        if not 1 <= self.chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be 1..{MAX_CHUNK_BYTES}")
        if self.unreferenced_ttl_ms < 0 or self.incomplete_ttl_ms < 0:
            raise ValueError("waiting times must be >= 0")


def _mismatch(problem: str, **context: object) -> VerificationError:
    return VerificationError(Reason.ATTACHMENT_HASH_MISMATCH, problem, **context)


def parse_hex_digest(text: str) -> bytes:
    """The 32 bytes of a lower-case hex SHA-256.

    Raises:
        VerificationError: ``malformed`` when it is not 64 lower-case hex characters.
    """
    if not _HEX_RE.fullmatch(text):
        raise VerificationError(Reason.MALFORMED, f"{text[:80]!r} is not a lower-case hex SHA-256")
    return bytes.fromhex(text)


def chunk_count(total_size: int, chunk_size: int) -> int:
    """Number of chunks of an attachment (1 for an empty one)."""
    return max(1, math.ceil(total_size / chunk_size))


@dataclass(frozen=True, slots=True)
class Layout:
    """How one attachment is cut: its SHA-256, total size and chunk size.

    Raises (at construction):
        VerificationError: ``invalid_field`` for a digest of the wrong length or a chunk size
            outside 1..:data:`MAX_CHUNK_BYTES`.
    """

    sha256: bytes
    total_size: int
    chunk_size: int

    def __post_init__(self) -> None:
        if len(self.sha256) != DIGEST_BYTES:
            raise VerificationError(Reason.INVALID_FIELD, f"sha256 must be {DIGEST_BYTES} bytes")
        if self.total_size < 0:
            raise VerificationError(Reason.INVALID_FIELD, "total_size must be >= 0")
        if not 1 <= self.chunk_size <= MAX_CHUNK_BYTES:
            raise VerificationError(
                Reason.INVALID_FIELD, f"chunk_size {self.chunk_size} is not in 1..{MAX_CHUNK_BYTES}"
            )

    @property
    def count(self) -> int:
        """Number of chunks."""
        return chunk_count(self.total_size, self.chunk_size)

    @property
    def hex(self) -> str:
        """The SHA-256 in lower-case hex (the record key and the file name)."""
        return self.sha256.hex()

    def span(self, index: int) -> tuple[int, int]:
        """Byte range ``[start, end)`` of chunk ``index``."""
        start = index * self.chunk_size
        return start, min(self.total_size, start + self.chunk_size)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk: its layout, index and bytes, consistent with each other.

    Raises (at construction):
        VerificationError: ``invalid_field`` when the index is outside the layout or the data
            has another length than the layout gives that index.
    """

    layout: Layout
    index: int
    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.layout.count:
            raise VerificationError(
                Reason.INVALID_FIELD, f"index {self.index} is not in 0..{self.layout.count - 1}"
            )
        start, end = self.layout.span(self.index)
        if len(self.data) != end - start:
            raise VerificationError(
                Reason.INVALID_FIELD,
                f"chunk {self.index} holds {len(self.data)} bytes; the layout gives {end - start}",
            )

    @property
    def digest(self) -> bytes:
        """SHA-256 of this chunk's data (tells candidates for one index apart)."""
        return hashlib.sha256(self.data).digest()

    @property
    def key(self) -> bytes:
        """The Kafka record key: the attachment's hex SHA-256."""
        return self.layout.hex.encode()

    def encode(self) -> bytes:
        """Canonical record value bytes."""
        lay = self.layout
        return attachment_pb2.AttachmentChunk(
            sha256=lay.sha256,
            total_size=lay.total_size,
            chunk_size=lay.chunk_size,
            index=self.index,
            count=lay.count,
            data=self.data,
        ).SerializeToString(deterministic=True)

    @classmethod
    def decode(cls, raw: bytes, *, max_total_bytes: int = MAX_ATTACHMENT_BYTES) -> Chunk:
        """Parse a chunk record value strictly.

        Raises:
            VerificationError: ``malformed`` (not a canonical ``AttachmentChunk``),
                ``oversized`` (the attachment is larger than ``max_total_bytes``, or the record
                larger than a chunk can be), ``invalid_field`` (count, index or length
                inconsistent with the layout).
        """
        if len(raw) > MAX_CHUNK_BYTES + CHUNK_OVERHEAD_BYTES:
            raise VerificationError(Reason.OVERSIZED, f"chunk record of {len(raw)} bytes")
        pb = attachment_pb2.AttachmentChunk()
        try:
            pb.ParseFromString(raw)
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise VerificationError(Reason.MALFORMED, f"chunk does not parse: {exc}") from exc
        pb.DiscardUnknownFields()
        if pb.SerializeToString(deterministic=True) != raw:
            raise VerificationError(
                Reason.MALFORMED, "chunk is not canonically encoded (unknown or repeated fields)"
            )
        if pb.total_size > max_total_bytes:
            raise VerificationError(
                Reason.OVERSIZED,
                f"attachment of {pb.total_size} bytes > limit {max_total_bytes}",
                sha256=bytes(pb.sha256).hex(),
            )
        layout = Layout(bytes(pb.sha256), pb.total_size, pb.chunk_size)
        if pb.count != layout.count:
            raise VerificationError(
                Reason.INVALID_FIELD,
                f"count {pb.count} does not match the layout ({layout.count} chunks of"
                f" {layout.chunk_size} bytes for {layout.total_size})",
            )
        return cls(layout, pb.index, bytes(pb.data))


def split(data: bytes, *, chunk_size: int = CHUNK_BYTES) -> list[Chunk]:
    """Cut an attachment into its chunks (in order)."""
    layout = Layout(hashlib.sha256(data).digest(), len(data), chunk_size)
    return [Chunk(layout, i, data[slice(*layout.span(i))]) for i in range(layout.count)]


def matches(chunk: Chunk, data: bytes) -> bool:
    """Whether a chunk is a true piece of an attachment already verified (``data``)."""
    lay = chunk.layout
    return lay.total_size == len(data) and data[slice(*lay.span(chunk.index))] == chunk.data


class Added(enum.Enum):
    """What :meth:`Assembly.add` did with a chunk."""

    NEW = "new"  # first chunk for its index
    CANDIDATE = "candidate"  # another version of a chunk already held (kept beside it)
    DUPLICATE = "duplicate"  # the same bytes again (a re-publication): nothing changes


@dataclass
class Assembly:
    """The chunks of one layout gathered so far (candidates per index, in arrival order)."""

    layout: Layout
    parts: dict[int, list[bytes]] = field(default_factory=dict)

    def add(self, chunk: Chunk) -> Added:
        """Take one chunk of this layout.

        Raises:
            VerificationError: ``attachment_hash_mismatch`` when the index already holds
                :data:`MAX_CANDIDATES` different versions (the chunk is not kept here).
            ValueError: the chunk belongs to another layout (a caller bug).
        """
        if chunk.layout != self.layout:
            raise ValueError("chunk of another layout")
        held = self.parts.setdefault(chunk.index, [])
        if chunk.data in held:
            return Added.DUPLICATE
        if len(held) >= MAX_CANDIDATES:
            raise _mismatch(
                f"chunk {chunk.index} of {self.layout.hex} has more than {MAX_CANDIDATES}"
                " different versions",
                sha256=self.layout.hex,
                index=chunk.index,
            )
        held.append(chunk.data)
        return Added.CANDIDATE if len(held) > 1 else Added.NEW

    def missing(self) -> list[int]:
        """Indexes with no chunk yet."""
        return [i for i in range(self.layout.count) if not self.parts.get(i)]

    @property
    def complete(self) -> bool:
        """Every index holds at least one chunk."""
        return not self.missing()

    def combinations(self) -> int:
        """How many candidate combinations a complete assembly has."""
        return math.prod(len(self.parts.get(i, ())) for i in range(self.layout.count))

    def resolve(self) -> bytes:
        """The attachment bytes: the first combination of candidates with the right SHA-256.

        Raises:
            VerificationError: ``attachment_incomplete`` (chunks missing),
                ``attachment_hash_mismatch`` (no combination among the first
                :data:`MAX_COMBINATIONS` hashes to the SHA-256).
        """
        missing = self.missing()
        if missing:
            raise VerificationError(
                Reason.ATTACHMENT_INCOMPLETE,
                f"{len(missing)} of {self.layout.count} chunks missing (first: {missing[0]})",
                sha256=self.layout.hex,
            )
        options = [self.parts[i] for i in range(self.layout.count)]
        tried = 0
        for combo in itertools.islice(itertools.product(*options), MAX_COMBINATIONS):
            tried += 1
            h = hashlib.sha256()
            for part in combo:
                h.update(part)
            if h.digest() == self.layout.sha256:
                return b"".join(combo)
        raise _mismatch(
            f"the {self.layout.total_size} bytes reassembled from {self.layout.count} chunks do"
            f" not hash to {self.layout.hex} ({tried} combination{'s' * (tried != 1)} tried)",
            sha256=self.layout.hex,
        )


def check_reference(sha256: bytes, size: int, refs: Sequence[Attachment]) -> Attachment:
    """The reference (from accepted reports) that verified bytes of this SHA-256 and size meet.

    Raises:
        VerificationError: ``attachment_unreferenced`` (no reference to this SHA-256),
            ``attachment_size_mismatch`` (referenced, but with another size).
    """
    mine = [r for r in refs if r.sha256 == sha256]
    if not mine:
        raise VerificationError(
            Reason.ATTACHMENT_UNREFERENCED,
            f"no accepted report references attachment {sha256.hex()}",
            sha256=sha256.hex(),
        )
    for ref in mine:
        if ref.size == size:
            return ref
    raise VerificationError(
        Reason.ATTACHMENT_SIZE_MISMATCH,
        f"attachment {sha256.hex()} has {size} bytes; the report says {mine[0].size}",
        sha256=sha256.hex(),
    )


def check_upload(
    hex_digest: str, body: bytes, refs: Sequence[Attachment], *, max_bytes: int
) -> Attachment:
    """The gateway's verdict on ``PUT /v1/attachments/<hex_digest>``.

    Args:
        refs: what this organization's accepted reports say about that SHA-256.

    Returns:
        The matching reference.

    Raises:
        VerificationError: ``malformed`` (not a hex SHA-256), ``oversized``,
            ``attachment_unreferenced``, ``attachment_hash_mismatch``,
            ``attachment_size_mismatch``.
    """
    digest = parse_hex_digest(hex_digest)
    if len(body) > max_bytes:
        raise VerificationError(Reason.OVERSIZED, f"{len(body)} bytes > limit {max_bytes}")
    if not any(r.sha256 == digest for r in refs):
        check_reference(digest, len(body), refs)  # raises attachment_unreferenced
    if hashlib.sha256(body).digest() != digest:
        raise _mismatch(f"the {len(body)} bytes uploaded do not hash to {hex_digest}")
    return check_reference(digest, len(body), refs)


@dataclass(frozen=True, slots=True)
class Completed:
    """An attachment reassembled and verified against its SHA-256 (and size)."""

    layout: Layout
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Waiting:
    """Chunks still missing (or a duplicate / candidate that changed nothing yet)."""

    layout: Layout
    added: Added
    missing: int


class Reassembler:
    """In-memory reassembly of a stream of chunk records (the node keeps the same in SQLite).

    :meth:`feed` returns what one record did; once an attachment completed, later chunks of it
    are checked against the verified bytes (a different chunk is ``attachment_hash_mismatch``).
    """

    def __init__(self, *, max_total_bytes: int = MAX_ATTACHMENT_BYTES) -> None:
        self.max_total_bytes = max_total_bytes
        self.assemblies: dict[Layout, Assembly] = {}
        self.done: dict[bytes, bytes] = {}

    def feed(self, raw: bytes) -> Completed | Waiting:
        """Take one record value.

        Raises:
            VerificationError: ``malformed``, ``oversized``, ``invalid_field`` (the record);
                ``attachment_hash_mismatch`` (a complete set of chunks that does not hash
                right, or a chunk contradicting an attachment already verified); the chunks
                stay held, so a genuine version arriving later still completes it.
        """
        chunk = Chunk.decode(raw, max_total_bytes=self.max_total_bytes)
        lay = chunk.layout
        if lay.sha256 in self.done:
            if not matches(chunk, self.done[lay.sha256]):
                raise _mismatch(
                    f"chunk {chunk.index} contradicts verified attachment {lay.hex}",
                    sha256=lay.hex,
                )
            return Waiting(lay, Added.DUPLICATE, 0)
        asm = self.assemblies.setdefault(lay, Assembly(lay))
        added = asm.add(chunk)
        if not asm.complete or added is Added.DUPLICATE:
            return Waiting(lay, added, len(asm.missing()))
        data = asm.resolve()
        self.done[lay.sha256] = data
        for other in [k for k in self.assemblies if k.sha256 == lay.sha256]:
            del self.assemblies[other]
        return Completed(lay, data)

    def pending(self) -> Iterator[Assembly]:
        """Assemblies not completed yet."""
        return iter(list(self.assemblies.values()))
