"""File formats the command line reads and writes: key files and the mandate file.

Key files (formats in :mod:`nodes.runtime.keyfile`, mode 0600) are written encrypted
(:func:`write_encrypted_key`: scrypt and AES-256-GCM under the passphrase of the key's kind) or,
for tests and the demo only, in plaintext (:func:`write_key`). :func:`read_key` reads both: an
encrypted file with the passphrase of the kind it states (``$OBUS_ROOT_KEY_PASSPHRASE``,
``$OBUS_NODE_KEY_PASSPHRASE``, else a prompt on a terminal), a plaintext one with one warning
event (``key_file_unencrypted``) naming the file and ``obus key encrypt FILE --kind KIND``,
which :func:`encrypt_key_file` implements. A process decrypts each file once: the key is kept
for the same path and bytes, so a command that needs the key twice asks once.

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
from bus.trust import decode_mandate_record, verify_mandate
from nodes.runtime.keyfile import (
    SCRYPT_N,
    KeyKind,
    PassphraseSource,
    decrypt_key,
    encrypt_key,
    new_passphrase,
    parse_key_file,
    passphrase_from_env_or_terminal,
    plaintext_key,
    read_plaintext_key,
    replace_key_file,
    write_new_key_file,
)

log = structlog.get_logger(__name__)

# Keys this process already read: (resolved path, SHA-256 of the file's bytes) -> key.
_loaded: dict[tuple[str, bytes], SigningKey] = {}


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
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(
            f"cannot read key file {path}: {exc.strerror or exc}", path=str(path)
        ) from exc
    cache_key = (str(path.resolve()), hashlib.sha256(data).digest())
    if cache_key in _loaded:
        return _loaded[cache_key]
    parsed = parse_key_file(data, source=str(path))
    if parsed.kind is not None and parsed.kind != kind:
        raise KeyStoreError(
            f"{path} holds a {parsed.kind} key; a {kind} key is expected here",
            path=str(path),
        )
    if parsed.encrypted:
        key = decrypt_key(parsed, passphrase(kind, path), source=str(path))
    else:
        key = read_plaintext_key(parsed, source=str(path))
        log.warning(
            "key_file_unencrypted", path=str(path), kind=kind.value,
            fix=f"obus key encrypt {path} --kind {kind.value}",
        )  # fmt: skip
    _loaded[cache_key] = key
    return key


def encrypt_key_file(
    path: Path,
    *,
    kind: KeyKind,
    passphrase: PassphraseSource = new_passphrase,
    scrypt_n: int = SCRYPT_N,
) -> tuple[SigningKey | None, KeyKind | None]:
    """Encrypt a plaintext key file in place (atomically, mode 0600); idempotent.

    Returns:
        (the key, None) when the file was encrypted now; (None, the kind it states) when it
        already was, untouched.

    Raises:
        KeyStoreError: missing or malformed file, or a passphrase too short.
        ConfigError: no passphrase at hand (naming the variable).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(
            f"cannot read key file {path}: {exc.strerror or exc}", path=str(path)
        ) from exc
    parsed = parse_key_file(data, source=str(path))
    if parsed.encrypted:
        return None, parsed.kind
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
