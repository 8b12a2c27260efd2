"""The field observer's device: key at rest, home directory, signing reports into the outbox,
status and receipts.

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

:func:`submit_file` signs a report as the next link of the observer's chain and queues it in the
outbox; :mod:`nodes.observer.delivery` sends the queue to the gateway (through the HTTP client
of :mod:`nodes.observer.client`) and keeps each receipt, which :func:`check_receipts` verifies
again offline.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from bus.attachment import MAX_ATTACHMENT_BYTES
from bus.crypto import SigningKey, pae
from bus.errors import BusError, ConfigError, KeyStoreError, Reason, VerificationError
from bus.model import (
    PAYLOAD_SEALED_REPORT,
    Attachment,
    EncryptionKey,
    Envelope,
    Mandate,
    Report,
    Role,
    check_id,
    encode,
)
from bus.receipt import verify_head, verify_receipt
from bus.report_file import FieldProblem, Identity, ReportFileError, format_of, parse_report
from bus.sign import ReportSigner
from bus.trust import KeyRing, decode_registry_record, verify_accreditation, verify_mandate
from bus.uuid7 import uuid7
from bus.verify import ChainHead
from nodes.observer.outbox import (
    DELIVERED,
    PENDING,
    QUEUED,
    REFUSED,
    REJECTED,
    Entry,
    Outbox,
    Resign,
)
from nodes.runtime.keyfile import (
    ENCRYPTED_TYPE,
    SCRYPT_N,
    KeyKind,
    Passphrase,
    decrypt_key,
    encrypt_key,
    parse_key_file,
    write_new_key_file,
)

log = structlog.get_logger(__name__)

REQUEST_TYPE: Final = "obus-accreditation-request"
REQUEST_VERSION: Final = 1  # the "version" of an accreditation request's JSON
REQUEST_PAYLOAD_TYPE: Final = "application/vnd.obus.accreditation-request.v1+json"
PASSPHRASE_ENV: Final = "OBUS_PASSPHRASE"  # noqa: S105 - a variable name
HOME_ENV: Final = "OBUS_OBSERVER_HOME"


# ---------------------------------------------------------------------------------------------
# Key at rest


def write_encrypted_key(path: Path, key: SigningKey, passphrase: str, *, n: int = SCRYPT_N) -> None:
    """Write the key encrypted under the passphrase (mode 0600; refuses to overwrite), in the
    key file format every obus key shares (:mod:`nodes.runtime.keyfile`, kind ``observer``).

    Raises:
        KeyStoreError: the passphrase is too short or the file exists.
    """
    write_new_key_file(path, encrypt_key(key, passphrase, KeyKind.OBSERVER, n=n))


def read_encrypted_key(path: Path, passphrase: str) -> SigningKey:
    """Decrypt a key file (:mod:`nodes.runtime.keyfile`: its scrypt cost is bounded before any
    work, so a crafted file cannot make loading it unbounded).

    Raises:
        KeyStoreError: missing or malformed file, or a wrong passphrase (the message says which).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read key file {path}: {exc}", path=str(path)) from exc
    parsed = parse_key_file(data, source=str(path))
    if not parsed.encrypted:
        raise KeyStoreError(f"{path}: not an {ENCRYPTED_TYPE} key file", path=str(path))
    return decrypt_key(parsed, Passphrase(passphrase, PASSPHRASE_ENV), source=str(path))


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

    def load_mandate(self, *, now_ms: int, archive: bool = False) -> Mandate:
        """The mandate kept at init (verified again, as any input).

        Args:
            now_ms: this device's time.
            archive: for what only checks what the mission logged (receipts, inclusion):
                a mandate that has ended is accepted, verified as of its own end. Signing and
                delivering (``archive`` False) refuse it.

        Raises:
            ConfigError: missing, does not verify, or (not ``archive``) ended.
        """
        try:
            envelope = Envelope.decode(self.mandate.read_bytes())
            if archive:
                now_ms = min(now_ms, Mandate.decode(envelope.payload).not_after_ms)
            return verify_mandate(envelope, previous=None, now_ms=now_ms)
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
        "version": REQUEST_VERSION,
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


