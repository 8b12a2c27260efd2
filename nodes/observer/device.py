"""The field observer's client: key at rest, report submission, outbox delivery, receipts.

An observer's home directory (``--home``, default ``$OBUS_OBSERVER_HOME`` or
``~/.obus/observer``) holds:

=============================  ================================================================
``observer.json``              observer id, organization, mandate id, gateway URL
``mandate.bin``                the signed mandate (checked at ``init``; used to validate
                               reports before signing and to verify receipts offline)
``key.json``                   the Ed25519 seed, encrypted: scrypt (n=2^15, r=8, p=1) derives
                               an AES-256-GCM key from the passphrase; the key id is the AAD
``accreditation-request.json`` what the organization signs to accredit this key (with a proof
                               of possession: the observer's signature over the request)
``outbox.db``                  signed reports, chain head, delivery state, receipts
                               (:mod:`nodes.observer.outbox`)
``blobs/<sha256 hex>``         the bytes of attachments still to upload, copied in at submit
                               (hashed while copied, fsynced, renamed into place), so a report
                               stays deliverable when the original file is moved or edited;
                               deleted once the gateway confirmed their publication
=============================  ================================================================

Delivery (:func:`sync`): strictly oldest first, one report at a time (the gateway checks the
chain, so order matters); a failure that can heal (no connection, timeout, HTTP 429/5xx) is
retried with exponential backoff and full jitter (delay drawn uniformly from
``[0, min(cap, base * 2^n)]``, the "full jitter" of AWS's backoff study), a ``Retry-After``
is honoured, and so is ``unknown_key`` (the organization may not have published the
accreditation yet); a refusal (any other 4xx) is recorded with the gateway's reason code and
delivery moves on. Every outcome is written to the outbox before the next report is sent, so
``sync`` can be killed at any moment and run again.

Attachments are uploaded (``PUT /v1/attachments/<sha256 hex>``, the bytes as body) right after
their report's receipt and before the next report is sent: the gateway accepts only bytes that
a report it accepted references. An upload fails and heals like a report; a refusal (with the
gateway's reason) is recorded and does not stop delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from bus.attachment import MAX_ATTACHMENT_BYTES
from bus.crypto import SigningKey, pae
from bus.errors import BusError, ConfigError, KeyStoreError, Reason, VerificationError
from bus.model import Attachment, Envelope, Mandate, Role, check_id
from bus.receipt import verify_receipt
from bus.report_file import FieldProblem, Identity, ReportFileError, format_of, parse_report
from bus.sign import ReportSigner
from bus.trust import KeyRing, verify_accreditation, verify_mandate
from bus.uuid7 import uuid7
from bus.verify import ChainHead
from nodes.observer.outbox import (
    DELIVERED,
    PENDING,
    QUEUED,
    REFUSED,
    REJECTED,
    UPLOADED,
    Entry,
    Outbox,
    Upload,
)

log = structlog.get_logger(__name__)

ENCRYPTED_KEY_TYPE: Final = "obus-ed25519-encrypted"
REQUEST_TYPE: Final = "obus-accreditation-request"
REQUEST_PAYLOAD_TYPE: Final = "application/vnd.obus.accreditation-request.v1+json"
PASSPHRASE_ENV: Final = "OBUS_PASSPHRASE"  # noqa: S105 - a variable name
HOME_ENV: Final = "OBUS_OBSERVER_HOME"
# scrypt cost: n=2^15, r=8 is the interactive-login setting of the scrypt paper (Percival
# 2009) and RFC 7914's examples; about 32 MiB and ~0.1 s here, paid once per submit.
SCRYPT_N: Final = 2**15
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
MIN_PASSPHRASE_CHARS: Final = 8


# ---------------------------------------------------------------------------------------------
# Key at rest


def _kdf(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def write_encrypted_key(path: Path, key: SigningKey, passphrase: str, *, n: int = SCRYPT_N) -> None:
    """Write the key encrypted under the passphrase (mode 0600; refuses to overwrite).

    Raises:
        KeyStoreError: the passphrase is too short or the file exists.
    """
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise KeyStoreError(f"passphrase must have at least {MIN_PASSPHRASE_CHARS} characters")
    salt, nonce = os.urandom(16), os.urandom(12)
    secret = _kdf(passphrase, salt, n, SCRYPT_R, SCRYPT_P)
    ciphertext = AESGCM(secret).encrypt(nonce, key.seed, key.key_id)
    doc = {
        "type": ENCRYPTED_KEY_TYPE,
        "key_id": key.key_id.hex(),
        "public_key": key.public_key.hex(),
        "kdf": {"name": "scrypt", "n": n, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex()},
        "cipher": {"name": "aes-256-gcm", "nonce": nonce.hex(), "ciphertext": ciphertext.hex()},
    }
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyStoreError(f"{path} exists; refusing to overwrite a key", path=str(path)) from exc
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def read_encrypted_key(path: Path, passphrase: str) -> SigningKey:
    """Decrypt a key file.

    Raises:
        KeyStoreError: missing or malformed file, or a wrong passphrase (the message says which).
    """
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("type") != ENCRYPTED_KEY_TYPE:
            raise KeyStoreError(f"{path}: not an {ENCRYPTED_KEY_TYPE} key file", path=str(path))
        kdf, cipher = doc["kdf"], doc["cipher"]
        key_id = bytes.fromhex(doc["key_id"])
        secret = _kdf(passphrase, bytes.fromhex(kdf["salt"]), kdf["n"], kdf["r"], kdf["p"])
        nonce, ciphertext = bytes.fromhex(cipher["nonce"]), bytes.fromhex(cipher["ciphertext"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyStoreError(f"cannot read key file {path}: {exc}", path=str(path)) from exc
    try:
        seed = AESGCM(secret).decrypt(nonce, ciphertext, key_id)
    except InvalidTag:
        raise KeyStoreError("wrong passphrase (or the key file was altered)") from None
    key = SigningKey.from_seed(seed)
    if key.key_id != key_id:
        raise KeyStoreError(f"{path}: key id does not match the decrypted key", path=str(path))
    return key


# ---------------------------------------------------------------------------------------------
# Home directory


@dataclass(frozen=True, slots=True)
class ObserverConfig:
    """What ``init`` records about this observer."""

    observer_id: str
    org: str
    mandate_id: str
    gateway: str

    @property
    def identity(self) -> Identity:
        """The identity filled into every report."""
        return Identity(self.observer_id, self.org, self.mandate_id)


@dataclass(frozen=True, slots=True)
class Home:
    """Paths of an observer's home directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "observer.json"

    @property
    def mandate(self) -> Path:
        return self.root / "mandate.bin"

    @property
    def key(self) -> Path:
        return self.root / "key.json"

    @property
    def request(self) -> Path:
        return self.root / "accreditation-request.json"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox.db"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    def blob(self, digest: bytes) -> Path:
        """Where the bytes of an attachment are kept until uploaded."""
        return self.blobs / digest.hex()

    def release_blob(self, digest: bytes) -> None:
        """Delete an attachment's bytes (no pending upload needs them any more)."""
        with contextlib.suppress(FileNotFoundError):
            self.blob(digest).unlink()
        log.debug("blob_released", sha256=digest.hex())

    def load_config(self) -> ObserverConfig:
        """Read observer.json.

        Raises:
            ConfigError: not initialised.
        """
        try:
            doc = json.loads(self.config.read_text())
            return ObserverConfig(doc["observer_id"], doc["org"], doc["mandate_id"], doc["gateway"])
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(
                "observer home", f"{self.root} is not initialised ({exc})", "run obus observer init"
            ) from exc

    def load_mandate(self, *, now_ms: int) -> Mandate:
        """The mandate kept at init (verified again, as any input).

        Raises:
            ConfigError: missing or no longer valid.
        """
        try:
            return verify_mandate(
                Envelope.decode(self.mandate.read_bytes()), previous=None, now_ms=now_ms
            )
        except (OSError, BusError) as exc:
            raise ConfigError(
                "mandate", f"{self.mandate} cannot be used: {exc}", "run obus observer init again"
            ) from exc


