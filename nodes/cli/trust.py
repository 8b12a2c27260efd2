"""``obus mandate ...`` and ``obus org ...``: the offline ceremony and the registry commands.

The file formats live in :mod:`bus.ceremony` (pure); this module only reads and writes files,
publishes to Kafka and prints. Registered into the main parser by :func:`add_trust_commands`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import yaml

from bus import ceremony
from bus.crypto import pae, verify
from bus.errors import ConfigError, KeyStoreError, Reason, VerificationError
from bus.kafka.client import KafkaSecurity
from bus.model import (
    PAYLOAD_MANDATE,
    Accreditation,
    EncryptionKey,
    Envelope,
    Mandate,
    Revocation,
    Role,
    check_id,
)
from bus.sealed import DecryptionKey
from bus.sign import sign_accreditation, sign_encryption_key, sign_revocation
from bus.trust import verify_mandate
from nodes.cli.kafka import security_from_args
from nodes.runtime.files import load_mandate, read_key
from nodes.runtime.logs import LEVELS

log = structlog.get_logger(__name__)

Common = Callable[[argparse.ArgumentParser], None]
Bootstrap = Callable[[argparse.Namespace], str]

# The accreditation request written by `obus observer init` (nodes/observer/device.py, issue 3).
REQUEST_TYPE = "obus-accreditation-request"
REQUEST_PAYLOAD_TYPE = "application/vnd.obus.accreditation-request.v1+json"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def mandate_key(mandate: Mandate) -> bytes:
    """Record key of a mandate version on the compacted mandate topic: ``<id>:<version>``."""
    return f"{mandate.mandate_id}:{mandate.version}".encode()


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(what, f"cannot read {path}: {exc.strerror}", f"check {what}") from exc


def _write_new(path: str, data: bytes, what: str, flag: str = "--out") -> None:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    except OSError as exc:
        raise ConfigError(
            flag, f"cannot write {path}: {exc.strerror or exc}", "pick a writable path"
        ) from exc
    print(f"wrote {what} {p}")


def _load_description(path: str) -> dict[str, Any]:
    raw = _read(path, "DESCRIPTION")
    try:
        doc = (
            yaml.safe_load(raw)
            if path.endswith((".yaml", ".yml"))
            else tomllib.loads(raw.decode("utf-8"))
        )
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError("DESCRIPTION", f"{path} does not parse: {exc}", "fix its syntax") from exc
    if not isinstance(doc, dict):
        raise ConfigError("DESCRIPTION", f"{path} is not a table", "see obus mandate draft -h")
    return doc


def _previous(args: argparse.Namespace) -> Mandate | None:
    if not getattr(args, "previous", None):
        return None
    return load_mandate(Path(args.previous))[0]


def _load_any_mandate(path: str) -> tuple[Mandate, Envelope | None]:
    """A draft file (JSON) or a signed mandate file (envelope bytes), not yet trusted."""
    raw = _read(path, "FILE")
    if raw.lstrip().startswith(b"{"):
        return ceremony.Draft.decode(raw).mandate, None
    env = Envelope.decode(raw)
    if env.payload_type != PAYLOAD_MANDATE:
        raise VerificationError(Reason.WRONG_PAYLOAD_TYPE, f"{path} is not a mandate envelope")
    return Mandate.decode(env.payload), env


# ---------------------------------------------------------------------------------------------
# obus mandate


_ROTATION_FLAGS = (
    ("threshold", "--threshold"),
    ("add_org", "--add-org"),
    ("remove_org", "--remove-org"),
    ("replace_key", "--replace-key"),
    ("not_after", "--not-after"),
    ("text", "--text"),
)


def _problem(exc: ConfigError) -> str:
    """The problem part of a ConfigError's message (without ``config KEY:`` and the fix)."""
    text = exc.message.removeprefix(f"config {exc.key}: ")
    return text.removesuffix(f"; fix: {exc.fix}").removeprefix(f"{exc.key}: ")


