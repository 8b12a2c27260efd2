"""``obus keygen``, ``obus key encrypt`` and ``obus org ...``: key files (encrypted at rest:
:mod:`nodes.runtime.keyfile`; root, node and an organization's X25519 decryption keys), and an
organization's registry records (accreditations, revocations, encryption keys).

Record formats and their verification live in the pure core (:mod:`bus.model`,
:mod:`bus.trust`); this module only reads and writes files, publishes to Kafka and prints.
Registered into the main parser by :func:`add_keygen_commands` and :func:`add_org_commands`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus import ceremony
from bus.crypto import SigningKey, pae, validate_public_key, verify
from bus.errors import BusError, ConfigError, KeyStoreError, Reason, VerificationError
from bus.lifecycle import TrustTimeline
from bus.model import Accreditation, EncryptionKey, Envelope, Mandate, Revocation, Role, check_id
from bus.sealed import DecryptionKey
from bus.sign import sign_accreditation, sign_encryption_key, sign_revocation
from bus.topics import Topics
from bus.trust import KeyRing, check_subject_namespace, decode_mandate_record
from nodes.cli.common import (
    add_common_args,
    add_log_level,
    bootstrap,
    check_broker,
    ensure_topic,
    now_ms,
    publish,
    read_file,
    security_from_args,
    write_file,
)
from nodes.runtime.files import (
    encrypt_key_file,
    load_mandate,
    read_decryption_key_file,
    read_key,
    write_encrypted_key,
    write_key,
)
from nodes.runtime.keyfile import (
    PASSPHRASE_ENV,
    SCRYPT_N,
    X25519_PLAINTEXT_TYPE,
    KeyKind,
    PassphraseSource,
    encrypt_decryption_key,
    new_passphrase,
    passphrase_from_env_or_terminal,
    plaintext_decryption_key,
    write_new_key_file,
)

# The accreditation request written by `obus observer init` (nodes/observer/device.py).
REQUEST_TYPE = "obus-accreditation-request"
REQUEST_PAYLOAD_TYPE = "application/vnd.obus.accreditation-request.v1+json"


# ---------------------------------------------------------------------------------------------
# obus keygen


def _cmd_keygen(args: argparse.Namespace) -> int:
    key, path, kind = SigningKey.generate(), Path(args.path), KeyKind(args.kind)
    if path.exists():  # before a passphrase is asked for
        raise KeyStoreError(f"{path} exists; refusing to overwrite a key", path=str(path))
    try:
        if args.plaintext_key:
            write_key(path, key)
        else:
            passphrase = new_passphrase(kind, path)
            write_encrypted_key(path, key, kind=kind, passphrase=passphrase.text)
    except OSError as exc:
        raise ConfigError(
            "PATH", f"cannot write {args.path}: {exc.strerror}", "pick a writable path"
        ) from exc
    at_rest = "plaintext: tests and demos only" if args.plaintext_key else "encrypted"
    print(f"wrote {args.path} ({kind} key, {at_rest}; key id {key.key_id.hex()})")
    print(f"public key {key.public_key.hex()}")
    return 0


def _cmd_key_encrypt(args: argparse.Namespace) -> int:
    path, kind = Path(args.path), KeyKind(args.kind)
    key, already = encrypt_key_file(path, kind=kind)  # refuses a plaintext key of another type
    if key is None:
        print(f"{path} is already encrypted ({already or 'observer'} key); left as it is")
    else:
        print(f"encrypted {path} ({kind} key {key.key_id.hex()}); passphrase from"
              f" {PASSPHRASE_ENV[kind]} or the prompt from now on")  # fmt: skip
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
    key = read_key(Path(args.root_key), kind=KeyKind.ROOT)
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


def _publish_registry(args: argparse.Namespace, env: Envelope, key_id: bytes) -> None:
    raw = env.encode()
    if args.out:
        write_file(args.out, raw, "registry record")
    if args.offline:
        return
    check_broker(args)
    topics = Topics(args.topic_prefix)

    async def go() -> tuple[int, int]:
        security = security_from_args(args)
        await ensure_topic(bootstrap(args), topics, topics.registry, security)
        return await publish(bootstrap(args), topics.registry, raw, security=security)

    partition, offset = asyncio.run(go())
    print(f"published to {topics.registry}[{partition}]@{offset} (key id {key_id.hex()})")


@dataclass(frozen=True, slots=True)
class RegistryView:
    """The registry as a node judges it: the key ring in force and the records it refused."""

    keyring: KeyRing
    refused: list[tuple[int, str, str]]  # (offset, reason code, message)
    source: str


async def _read_registry_live(args: argparse.Namespace, root: Mandate) -> RegistryView:
    """Replay the mandate and registry topics (no consumer group) and judge them as a node
    does: mandate versions from the file's version on (:class:`bus.lifecycle.TrustTimeline`),
    every registry record under each version."""
    from bus.kafka.replay import replay  # noqa: PLC0415 - keep `obus --help` fast

    topics, security = Topics(args.topic_prefix), security_from_args(args)
    timeline = TrustTimeline(root)
    present = await _existing_topics(args, [topics.mandate, topics.registry])
    if topics.mandate in present:
        async for rec in replay(bootstrap(args), [topics.mandate], security=security):
            with contextlib.suppress(BusError):  # an alarm at a node, never applied
                timeline.offer_mandate(decode_mandate_record(rec.value), now_ms=now_ms())
    refused: list[tuple[int, str, str]] = []
    if topics.registry in present:
        async for rec in replay(bootstrap(args), [topics.registry], security=security):
            try:
                timeline.apply_registry(Envelope.decode(rec.value))
            except VerificationError as exc:
                refused.append((rec.offset, exc.reason.value, exc.message))
    return RegistryView(timeline.current, refused, f"{topics.registry} (live read)")


async def _existing_topics(args: argparse.Namespace, names: list[str]) -> set[str]:
    """Which of ``names`` exist (a pattern lists them: naming a missing topic would be retried
    as a transient error)."""
    from bus.kafka.admin import topic_partitions  # noqa: PLC0415

    pattern = "|".join(f"{re.escape(n)}$" for n in names)
    parts = await topic_partitions(
        bootstrap(args), pattern=pattern, security=security_from_args(args)
    )
    return {tp.topic for tp in parts}


def read_registry(args: argparse.Namespace, mandate: Mandate) -> RegistryView:
    """Who is accredited: from the node's final store (``--final-db``: its final trust state,
    the one its verdicts rest on), else a live read with the same rules. Checks the brokers
    answer first (exit 3 when not)."""
    check_broker(args)
    final_db = getattr(args, "final_db", None)
    if not final_db:
        return asyncio.run(_read_registry_live(args, mandate))
    from nodes.org_node.statements import read_board  # noqa: PLC0415

    if mandate.version != 1:
        raise ConfigError(
            "--mandate",
            f"is version {mandate.version}; a final store is judged from version 1",
            "pass version 1 of the mandate with --final-db, or drop --final-db for a live read",
        )
    board = asyncio.run(
        read_board(
            bootstrap(args),
            Topics(args.topic_prefix),
            mandate,
            final_db=Path(final_db),
            security=security_from_args(args),
        )
    )
    return RegistryView(board.keyring, [], f"final store {final_db}")


def check_accreditation(acc: Accreditation, mandate: Mandate) -> None:
    """What a node checks of an accreditation before it counts, and what makes one useless,
    checked before anything is signed: the subject inside the organization's namespace and in
    no other organization's (no org id a '-'-prefix of another), the organization a member,
    the validity window inside the mandate's.

    Raises:
        ConfigError: naming the flag, the problem and the fix.
    """
    if mandate.organization(acc.org) is None:
        known = ", ".join(o.org for o in mandate.organizations)
        raise ConfigError("--org", f"{acc.org!r} is not in the mandate", f"use one of: {known}")
    try:
        check_subject_namespace(acc.subject_id, acc.org)
    except VerificationError as exc:
        raise ConfigError(
            "--subject",
            f"{exc.message}: every node would refuse the record ({exc.reason.value})",
            f"name the subject {acc.org}-<name>, e.g. {acc.org}-obs-7 or {acc.org}-node-1",
        ) from exc
    for other in mandate.organizations:
        if other.org != acc.org and acc.subject_id.startswith(f"{other.org}-"):
            raise ConfigError(
                "--subject",
                f"{acc.subject_id!r} is also inside {other.org}'s namespace ({other.org}-):"
                f" the org ids {acc.org} and {other.org} overlap",
                f"pick a subject id that does not start with {other.org}-",
            )
    window = (
        f"the mandate's window {ceremony.format_time_ms(mandate.not_before_ms)} .."
        f" {ceremony.format_time_ms(mandate.not_after_ms)}"
    )
    if acc.not_before_ms < mandate.not_before_ms:
        raise ConfigError("--not-before", f"is before {window}", "drop it or move it inside")
    if acc.not_after_ms > mandate.not_after_ms:
        raise ConfigError("--not-after", f"is after {window}", "drop it or move it inside")


def _check_against_registry(acc: Accreditation, view: RegistryView) -> None:
    """A key identifies one subject: the first accreditation of a key wins at every node."""
    for known in view.keyring.accreditations():
        if known.key_id == acc.key_id and (known.org, known.subject_id) != (
            acc.org,
            acc.subject_id,
        ):
            raise ConfigError(
                "--public-key",
                f"key {acc.key_id.hex()} is already accredited to {known.org}/{known.subject_id}:"
                f" every node would refuse this record ({Reason.DUPLICATE_CONFLICT.value})",
                "accredit a new key for this subject (obus keygen, or obus observer init)",
            )


def _cmd_accredit(args: argparse.Namespace) -> int:
    _check_offline(args)
    mandate, _ = load_mandate(Path(args.mandate))
    root = _root_for(args, mandate)
    role = Role[args.role.upper()]
    if args.request:
        subject, org, public_key, req_role = read_accreditation_request(
            read_file(args.request, "--request")
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
        serial=args.serial if args.serial is not None else now_ms(),
        mandate_id=mandate.mandate_id,
    )
    check_accreditation(acc, mandate)
    if not args.offline:
        _check_against_registry(acc, read_registry(args, mandate))
    env = sign_accreditation(acc, root)
    print(
        f"accreditation: {args.org}/{subject} as {role.name.lower()}, key id {acc.key_id.hex()},"
        f" valid {ceremony.format_time_ms(not_before)} .. {ceremony.format_time_ms(not_after)}"
    )
    _publish_registry(args, env, acc.key_id)
    return 0


def _revoked_after(view: RegistryView, acc: Accreditation) -> int | None:
    """The cut-off seq of the revocation in force on ``acc``'s key, or None."""
    cut = [
        r.last_valid_seq
        for r in view.keyring.revocations()
        if (r.org, r.key_id) == (acc.org, acc.key_id)
    ]
    return min(cut) if cut else None


