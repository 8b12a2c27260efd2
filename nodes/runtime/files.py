"""File formats the command line reads and writes: key files and the mandate file.

Key files (formats in :mod:`nodes.runtime.keyfile`, mode 0600) are written encrypted
(:func:`write_encrypted_key`: scrypt and AES-256-GCM under the passphrase of the key's kind) or,
for tests and the demo only, in plaintext (:func:`write_key`). :func:`read_key` reads both: an
encrypted file with the passphrase of the kind it states (``$OBUS_ROOT_KEY_PASSPHRASE``,
``$OBUS_NODE_KEY_PASSPHRASE``, else a prompt on a terminal), a plaintext one with one warning
event (``key_file_unencrypted``) naming the file and ``obus key encrypt FILE --kind KIND``,
which :func:`encrypt_key_file` implements. An organization's X25519 decryption key file
(``obus org enckey --private-out``) is read the same way by :func:`read_decryption_key_file`
(``$OBUS_DECRYPTION_KEY_PASSPHRASE``; the fix of a plaintext one is ``--kind decryption``). A
process decrypts each file once: the key is kept for the same path and bytes, so a command that
needs the key twice asks once.

A mandate file holds the raw bytes of a signed mandate envelope, exactly as published on
``obus.mandate``.

A mandate ends at its ``not_after``. After that nothing may be signed or published under it,
but everything it logged can still be read and verified: :func:`load_mandate` opens the file in
normal mode (an ended mandate is refused) or in archive mode (accepted, for commands that sign
and publish nothing). Either way the file itself is verified as of its own end, so no verdict
depends on this machine's clock; the clock only decides whether the mission has ended
(:func:`mandate_ended`), which is what gates signing and publishing.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import structlog

from bus.ceremony import format_time_ms
from bus.crypto import SigningKey
from bus.errors import BusError, ConfigError, KeyStoreError
from bus.model import Mandate
from bus.sealed import DecryptionKey
from bus.trust import decode_mandate_record, verify_mandate
from nodes.runtime.keyfile import (
    SCRYPT_N,
    KeyFile,
    KeyKind,
    PassphraseSource,
    decrypt_decryption_key,
    decrypt_key,
    encrypt_decryption_key,
    encrypt_key,
    new_passphrase,
    parse_key_file,
    passphrase_from_env_or_terminal,
    plaintext_key,
    read_plaintext_decryption_key,
    read_plaintext_key,
    replace_key_file,
    write_new_key_file,
)

log = structlog.get_logger(__name__)

# Keys this process already read: (resolved path, SHA-256 of the file's bytes) -> key.
_loaded: dict[tuple[str, bytes], SigningKey | DecryptionKey] = {}


def write_key(path: Path, key: SigningKey) -> None:
    """Write a plaintext key file readable only by its owner (refuses to overwrite): for tests
    and the demo (``obus keygen --plaintext-key``); real keys use :func:`write_encrypted_key`."""
    write_new_key_file(path, plaintext_key(key))


def write_encrypted_key(
    path: Path, key: SigningKey, *, kind: KeyKind, passphrase: str, scrypt_n: int = SCRYPT_N
) -> None:
    """Write a key file encrypted under ``passphrase`` (mode 0600; refuses to overwrite).

    Raises:
        KeyStoreError: the file exists or the passphrase is too short.
    """
    write_new_key_file(path, encrypt_key(key, passphrase, kind, n=scrypt_n))


def _read_key_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(
            f"cannot read key file {path}: {exc.strerror or exc}", path=str(path)
        ) from exc


def _warn_unencrypted(path: Path, kind: KeyKind) -> None:
    log.warning(
        "key_file_unencrypted", path=str(path), kind=kind.value,
        fix=f"obus key encrypt {path} --kind {kind.value}",
    )  # fmt: skip


def read_key(
    path: Path,
    *,
    kind: KeyKind = KeyKind.NODE,
    passphrase: PassphraseSource = passphrase_from_env_or_terminal,
) -> SigningKey:
    """Read a key file, encrypted or plaintext.

    Args:
        path: the key file.
        kind: the key the command expects (a node key unless it says otherwise); a file that
            states another kind is refused.
        passphrase: where the passphrase of an encrypted file comes from (default: the kind's
            variable, else a prompt on a terminal).

    Raises:
        KeyStoreError: missing or malformed file, a key of another kind, a wrong passphrase
            (naming where it came from).
        ConfigError: an encrypted file and no passphrase at hand (naming the variable).
        ValueError: ``kind`` is ``decryption`` (not a signing key; see
            :func:`read_decryption_key_file`).
    """
    if kind is KeyKind.DECRYPTION:
        raise ValueError("a decryption key is read with read_decryption_key_file")
    data = _read_key_bytes(path)
    cache_key = (str(path.resolve()), hashlib.sha256(data).digest())
    cached = _loaded.get(cache_key)
    if isinstance(cached, SigningKey):
        return cached
    parsed = _parse_expecting(data, path, kind)
    if parsed.encrypted:
        key = decrypt_key(parsed, passphrase(kind, path), source=str(path))
    else:
        key = read_plaintext_key(parsed, source=str(path))
        _warn_unencrypted(path, kind)
    _loaded[cache_key] = key
    return key


def read_decryption_key_file(
    path: Path, *, passphrase: PassphraseSource = passphrase_from_env_or_terminal
) -> DecryptionKey:
    """Read an organization's X25519 decryption key file (``obus org enckey --private-out``),
    encrypted or plaintext (one ``key_file_unencrypted`` warning naming ``obus key encrypt FILE
    --kind decryption``).

    Args:
        path: the key file.
        passphrase: where the passphrase of an encrypted file comes from (default:
            ``$OBUS_DECRYPTION_KEY_PASSPHRASE``, else a prompt on a terminal).

    Raises:
        KeyStoreError: missing or malformed file, an Ed25519 key file, a wrong passphrase
            (naming where it came from) or an altered file.
        ConfigError: an encrypted file and no passphrase at hand (naming the variable).
    """
    kind = KeyKind.DECRYPTION
    data = _read_key_bytes(path)
    cache_key = (str(path.resolve()), hashlib.sha256(data).digest())
    cached = _loaded.get(cache_key)
    if isinstance(cached, DecryptionKey):
        return cached
    parsed = _parse_expecting(data, path, kind)
    if parsed.encrypted:
        key = decrypt_decryption_key(parsed, passphrase(kind, path), source=str(path))
    else:
        key = read_plaintext_decryption_key(parsed, source=str(path))
        _warn_unencrypted(path, kind)
    _loaded[cache_key] = key
    return key


def _parse_expecting(data: bytes, path: Path, kind: KeyKind) -> KeyFile:
    """Parse a key file and refuse one that states another kind than ``kind`` (every X25519
    file states ``decryption``; an Ed25519 file without a kind is taken as ``kind``)."""
    parsed = parse_key_file(data, source=str(path))
    if (parsed.kind is not None and parsed.kind != kind) or (
        parsed.kind is None and kind is KeyKind.DECRYPTION
    ):
        held = f"a {parsed.kind}" if parsed.kind else "an Ed25519 signing"
        raise KeyStoreError(
            f"{path} holds {held} key; a {kind} key is expected here", path=str(path)
        )
    return parsed


def encrypt_key_file(
    path: Path,
    *,
    kind: KeyKind,
    passphrase: PassphraseSource = new_passphrase,
    scrypt_n: int = SCRYPT_N,
) -> tuple[SigningKey | DecryptionKey | None, KeyKind | None]:
    """Encrypt a plaintext key file in place (atomically, mode 0600); idempotent.

    ``kind`` ``decryption`` encrypts a plaintext X25519 decryption key file (and nothing else);
    the other kinds a plaintext Ed25519 key file (and never an X25519 one).

    Returns:
        (the key, None) when the file was encrypted now; (None, the kind it states) when it
        already was, untouched.

    Raises:
        KeyStoreError: missing or malformed file, a plaintext key of the other algorithm (left
            as it is), or a passphrase too short.
        ConfigError: no passphrase at hand (naming the variable).
    """
    data = _read_key_bytes(path)
    parsed = parse_key_file(data, source=str(path))
    if parsed.encrypted:
        return None, parsed.kind
    if parsed.x25519 != (kind is KeyKind.DECRYPTION):
        held = "an X25519 decryption" if parsed.x25519 else "an Ed25519 signing"
        raise KeyStoreError(
            f"{path} holds {held} key, not a {kind} key; left as it is", path=str(path)
        )
    if parsed.x25519:
        x_key = read_plaintext_decryption_key(parsed, source=str(path))
        text = passphrase(kind, path).text
        replace_key_file(path, encrypt_decryption_key(x_key, text, n=scrypt_n))
        return x_key, None
    key = read_plaintext_key(parsed, source=str(path))
    replace_key_file(path, encrypt_key(key, passphrase(kind, path).text, kind, n=scrypt_n))
    return key, None


def load_mandate(path: Path, *, archive: bool = False) -> tuple[Mandate, bytes]:
    """Read and verify the out-of-band mandate file (its own threshold of organizations).

    Args:
        path: the signed mandate file.
        archive: False (normal mode) refuses a mandate that has ended; True (archive mode)
            accepts it, for a command that only reads and verifies what the mission logged.

    Returns:
        The mandate and the envelope bytes.

    Raises:
        ConfigError: the file is missing or does not verify, with the reason; in normal mode,
            also when the mandate has ended (naming the date and what still works).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            "mandate", f"cannot read {path}: {exc.strerror}", "pass --mandate FILE"
        ) from exc
    mandate = open_mandate(raw, source=str(path))
    if not archive:
        refuse_if_ended(mandate, source=str(path))
    return mandate, raw


