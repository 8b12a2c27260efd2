"""Signed Merkle checkpoints of the witnessed log: C2SP signed notes, checkpoints, cosignatures.

Pure code (no I/O, no clock): callers pass the time and the log position they judge at.

Byte format of a record on ``<prefix>checkpoints``
---------------------------------------------------
Every record value is one C2SP *signed note* (``signed-note.md``), UTF-8, whose text is a C2SP
*checkpoint* (``tlog-checkpoint.md``) without extension lines::

    obus/<mandate id>/<topic>/<partition>\\n      origin line, e.g. obus/jmm-2026/obus.reports.un/0
    <tree size>\\n                                ASCII decimal, no sign, no leading zero
    <root hash>\\n                                standard padded base64 of the 32-byte root
    \\n                                           a blank line ends the text
    \u2014 <key name> <base64(key hash || signature body)>\\n     1 to 100 signature lines

* The tree is RFC 6962 (:mod:`bus.merkle`) over the exact record values of that topic-partition
  in offset order: leaf ``i`` is the value of the ``i``-th record (a null value counts as empty
  bytes). Report topics keep every record, so leaf ``i`` is the record at offset ``i``.
* ``\u2014`` is U+2014 EM DASH, followed by one space.
* ``<key name>`` of a node key is ``obus/<org>/<subject id>`` of its accreditation
  (:func:`key_name`); names never contain spaces or ``+``.
* ``<key hash>`` is 4 bytes: the start of SHA-256(key name || 0x0A || type || 32-byte Ed25519
  public key), as in C2SP signed-note.
* Type ``0x01`` (Ed25519 note signature): the body is the 64-byte Ed25519 signature of the text.
  The node that *publishes* a checkpoint signs it this way.
* Type ``0x04`` (C2SP ``tlog-cosignature`` v1): the body is an 8-byte big-endian UNIX time in
  seconds followed by the 64-byte Ed25519 signature of
  ``b"cosignature/v1\\ntime " + decimal(seconds) + b"\\n" + text``. Another organization's node
  that found the checkpoint consistent with its own tree *cosigns* it this way, and publishes
  the same text with only its cosignature line as a record of its own.

The text is the unit of agreement: checkpoint records and cosignature records with the same text
can be merged into one note carrying every organization's line. Notes are parsed with the
semantics of Go's ``golang.org/x/mod/sumdb/note.Open`` (pinned by the vectors in
``tests/vectors/signed-note.json``): at most 100 signature lines; lines by unknown keys are
ignored; one invalid line by a known key rejects the note; a note with no verified line is
rejected. Signatures are checked with the one strict Ed25519 rule of :mod:`bus.crypto`.

Domain separation: a node key also signs DSSE envelopes, whose signed bytes begin with
``DSSEv1 ``; checkpoint texts begin with ``obus/`` and cosigned messages with ``cosignature/v1``,
so no signature can be replayed from one use to another.

Which signatures count (:func:`verify_checkpoint`): the key must be accredited by its
organization under the mandate with role ``NODE`` and usable (validity window, revocation). The
clock is the broker's append time of the checkpoint record and the position is its offset on
the checkpoints topic: a node-key revocation with ``last_valid_seq = K`` stops counting that key
on checkpoint records at offsets ``>= K`` (``seq = offset + 1``), the same log-position rule as
for observers, so every reader decides identically.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from bus import crypto
from bus.crypto import SigningKey
from bus.errors import Reason, VerificationError
from bus.merkle import HASH_SIZE, MAX_TREE_SIZE
from bus.model import Accreditation, Role
from bus.trust import KeyRing

__all__ = [
    "COSIGNATURE_PREFIX",
    "MAX_SIGNATURES",
    "SIG_COSIGNATURE_V1",
    "SIG_ED25519",
    "Attestation",
    "Checkpoint",
    "Note",
    "NoteKeys",
    "NoteSignature",
    "OpenedNote",
    "VerifiedCheckpoint",
    "Verifier",
    "cosign",
    "cosignature_message",
    "format_vkey",
    "key_name",
    "merge_notes",
    "note_key_hash",
    "open_note",
    "origin_for",
    "parse_checkpoint",
    "parse_note",
    "parse_origin",
    "parse_vkey",
    "sign_note",
    "signed_checkpoint",
    "verify_checkpoint",
]

SIG_ED25519: Final = 0x01
"""C2SP signed-note signature type of a plain Ed25519 note signature."""
SIG_COSIGNATURE_V1: Final = 0x04
"""C2SP tlog-cosignature signature type (Ed25519 over a timestamped checkpoint)."""
MAX_SIGNATURES: Final = 100
"""Go's note.Open refuses notes with more signature lines: bounded work per record."""
COSIGNATURE_PREFIX: Final = b"cosignature/v1\ntime "
"""Start of the message a tlog-cosignature/v1 signs (C2SP tlog-cosignature.md)."""