def _hex_key(flag: str, org: str, text: str) -> bytes:
    """A 32-byte root public key given as 64 hex characters on the command line."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(
            flag, f"key of {org} ({text[:80]!r}) is not 64 hex characters", "paste the key"
        )
    return key


def _rotation_changes(args: argparse.Namespace) -> ceremony.RotationChanges:
    added = []
    for i, (o, n, k) in enumerate(args.add_org or []):
        try:
            added.append(ceremony.organization_from({"org": o, "name": n, "root_public_key": k}, i))
        except ConfigError as exc:
            raise ConfigError("--add-org", f"{o}: {_problem(exc)}", exc.fix) from exc
    return ceremony.RotationChanges(
        threshold=args.threshold,
        add=tuple(added),
        remove=tuple(args.remove_org or ()),
        replace_keys=tuple((o, _hex_key("--replace-key", o, k)) for o, k in args.replace_key or []),
        not_after_ms=(
            None
            if args.not_after is None
            else ceremony.parse_time_ms("--not-after", args.not_after)
        ),
        description=args.text,
    )


def _rotation_flag(args: argparse.Namespace, key: str) -> str | None:
    """The rotation flag that set the mandate field ``key`` (None: it came from no flag)."""
    if key == "threshold" and args.threshold is not None:
        return "--threshold"
    if key in ("threshold", "organizations"):  # fewer or more organizations than before
        for attr, flag in _ROTATION_FLAGS[1:4]:
            if getattr(args, attr, None):
                return flag
    if key.startswith("not_after") and args.not_after is not None:
        return "--not-after"
    return None


def _cmd_draft(args: argparse.Namespace) -> int:
    previous = _previous(args)
    if previous is None and not args.description:
        raise ConfigError(
            "DESCRIPTION", "missing", "pass a description file, or --previous FILE to rotate"
        )
    if previous is None:
        for attr, rotation_flag in _ROTATION_FLAGS:
            if getattr(args, attr, None) is not None:
                raise ConfigError(
                    rotation_flag,
                    "rotation options need --previous",
                    "edit the description file instead, or pass --previous",
                )
        mandate = ceremony.mandate_from_description(_load_description(args.description))
    else:
        if args.description:
            raise ConfigError("DESCRIPTION", "given with --previous", "pass one of the two")
        changes = _rotation_changes(args)
        try:
            mandate = ceremony.next_version(previous, changes)
        except ConfigError as exc:
            flag = _rotation_flag(args, exc.key)
            if flag is None:
                raise
            problem = _problem(exc)
            if exc.key == "threshold" and flag != "--threshold":
                problem = f"the threshold {problem} (organizations left after {flag})"
                fix = "pass --threshold N as well (at most the number of organizations)"
            else:
                fix = f"correct {flag}"
            raise ConfigError(flag, problem, fix) from exc
    draft = ceremony.Draft.of(mandate)
    _write_new(args.out, draft.encode(), "draft")
    print("\n".join(ceremony.describe(mandate, previous=previous)))
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    draft = ceremony.Draft.decode(_read(args.draft, "DRAFT"))
    previous = _previous(args)
    key = read_key(Path(args.key))
    sig = ceremony.sign_draft(draft, key, previous=previous)
    print("\n".join(ceremony.describe(draft.mandate, previous=previous)))
    if not sig.org:
        print(
            f"warning: key {key.key_id.hex()[:16]} is no root key of this draft"
            + ("" if previous else " (pass --previous if it is one of the previous version)"),
            file=sys.stderr,
        )
    if args.bundle:
        bundle = Path(args.bundle)
        existing = bundle.read_bytes() if bundle.exists() else None
        _write_new(
            args.bundle, ceremony.add_to_bundle(existing, sig), "signatures bundle", "--bundle"
        )
    else:
        out = args.out or f"{args.draft}.{sig.org or key.key_id.hex()[:8]}.sig"
        _write_new(out, ceremony.encode_signatures([sig]), "signature")
    print(
        f"signed as {sig.org or '?'} (key {key.key_id.hex()[:16]});"
        f" draft sha256 {draft.digest.hex()}"
    )
    return 0


def _cmd_combine(args: argparse.Namespace) -> int:
    draft = ceremony.Draft.decode(_read(args.draft, "DRAFT"))
    previous = _previous(args)
    sigs = [s for f in args.signatures for s in ceremony.decode_signatures(_read(f, "SIGNATURES"))]
    env = ceremony.combine(draft, sigs, previous=previous, now_ms=_now_ms())
    _write_new(args.out, env.encode(), "signed mandate")
    print("\n".join(ceremony.describe(draft.mandate, envelope=env, previous=previous)))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    raw = _read(args.file, "FILE")
    previous = _previous(args)
    if raw.lstrip().startswith(b"{"):
        try:
            ceremony.Draft.decode(raw)
        except VerificationError:
            pass
        else:
            print(
                f"REJECTED ({Reason.WRONG_PAYLOAD_TYPE.value}): {args.file} is not a signed"
                " mandate: this looks like a draft; combine signatures first (obus mandate combine)"
            )
            return 1
    try:
        env = Envelope.decode(raw)
        mandate = verify_mandate(env, previous=previous, now_ms=_now_ms())
    except VerificationError as exc:
        print(f"REJECTED ({exc.reason.value}): {exc.message}")
        return 1
    print("\n".join(ceremony.describe(mandate, envelope=env, previous=previous)))
    print(
        f"OK: version {mandate.version} verifies"
        + (f" as the successor of version {previous.version}" if previous else "")
    )
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    mandate, env = _load_any_mandate(args.file)
    previous = _previous(args)
    print("\n".join(ceremony.describe(mandate, envelope=env, previous=previous)))
    if env is None:
        print("  (a draft: not signed yet)")
    return 0


async def publish(
    bootstrap: str, topic: str, value: bytes, key: bytes, *, security: KafkaSecurity | None = None
) -> tuple[int, int]:
    """Publish one record with the idempotent acks=all producer; returns (partition, offset)."""
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    from bus.kafka.client import reliable_producer, wrap  # noqa: PLC0415

    producer = reliable_producer(bootstrap, security=security)
    try:
        await producer.start()
        md = await producer.send_and_wait(topic, value, key=key)
    except KafkaError as exc:
        raise wrap(exc, f"publishing to {topic}") from exc
    finally:
        await producer.stop()
    return md.partition, md.offset


async def _ensure(bootstrap: str, topics: Any, name: str, security: KafkaSecurity | None) -> None:
    from bus.kafka.admin import ensure_topics  # noqa: PLC0415
    from bus.topics import standard_topics  # noqa: PLC0415

    specs = [s for s in standard_topics(topics, []) if s.name == name]
    await ensure_topics(bootstrap, specs, security=security)


def _cmd_publish(args: argparse.Namespace, bootstrap: Bootstrap) -> int:
    from bus.topics import Topics  # noqa: PLC0415

    raw = _read(args.file, "FILE")
    # A version must at least carry its own threshold; its predecessor check is every reader's.
    mandate = verify_mandate(Envelope.decode(raw), previous=_previous(args), now_ms=_now_ms())
    topics = Topics(args.topic_prefix)

    async def go() -> tuple[int, int]:
        security = security_from_args(args)
        await _ensure(bootstrap(args), topics, topics.mandate, security)
        return await publish(
            bootstrap(args), topics.mandate, raw, mandate_key(mandate), security=security
        )

    partition, offset = asyncio.run(go())
    print(
        f"published mandate {mandate.mandate_id} version {mandate.version}"
        f" to {topics.mandate}[{partition}]@{offset} (key {mandate_key(mandate).decode()})"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# obus org


def read_accreditation_request(data: bytes) -> tuple[str, str, bytes, Role | None]:
    """(subject id, org, public key, role or None) from an accreditation request file.

    Accepts the request ``obus observer init`` writes (its proof of possession is checked) or
    a plain JSON ``{"subject_id", "org", "public_key": hex}``.

    Raises:
        VerificationError: not JSON, fields missing, or a proof that does not verify.
    """
    try:
        doc = json.loads(data)
        public_key = bytes.fromhex(str(doc["public_key"]))
        if doc.get("type") == REQUEST_TYPE:
            subject, org = str(doc["observer_id"]), str(doc["org"])
            role = Role[str(doc.get("role", "observer")).upper()]
            body = {k: v for k, v in doc.items() if k != "proof"}
            canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
            verify(public_key, pae(REQUEST_PAYLOAD_TYPE, canonical), bytes.fromhex(doc["proof"]))
            return subject, org, public_key, role
        return str(doc["subject_id"]), str(doc["org"]), public_key, None
    except (ValueError, KeyError, TypeError) as exc:
        raise VerificationError(
            Reason.MALFORMED, f"accreditation request is not usable: {exc!r}"
        ) from exc


def _root_for(args: argparse.Namespace, mandate: Mandate) -> Any:
    key = read_key(Path(args.root_key))
    org = mandate.organization(args.org)
    if org is None:
        known = ", ".join(o.org for o in mandate.organizations)
        raise ConfigError("--org", f"{args.org!r} is not in the mandate", f"use one of: {known}")
    if org.root_key_id != key.key_id:
        raise ConfigError(
            "--root-key",
            f"{args.root_key} is not the root key of {args.org} in mandate version"
            f" {mandate.version}",
            f"pass {args.org}'s root key file",
        )
    return key


def _check_offline(args: argparse.Namespace) -> None:
    """``--offline`` without ``--out`` would sign a record and throw it away."""
    if args.offline and not args.out:
        raise ConfigError("--offline", "nothing would be kept", "add --out FILE")


def _publish_registry(
    args: argparse.Namespace, bootstrap: Bootstrap, env: Envelope, key_id: bytes
) -> None:
    from bus.topics import Topics, registry_key  # noqa: PLC0415

    raw = env.encode()
    if args.out:
        _write_new(args.out, raw, "registry record")
    if args.offline:
        return
    topics = Topics(args.topic_prefix)
    rkey = registry_key(env.payload_type, key_id)

    async def go() -> tuple[int, int]:
        security = security_from_args(args)
        await _ensure(bootstrap(args), topics, topics.registry, security)
        return await publish(bootstrap(args), topics.registry, raw, rkey, security=security)

    partition, offset = asyncio.run(go())
    print(f"published to {topics.registry}[{partition}]@{offset} (key {rkey.decode()})")


def _cmd_accredit(args: argparse.Namespace, bootstrap: Bootstrap) -> int:
    _check_offline(args)
    mandate, _ = load_mandate(Path(args.mandate))
    root = _root_for(args, mandate)
    role = Role[args.role.upper()]
    if args.request:
        subject, org, public_key, req_role = read_accreditation_request(
            _read(args.request, "--request")
        )
        if org != args.org:
            raise ConfigError("--request", f"request is for org {org!r}", f"accredit as {org}")
        if req_role is not None and req_role != role:
            raise ConfigError("--role", f"request asks for {req_role.name.lower()}", "match it")
        if args.subject and args.subject != subject:
            raise ConfigError("--subject", f"request names {subject!r}", "omit --subject")
    else:
        if not (args.public_key and args.subject):
            raise ConfigError(
                "--public-key", "missing", "pass --subject ID --public-key HEX, or --request FILE"
            )
        try:
            subject, public_key = args.subject, bytes.fromhex(args.public_key)
        except ValueError as exc:
            raise ConfigError(
                "--public-key",
                f"{args.public_key[:80]!r} is not hex",
                "paste the 64 hex characters `obus keygen` printed",
            ) from exc
    check_id("subject", subject)
    from bus.crypto import validate_public_key  # noqa: PLC0415

    try:
        validate_public_key(public_key)
    except VerificationError as exc:
        flag = "--request" if args.request else "--public-key"
        raise ConfigError(flag, exc.message, "pass the subject's Ed25519 public key") from exc
    not_before = (
        mandate.not_before_ms
        if args.not_before is None
        else ceremony.parse_time_ms("--not-before", args.not_before)
    )
    not_after = (
        mandate.not_after_ms
        if args.not_after is None
        else ceremony.parse_time_ms("--not-after", args.not_after)
    )
    acc = Accreditation(
        subject_id=subject,
        org=args.org,
        role=role,
        public_key=public_key,
        not_before_ms=not_before,
        not_after_ms=not_after,
        serial=args.serial if args.serial is not None else _now_ms(),
        mandate_id=mandate.mandate_id,
    )
    env = sign_accreditation(acc, root)
    print(
        f"accreditation: {args.org}/{subject} as {role.name.lower()}, key id {acc.key_id.hex()},"
        f" valid {ceremony.format_time_ms(not_before)} .. {ceremony.format_time_ms(not_after)}"
    )
    _publish_registry(args, bootstrap, env, acc.key_id)
    return 0


def _cmd_revoke(args: argparse.Namespace, bootstrap: Bootstrap) -> int:
    _check_offline(args)
    mandate, _ = load_mandate(Path(args.mandate))
    root = _root_for(args, mandate)
    try:
        key_id = bytes.fromhex(args.key_id)
    except ValueError:
        key_id = b""
    if len(key_id) != 32:
        raise ConfigError("--key-id", "is not 64 hex characters", "pass the revoked key's id")
    if args.last_valid_seq < 0:
        raise ConfigError("--last-valid-seq", "is negative", "0 revokes everything the key signed")
    rev = Revocation(
        org=args.org,
        key_id=key_id,
        last_valid_seq=args.last_valid_seq,
        revoked_at_ms=_now_ms(),
        reason=args.reason,
        serial=args.serial if args.serial is not None else _now_ms(),
        mandate_id=mandate.mandate_id,
    )
    env = sign_revocation(rev, root)
    print(
        f"revocation by {args.org} of key {key_id.hex()}: reports with seq >"
        f" {args.last_valid_seq} stop counting ({args.reason})"
    )
    _publish_registry(args, bootstrap, env, key_id)
    return 0


DECRYPTION_KEY_TYPE = "obus-x25519-private"


def _decryption_key_doc(key: DecryptionKey) -> bytes:
    doc = {"type": DECRYPTION_KEY_TYPE, "org": key.org, "private": key.private_key.hex()}
    return json.dumps(doc).encode()


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise KeyStoreError(f"{path} exists; refusing to overwrite a key", path=str(path))


def write_decryption_key(path: Path, key: DecryptionKey) -> None:
    """Write an organization's X25519 private key file, readable only by its owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyStoreError(f"{path} exists; refusing to overwrite a key", path=str(path)) from exc
    with os.fdopen(fd, "wb") as f:
        f.write(_decryption_key_doc(key))