def open_mandate(raw: bytes, *, source: str) -> Mandate:
    """Verify a root mandate's bytes as of its own end: size, payload type, signatures by its
    own threshold of organizations. Whether it has ended is not judged here.

    Raises:
        ConfigError: the bytes do not verify (``source`` names where they came from).
    """
    try:
        envelope = decode_mandate_record(raw)
        claimed = Mandate.decode(envelope.payload)
        return verify_mandate(envelope, previous=None, now_ms=claimed.not_after_ms)
    except BusError as exc:
        raise ConfigError(
            "mandate", f"{source} does not verify: {exc.message}", "use the signed mandate file"
        ) from exc


def mandate_ended(mandate: Mandate, *, now_ms: int | None = None) -> bool:
    """Whether the mandate's ``not_after`` has passed (this machine's clock unless ``now_ms``)."""
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return now > mandate.not_after_ms


def ended_on(mandate: Mandate) -> str:
    """The mandate's end, for people: RFC 3339 UTC."""
    return format_time_ms(mandate.not_after_ms)


def refuse_if_ended(
    mandate: Mandate, *, source: str | None = None, now_ms: int | None = None
) -> None:
    """Refuse to sign or publish anything under a mandate that has ended.

    Raises:
        ConfigError: the mandate has ended; the message names its end and what still works.
    """
    if not mandate_ended(mandate, now_ms=now_ms):
        return
    where = f"{source}: " if source else ""
    raise ConfigError(
        "mandate",
        f"{where}mandate {mandate.mandate_id} version {mandate.version} ended on "
        f"{ended_on(mandate)}; nothing is signed or published under an ended mandate",
        "read the mission with a read-only command (obus audit, obus log export, obus audit "
        "prove, obus dashboard, obus statement status, obus node: archive mode); to continue "
        "it, pass the file of a later version that extends not_after",
    )


def archive_notice(mandate: Mandate) -> str:
    """The one line a command prints when it works on an ended mandate."""
    return (
        f"mandate {mandate.mandate_id} version {mandate.version} ended on {ended_on(mandate)}: "
        "archive mode, read-only (records are judged at their own log times; nothing is signed "
        "or published)"
    )
