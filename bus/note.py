"""C2SP signed notes as obus uses them: signature lines, cosignatures, key names, verifier keys.

Pure code (no I/O, no clock). The records of ``<prefix>seals`` (:mod:`bus.seal`: seals and
withdrawals) are signed notes, and a seal's proof (:mod:`bus.seal_proof`) carries one; this
module is the note layer under them, the texts are theirs.

Byte format of a signed note (C2SP ``signed-note.md``)
-----------------------------------------------------
UTF-8, a text of one or more newline-terminated lines, a blank line, then signature lines::

    <text, every line ending in \\n>
    \\n                                           a blank line ends the text
    \u2014 <key name> <base64(key hash || signature body)>\\n     1 to 100 signature lines

* ``\u2014`` is U+2014 EM DASH, followed by one space.
* ``<key name>`` of a node key is ``obus/<org>/<subject id>`` of its accreditation
  (:func:`key_name`); names never contain spaces or ``+``.
* ``<key hash>`` is 4 bytes: the start of SHA-256(key name || 0x0A || type || 32-byte Ed25519
  public key), as in C2SP signed-note (:func:`note_key_hash`).
* Type ``0x01`` (Ed25519 note signature): the body is the 64-byte Ed25519 signature of the text
  (:func:`sign_note`).
* Type ``0x04`` (C2SP ``tlog-cosignature`` v1): the body is an 8-byte big-endian UNIX time in
  seconds followed by the 64-byte Ed25519 signature of
  ``b"cosignature/v1\\ntime " + decimal(seconds) + b"\\n" + text`` (:func:`cosign`).
* Verifier keys are Go's text form ``<name>+<hex key hash>+<base64(type || key)>``
  (:func:`format_vkey`, :func:`parse_vkey`).

The text is the unit of agreement: records with the same text can be merged into one note
carrying every signer's line (:func:`merge_notes`). Notes are parsed with the semantics of Go's
``golang.org/x/mod/sumdb/note.Open`` (:func:`open_note`, pinned by the vectors in
``tests/vectors/signed-note.json``): at most 100 signature lines; lines by unknown keys are
ignored; one invalid line by a known key rejects the note; a note with no verified line is
rejected. Signatures are checked with the one strict Ed25519 rule of :mod:`bus.crypto`.

Domain separation: a node key also signs DSSE envelopes, whose signed bytes begin with
``DSSEv1 ``; cosigned messages begin with ``cosignature/v1`` and the texts of :mod:`bus.seal`
with ``obus-seal/v1/`` or ``obus-seal-withdraw/v1/``, so no signature can be replayed from one
use to another. Which signatures count, and at which position and time, is the business of the
module whose texts they sign (:func:`bus.seal.verify_seal`); :class:`NoteKeys` only indexes a
key ring's keys under their note names.
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
from bus.model import Accreditation
from bus.trust import KeyRing

__all__ = [
    "COSIGNATURE_PREFIX",
    "MAX_SIGNATURES",
    "SIG_COSIGNATURE_V1",
    "SIG_ED25519",
    "Note",
    "NoteKeys",
    "NoteSignature",
    "OpenedNote",
    "Verifier",
    "VerifierIndex",
    "cosign",
    "cosignature_message",
    "format_vkey",
    "key_name",
    "merge_notes",
    "note_key_hash",
    "open_note",
    "parse_note",
    "parse_vkey",
    "sign_note",
]

SIG_ED25519: Final = 0x01
"""C2SP signed-note signature type of a plain Ed25519 note signature."""
SIG_COSIGNATURE_V1: Final = 0x04
"""C2SP tlog-cosignature signature type (Ed25519 over a timestamped text)."""
MAX_SIGNATURES: Final = 100
"""Go's note.Open refuses notes with more signature lines: bounded work per record."""
COSIGNATURE_PREFIX: Final = b"cosignature/v1\ntime "
"""Start of the message a tlog-cosignature/v1 signs (C2SP tlog-cosignature.md)."""

_SIG_PREFIX: Final = "\u2014 ".encode()  # EM DASH + space opens every signature line
_KEY_HASH_BYTES: Final = 4
_TIMESTAMP_BYTES: Final = 8
_KEY_NAME_PREFIX: Final = "obus/"
_HEX8_RE: Final = re.compile(r"^[0-9a-fA-F]{8}$")


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


class NoteKeys:
    """Signed-note verifiers for every accredited key of a key ring, under its key name.

    Every role is indexed so that a seal signed by an observer key is refused as
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


def merge_notes(text: bytes, lines: Iterable[bytes]) -> bytes:
    """One note carrying every distinct signature line of a text (a seal's proposer and
    cosigners)."""
    unique = list(dict.fromkeys(lines))
    return text + b"\n" + b"".join(unique)