def _stage_decryption_key(path: Path, key: DecryptionKey) -> Path:
    """Write the key to a temporary file (mode 0600) beside ``path``; returns the temp path.

    Nothing appears under ``path`` until :func:`_commit_decryption_key`, so a failed publish
    leaves no orphaned private key behind (and a re-run is not refused).
    """
    _refuse_existing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_decryption_key_doc(key))
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _commit_decryption_key(tmp: Path, path: Path) -> None:
    """Move the staged key into place; never over an existing file."""
    try:
        os.link(tmp, path)  # atomic and refuses to overwrite
    except FileExistsError as exc:
        raise KeyStoreError(
            f"{path} appeared meanwhile; the new private key is in {tmp}", path=str(path)
        ) from exc
    except OSError:  # a filesystem without hard links: same directory, so still atomic
        _refuse_existing(path)
        tmp.replace(path)
        return
    tmp.unlink()


def read_decryption_key(path: Path, org: str | None = None) -> DecryptionKey:
    """Read an X25519 private key file (``obus org enckey --private-out``).

    Raises:
        ConfigError: unreadable, wrong format, or the key of another organization than ``org``.
    """
    fix = "pass the file `obus org enckey --private-out` wrote for your organization"
    try:
        doc = json.loads(path.read_bytes())
        kind = doc.get("type")
        key = DecryptionKey(str(doc["org"]), bytes.fromhex(doc["private"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError("--decryption-key", f"cannot read {path}: {exc}", fix) from exc
    if kind != DECRYPTION_KEY_TYPE:
        raise ConfigError("--decryption-key", f"{path} is not an {DECRYPTION_KEY_TYPE} file", fix)
    if org is not None and key.org != org:
        raise ConfigError("--decryption-key", f"{path} is the key of {key.org}, not {org}", fix)
    return key


def _cmd_enckey(args: argparse.Namespace, bootstrap: Bootstrap) -> int:
    _check_offline(args)
    mandate, _ = load_mandate(Path(args.mandate))
    root = _root_for(args, mandate)
    key = DecryptionKey.generate(args.org)
    not_after = (
        mandate.not_after_ms
        if args.not_after is None
        else ceremony.parse_time_ms("--not-after", args.not_after)
    )
    ek = EncryptionKey(
        org=args.org,
        public_key=key.public_key,
        not_before_ms=mandate.not_before_ms,
        not_after_ms=not_after,
        serial=args.serial if args.serial is not None else _now_ms(),
        mandate_id=mandate.mandate_id,
    )
    private_out = Path(args.private_out)
    try:
        tmp = _stage_decryption_key(private_out, key)
    except OSError as exc:
        raise ConfigError(
            "--private-out", f"cannot write {private_out}: {exc.strerror}", "pick a writable path"
        ) from exc
    try:  # publish (or write --out) first: the private key is kept only once that worked
        _publish_registry(args, bootstrap, sign_encryption_key(ek, root), ek.key_id)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _commit_decryption_key(tmp, private_out)
    print(
        f"encryption key of {args.org}: key id {ek.key_id.hex()}; private key in"
        f" {args.private_out} (give it to your node: obus node --decryption-key FILE)"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# Parser


def add_trust_commands(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: Common,
    bootstrap: Bootstrap,
) -> None:
    """Add ``mandate`` and ``org`` sub-commands to the ``obus`` parser."""
    md = sub.add_parser(
        "mandate",
        help="the offline mandate ceremony: draft, sign, combine, verify, show, publish",
        description="Mandate versions are signed offline: one person drafts, every organization "
        "signs the same draft file with its root key on its own machine, anyone combines the "
        "signatures into the signed mandate file. Version N+1 needs the threshold of version N's "
        "organizations and of its own.",
        epilog="Example rotation: obus mandate draft --previous v1.bin --add-org osce2 'OSCE' "
        "HEX --out v2.draft; obus mandate sign --key un.key v2.draft --previous v1.bin; ... ; "
        "obus mandate combine v2.draft *.sig --previous v1.bin --out v2.bin; "
        "obus mandate publish v2.bin",
    )
    msub = md.add_subparsers(dest="mandate_command", required=True, metavar="STEP")

    d = msub.add_parser("draft", help="write a draft from a description or a previous version")
    d.add_argument("description", nargs="?", help="TOML or YAML description (first version)")
    d.add_argument("--previous", metavar="FILE", help="signed current version (draft N+1)")
    d.add_argument("--out", required=True, metavar="DRAFT", help="draft file to write")
    d.add_argument("--threshold", type=int, help="new threshold (rotation)")
    d.add_argument(
        "--add-org", nargs=3, action="append", metavar=("ORG", "NAME", "ROOT_PUBLIC_KEY_HEX")
    )
    d.add_argument("--remove-org", action="append", metavar="ORG")
    d.add_argument(
        "--replace-key", nargs=2, action="append", metavar=("ORG", "ROOT_PUBLIC_KEY_HEX")
    )
    d.add_argument("--not-after", metavar="TIME", help="new end of validity (RFC 3339)")
    d.add_argument("--text", metavar="TEXT", help="new description text")
    d.add_argument("--log-level", default="warning", choices=LEVELS)
    d.set_defaults(func=_cmd_draft)

    s = msub.add_parser("sign", help="sign a draft with one organization's root key (offline)")
    s.add_argument("draft", metavar="DRAFT")
    s.add_argument("--key", required=True, metavar="ROOT_KEY_FILE")
    s.add_argument("--previous", metavar="FILE", help="signed previous version (to name the org)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--out", metavar="FILE", help="detached signature file (default DRAFT.ORG.sig)")
    g.add_argument("--bundle", metavar="FILE", help="append to a signatures bundle instead")
    s.add_argument("--log-level", default="warning", choices=LEVELS)
    s.set_defaults(func=_cmd_sign)

    c = msub.add_parser("combine", help="draft + signatures -> the signed mandate file")
    c.add_argument("draft", metavar="DRAFT")
    c.add_argument("signatures", nargs="+", metavar="SIGNATURES")
    c.add_argument("--previous", metavar="FILE", help="signed previous version (rotation)")
    c.add_argument("--out", required=True, metavar="FILE")
    c.add_argument("--log-level", default="warning", choices=LEVELS)
    c.set_defaults(func=_cmd_combine)

    v = msub.add_parser(
        "verify", help="verify a signed mandate file (exit 1 with the reason if it does not verify)"
    )
    v.add_argument("file", metavar="FILE")
    v.add_argument("--previous", metavar="FILE", help="verify as the successor of this version")
    v.add_argument("--log-level", default="warning", choices=LEVELS)
    v.set_defaults(func=_cmd_verify)

    sh = msub.add_parser("show", help="print a draft or a signed mandate for humans")
    sh.add_argument("file", metavar="FILE")
    sh.add_argument("--previous", metavar="FILE", help="also show the changes from this version")
    sh.add_argument("--log-level", default="warning", choices=LEVELS)
    sh.set_defaults(func=_cmd_show)

    p = msub.add_parser("publish", help="put a signed version on <prefix>mandate")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--previous", metavar="FILE", help="also check it follows this version")
    common(p)
    p.set_defaults(func=lambda a: _cmd_publish(a, bootstrap))

    org = sub.add_parser("org", help="an organization's registry records: accredit, revoke")
    osub = org.add_subparsers(dest="org_command", required=True, metavar="ACTION")

    def registry_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--org", required=True, help="your organization id")
        q.add_argument("--root-key", required=True, metavar="FILE", help="your root key file")
        q.add_argument("--mandate", required=True, metavar="FILE", help="current mandate file")
        q.add_argument("--serial", type=int, help="record serial (default: now in ms)")
        q.add_argument("--out", metavar="FILE", help="also write the signed record here")
        q.add_argument("--offline", action="store_true", help="do not publish (use with --out)")
        common(q)

    a = osub.add_parser("accredit", help="accredit an observer, node or auditor key")
    registry_args(a)
    a.add_argument("--subject", help="subject id (observer id, node id)")
    a.add_argument("--role", required=True, choices=["observer", "node", "auditor"])
    kg = a.add_mutually_exclusive_group(required=True)
    kg.add_argument("--public-key", metavar="HEX", help="the subject's Ed25519 public key")
    kg.add_argument("--request", metavar="FILE", help="accreditation request file")
    a.add_argument("--not-before", metavar="TIME", help="default: the mandate's start")
    a.add_argument("--not-after", metavar="TIME", help="default: the mandate's end")
    a.set_defaults(func=lambda x: _cmd_accredit(x, bootstrap))

    r = osub.add_parser(
        "revoke",
        help="revoke a key after a position in its own chain",
        description="Reports signed by the key with seq <= --last-valid-seq stay valid; every "
        "later one is quarantined as key_revoked at every node, and already accepted ones are "
        "marked revoked_after_acceptance.",
    )
    registry_args(r)
    r.add_argument("--key-id", required=True, metavar="HEX", help="SHA-256 of the revoked key")
    r.add_argument("--last-valid-seq", required=True, type=int, metavar="N")
    r.add_argument("--reason", required=True, metavar="TEXT")
    r.set_defaults(func=lambda x: _cmd_revoke(x, bootstrap))

    e = osub.add_parser(
        "enckey",
        help="new X25519 key for restricted reports: write the private key, publish the public",
        description="Observers seal restricted reports to the newest encryption key each "
        "recipient organization published on the registry; this organization's nodes read them "
        "with the private key file (obus node --decryption-key FILE).",
    )
    registry_args(e)
    e.add_argument("--private-out", required=True, metavar="FILE", help="private key file")
    e.add_argument("--not-after", metavar="TIME", help="default: the mandate's end")
    e.set_defaults(func=lambda x: _cmd_enckey(x, bootstrap))


__all__ = [
    "add_trust_commands",
    "mandate_key",
    "publish",
    "read_accreditation_request",
    "read_decryption_key",
    "write_decryption_key",
]
