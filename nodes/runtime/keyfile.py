"""Keys at rest: the key file formats of root, node and observer keys (Ed25519) and of an
organization's decryption key for restricted reports (X25519), and where the passphrase of an
encrypted one comes from. Both carry a 32-byte secret under one scheme (scrypt, AES-256-GCM:
:func:`_seal` and :func:`_unseal`); only the type, the associated data and the fields naming the
key differ.

Encrypted (Ed25519 signing) key file, format version 1 (JSON, UTF-8, mode 0600)::

    {
      "type": "obus-ed25519-encrypted",
      "version": 1,
      "kind": "root" | "node" | "observer",
      "key_id": "<64 hex: SHA-256 of the raw public key>",
      "public_key": "<64 hex>",
      "kdf": {"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": "<32 hex: 16 random bytes>"},
      "cipher": {"name": "aes-256-gcm", "nonce": "<24 hex: 12 random bytes>",
                 "ciphertext": "<96 hex: the 32-byte Ed25519 seed, then the 16-byte tag>"}
    }

scrypt derives the 32-byte AES-256-GCM key from the UTF-8 passphrase and the salt; the raw key id
is the AAD, so a file whose key id was swapped does not decrypt, and the decrypted seed must give
that key id again. ``kind`` says which passphrase opens the file (:data:`PASSPHRASE_ENV`); it is
a label, not a secret: changing it only changes which passphrase is tried. Files written by the
observer client before ``version`` and ``kind`` existed have neither: they read as version 1,
of the kind the reader expects. Any other version, KDF or cipher name is refused, and so is a
scrypt cost above :data:`MAX_SCRYPT_MEMORY` (a crafted file cannot make loading it unbounded).

Plaintext key file (written before keys were encrypted; now only by ``obus keygen
--plaintext-key``, tests and the demo)::

    {"type": "obus-ed25519-seed", "seed": "<64 hex>"}

It still loads (:mod:`nodes.runtime.files` logs one warning naming the file and the command
that encrypts it: ``obus key encrypt FILE --kind KIND``).

Encrypted decryption key file (``obus org enckey --private-out``), format version 1, the same
scheme and bounds::

    {
      "type": "obus-x25519-encrypted",
      "version": 1,
      "kind": "decryption",
      "org": "<the organization whose restricted reports it opens>",
      "key_id": "<64 hex: SHA-256 of the raw X25519 public key, as on the registry>",
      "public_key": "<64 hex>",
      "kdf": {... as above},
      "cipher": {... as above; the ciphertext holds the 32-byte X25519 private key}
    }

Its AAD is ``"obus-x25519-encrypted v1|" || org || "|" || raw key id`` (:func:`x25519_aad`), so
a file whose org or key id was swapped does not decrypt, and the decrypted key must give the
stated key id and public key again. Its passphrase is ``$OBUS_DECRYPTION_KEY_PASSPHRASE``; its
``kind`` is always ``decryption``, and no Ed25519 file may state that kind (an X25519 key is
never taken for a signing key, nor the reverse). The plaintext form (before decryption keys
were encrypted; now only ``obus org enckey --plaintext-key``, tests and the demo) still loads,
with the same one warning (``obus key encrypt FILE --kind decryption``)::

    {"type": "obus-x25519-private", "org": "<org>", "private": "<64 hex>"}

The passphrase of a kind comes from its environment variable, else from a prompt when standard
input is a terminal, never from the command line (every user of the machine can read argv in
``ps``). With neither, :func:`passphrase_from_env_or_terminal` refuses, naming the variable.
"""

from __future__ import annotations

import enum
import getpass
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from bus.crypto import SigningKey
from bus.errors import ConfigError, KeyStoreError
from bus.sealed import DecryptionKey