def submit_file(
    home: Home,
    outbox: Outbox,
    key: SigningKey,
    path: Path,
    *,
    at_ms: int,
    recipients: Sequence[EncryptionKey] = (),
    fixes: str | None = None,
) -> Entry:
    """Validate a report file, sign it as the next link of the chain and queue it durably.

    With ``recipients`` the report is restricted: sealed to those organizations' encryption
    keys (:mod:`bus.sealed`; :func:`recipient_keys` picks them). With ``fixes`` (the id of a
    report the gateway refused) the file is that report corrected: it keeps the refused
    report's id and takes the next chain position (the refused report's own seq when nothing
    was signed since). Reports held by a refusal (:mod:`nodes.observer.outbox`) are re-signed
    first, or right after the fix, so the new report follows them.

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
    report_id = uuid7(at_ms)
    if fixes is not None:
        refused = [e for e in outbox.entries(REJECTED) if e.report_id == fixes]
        if not refused:
            raise ConfigError(
                "--fixes", f"no refused report {fixes!r} in the outbox", "obus observer status"
            )
        report_id = fixes
    else:
        resign_held(home, outbox, key, at_ms=at_ms)
    kept: tuple[bytes, str] | None = None

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
        nonlocal kept
        report = draft.to_report(report_id=report_id, signed_at_ms=at_ms)
        signer = ReportSigner(key, head)
        if not recipients:
            return report.report_id, signer.sign(report)
        kept = (encode(report), _recipients_json(recipients))
        return report.report_id, signer.sign_sealed(report, recipients)

    if recipients:
        _check_recipients(config, recipients)
    entry = outbox.append(
        sign_next, source=path.name, now_ms=at_ms, attachments=attachments,
        draft=lambda: kept, release=home.release_blob,
    )  # fmt: skip
    if fixes is not None:
        resign_held(home, outbox, key, at_ms=at_ms)
    log.info(
        "report_queued", report_id=entry.report_id, seq=entry.seq, source=entry.source,
        attachments=len(attachments), to_upload=sum(held for _, held in attachments),
    )  # fmt: skip
    return entry


# ---------------------------------------------------------------------------------------------
# Re-signing after a refusal (nodes/observer/outbox.py: the chain never advances past one)


def _resign_one(outbox: Outbox, key: SigningKey, at_ms: int) -> Resign:
    """Re-signs an entry: same report id and content, signed at ``at_ms`` on the given head
    (a restricted report is sealed again to the keys it was sealed to)."""

    def sign(entry: Entry, head: ChainHead | None) -> bytes:
        env = Envelope.decode(entry.envelope)
        signer = ReportSigner(key, head)
        if env.payload_type == PAYLOAD_SEALED_REPORT:
            kept = outbox.draft(entry.report_id)
            if kept is None:
                raise ConfigError(
                    "outbox", f"restricted report {entry.report_id} has no kept draft",
                    "submit it again as a new report",
                )  # fmt: skip
            report = dataclasses.replace(Report.decode(kept[0]), signed_at_ms=at_ms)
            return signer.sign_sealed(report, _recipients_from_json(kept[1]))
        report = dataclasses.replace(Report.decode(env.payload), signed_at_ms=at_ms)
        return signer.sign(report)

    return sign


def _holds(home: Home) -> Callable[[bytes], bool]:
    return lambda digest: home.blob(digest).is_file()


def resign_held(
    home: Home, outbox: Outbox, key: SigningKey, *, at_ms: int, refused: Sequence[str] = ()
) -> list[Entry]:
    """Re-sign, at the next chain positions: first the refused reports named in ``refused``
    (report ids; same content, signed now: a refusal that healed, such as a clock set
    right), then every held report, in seq order.

    Returns:
        The re-signed entries at their new seqs.

    Raises:
        ConfigError: a named report is not a refused one in the outbox.
        StoreError: the outbox could not commit.
    """
    by_id = {e.report_id: e for e in outbox.entries(REJECTED)}
    missing = [r for r in refused if r not in by_id]
    if missing:
        raise ConfigError(
            "--refused", f"no refused report {', '.join(missing)} in the outbox",
            "obus observer status lists the refused reports",
        )  # fmt: skip
    sign = _resign_one(outbox, key, at_ms)
    out = []
    for rid in refused:
        e = next(x for x in outbox.entries(REJECTED) if x.report_id == rid)
        out.append(
            outbox.resign(e.seq, sign, now_ms=at_ms, holds=_holds(home), release=home.release_blob)
        )
    out.extend(
        outbox.resign(e.seq, sign, now_ms=at_ms, release=home.release_blob) for e in outbox.held()
    )
    for e in out:
        log.info("report_resigned", report_id=e.report_id, seq=e.seq)
    return out


# ---------------------------------------------------------------------------------------------
# Restricted reports: the recipients' keys from the gateway (GET /v1/recipients)


def _recipients_json(keys: Sequence[EncryptionKey]) -> str:
    return json.dumps([
        {"org": k.org, "public_key": k.public_key.hex(), "not_before_ms": k.not_before_ms,
         "not_after_ms": k.not_after_ms, "serial": k.serial, "mandate_id": k.mandate_id}
        for k in keys
    ])  # fmt: skip


def _recipients_from_json(text: str) -> list[EncryptionKey]:
    return [
        EncryptionKey(
            d["org"],
            bytes.fromhex(d["public_key"]),
            d["not_before_ms"],
            d["not_after_ms"],
            d["serial"],
            d["mandate_id"],
        )
        for d in json.loads(text)
    ]


def _check_recipients(config: ObserverConfig, keys: Sequence[EncryptionKey]) -> None:
    if not any(k.org == config.org for k in keys):
        log.info("restricted_without_own_org", org=config.org)


def recipient_keys(doc: object, mandate: Mandate, orgs: Sequence[str]) -> list[EncryptionKey]:
    """The encryption keys of ``orgs`` from a ``GET /v1/recipients`` answer, checked against
    the observer's mandate: each organization is one of the mandate's, named once, and has a
    key of this mandate whose key id is its public key's.

    The keys are served by the gateway, not signed for the observer: a gateway that served
    another key would only get the report refused by every node
    (``recipient_key_not_current``), never read by a wrong party, since nodes accept a
    restricted report only sealed to each organization's current key on the registry.

    Raises:
        ConfigError: an organization not in the mandate, named twice, without a key, or an
            answer that is not the gateway's recipients document for this mandate.
    """
    fix = "name organizations of the mandate, e.g. --to un,osce"
    known = {o.org for o in mandate.organizations}
    unknown = [o for o in orgs if o not in known]
    if unknown or len(set(orgs)) != len(orgs) or not orgs:
        what = f"{', '.join(unknown)} not in mandate {mandate.mandate_id}" if unknown else (
            "an organization named twice" if orgs else "no organization")  # fmt: skip
        raise ConfigError("--to", what, fix)
    try:
        assert isinstance(doc, dict)
        if doc["mandate_id"] != mandate.mandate_id:
            raise ConfigError(
                "--to", f"the gateway serves keys of mandate {doc['mandate_id']!r}",
                f"use a gateway of mandate {mandate.mandate_id}",
            )  # fmt: skip
        served = {}
        for r in doc["recipients"]:
            ek = EncryptionKey(
                r["org"], base64.b64decode(r["public_key_b64"], validate=True),
                r["not_before_ms"], r["not_after_ms"], r["serial"], mandate.mandate_id,
            )  # fmt: skip
            if ek.key_id == base64.b64decode(r["key_id_b64"], validate=True):
                served[ek.org] = ek
    except (AssertionError, KeyError, TypeError, ValueError, BusError) as exc:
        raise ConfigError(
            "--to", f"the gateway's recipients answer is not usable: {exc}", "check --gateway"
        ) from exc
    lacking = [o for o in orgs if o not in served]
    if lacking:
        raise ConfigError(
            "--to", f"no current encryption key for {', '.join(lacking)}",
            "leave them out, or ask them to publish one (obus org enckey)",
        )  # fmt: skip
    return [served[o] for o in orgs]


# ---------------------------------------------------------------------------------------------
# A new device continuing the chain; the clock check before signing


def continue_chain(
    home: Home, outbox: Outbox, head_doc: object, node_accreditation: bytes, *, at_ms: int
) -> ChainHead | None:
    """Continue this observer's chain from the head its gateway accepted (``GET
    /v1/observers/{id}/head``), on a new device or key accredited for the same observer id.

    The head statement must be signed by the gateway's node key (``node_accreditation``,
    ``GET /v1/node``, verified under the mandate: a NODE of this organization;
    :func:`bus.receipt.verify_head`), and name this observer and organization. The outbox
    then signs its first report at the head's seq + 1 on its digest.

    Returns:
        The head set (None: the observer has no accepted report yet; nothing to set).

    Raises:
        VerificationError: the accreditation does not verify, the statement is not one
            (``malformed``, ``invalid_field``) or not signed by that node key
            (``bad_signature``, ``subject_mismatch``), or the head is another observer's
            (``subject_mismatch``).
        StoreError: this outbox has signed reports already.
    """
    config = home.load_config()
    acc = verify_accreditation(
        decode_registry_record(node_accreditation), home.load_mandate(now_ms=at_ms)
    )
    if acc.role != Role.NODE or acc.org != config.org:
        raise VerificationError(
            Reason.WRONG_ROLE, f"gateway key is {acc.org}/{acc.role.name}, not {config.org}/NODE"
        )
    stated = verify_head(head_doc, acc)
    if (stated.org, stated.observer_id) != (config.org, config.observer_id):
        raise VerificationError(
            Reason.SUBJECT_MISMATCH,
            f"the head is of {stated.org}/{stated.observer_id}, not"
            f" {config.org}/{config.observer_id}",
        )
    seq, digest = stated.seq, stated.digest
    if seq == 0:
        return None
    head = ChainHead(seq, digest)
    outbox.set_head(head)
    log.info("chain_continued", seq=seq, digest=digest.hex())
    return head


@dataclass(frozen=True, slots=True)
class ClockCheck:
    """The device clock against the gateway's (``GET /v1/time``)."""

    ahead_ms: int  # how far the device runs ahead of the gateway (negative: behind)
    max_skew_ms: int  # how far ahead of the nodes' time a report's signed_at may be
    uncertainty_ms: int  # half the round trip

    @property
    def refused(self) -> bool:
        """Whether a report signed now would be refused ``clock_skew`` (certainly)."""
        return self.ahead_ms - self.uncertainty_ms > self.max_skew_ms

    def describe(self) -> str:
        """One line for people."""
        side = "ahead of" if self.ahead_ms >= 0 else "behind"
        return (
            f"this device's clock is {abs(self.ahead_ms) / 1000:.1f} s {side} the gateway's"
            f" (± {self.uncertainty_ms / 1000:.1f} s); reports may be signed at most"
            f" {self.max_skew_ms / 1000:.0f} s ahead"
        )


