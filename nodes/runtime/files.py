"""File formats the command line reads and writes: key files and the mandate file.

A key file is JSON ``{"type": "obus-ed25519-seed", "seed": "<64 hex>"}`` written with mode 0600.
(Observer keys encrypted at rest come with the observer client.) A mandate file holds the raw
bytes of a signed mandate envelope, exactly as published on ``obus.mandate``.

A mandate ends at its ``not_after``. After that nothing may be signed or published under it,
but everything it logged can still be read and verified: :func:`load_mandate` opens the file in
normal mode (an ended mandate is refused) or in archive mode (accepted, for commands that sign
and publish nothing). Either way the file itself is verified as of its own end, so no verdict
depends on this machine's clock; the clock only decides whether the mission has ended
(:func:`mandate_ended`), which is what gates signing and publishing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Final

from bus.ceremony import format_time_ms
from bus.crypto import SigningKey
from bus.errors import BusError, ConfigError, KeyStoreError
from bus.model import Mandate
from bus.trust import decode_mandate_record, verify_mandate

KEY_TYPE: Final = "obus-ed25519-seed"


def write_key(path: Path, key: SigningKey) -> None:
    """Write a key file readable only by its owner (refuses to overwrite)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"type": KEY_TYPE, "seed": key.seed.hex()}).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyStoreError(f"{path} exists; refusing to overwrite a key", path=str(path)) from exc
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def read_key(path: Path) -> SigningKey:
    """Read a key file.

    Raises:
        KeyStoreError: missing file or wrong format (the message says which).
    """
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("type") != KEY_TYPE:
            raise KeyStoreError(f"{path}: not an {KEY_TYPE} key file", path=str(path))
        return SigningKey.from_seed(bytes.fromhex(doc["seed"]))
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise KeyStoreError(f"cannot read key file {path}: {exc}", path=str(path)) from exc


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