ENCRYPTED_TYPE: Final = "obus-ed25519-encrypted"
PLAINTEXT_TYPE: Final = "obus-ed25519-seed"
X25519_ENCRYPTED_TYPE: Final = "obus-x25519-encrypted"
X25519_PLAINTEXT_TYPE: Final = "obus-x25519-private"
_TYPES: Final = (ENCRYPTED_TYPE, PLAINTEXT_TYPE, X25519_ENCRYPTED_TYPE, X25519_PLAINTEXT_TYPE)
FORMAT_VERSION: Final = 1
# scrypt cost: n=2^15, r=8 is the interactive-login setting of the scrypt paper (Percival 2009)
# and RFC 7914's examples; about 32 MiB and ~0.1 s, paid once when a command loads its key.
SCRYPT_N: Final = 2**15
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
# The most memory a key file may ask scrypt for (128 * n * r bytes): 8 times the default.
MAX_SCRYPT_MEMORY: Final = 256 * 1024 * 1024
MAX_SCRYPT_P: Final = 16
MIN_PASSPHRASE_CHARS: Final = 8
# A key file is a few hundred bytes; anything much larger is not one (bounded cost to parse).
MAX_KEY_FILE_BYTES: Final = 64 * 1024


class KeyKind(enum.StrEnum):
    """Which key a file holds, and so which passphrase opens it."""

    ROOT = "root"  # an organization's root key: mandates, accreditations, revocations
    NODE = "node"  # a node's key (role NODE): seals, decisions, statements, receipts
    OBSERVER = "observer"  # a field observer's key (nodes/observer/device.py)
    # an organization's X25519 key for restricted reports (obus org enckey; the only X25519 kind)
    DECRYPTION = "decryption"


PASSPHRASE_ENV: Final[Mapping[KeyKind, str]] = {
    KeyKind.ROOT: "OBUS_ROOT_KEY_PASSPHRASE",
    KeyKind.NODE: "OBUS_NODE_KEY_PASSPHRASE",
    KeyKind.OBSERVER: "OBUS_PASSPHRASE",
    KeyKind.DECRYPTION: "OBUS_DECRYPTION_KEY_PASSPHRASE",
}


@dataclass(frozen=True, slots=True)
class Passphrase:
    """A passphrase and where it came from (named in errors; never the passphrase itself)."""

    text: str
    source: str  # the environment variable, or "the prompt"


# Where a reader gets the passphrase of an encrypted file: (kind, file) -> passphrase.
PassphraseSource = Callable[[KeyKind, Path], Passphrase]


@dataclass(frozen=True, slots=True)
class KeyFile:
    """A key file parsed, not yet decrypted."""

    encrypted: bool
    # None: a plaintext Ed25519 file, or an observer file older than the field; DECRYPTION for
    # every X25519 file (encrypted or not) and only for those
    kind: KeyKind | None
    key_id: bytes | None  # None: a plaintext file (known once the secret is read)
    doc: Mapping[str, Any]

    @property
    def x25519(self) -> bool:
        """Whether the file holds an X25519 decryption key (else an Ed25519 signing key)."""
        return self.kind is KeyKind.DECRYPTION


def parse_key_file(data: bytes, *, source: str) -> KeyFile:
    """Tell an encrypted key file from a plaintext one and check its fields' shape.

    Raises:
        KeyStoreError: not a key file of either type, an unknown version, kind, KDF or cipher.
    """
    try:
        return _parse(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyStoreError(f"{source} is not a usable key file: {exc}", path=source) from exc


def _parse(data: bytes) -> KeyFile:
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"{len(data)} bytes is too large for a key file")
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise TypeError("not a JSON object")
    kind_text = doc.get("type")
    if kind_text == PLAINTEXT_TYPE:
        bytes.fromhex(str(doc["seed"]))
        return KeyFile(encrypted=False, kind=None, key_id=None, doc=doc)
    if kind_text == X25519_PLAINTEXT_TYPE:
        _org(doc)
        bytes.fromhex(str(doc["private"]))
        return KeyFile(encrypted=False, kind=KeyKind.DECRYPTION, key_id=None, doc=doc)
    if kind_text not in (ENCRYPTED_TYPE, X25519_ENCRYPTED_TYPE):
        raise ValueError(f"type is {kind_text!r}, not one of {', '.join(_TYPES)}")
    version = doc.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version!r} is unknown (this obus reads 1)")
    if kind_text == X25519_ENCRYPTED_TYPE:
        kind: KeyKind | None = KeyKind(doc["kind"])
        if kind is not KeyKind.DECRYPTION:
            raise ValueError(f"an X25519 key file is of kind decryption, not {kind}")
        _org(doc)
    else:
        kind = KeyKind(doc["kind"]) if "kind" in doc else None
        if kind is KeyKind.DECRYPTION:
            raise ValueError("an Ed25519 key file cannot be of kind decryption")
    kdf, cipher = doc["kdf"], doc["cipher"]
    if kdf["name"] != "scrypt" or cipher["name"] != "aes-256-gcm":
        raise ValueError(f"KDF {kdf['name']!r} / cipher {cipher['name']!r} are not supported")
    _check_scrypt_cost(kdf["n"], kdf["r"], kdf["p"])
    key_id = bytes.fromhex(doc["key_id"])
    for field in (kdf["salt"], cipher["nonce"], cipher["ciphertext"], doc["public_key"]):
        bytes.fromhex(field)
    return KeyFile(encrypted=True, kind=kind, key_id=key_id, doc=doc)


