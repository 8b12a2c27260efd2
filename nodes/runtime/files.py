"""File formats the command line reads and writes: key files and the mandate file.

A key file is JSON ``{"type": "obus-ed25519-seed", "seed": "<64 hex>"}`` written with mode 0600.
(Observer keys encrypted at rest come with the observer client.) A mandate file holds the raw
bytes of a signed mandate envelope, exactly as published on ``obus.mandate``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Final

from bus.crypto import SigningKey
from bus.errors import BusError, ConfigError, KeyStoreError
from bus.model import Envelope, Mandate
from bus.trust import verify_mandate

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


def load_mandate(path: Path, *, now_ms: int | None = None) -> tuple[Mandate, bytes]:
    """Read and verify the out-of-band mandate file (its own threshold of organizations).

    Returns:
        The mandate and the envelope bytes.

    Raises:
        ConfigError: the file is missing or does not verify, with the reason.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            "mandate", f"cannot read {path}: {exc.strerror}", "pass --mandate FILE"
        ) from exc
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    try:
        return verify_mandate(Envelope.decode(raw), previous=None, now_ms=now), raw
    except BusError as exc:
        raise ConfigError(
            "mandate", f"{path} does not verify: {exc.message}", "use the signed mandate file"
        ) from exc