_SIG_PREFIX: Final = "\u2014 ".encode()  # EM DASH + space opens every signature line
_KEY_HASH_BYTES: Final = 4
_TIMESTAMP_BYTES: Final = 8
_ORIGIN_PREFIX: Final = "obus/"
_KEY_NAME_PREFIX: Final = "obus/"
# Kafka topic names: [a-zA-Z0-9._-], at most 249 characters.
_ORIGIN_RE: Final = re.compile(
    r"^obus/(?P<mandate>[a-z0-9][a-z0-9_-]{0,62})/(?P<topic>[A-Za-z0-9._-]{1,249})"
    r"/(?P<partition>0|[1-9][0-9]{0,9})$"
)
_SIZE_RE: Final = re.compile(r"^(0|[1-9][0-9]*)$")
_HEX8_RE: Final = re.compile(r"^[0-9a-fA-F]{8}$")
_KIND_CHECKPOINT: Final = "checkpoint"
_KIND_COSIGNATURE: Final = "cosignature"


def _malformed(problem: str, **context: object) -> VerificationError:
    return VerificationError(Reason.MALFORMED, f"signed note: {problem}", **context)


# ---------------------------------------------------------------------------------------------
# Names, key hashes, verifier keys


def key_name(org: str, subject_id: str) -> str:
    """The signed-note key name of a node key: ``obus/<org>/<subject id>``."""
    return f"{_KEY_NAME_PREFIX}{org}/{subject_id}"


def _valid_name(name: str) -> bool:
    # C2SP signed-note: non-empty, no Unicode whitespace, no "+".
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def note_key_hash(name: str, sig_type: int, public_key: bytes) -> bytes:
    """The 4-byte key hash of a signed-note key: SHA-256(name || 0x0A || type || key)[:4].

    Raises:
        VerificationError: ``MALFORMED_KEY`` for a name that C2SP forbids.
    """
    if not _valid_name(name):
        raise VerificationError(Reason.MALFORMED_KEY, f"invalid key name {name!r}")
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()
    return digest[:_KEY_HASH_BYTES]


@dataclass(frozen=True, slots=True)
class Verifier:
    """A signed-note verifier key: name, 4-byte key hash, signature type and Ed25519 key."""

    name: str
    key_hash: bytes
    sig_type: int
    public_key: bytes

    @classmethod
    def for_key(cls, name: str, public_key: bytes, sig_type: int = SIG_ED25519) -> Verifier:
        """The verifier of ``public_key`` under ``name`` for one signature type."""
        return cls(name, note_key_hash(name, sig_type, public_key), sig_type, public_key)


def format_vkey(name: str, public_key: bytes, sig_type: int = SIG_ED25519) -> str:
    """Go/C2SP verifier key text ``<name>+<hex key hash>+<base64(type || key)>``."""
    kh = note_key_hash(name, sig_type, public_key)
    return f"{name}+{kh.hex()}+{base64.b64encode(bytes([sig_type]) + public_key).decode()}"