def now_ms() -> int:
    """Wall-clock Unix milliseconds."""
    return time.time_ns() // 1_000_000


def init_observer(
    home: Home,
    *,
    observer_id: str,
    org: str,
    mandate_envelope: bytes,
    gateway: str,
    passphrase: str,
    at_ms: int,
    scrypt_n: int = SCRYPT_N,
) -> SigningKey:
    """Create an observer home: a new key (encrypted), config, mandate, accreditation request.

    Returns:
        The new signing key.

    Raises:
        ConfigError: home already initialised, the mandate does not verify, or the org is
            not part of it.
        KeyStoreError: passphrase too short.
        VerificationError: ``invalid_field`` for a bad observer id.
    """
    if home.config.exists() or home.key.exists():
        raise ConfigError(
            "observer home", f"{home.root} is already initialised", "use another --home"
        )
    try:
        mandate = verify_mandate(Envelope.decode(mandate_envelope), previous=None, now_ms=at_ms)
    except BusError as exc:
        raise ConfigError(
            "mandate", f"does not verify: {exc.message}", "pass the signed mandate"
        ) from exc
    if mandate.organization(org) is None:
        known = ", ".join(o.org for o in mandate.organizations)
        raise ConfigError("org", f"{org!r} is not part of the mandate", f"one of {known}")
    check_id("observer_id", observer_id)
    home.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = SigningKey.generate()
    write_encrypted_key(home.key, key, passphrase, n=scrypt_n)
    home.mandate.write_bytes(mandate_envelope)
    config = ObserverConfig(observer_id, org, mandate.mandate_id, gateway)
    home.config.write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    home.request.write_text(json.dumps(accreditation_request(config, key, at_ms), indent=2) + "\n")
    Outbox(home.outbox).close()
    log.info("observer_initialised", observer_id=observer_id, org=org, key_id=key.key_id.hex())
    return key