def clock_check(doc: object, *, sent_ms: int, received_ms: int) -> ClockCheck:
    """Compare the device clock with a ``GET /v1/time`` answer read between ``sent_ms`` and
    ``received_ms`` (device time): the gateway's time is taken at the midpoint.

    Raises:
        ConfigError: the answer is not the gateway's time document.
    """
    try:
        assert isinstance(doc, dict)
        gateway_ms, skew = int(doc["now_ms"]), int(doc["max_skew_ms"])
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            "gateway", f"GET /v1/time answered no time: {exc}", "check --gateway"
        ) from exc
    half = max(0, received_ms - sent_ms) // 2
    return ClockCheck(sent_ms + half - gateway_ms, skew, half)


# ---------------------------------------------------------------------------------------------
# Status and receipts


def receipt_keyring(home: Home, outbox: Outbox, *, at_ms: int, archive: bool = False) -> KeyRing:
    """A key ring of the mandate and the node accreditations kept in the outbox (``archive``:
    of a mandate that may have ended, :meth:`Home.load_mandate`)."""
    ring = KeyRing(home.load_mandate(now_ms=at_ms, archive=archive))
    for raw in outbox.node_accreditations():
        ring.apply(decode_registry_record(raw))
    return ring


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
    """Verify every stored receipt against the mandate and the kept node accreditations (also
    once the mandate has ended: a receipt is judged at its own issue time)."""
    ring = receipt_keyring(home, outbox, at_ms=at_ms, archive=True)
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