def _describe(view: RegistryView, acc: Accreditation) -> str:
    revoked = _revoked_after(view, acc)
    state = "active" if revoked is None else f"revoked after seq {revoked}"
    start, end = (ceremony.format_time_ms(t) for t in (acc.not_before_ms, acc.not_after_ms))
    window = f"{start} .. {end}"
    return f"{acc.key_id.hex()}  {acc.role.name.lower():8} {window}  {state}"


def _key_to_revoke(args: argparse.Namespace, mandate: Mandate) -> bytes:
    """The key id to revoke: ``--key-id``, or the one key ``--subject`` holds in the registry
    (read as a node reads it). Refused: an ambiguous or unknown subject, a key this
    organization did not accredit (no node would apply it)."""
    if args.offline:
        if args.subject:
            raise ConfigError(
                "--subject",
                "naming the key by subject needs the registry, which --offline does not read",
                "pass --key-id HEX with --offline",
            )
        return _hex_key_id(args.key_id)
    view = read_registry(args, mandate)
    own = [a for a in view.keyring.accreditations() if a.org == args.org]
    if args.key_id:
        key_id = _hex_key_id(args.key_id)
        if not any(a.key_id == key_id for a in own):
            raise ConfigError(
                "--key-id",
                f"{key_id.hex()} is not a key {args.org} accredited ({view.source})",
                f"pass the key id of one of {args.org}'s subjects (obus org list --org {args.org})",
            )
        return key_id
    held = [a for a in own if a.subject_id == args.subject]
    if not held:
        near = difflib.get_close_matches(args.subject, sorted({a.subject_id for a in own}), n=3)
        fix = f"did you mean {', '.join(near)}?" if near else f"see obus org list --org {args.org}"
        raise ConfigError(
            "--subject", f"{args.subject!r} holds no key accredited by {args.org}", fix
        )
    if len(held) > 1:
        listed = "".join(f"\n    {_describe(view, a)}" for a in held)
        raise ConfigError(
            "--subject",
            f"{args.subject!r} holds {len(held)} keys:{listed}\n",
            "pick one with --key-id HEX",
        )
    return held[0].key_id