def _org(doc: Mapping[str, Any]) -> str:
    org = doc["org"]
    if not isinstance(org, str) or not org or "|" in org:
        raise ValueError(f"org {org!r} is not an organization id")
    return org


def _check_scrypt_cost(n: object, r: object, p: object) -> None:
    if not (isinstance(n, int) and isinstance(r, int) and isinstance(p, int)):
        raise TypeError("scrypt n, r and p must be integers")
    if n < 2 or n & (n - 1) or r < 1 or not 1 <= p <= MAX_SCRYPT_P:
        raise ValueError(f"scrypt n={n} r={r} p={p} is not a valid cost")
    if 128 * n * r > MAX_SCRYPT_MEMORY:
        raise ValueError(f"scrypt n={n} r={r} needs more than {MAX_SCRYPT_MEMORY >> 20} MiB")


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _seal(secret: bytes, passphrase: str, aad: bytes, n: int) -> dict[str, Any]:
    """The ``kdf`` and ``cipher`` fields of a file holding the 32-byte ``secret`` (the one
    scheme of every key file: scrypt under a fresh salt, AES-256-GCM under a fresh nonce).

    Raises:
        KeyStoreError: the passphrase is shorter than :data:`MIN_PASSPHRASE_CHARS`.
    """
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise KeyStoreError(f"passphrase must have at least {MIN_PASSPHRASE_CHARS} characters")
    _check_scrypt_cost(n, SCRYPT_R, SCRYPT_P)
    salt, nonce = os.urandom(16), os.urandom(12)
    aead_key = _derive(passphrase, salt, n, SCRYPT_R, SCRYPT_P)
    ciphertext = AESGCM(aead_key).encrypt(nonce, secret, aad)
    return {
        "kdf": {"name": "scrypt", "n": n, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex()},
        "cipher": {"name": "aes-256-gcm", "nonce": nonce.hex(), "ciphertext": ciphertext.hex()},
    }


def _unseal(parsed: KeyFile, passphrase: Passphrase, aad: bytes, *, source: str) -> bytes:
    """The secret of a parsed encrypted file (its scrypt cost was bounded by the parse).

    Raises:
        KeyStoreError: a wrong passphrase or an altered file (the tag does not verify under
            ``aad``), naming where the passphrase came from.
    """
    kdf, cipher = parsed.doc["kdf"], parsed.doc["cipher"]
    aead_key = _derive(passphrase.text, bytes.fromhex(kdf["salt"]), kdf["n"], kdf["r"], kdf["p"])
    try:
        return AESGCM(aead_key).decrypt(
            bytes.fromhex(cipher["nonce"]), bytes.fromhex(cipher["ciphertext"]), aad
        )
    except InvalidTag:
        raise KeyStoreError(
            f"wrong passphrase for {source} (from {passphrase.source}), or the file was altered",
            path=source,
        ) from None