def accreditation_request(config: ObserverConfig, key: SigningKey, at_ms: int) -> dict[str, Any]:
    """The request an organization signs: who, which key, and a proof of possession.

    ``proof`` is the observer key's Ed25519 signature over DSSE PAE of type
    ``application/vnd.obus.accreditation-request.v1+json`` and the canonical JSON (sorted keys,
    no spaces) of every other field, so the organization knows the requester holds the key.
    """
    body = {
        "type": REQUEST_TYPE,
        "version": 1,
        "observer_id": config.observer_id,
        "org": config.org,
        "role": Role.OBSERVER.name.lower(),
        "mandate_id": config.mandate_id,
        "public_key": key.public_key.hex(),
        "key_id": key.key_id.hex(),
        "requested_at_ms": at_ms,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return {**body, "proof": key.sign(pae(REQUEST_PAYLOAD_TYPE, canonical)).hex()}


# ---------------------------------------------------------------------------------------------
# Submit


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_blob(
    blobs: Path, source: Path, *, max_bytes: int = MAX_ATTACHMENT_BYTES
) -> tuple[bytes, int]:
    """Copy a file into the blob directory under its SHA-256, atomically and durably.

    The bytes are hashed while they are copied (so the name always matches the content, even if
    the original changes meanwhile), fsynced, renamed into place and the directory fsynced. A
    file larger than ``max_bytes`` is hashed to the end but not kept.

    Returns:
        (SHA-256, size) of what was read.

    Raises:
        OSError: the file cannot be read or the copy cannot be written.
    """
    blobs.mkdir(parents=True, exist_ok=True, mode=0o700)
    h, size = hashlib.sha256(), 0
    fd, name = tempfile.mkstemp(dir=blobs, prefix=".incoming-")
    tmp = Path(name)
    try:
        with source.open("rb") as f, os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
                if size <= max_bytes:
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        digest = h.digest()
        if size > max_bytes:
            tmp.unlink()
            return digest, size
        tmp.replace(blobs / digest.hex())
        _fsync_dir(blobs)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest, size


def _blob_resolver(base: Path, blobs: Path) -> Callable[[str], tuple[bytes, int]]:
    def resolve(path: str) -> tuple[bytes, int]:
        p = (base / path) if not Path(path).is_absolute() else Path(path)
        return store_blob(blobs, p)

    return resolve


def _attachment_problems(attachments: tuple[Attachment, ...]) -> list[FieldProblem]:
    return [
        FieldProblem(
            f"attachments[{i}]",
            f"{a.name or a.sha256.hex()[:16]} has {a.size} bytes",
            f"at most {MAX_ATTACHMENT_BYTES} bytes ({MAX_ATTACHMENT_BYTES >> 20} MiB) each",
        )
        for i, a in enumerate(attachments)
        if a.size > MAX_ATTACHMENT_BYTES
    ]


def submit_file(home: Home, outbox: Outbox, key: SigningKey, path: Path, *, at_ms: int) -> Entry:
    """Validate a report file, sign it as the next link of the chain and queue it durably.

    Attachments given by ``path`` are copied into the home's blob directory first (see
    :func:`store_blob`) and queued for upload with the report; one given by SHA-256 alone is
    uploaded only if its bytes are still in the blob directory (e.g. queued with an earlier
    report), else it is recorded as ``external``.

    Returns:
        The queued entry (committed to disk).

    Raises:
        ReportFileError: the file has problems (all listed), an attachment too large included.
        ConfigError: the file cannot be read, or the home is not initialised, or an attachment
            copy vanished during submit (submit again).
        StoreError: the outbox could not commit (nothing was queued).
    """
    config = home.load_config()
    mandate = home.load_mandate(now_ms=at_ms)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("report file", f"cannot read {path}: {exc}", "pass a UTF-8 file") from exc
    draft = parse_report(
        text,
        identity=config.identity,
        now_ms=at_ms,
        fmt=format_of(path.name),
        mandate=mandate,
        resolve_path=_blob_resolver(path.parent, home.blobs),
        source=str(path),
    )
    problems = _attachment_problems(draft.attachments)
    if problems:
        raise ReportFileError(problems, source=str(path), reason=Reason.OVERSIZED)
    attachments = [(a, home.blob(a.sha256).is_file()) for a in draft.attachments]

    def sign_next(head: ChainHead | None) -> tuple[str, bytes]:
        # Inside the outbox transaction: a sync releasing blobs waits for it, so what is
        # here now stays until the new rows are committed.
        for a, held in attachments:
            if held and not home.blob(a.sha256).is_file():
                raise ConfigError(
                    "attachment",
                    f"the copy of {a.name or a.sha256.hex()} left {home.blobs} during submit",
                    "submit the report again",
                )
        report = draft.to_report(report_id=uuid7(at_ms), signed_at_ms=at_ms)
        return report.report_id, ReportSigner(key, head).sign(report)

    entry = outbox.append(sign_next, source=path.name, now_ms=at_ms, attachments=attachments)
    log.info(
        "report_queued", report_id=entry.report_id, seq=entry.seq, source=entry.source,
        attachments=len(attachments), to_upload=sum(held for _, held in attachments),
    )  # fmt: skip
    return entry


# ---------------------------------------------------------------------------------------------
# Delivery


@dataclass(frozen=True, slots=True)
class Answer:
    """The gateway's HTTP answer."""

    status: int
    body: bytes
    retry_after_s: float | None = None

    def error(self) -> tuple[str, str]:
        """(reason, detail) of a JSON error body, or ("http_<status>", text)."""
        try:
            doc = json.loads(self.body)
            return str(doc["reason"]), str(doc.get("detail", ""))
        except (ValueError, KeyError, TypeError):
            return f"http_{self.status}", self.body[:200].decode("utf-8", "replace")


class Unreachable(Exception):  # noqa: N818 - a state, not a failure of ours
    """The gateway could not be reached (connection refused, reset, timeout)."""


class GatewayClient:
    """HTTP client of an organization gateway (aiohttp); ``async with`` opens the session."""

    def __init__(self, base_url: str, *, timeout_s: float = 30.0, connect_timeout_s: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GatewayClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, body: bytes | None = None) -> Answer:
        assert self._session is not None
        headers = {"content-type": "application/protobuf"} if body is not None else {}
        # A file-like body: aiohttp streams it (raw bytes of megabytes would block its loop).
        stream = None if body is None else io.BytesIO(body)
        try:
            async with self._session.request(
                method, self.base_url + path, data=stream, headers=headers
            ) as resp:
                data = await resp.read()
                retry = resp.headers.get("Retry-After")
                retry_s = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
                return Answer(resp.status, data, retry_s)
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(f"cannot connect to {exc.host}:{exc.port} ({exc.os_error})") from exc
        except TimeoutError as exc:
            raise Unreachable(f"no answer from {self.base_url} in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc

    async def submit(self, envelope: bytes) -> Answer:
        """POST the envelope bytes to /v1/reports."""
        return await self._call("POST", "/v1/reports", envelope)

    async def put_attachment(self, digest: bytes, data: bytes) -> Answer:
        """PUT an attachment's bytes to /v1/attachments/<sha256 hex>."""
        return await self._call("PUT", f"/v1/attachments/{digest.hex()}", data)

    async def node_accreditation(self) -> Answer:
        """GET /v1/node: the gateway's node-key accreditation envelope."""
        return await self._call("GET", "/v1/node")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits U(0, min(cap, base * 2^(n-1)))."""

    base_s: float = 0.5
    cap_s: float = 60.0

    def delay(self, failures: int, rng: random.Random, retry_after_s: float | None) -> float:
        """Seconds to wait after ``failures`` consecutive failures (>= Retry-After if given)."""
        # The exponent is bounded: a sync retrying for days must not overflow a float.
        bound = min(self.cap_s, self.base_s * 2 ** min(max(0, failures - 1), 60))
        wait = rng.uniform(0, bound)
        return max(wait, retry_after_s or 0.0)


@dataclass
class SyncResult:
    """What one sync run did."""

    delivered: int = 0
    duplicates: int = 0  # answered 200: the gateway had it already (an earlier lost answer)
    rejected: int = 0
    failures: int = 0
    remaining: int = 0
    bad_receipts: int = 0
    uploaded: int = 0  # attachments the gateway confirmed
    uploaded_bytes: int = 0
    refused_uploads: int = 0
    remaining_uploads: int = 0


def receipt_keyring(home: Home, outbox: Outbox, *, at_ms: int) -> KeyRing:
    """A key ring of the mandate and the node accreditations kept in the outbox."""
    ring = KeyRing(home.load_mandate(now_ms=at_ms))
    for raw in outbox.node_accreditations():
        ring.apply(Envelope.decode(raw))
    return ring


async def fetch_node_accreditation(
    client: GatewayClient, home: Home, outbox: Outbox, config: ObserverConfig, *, at_ms: int
) -> None:
    """Fetch, verify and keep the gateway's node accreditation (for checking receipts).

    Raises:
        Unreachable: no answer.
        VerificationError: the accreditation does not verify, is not a NODE of our org.
    """
    answer = await client.node_accreditation()
    if answer.status != 200:
        raise Unreachable(f"GET /v1/node answered {answer.status}")
    mandate = home.load_mandate(now_ms=at_ms)
    acc = verify_accreditation(Envelope.decode(answer.body), mandate)
    if acc.role != Role.NODE or acc.org != config.org:
        raise VerificationError(
            Reason.WRONG_ROLE, f"gateway key is {acc.org}/{acc.role.name}, not {config.org}/NODE"
        )
    outbox.add_node_accreditation(acc.key_id, answer.body)


async def sync(
    home: Home,
    outbox: Outbox,
    client: GatewayClient,
    *,
    backoff: Backoff = Backoff(),
    max_seconds: float = 600.0,
    max_failures: int | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> SyncResult:
    """Deliver queued reports oldest first until none is left or the budget is spent.

    The attachments of a delivered report are uploaded before the next report is sent.

    Args:
        max_seconds: stop retrying after this long (the queue stays for the next sync).
        max_failures: stop after this many consecutive failures (``submit`` uses 1).

    Returns:
        Counts of what happened; ``remaining`` queued reports (and ``remaining_uploads``
        attachments) are left for the next run.
    """
    config = home.load_config()
    rng = rng or random.Random()
    deadline = clock() + max_seconds
    result = SyncResult()
    ring: KeyRing | None = None
    failures = 0
    while True:
        upload = outbox.next_upload()
        if upload is not None:
            answer, error = await _upload(home, outbox, client, upload, result)
            if error is None:
                failures = 0
                continue
        else:
            entry = outbox.next_queued()
            if entry is None:
                break
            answer, error, ring = await _deliver(
                home, outbox, client, config, entry, ring=ring, result=result
            )
            if error is None:
                failures = 0
                continue
        failures += 1
        result.failures += 1
        retry_s = None if answer is None else answer.retry_after_s
        wait = backoff.delay(failures, rng, retry_s)
        log.info("delivery_failed", error=error, failures=failures, retry_in_s=round(wait, 2))
        if (max_failures is not None and failures >= max_failures) or clock() + wait > deadline:
            break
        await sleep(wait)
    result.remaining = outbox.counts()[QUEUED]
    result.remaining_uploads = outbox.upload_counts()[PENDING]
    return result


async def _deliver(
    home: Home,
    outbox: Outbox,
    client: GatewayClient,
    config: ObserverConfig,
    entry: Entry,
    *,
    ring: KeyRing | None,
    result: SyncResult,
) -> tuple[Answer | None, str | None, KeyRing | None]:
    """Send one report; returns (answer, error or None once settled, key ring)."""
    bound = log.bind(report_id=entry.report_id, seq=entry.seq)
    answer: Answer | None = None
    try:
        answer = await client.submit(entry.envelope)
    except Unreachable as exc:
        error = str(exc)
    else:
        error = f"HTTP {answer.status}: {answer.error()[0]}"
    if answer is not None and answer.status in (200, 201):
        if ring is None or not _knows_signer(ring, answer.body):
            ring = await _refresh_ring(client, home, outbox, config)
        ok = _receipt_ok(ring, answer.body, entry.envelope)
        outbox.mark_delivered(
            entry.seq,
            receipt=answer.body,
            receipt_ok=ok,
            http_status=answer.status,
            now_ms=now_ms(),
        )
        result.delivered += 1
        result.duplicates += answer.status == 200
        result.bad_receipts += not ok
        bound.info("report_delivered", status=answer.status, receipt_ok=ok)
        return answer, None, ring
    if answer is not None and _is_refusal(answer):
        reason, detail = answer.error()
        outbox.mark_rejected(
            entry.seq,
            reason=reason,
            detail=detail,
            http_status=answer.status,
            now_ms=now_ms(),
            release=home.release_blob,
        )
        result.rejected += 1
        bound.warning("report_rejected", status=answer.status, reason=reason, detail=detail)
        return answer, None, ring
    outbox.record_failure(entry.seq, error)
    return answer, error, ring


# An upload the observer cannot make: the bytes are no longer in the blob directory (removed
# by hand). Not a gateway reason code; recorded like a refusal so delivery goes on.
BLOB_MISSING: Final = "blob_missing"


async def _upload(
    home: Home, outbox: Outbox, client: GatewayClient, upload: Upload, result: SyncResult
) -> tuple[Answer | None, str | None]:
    """Upload one attachment; returns (answer, error or None once settled)."""
    bound = log.bind(report_id=upload.report_id, seq=upload.seq, sha256=upload.sha256.hex())
    try:
        data = home.blob(upload.sha256).read_bytes()
    except FileNotFoundError:
        outbox.finish_upload(
            upload.seq, upload.sha256, state=REFUSED, http_status=None, now_ms=now_ms(),
            reason=BLOB_MISSING, detail=f"{home.blob(upload.sha256)} is gone",
        )  # fmt: skip
        result.refused_uploads += 1
        bound.warning("attachment_refused", reason=BLOB_MISSING)
        return None, None
    answer: Answer | None = None
    try:
        answer = await client.put_attachment(upload.sha256, data)
    except Unreachable as exc:
        error = str(exc)
    else:
        error = f"HTTP {answer.status}: {answer.error()[0]}"
    if answer is not None and answer.status in (200, 201):
        outbox.finish_upload(
            upload.seq, upload.sha256, state=UPLOADED, http_status=answer.status,
            now_ms=now_ms(), release=home.release_blob,
        )  # fmt: skip
        result.uploaded += 1
        result.uploaded_bytes += len(data)
        bound.info("attachment_uploaded", status=answer.status, size=len(data))
        return answer, None
    if answer is not None and _is_refusal(answer):
        reason, detail = answer.error()
        outbox.finish_upload(
            upload.seq, upload.sha256, state=REFUSED, http_status=answer.status,
            now_ms=now_ms(), reason=reason, detail=detail, release=home.release_blob,
        )  # fmt: skip
        result.refused_uploads += 1
        bound.warning("attachment_refused", status=answer.status, reason=reason, detail=detail)
        return answer, None
    outbox.record_upload_failure(upload.seq, upload.sha256, error)
    return answer, error


# Refusals that heal by waiting: the gateway is busy, or the organization has not published
# this observer's accreditation yet (an observer may submit before it is accredited).
RETRY_REASONS: Final = frozenset({Reason.RATE_LIMITED.value, Reason.UNKNOWN_KEY.value})


def _is_refusal(answer: Answer) -> bool:
    # A 4xx is the gateway's verdict on the report, except 408/429 and the reasons above.
    if not 400 <= answer.status < 500 or answer.status in (408, 429):
        return False
    return answer.error()[0] not in RETRY_REASONS


def _knows_signer(ring: KeyRing, receipt: bytes) -> bool:
    try:
        ring.lookup(Envelope.decode(receipt).signatures[0].key_id)
    except (VerificationError, IndexError):
        return False
    return True


async def _refresh_ring(
    client: GatewayClient, home: Home, outbox: Outbox, config: ObserverConfig
) -> KeyRing:
    try:
        await fetch_node_accreditation(client, home, outbox, config, at_ms=now_ms())
    except (Unreachable, BusError) as exc:
        log.warning("node_accreditation_unavailable", error=str(exc))
    return receipt_keyring(home, outbox, at_ms=now_ms())


def _receipt_ok(ring: KeyRing, receipt: bytes, envelope: bytes) -> bool:
    try:
        verify_receipt(receipt, ring, envelope=envelope)
    except VerificationError as exc:
        log.warning("receipt_invalid", reason=exc.reason.value, detail=exc.message)
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Status and receipts


def status(home: Home, outbox: Outbox) -> dict[str, Any]:
    """A JSON-able summary: identity, chain head, counts, the oldest queued, every rejection,
    and the attachments (counts per state; every one still pending or refused)."""
    config = home.load_config()
    head = outbox.head()
    queued = outbox.entries(QUEUED)
    return {
        "observer_id": config.observer_id,
        "org": config.org,
        "mandate_id": config.mandate_id,
        "gateway": config.gateway,
        "head": None if head is None else {"seq": head.seq, "digest": head.digest.hex()},
        "counts": outbox.counts(),
        "queued": [
            {
                "seq": e.seq,
                "report_id": e.report_id,
                "source": e.source,
                "queued_at_ms": e.created_at_ms,
                "attempts": e.attempts,
                "last_error": e.last_error,
            }
            for e in queued
        ],
        "rejected": [
            {
                "seq": e.seq,
                "report_id": e.report_id,
                "source": e.source,
                "http_status": e.http_status,
                "reason": e.reason,
                "detail": e.detail,
            }
            for e in outbox.entries(REJECTED)
        ],
        "attachments": {
            "counts": outbox.upload_counts(),
            "open": [
                {
                    "seq": u.seq,
                    "report_id": u.report_id,
                    "sha256": u.sha256.hex(),
                    "size": u.size,
                    "media_type": u.media_type,
                    "name": u.name,
                    "state": u.state,
                    "attempts": u.attempts,
                    "last_error": u.last_error,
                    "reason": u.reason,
                    "detail": u.detail,
                }
                for u in outbox.uploads()
                if u.state in (PENDING, REFUSED)
            ],
        },
    }


@dataclass(frozen=True, slots=True)
class ReceiptCheck:
    """One receipt's verdict."""

    seq: int
    report_id: str
    ok: bool
    reason: str
    detail: str
    topic: str = ""
    partition: int = -1
    offset: int = -1


def check_receipts(home: Home, outbox: Outbox, *, at_ms: int) -> list[ReceiptCheck]:
    """Verify every stored receipt against the mandate and the kept node accreditations."""
    ring = receipt_keyring(home, outbox, at_ms=at_ms)
    out = []
    for e in outbox.entries(DELIVERED):
        try:
            r = verify_receipt(e.receipt or b"", ring, envelope=e.envelope)
        except VerificationError as exc:
            out.append(ReceiptCheck(e.seq, e.report_id, False, exc.reason.value, exc.message))
        else:
            out.append(
                ReceiptCheck(e.seq, e.report_id, True, "", "", r.topic, r.partition, r.offset)
            )
    return out