def _hex_key_id(text: str) -> bytes:
    try:
        key_id = bytes.fromhex(text)
    except ValueError:
        key_id = b""
    if len(key_id) != 32:
        raise ConfigError("--key-id", "is not 64 hex characters", "pass the revoked key's id")
    return key_id


def _cmd_revoke(args: argparse.Namespace) -> int:
    _check_offline(args)
    mandate, _ = load_mandate(Path(args.mandate))
    root = _root_for(args, mandate)
    if args.last_valid_seq < 0:
        raise ConfigError("--last-valid-seq", "is negative", "0 revokes everything the key signed")
    if args.key_id is not None:
        _hex_key_id(args.key_id)  # a malformed id is refused before the registry is read
    key_id = _key_to_revoke(args, mandate)
    rev = Revocation(
        org=args.org,
        key_id=key_id,
        last_valid_seq=args.last_valid_seq,
        revoked_at_ms=now_ms(),
        reason=args.reason,
        serial=args.serial if args.serial is not None else now_ms(),
        mandate_id=mandate.mandate_id,
    )
    env = sign_revocation(rev, root)
    print(
        f"revocation by {args.org} of key {key_id.hex()}: reports with seq >"
        f" {args.last_valid_seq} stop counting ({args.reason})"
    )
    _publish_registry(args, env, key_id)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    mandate, _ = load_mandate(Path(args.mandate), archive=True)
    if args.org and mandate.organization(args.org) is None:
        known = ", ".join(o.org for o in mandate.organizations)
        raise ConfigError("--org", f"{args.org!r} is not in the mandate", f"use one of: {known}")
    view = read_registry(args, mandate)
    accs = [a for a in view.keyring.accreditations() if not args.org or a.org == args.org]
    print(f"accredited keys under mandate {view.keyring.mandate.mandate_id} version"
          f" {view.keyring.mandate.version}, from {view.source}:")  # fmt: skip
    for acc in sorted(accs, key=lambda a: (a.org, a.subject_id, a.serial)):
        print(f"  {acc.org:6} {acc.subject_id:20} {_describe(view, acc)}")
    if not accs:
        print("  (none)")
    for offset, reason, message in view.refused:
        print(f"refused registry record @{offset} ({reason}): {message}")
    return 0