def _refuse_other_algorithm(parsed: KeyFile, *, x25519: bool, source: str) -> None:
    if parsed.x25519 != x25519:
        held, wanted = ("an X25519", "an Ed25519") if parsed.x25519 else ("an Ed25519", "an X25519")
        raise KeyStoreError(f"{source} holds {held} key; {wanted} key is expected", path=source)


def _dumps(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()


def encrypt_key(key: SigningKey, passphrase: str, kind: KeyKind, *, n: int = SCRYPT_N) -> bytes:
    """The bytes of a version 1 encrypted key file holding ``key``.

    Raises:
        KeyStoreError: the passphrase is shorter than :data:`MIN_PASSPHRASE_CHARS`.
        ValueError: ``kind`` is ``decryption`` (an X25519 kind: :func:`encrypt_decryption_key`).
    """
    if kind is KeyKind.DECRYPTION:
        raise ValueError("an Ed25519 key is not of kind decryption")
    sealed = _seal(key.seed, passphrase, key.key_id, n)
    doc = {
        "type": ENCRYPTED_TYPE,
        "version": FORMAT_VERSION,
        "kind": kind.value,
        "key_id": key.key_id.hex(),
        "public_key": key.public_key.hex(),
        **sealed,
    }
    return _dumps(doc)


def plaintext_key(key: SigningKey) -> bytes:
    """The bytes of a plaintext key file (``--plaintext-key``: tests and the demo only)."""
    return json.dumps({"type": PLAINTEXT_TYPE, "seed": key.seed.hex()}).encode()


def decrypt_key(parsed: KeyFile, passphrase: Passphrase, *, source: str) -> SigningKey:
    """The key of an encrypted file.

    Raises:
        KeyStoreError: a wrong passphrase (or an altered file), naming where the passphrase came
            from; a decrypted key that is not the stated key id; an X25519 file.
    """
    _refuse_other_algorithm(parsed, x25519=False, source=source)
    key_id = bytes.fromhex(parsed.doc["key_id"])
    key = SigningKey.from_seed(_unseal(parsed, passphrase, key_id, source=source))
    if key.key_id != key_id:
        raise KeyStoreError(f"{source}: key id does not match the decrypted key", path=source)
    return key


def read_plaintext_key(parsed: KeyFile, *, source: str) -> SigningKey:
    """The key of a plaintext file.

    Raises:
        KeyStoreError: the seed is not 32 bytes, or an X25519 file.
    """
    _refuse_other_algorithm(parsed, x25519=False, source=source)
    try:
        return SigningKey.from_seed(bytes.fromhex(str(parsed.doc["seed"])))
    except (ValueError, KeyError) as exc:
        raise KeyStoreError(f"{source} is not a usable key file: {exc}", path=source) from exc


def x25519_aad(org: str, key_id: bytes) -> bytes:
    """The AES-GCM associated data of an encrypted decryption key file: binds the organization
    and the key id (hence the public key), so neither can be swapped (org ids never hold ``|``;
    the key id is the last 32 bytes)."""
    return f"{X25519_ENCRYPTED_TYPE} v{FORMAT_VERSION}|{org}|".encode() + key_id


def encrypt_decryption_key(key: DecryptionKey, passphrase: str, *, n: int = SCRYPT_N) -> bytes:
    """The bytes of a version 1 encrypted decryption key file holding ``key``.

    Raises:
        KeyStoreError: the passphrase is shorter than :data:`MIN_PASSPHRASE_CHARS`.
        ValueError: the key's org is not an organization id.
    """
    _org({"org": key.org})
    sealed = _seal(key.private_key, passphrase, x25519_aad(key.org, key.key_id), n)
    doc = {
        "type": X25519_ENCRYPTED_TYPE,
        "version": FORMAT_VERSION,
        "kind": KeyKind.DECRYPTION.value,
        "org": key.org,
        "key_id": key.key_id.hex(),
        "public_key": key.public_key.hex(),
        **sealed,
    }
    return _dumps(doc)


def plaintext_decryption_key(key: DecryptionKey) -> bytes:
    """The bytes of a plaintext decryption key file (``obus org enckey --plaintext-key``: tests
    and the demo only; the format every such file had before they were encrypted)."""
    doc = {"type": X25519_PLAINTEXT_TYPE, "org": key.org, "private": key.private_key.hex()}
    return json.dumps(doc).encode()


def decrypt_decryption_key(
    parsed: KeyFile, passphrase: Passphrase, *, source: str
) -> DecryptionKey:
    """The decryption key of an encrypted file.

    Raises:
        KeyStoreError: a wrong passphrase, or an altered file (its org or key id swapped: the
            tag does not verify), naming where the passphrase came from; a decrypted key that
            is not the stated key id or public key; an Ed25519 file.
    """
    _refuse_other_algorithm(parsed, x25519=True, source=source)
    org, key_id = _org(parsed.doc), bytes.fromhex(parsed.doc["key_id"])
    key = DecryptionKey(org, _unseal(parsed, passphrase, x25519_aad(org, key_id), source=source))
    if key.key_id != key_id or key.public_key.hex() != str(parsed.doc["public_key"]).lower():
        raise KeyStoreError(f"{source}: key id does not match the decrypted key", path=source)
    return key


def read_plaintext_decryption_key(parsed: KeyFile, *, source: str) -> DecryptionKey:
    """The decryption key of a plaintext file.

    Raises:
        KeyStoreError: the private key is not 32 bytes, or an Ed25519 file.
    """
    _refuse_other_algorithm(parsed, x25519=True, source=source)
    try:
        return DecryptionKey(_org(parsed.doc), bytes.fromhex(str(parsed.doc["private"])))
    except (ValueError, KeyError) as exc:
        raise KeyStoreError(f"{source} is not a usable key file: {exc}", path=source) from exc


def passphrase_from_env_or_terminal(
    kind: KeyKind,
    path: Path,
    *,
    confirm: bool = False,
    environ: Mapping[str, str] = os.environ,
    interactive: Callable[[], bool] = sys.stdin.isatty,
    prompt: Callable[[str], str] = getpass.getpass,
) -> Passphrase:
    """The passphrase of ``kind``: its variable (:data:`PASSPHRASE_ENV`), else asked on the
    terminal (twice with ``confirm``, for a new file).

    Raises:
        ConfigError: the variable is not set and standard input is no terminal (naming the
            variable), or the two entries differ.
    """
    var = PASSPHRASE_ENV[kind]
    if environ.get(var):
        return Passphrase(environ[var], var)
    if not interactive():
        raise ConfigError(
            var,
            f"{path} is an encrypted {kind} key (or is to be one) and {var} is not set; no"
            " terminal to ask for the passphrase on",
            f"set {var} in the environment, or run the command on a terminal",
        )
    first = prompt(f"Passphrase of the {kind} key {path}: ")
    if confirm and prompt("Repeat the passphrase: ") != first:
        raise ConfigError(var, "the two entries differ", "type the same passphrase twice")
    return Passphrase(first, "the prompt")


def new_passphrase(kind: KeyKind, path: Path) -> Passphrase:
    """The passphrase of a file about to be written: as :func:`passphrase_from_env_or_terminal`,
    typed twice when prompted.

    Raises:
        ConfigError: as :func:`passphrase_from_env_or_terminal`, or a passphrase shorter than
            :data:`MIN_PASSPHRASE_CHARS` (naming where it came from).
    """
    given = passphrase_from_env_or_terminal(kind, path, confirm=True)
    if len(given.text) < MIN_PASSPHRASE_CHARS:
        raise ConfigError(
            PASSPHRASE_ENV[kind],
            f"the passphrase from {given.source} is shorter than {MIN_PASSPHRASE_CHARS} characters",
            "choose a longer one (a few words)",
        )
    return given


def write_new_key_file(path: Path, data: bytes) -> None:
    """Create ``path`` (parents too) with ``data``, mode 0600, durably; never over a file.

    Raises:
        KeyStoreError: ``path`` exists.
        OSError: it cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyStoreError(f"{path} exists; refusing to overwrite a key", path=str(path)) from exc
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_key_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (a new file of mode 0600 renamed over it), so
    a crash leaves either the old file or the new one, never a half-written key.

    Raises:
        OSError: the directory is not writable.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