def parse_vkey(vkey: str) -> Verifier:
    """Parse a verifier key as Go's ``note.NewVerifier`` does.

    Raises:
        VerificationError: ``MALFORMED_KEY`` when the text, the key hash, the type or the key
            length is wrong.
    """
    name, _, rest = vkey.partition("+")
    hash_hex, _, key_b64 = rest.partition("+")
    if not _HEX8_RE.fullmatch(hash_hex):
        raise VerificationError(Reason.MALFORMED_KEY, "verifier key hash must be 8 hex digits")
    key_hash = bytes.fromhex(hash_hex)
    try:
        raw = base64.b64decode(key_b64, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text (found by make fuzz)
        raise VerificationError(Reason.MALFORMED_KEY, f"malformed verifier key: {exc}") from exc
    if not _valid_name(name) or not raw:
        raise VerificationError(Reason.MALFORMED_KEY, "malformed verifier key")
    if note_key_hash(name, raw[0], raw[1:]) != key_hash:
        raise VerificationError(Reason.MALFORMED_KEY, "verifier key hash does not match")
    sig_type, public_key = raw[0], raw[1:]
    if sig_type not in (SIG_ED25519, SIG_COSIGNATURE_V1):
        raise VerificationError(Reason.MALFORMED_KEY, f"unknown signature type {sig_type:#04x}")
    if len(public_key) != crypto.PUBLIC_KEY_BYTES:
        raise VerificationError(Reason.MALFORMED_KEY, "Ed25519 key must be 32 bytes")
    return Verifier(name, key_hash, sig_type, public_key)


# ---------------------------------------------------------------------------------------------
# Signed notes


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, 4-byte key hash and the rest of the decoded bytes."""

    name: str
    key_hash: bytes
    body: bytes

    def line(self) -> bytes:
        """The signature line, including the leading em dash and the final newline."""
        b64 = base64.b64encode(self.key_hash + self.body).decode()
        return _SIG_PREFIX + f"{self.name} {b64}\n".encode()

    @property
    def timestamp(self) -> int | None:
        """The cosignature time in UNIX seconds, when the body has the cosignature layout."""
        if len(self.body) != _TIMESTAMP_BYTES + crypto.SIGNATURE_BYTES:
            return None
        return int.from_bytes(self.body[:_TIMESTAMP_BYTES], "big")


@dataclass(frozen=True, slots=True)
class Note:
    """A signed note: text (ending in a newline) and its signature lines in order."""

    text: bytes
    signatures: tuple[NoteSignature, ...]

    def encode(self) -> bytes:
        """``text || "\\n" || lines``: the exact record bytes."""
        return self.text + b"\n" + b"".join(s.line() for s in self.signatures)


def _check_note_chars(data: bytes) -> None:
    try:
        decoded = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise _malformed("not valid UTF-8") from exc
    # Go note.Open: no ASCII control characters other than newline.
    if any(ord(c) < 0x20 and c != "\n" for c in decoded):
        raise _malformed("control character in note")


def parse_note(data: bytes, *, max_signatures: int = MAX_SIGNATURES) -> Note:
    """Split a signed note into text and signature lines, without verifying anything.

    Raises:
        VerificationError: ``MALFORMED`` for anything Go's ``note.Open`` calls a malformed note.
    """
    if not isinstance(data, bytes):
        raise _malformed("note must be bytes")
    _check_note_chars(data)
    split = data.rfind(b"\n\n")
    if split < 0:
        raise _malformed("no blank line before the signatures")
    text, block = data[: split + 1], data[split + 2 :]
    if not block or not block.endswith(b"\n"):
        raise _malformed("signature block missing or not newline-terminated")
    sigs: list[NoteSignature] = []
    for raw_line in block[:-1].split(b"\n"):
        if not raw_line.startswith(_SIG_PREFIX):
            raise _malformed("signature line must start with an em dash and a space")
        name_b, sep, b64 = raw_line[len(_SIG_PREFIX) :].partition(b" ")
        name = name_b.decode()
        try:
            decoded = base64.b64decode(b64, validate=True) if sep else b""
        except binascii.Error:
            decoded = b""
        if not _valid_name(name) or len(decoded) <= _KEY_HASH_BYTES:
            raise _malformed("bad signature line", key_name=name)
        if len(sigs) == max_signatures:
            raise _malformed(f"more than {max_signatures} signatures")
        sigs.append(NoteSignature(name, decoded[:_KEY_HASH_BYTES], decoded[_KEY_HASH_BYTES:]))
    return Note(text, tuple(sigs))


def cosignature_message(text: bytes, timestamp: int) -> bytes:
    """The bytes a tlog-cosignature/v1 signs: ``cosignature/v1\\ntime <t>\\n`` || text."""
    return COSIGNATURE_PREFIX + str(timestamp).encode() + b"\n" + text


def sign_note(text: bytes, key: SigningKey, name: str) -> NoteSignature:
    """A type 0x01 (Ed25519) signature line over ``text``."""
    kh = note_key_hash(name, SIG_ED25519, key.public_key)
    return NoteSignature(name, kh, key.sign(text))


def cosign(text: bytes, key: SigningKey, name: str, timestamp: int) -> NoteSignature:
    """A type 0x04 (tlog-cosignature/v1) signature line over ``text`` at ``timestamp`` seconds.

    Raises:
        ValueError: ``timestamp`` is not a uint64.
    """
    if not 0 <= timestamp < 2**64:
        raise ValueError("cosignature timestamp must be a uint64")
    kh = note_key_hash(name, SIG_COSIGNATURE_V1, key.public_key)
    sig = key.sign(cosignature_message(text, timestamp))
    return NoteSignature(name, kh, timestamp.to_bytes(_TIMESTAMP_BYTES, "big") + sig)


def _verify_line(verifier: Verifier, text: bytes, sig: NoteSignature) -> int | None:
    """Verify one line; returns the cosignature time (None for type 0x01)."""
    if verifier.sig_type == SIG_COSIGNATURE_V1:
        ts = sig.timestamp
        if ts is None:
            raise VerificationError(
                Reason.BAD_SIGNATURE, f"cosignature by {sig.name} has the wrong length"
            )
        crypto.verify(
            verifier.public_key,
            cosignature_message(text, ts),
            sig.body[_TIMESTAMP_BYTES:],
        )
        return ts
    crypto.verify(verifier.public_key, text, sig.body)
    return None


@dataclass(frozen=True, slots=True)
class OpenedNote:
    """A note whose signatures by known keys all verified.

    ``verified`` holds (verifier, line, cosignature time or None) once per known key;
    ``unverified`` the distinct lines by keys not known to the caller.
    """

    text: bytes
    verified: tuple[tuple[Verifier, NoteSignature, int | None], ...]
    unverified: tuple[NoteSignature, ...]


VerifierIndex = Mapping[tuple[str, bytes], Verifier]


def open_note(data: bytes, verifiers: VerifierIndex) -> OpenedNote:
    """Parse a note and verify every line by a known key (Go ``note.Open`` semantics).

    Args:
        data: the note bytes.
        verifiers: known keys by (key name, 4-byte key hash).

    Raises:
        VerificationError: ``MALFORMED`` (see :func:`parse_note`); ``BAD_SIGNATURE`` when a
            line by a known key does not verify (the whole note is refused); ``UNKNOWN_KEY``
            when no line is by a known key.
    """
    note = parse_note(data)
    verified: list[tuple[Verifier, NoteSignature, int | None]] = []
    unverified: list[NoteSignature] = []
    seen: set[tuple[str, bytes]] = set()
    for sig in note.signatures:
        v = verifiers.get((sig.name, sig.key_hash))
        if v is None:
            if sig not in unverified:
                unverified.append(sig)
            continue
        if (sig.name, sig.key_hash) in seen:
            continue  # a repeated line by one key counts once
        seen.add((sig.name, sig.key_hash))
        try:
            ts = _verify_line(v, note.text, sig)
        except VerificationError as exc:
            raise VerificationError(
                Reason.BAD_SIGNATURE,
                f"invalid signature for key {v.name}+{v.key_hash.hex()}",
                key_name=v.name,
            ) from exc
        verified.append((v, sig, ts))
    if not verified:
        raise VerificationError(
            Reason.UNKNOWN_KEY,
            "note has no verifiable signatures",
            unverified=[f"{s.name}+{s.key_hash.hex()}" for s in unverified],
        )
    return OpenedNote(note.text, tuple(verified), tuple(unverified))


# ---------------------------------------------------------------------------------------------
# Checkpoints


def origin_for(mandate_id: str, topic: str, partition: int) -> str:
    """The checkpoint origin of a report topic-partition: ``obus/<mandate>/<topic>/<p>``."""
    return f"{_ORIGIN_PREFIX}{mandate_id}/{topic}/{partition}"


def parse_origin(origin: str) -> tuple[str, str, int]:
    """(mandate id, topic, partition) of an obus origin.

    Raises:
        VerificationError: ``CHECKPOINT_UNKNOWN_ORIGIN`` when it is not of that form.
    """
    m = _ORIGIN_RE.fullmatch(origin)
    if m is None:
        raise VerificationError(
            Reason.CHECKPOINT_UNKNOWN_ORIGIN, f"origin {origin!r} is not obus/<mandate>/<t>/<p>"
        )
    return m["mandate"], m["topic"], int(m["partition"])


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: origin, tree size and root hash (plus C2SP extension lines, if any)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise VerificationError(Reason.INVALID_FIELD, "checkpoint origin must be one line")
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise VerificationError(Reason.INVALID_FIELD, "checkpoint size must be a uint64")
        if any(not e or "\n" in e for e in self.extensions):
            raise VerificationError(Reason.INVALID_FIELD, "extension lines must be non-empty")

    def text(self) -> bytes:
        """The note text: origin, size and base64 root, each line newline-terminated."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return ("\n".join([*lines, *self.extensions]) + "\n").encode()

    @property
    def partition_ref(self) -> tuple[str, int]:
        """(topic, partition) named by an obus origin (``CHECKPOINT_UNKNOWN_ORIGIN`` if not)."""
        _, topic, partition = parse_origin(self.origin)
        return topic, partition


def parse_checkpoint(text: bytes, *, hash_size: int | None = HASH_SIZE) -> Checkpoint:
    """Parse checkpoint text (C2SP tlog-checkpoint; transparency-dev/formats semantics).

    Args:
        text: the note text, newline-terminated.
        hash_size: required root length; None accepts any (as transparency-dev/formats does).

    Raises:
        VerificationError: ``MALFORMED`` when a line is missing, the origin is empty, the size is
            not a canonical uint64, the root is not canonical base64 of ``hash_size`` bytes, or
            an extension line is empty (C2SP: extension lines are non-empty).
    """
    try:
        decoded = text.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise VerificationError(Reason.MALFORMED, "checkpoint is not UTF-8") from exc
    if not decoded.endswith("\n"):
        raise VerificationError(Reason.MALFORMED, "checkpoint text must end with a newline")
    lines = decoded[:-1].split("\n")
    if len(lines) < 3:
        raise VerificationError(Reason.MALFORMED, "checkpoint needs origin, size and root lines")
    origin, size_s, root_s, *ext = lines
    if not origin:
        raise VerificationError(Reason.MALFORMED, "checkpoint origin is empty")
    # 20 digits hold any uint64; the length check first keeps int() cheap on hostile input.
    if len(size_s) > 20 or not _SIZE_RE.fullmatch(size_s) or int(size_s) > MAX_TREE_SIZE:
        raise VerificationError(Reason.MALFORMED, f"checkpoint size {size_s[:30]!r} not a uint64")
    try:
        root = base64.b64decode(root_s, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text (found by make fuzz)
        raise VerificationError(Reason.MALFORMED, "checkpoint root is not base64") from exc
    if base64.b64encode(root).decode() != root_s:
        raise VerificationError(Reason.MALFORMED, "checkpoint root is not canonical base64")
    if hash_size is not None and len(root) != hash_size:
        raise VerificationError(Reason.MALFORMED, f"checkpoint root must be {hash_size} bytes")
    if any(not e for e in ext):
        raise VerificationError(Reason.MALFORMED, "checkpoint extension lines must be non-empty")
    return Checkpoint(origin, int(size_s), root, tuple(ext))


def signed_checkpoint(checkpoint: Checkpoint, key: SigningKey, name: str) -> bytes:
    """The record bytes of a checkpoint signed (type 0x01) by one node key."""
    text = checkpoint.text()
    return Note(text, (sign_note(text, key, name),)).encode()


# ---------------------------------------------------------------------------------------------
# Verification against the mandate's accredited node keys


@dataclass(frozen=True, slots=True)
class Attestation:
    """One organization's verified signature on a checkpoint text.

    ``kind`` is ``"checkpoint"`` (type 0x01, the publisher) or ``"cosignature"`` (type 0x04);
    ``timestamp`` is the cosignature time in UNIX seconds (None for checkpoint signatures).
    """

    org: str
    subject_id: str
    key_id: bytes
    kind: str
    timestamp: int | None
    line: bytes


@dataclass(frozen=True, slots=True)
class VerifiedCheckpoint:
    """A checkpoint note with at least one valid signature by an accredited node key."""

    checkpoint: Checkpoint
    mandate_id: str
    topic: str
    partition: int
    attestations: tuple[Attestation, ...]

    @property
    def text(self) -> bytes:
        """The checkpoint text every attestation signed."""
        return self.checkpoint.text()

    @property
    def orgs(self) -> frozenset[str]:
        """Distinct organizations that signed or cosigned this text."""
        return frozenset(a.org for a in self.attestations)


class NoteKeys:
    """Signed-note verifiers for every accredited key of a key ring, under its key name.

    Every role is indexed so that a checkpoint signed by an observer key is refused as
    ``wrong_role`` rather than ignored. Build a new one after the key ring changes
    (:meth:`stale` tells).
    """

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring
        self._count = len(keyring)
        self.by_name_hash: dict[tuple[str, bytes], Verifier] = {}
        self.key_id: dict[tuple[str, bytes], bytes] = {}
        for acc in keyring.accreditations():
            name = key_name(acc.org, acc.subject_id)
            for t in (SIG_ED25519, SIG_COSIGNATURE_V1):
                v = Verifier.for_key(name, acc.public_key, t)
                self.by_name_hash[(name, v.key_hash)] = v
                self.key_id[(name, v.key_hash)] = acc.key_id

    def accreditation(self, verifier: Verifier) -> Accreditation:
        """The key ring's current accreditation of a verifier's key."""
        return self._keyring.lookup(self.key_id[(verifier.name, verifier.key_hash)])

    def stale(self) -> bool:
        """True when the key ring gained keys since this index was built."""
        return len(self._keyring) != self._count


def _attestation(acc: Accreditation, sig: NoteSignature, ts: int | None, kind: str) -> Attestation:
    return Attestation(acc.org, acc.subject_id, acc.key_id, kind, ts, sig.line())


def verify_checkpoint(
    data: bytes,
    keyring: KeyRing,
    *,
    at_ms: int,
    seq: int,
    keys: NoteKeys | None = None,
) -> VerifiedCheckpoint:
    """Verify a checkpoint record against the mandate's accredited node keys.

    Args:
        data: the record value (a signed note).
        keyring: accreditations and revocations under the mandate.
        at_ms: the broker's append time of the record (validity windows are judged at it).
        seq: the record's offset on the checkpoints topic plus one (revocation cut-off).
        keys: a prebuilt :class:`NoteKeys` index of ``keyring`` (rebuilt when None or stale).

    Returns:
        The checkpoint with one attestation per verified line.

    Raises:
        VerificationError: ``MALFORMED`` (note or checkpoint text), ``CHECKPOINT_UNKNOWN_ORIGIN``,
            ``WRONG_MANDATE`` (origin names another mandate), ``BAD_SIGNATURE``,
            ``UNKNOWN_KEY`` (no line by an accredited key), ``WRONG_ROLE``, ``KEY_EXPIRED``,
            ``KEY_REVOKED``.
    """
    if keys is None or keys.stale():
        keys = NoteKeys(keyring)
    opened = open_note(data, keys.by_name_hash)
    cp = parse_checkpoint(opened.text)
    if cp.extensions:
        raise VerificationError(Reason.MALFORMED, "obus checkpoints carry no extension lines")
    mandate_id, topic, partition = parse_origin(cp.origin)
    if mandate_id != keyring.mandate.mandate_id:
        raise VerificationError(
            Reason.WRONG_MANDATE, f"checkpoint for mandate {mandate_id!r}", origin=cp.origin
        )
    attestations: list[Attestation] = []
    for verifier, sig, ts in opened.verified:
        acc = keys.accreditation(verifier)
        keyring.check_usable(acc, role=Role.NODE, at_ms=at_ms, seq=seq)
        kind = _KIND_COSIGNATURE if verifier.sig_type == SIG_COSIGNATURE_V1 else _KIND_CHECKPOINT
        attestations.append(_attestation(acc, sig, ts, kind))
    return VerifiedCheckpoint(cp, mandate_id, topic, partition, tuple(attestations))


def merge_notes(text: bytes, lines: Iterable[bytes]) -> bytes:
    """One note carrying every distinct signature line of a text (checkpoint + cosignatures)."""
    unique = list(dict.fromkeys(lines))
    return text + b"\n" + b"".join(unique)