DECRYPTION_KEY_TYPE = X25519_PLAINTEXT_TYPE  # the plaintext format (--plaintext-key)


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise KeyStoreError(f"{path} exists; refusing to overwrite a key", path=str(path))


def _decryption_key_bytes(key: DecryptionKey, passphrase: str | None, scrypt_n: int) -> bytes:
    if passphrase is None:
        return plaintext_decryption_key(key)
    return encrypt_decryption_key(key, passphrase, n=scrypt_n)


def write_decryption_key(
    path: Path, key: DecryptionKey, *, passphrase: str | None = None, scrypt_n: int = SCRYPT_N
) -> None:
    """Write an organization's X25519 private key file, readable only by its owner (refuses to
    overwrite): encrypted under ``passphrase`` (:mod:`nodes.runtime.keyfile`), or in plaintext
    without one (tests and demos only).

    Raises:
        KeyStoreError: the file exists or the passphrase is too short.
    """
    write_new_key_file(path, _decryption_key_bytes(key, passphrase, scrypt_n))


def _stage_decryption_key(path: Path, data: bytes) -> Path:
    """Write the key file's bytes to a temporary file (mode 0600) beside ``path``; returns the
    temp path.

    Nothing appears under ``path`` until :func:`_commit_decryption_key`, so a failed publish
    leaves no orphaned private key behind (and a re-run is not refused).
    """
    _refuse_existing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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


def read_decryption_key(
    path: Path,
    org: str | None = None,
    *,
    passphrase: PassphraseSource = passphrase_from_env_or_terminal,
) -> DecryptionKey:
    """Read an X25519 private key file (``obus org enckey --private-out``), encrypted (the
    passphrase from ``$OBUS_DECRYPTION_KEY_PASSPHRASE``, else a prompt on a terminal) or
    plaintext (one ``key_file_unencrypted`` warning naming ``obus key encrypt FILE --kind
    decryption``).

    Raises:
        KeyStoreError: unreadable, not a decryption key file, a wrong passphrase or an altered
            file (:func:`nodes.runtime.files.read_decryption_key_file`).
        ConfigError: an encrypted file and no passphrase at hand (naming the variable), or the
            key of another organization than ``org``.
    """
    key = read_decryption_key_file(path, passphrase=passphrase)
    if org is not None and key.org != org:
        raise ConfigError(
            "--decryption-key",
            f"{path} is the key of {key.org}, not {org}",
            "pass the file `obus org enckey --private-out` wrote for your organization",
        )
    return key


def _cmd_enckey(args: argparse.Namespace) -> int:
    _check_offline(args)
    mandate, _ = load_mandate(Path(args.mandate))
    root = _root_for(args, mandate)
    private_out = Path(args.private_out)
    _refuse_existing(private_out)  # before a passphrase is asked for
    kind = KeyKind.DECRYPTION
    passphrase = None if args.plaintext_key else new_passphrase(kind, private_out).text
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
        serial=args.serial if args.serial is not None else now_ms(),
        mandate_id=mandate.mandate_id,
    )
    try:
        tmp = _stage_decryption_key(private_out, _decryption_key_bytes(key, passphrase, SCRYPT_N))
    except OSError as exc:
        raise ConfigError(
            "--private-out", f"cannot write {private_out}: {exc.strerror}", "pick a writable path"
        ) from exc
    try:  # publish (or write --out) first: the private key is kept only once that worked
        _publish_registry(args, sign_encryption_key(ek, root), ek.key_id)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _commit_decryption_key(tmp, private_out)
    at_rest = (
        "plaintext: tests and demos only"
        if passphrase is None
        else f"encrypted; the node takes the passphrase from {PASSPHRASE_ENV[kind]} or the prompt"
    )
    print(
        f"encryption key of {args.org}: key id {ek.key_id.hex()}; private key in"
        f" {args.private_out} ({at_rest}; give it to your node: obus node --decryption-key FILE)"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# Parser


def add_keygen_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``keygen`` and ``key encrypt`` to the ``obus`` parser."""
    kg = sub.add_parser(
        "keygen",
        help="generate an Ed25519 root or node key file, encrypted (mode 0600)",
        description="The key is encrypted at rest (scrypt, AES-256-GCM) under the passphrase of"
        " its kind: $OBUS_ROOT_KEY_PASSPHRASE or $OBUS_NODE_KEY_PASSPHRASE, else asked twice on"
        " the terminal. Every command that reads the file asks for the same passphrase.",
    )
    kg.add_argument("path", help="where to write the key file (must not exist)")
    kg.add_argument(
        "--kind", required=True, choices=[KeyKind.ROOT.value, KeyKind.NODE.value],
        help="root: the organization's root key (mandate, accreditations); node: a node key",
    )  # fmt: skip
    kg.add_argument(
        "--plaintext-key", action="store_true",
        help="write the seed unencrypted (tests and demos only: anyone who reads the file can"
        " sign as this key)",
    )  # fmt: skip
    add_log_level(kg)
    kg.set_defaults(func=_cmd_keygen)

    key = sub.add_parser("key", help="key files at rest: encrypt a plaintext one")
    ksub = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    enc = ksub.add_parser(
        "encrypt",
        help="encrypt a plaintext root, node or decryption key file in place (idempotent)",
        description="Replaces a plaintext key file (written before keys were encrypted, or with"
        " --plaintext-key) by the same key encrypted under the passphrase of its kind"
        " ($OBUS_ROOT_KEY_PASSPHRASE, $OBUS_NODE_KEY_PASSPHRASE or"
        " $OBUS_DECRYPTION_KEY_PASSPHRASE, else asked twice on the terminal); atomically, mode"
        " 0600. A file already encrypted is left as it is (exit 0); a plaintext key of the other"
        " type (an Ed25519 key with --kind decryption, an X25519 one with root or node) is"
        " refused and left as it is.",
    )
    enc.add_argument("path", metavar="FILE", help="the key file")
    enc.add_argument(
        "--kind", required=True,
        choices=[KeyKind.ROOT.value, KeyKind.NODE.value, KeyKind.DECRYPTION.value],
        help="which passphrase encrypts it: root or node (Ed25519 keys), decryption (an"
        " organization's X25519 key from obus org enckey --private-out)",
    )  # fmt: skip
    add_log_level(enc)
    enc.set_defaults(func=_cmd_key_encrypt)


def add_org_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``org`` and its actions to the ``obus`` parser."""
    org = sub.add_parser(
        "org", help="an organization's registry records: accredit, revoke, list, enckey"
    )
    osub = org.add_subparsers(dest="org_command", required=True, metavar="ACTION")

    def registry_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--org", required=True, help="your organization id")
        q.add_argument("--root-key", required=True, metavar="FILE", help="your root key file")
        q.add_argument("--mandate", required=True, metavar="FILE", help="current mandate file")
        q.add_argument("--serial", type=int, help="record serial (default: now in ms)")
        q.add_argument("--out", metavar="FILE", help="also write the signed record here")
        q.add_argument("--offline", action="store_true", help="do not publish (use with --out)")
        add_common_args(q)

    a = osub.add_parser("accredit", help="accredit an observer, node or auditor key")
    registry_args(a)
    a.add_argument("--subject", help="subject id (observer id, node id)")
    a.add_argument("--role", required=True, choices=["observer", "node", "auditor"])
    kg = a.add_mutually_exclusive_group(required=True)
    kg.add_argument("--public-key", metavar="HEX", help="the subject's Ed25519 public key")
    kg.add_argument("--request", metavar="FILE", help="accreditation request file")
    a.add_argument("--not-before", metavar="TIME", help="default: the mandate's start")
    a.add_argument("--not-after", metavar="TIME", help="default: the mandate's end")
    a.set_defaults(func=_cmd_accredit)

    r = osub.add_parser(
        "revoke",
        help="revoke a key after a position in its own chain",
        description="Reports signed by the key with seq <= --last-valid-seq stay valid; every "
        "later one is quarantined as key_revoked at every node, and already accepted ones are "
        "marked revoked_after_acceptance.",
    )
    registry_args(r)
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--key-id", metavar="HEX", help="SHA-256 of the revoked key")
    which.add_argument(
        "--subject", metavar="ID", help="or the subject whose one accredited key is revoked"
    )
    r.add_argument("--last-valid-seq", required=True, type=int, metavar="N")
    r.add_argument("--reason", required=True, metavar="TEXT")
    r.set_defaults(func=_cmd_revoke)

    ls = osub.add_parser(
        "list",
        help="who is accredited: subject, role, key id, window, revoked or not",
        description="Reads the registry topic and judges it as a node does: from the node's "
        "final store (--final-db: its final trust state; --mandate must then be version 1), "
        "else a live read of the mandate and registry topics with the same rules. Records a "
        "node refuses are listed with their reason.",
    )
    ls.add_argument("--mandate", required=True, metavar="FILE", help="mandate file")
    ls.add_argument("--org", help="only this organization's subjects")
    ls.add_argument("--final-db", metavar="FILE", help="the node's final store")
    add_common_args(ls)
    ls.set_defaults(func=_cmd_list)

    e = osub.add_parser(
        "enckey",
        help="new X25519 key for restricted reports: write the private key, publish the public",
        description="Observers seal restricted reports to the newest encryption key each "
        "recipient organization published on the registry; this organization's nodes read them "
        "with the private key file (obus node --decryption-key FILE). The private key is "
        "encrypted at rest (scrypt, AES-256-GCM) under $OBUS_DECRYPTION_KEY_PASSPHRASE, else a "
        "passphrase asked twice on the terminal; the node asks for the same one.",
    )
    registry_args(e)
    e.add_argument("--private-out", required=True, metavar="FILE", help="private key file")
    e.add_argument(
        "--plaintext-key", action="store_true",
        help="write the private key unencrypted (tests and demos only: anyone who reads the"
        " file reads this organization's restricted reports)",
    )  # fmt: skip
    e.add_argument("--not-after", metavar="TIME", help="default: the mandate's end")
    e.set_defaults(func=_cmd_enckey)


__all__ = [
    "add_keygen_commands",
    "add_org_commands",
    "read_accreditation_request",
    "read_decryption_key",
    "write_decryption_key",
]
