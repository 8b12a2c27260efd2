"""``obus mandate ...``: the offline mandate ceremony (draft, sign, combine, verify, show) and
publishing a signed version.

The file formats live in :mod:`bus.ceremony` (pure); this module only reads and writes files,
publishes to Kafka and prints. Registered into the main parser by :func:`add_mandate_commands`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import difflib
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from bus import ceremony
from bus.errors import ConfigError, Reason, VerificationError
from bus.model import MAX_DELIVERY_LAG_BOUND_MS, PAYLOAD_MANDATE, Envelope, Mandate
from bus.topics import Topics
from bus.trust import verify_mandate
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
from nodes.runtime.files import load_mandate, read_key
from nodes.runtime.keyfile import KeyKind


def _load_description(path: str) -> dict[str, Any]:
    raw = read_file(path, "DESCRIPTION")
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
    check_description(doc, path)
    return doc


# The keys of a mandate description, each with the types it takes and how to write it (None:
# the value is parsed, and refused with its own message, where it is read). Every key not listed
# is refused: a misspelled key would otherwise drop its value without a word.
_TEXT: Final = ((str,), "a quoted string")
_WHOLE: Final = ((int,), "a whole number, unquoted")
_DEGREES: Final = ((int, float), "a number of degrees, unquoted, e.g. 48.5")
_TABLES: Final = ((list,), "a list of tables: [[{key}]] sections in TOML, a list in YAML")
KeySpec = tuple[tuple[type, ...], str] | None
DESCRIPTION_KEYS: Final[dict[str, KeySpec]] = {
    "mandate_id": _TEXT,
    "version": _WHOLE,
    "description": _TEXT,
    "threshold": _WHOLE,
    "not_before": None,  # RFC 3339 text or a TOML/YAML date-time (bus.ceremony.parse_time_ms)
    "not_after": None,
    "not_before_ms": None,
    "not_after_ms": None,
    "max_delivery_lag": None,  # a duration (_duration_ms)
    "max_delivery_lag_ms": None,
    "min_schema_version": _WHOLE,
    "max_schema_version": _WHOLE,
    "zones": _TABLES,
    "organizations": _TABLES,
}
ZONE_KEYS: Final[dict[str, KeySpec]] = {
    "id": _TEXT,
    "name": _TEXT,
    "min_lat": _DEGREES,
    "min_lon": _DEGREES,
    "max_lat": _DEGREES,
    "max_lon": _DEGREES,
}
ORGANIZATION_KEYS: Final[dict[str, KeySpec]] = {
    "org": _TEXT,
    "name": _TEXT,
    "root_public_key": ((str,), "the 64 hex characters `obus keygen` printed, quoted"),
}
_SECTIONS: Final = (("zones", ZONE_KEYS), ("organizations", ORGANIZATION_KEYS))


def _type_name(value: object) -> str:
    return {bool: "true/false", int: "a whole number", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)  # fmt: skip


def _table_problems(
    doc: Mapping[Any, Any], keys: Mapping[str, KeySpec], where: str
) -> list[tuple[str, str, str]]:
    """(key, problem, fix) for each unknown key and each value of the wrong type in ``doc``."""
    problems = []
    for key, value in doc.items():
        name = f"{where}{key}"
        if key not in keys:
            near = difflib.get_close_matches(str(key), list(keys), n=1)
            fix = (
                f"did you mean {where}{near[0]}?"
                if near
                else f"use one of: {', '.join(f'{where}{k}' for k in keys)}"
            )
            problems.append((name, "is not a key of a mandate description", fix))
            continue
        spec = keys[key]
        if spec is None:
            continue
        types, how = spec
        if isinstance(value, bool) or not isinstance(value, types):
            fix = f"write {name} as {how.format(key=key)}"
            problems.append((name, f"{value!r} is {_type_name(value)}", fix))
    return problems


def check_description(doc: Mapping[Any, Any], path: str = "DESCRIPTION") -> None:
    """Refuse a description with an unknown (misspelled) key or a value of the wrong type,
    naming every such key, the nearest valid one (difflib) and the fix; what is left (missing
    keys, values out of range) is refused where the mandate is built.

    Raises:
        ConfigError: the key, the problem and the fix; several at once under ``DESCRIPTION``.
    """
    problems = _table_problems(doc, DESCRIPTION_KEYS, "")
    for section, keys in _SECTIONS:
        entries = doc.get(section)
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            where = f"{section}[{i}]"
            if isinstance(entry, dict):
                problems += _table_problems(entry, keys, f"{where}.")
            else:
                problems.append((where, f"{entry!r} is not a table", f"write {where} as a table"))
    if len(problems) == 1:
        raise ConfigError(*problems[0])
    if problems:
        listed = "".join(f"\n  {key}: {problem} ({fix})" for key, problem, fix in problems)
        raise ConfigError(
            "DESCRIPTION",
            f"{path} has {len(problems)} problems:{listed}\n",
            "correct each key named above",
        )


_DURATION_UNITS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000}


def _duration_ms(key: str, value: object) -> int:
    """Milliseconds of a duration written ``<n>d``, ``<n>h``, ``<n>m`` or ``<n>s`` (n whole).

    Raises:
        ConfigError: naming ``key`` and the accepted forms.
    """
    fix = f"write {key} as a whole number of days, hours, minutes or seconds: 14d, 36h, 90m"
    text = value.strip() if isinstance(value, str) else ""
    number, unit = text[:-1], text[-1:]
    if unit not in _DURATION_UNITS or not number.isdigit() or not number.isascii():
        raise ConfigError(key, f"{value!r} is not a duration", fix)
    return int(number) * _DURATION_UNITS[unit]


def _delivery_lag_ms(key: str, value: object) -> int:
    """The mandate's maximum delivery lag from a duration (``max_delivery_lag``, the flag) or,
    for ``max_delivery_lag_ms``, whole milliseconds; bounded as :class:`bus.model.Mandate`
    bounds it (0 is the default of 7 days)."""
    if key.endswith("_ms"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"{value!r} is not a whole number", "write milliseconds")
        ms = value
    else:
        ms = _duration_ms(key, value)
    if not 0 <= ms <= MAX_DELIVERY_LAG_BOUND_MS:
        raise ConfigError(
            key,
            f"{value!r} is outside 0..90 days",
            "write at most 90d (0 for the default of 7 days)",
        )
    return ms


def _with_delivery_lag(mandate: Mandate, doc: dict[str, Any]) -> Mandate:
    """``mandate`` with the description's ``max_delivery_lag`` (or ``max_delivery_lag_ms``)."""
    keys = [k for k in ("max_delivery_lag", "max_delivery_lag_ms") if k in doc]
    if len(keys) > 1:
        raise ConfigError(keys[1], f"given with {keys[0]}", "keep one of the two")
    if not keys:
        return mandate
    return dataclasses.replace(mandate, max_delivery_lag_ms=_delivery_lag_ms(keys[0], doc[keys[0]]))


def _previous(args: argparse.Namespace) -> Mandate | None:
    """The version a new one follows (``--previous``). Read in archive mode: it only vouches for
    its successor, so a mission whose mandate lapsed can still be extended by its organizations
    (the new version must not have ended itself)."""
    if not getattr(args, "previous", None):
        return None
    return load_mandate(Path(args.previous), archive=True)[0]


def _load_any_mandate(path: str) -> tuple[Mandate, Envelope | None]:
    """A draft file (JSON) or a signed mandate file (envelope bytes), not yet trusted."""
    raw = read_file(path, "FILE")
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
    ("max_delivery_lag", "--max-delivery-lag"),
    ("min_schema_version", "--min-schema-version"),
    ("max_schema_version", "--max-schema-version"),
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
        min_schema_version=args.min_schema_version,
        max_schema_version=args.max_schema_version,
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
        doc = _load_description(args.description)
        mandate = _with_delivery_lag(ceremony.mandate_from_description(doc), doc)
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
        if args.max_delivery_lag is not None:
            lag = _delivery_lag_ms("--max-delivery-lag", args.max_delivery_lag)
            mandate = dataclasses.replace(mandate, max_delivery_lag_ms=lag)
    draft = ceremony.Draft.of(mandate)
    write_file(args.out, draft.encode(), "draft")
    print("\n".join(ceremony.describe(mandate, previous=previous)))
    lag = mandate.delivery_lag_ms
    print(
        f"  max delivery lag: {lag} ms ({lag / 86_400_000:g} days"
        + (", the default)" if not mandate.max_delivery_lag_ms else ")")
    )
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    draft = ceremony.Draft.decode(read_file(args.draft, "DRAFT"))
    previous = _previous(args)
    key = read_key(Path(args.key), kind=KeyKind.ROOT)
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
        write_file(
            args.bundle, ceremony.add_to_bundle(existing, sig), "signatures bundle", "--bundle"
        )
    else:
        out = args.out or f"{args.draft}.{sig.org or key.key_id.hex()[:8]}.sig"
        write_file(out, ceremony.encode_signatures([sig]), "signature")
    print(
        f"signed as {sig.org or '?'} (key {key.key_id.hex()[:16]});"
        f" draft sha256 {draft.digest.hex()}"
    )
    return 0


def _cmd_combine(args: argparse.Namespace) -> int:
    draft = ceremony.Draft.decode(read_file(args.draft, "DRAFT"))
    previous = _previous(args)
    sigs = [
        s for f in args.signatures for s in ceremony.decode_signatures(read_file(f, "SIGNATURES"))
    ]
    env = ceremony.combine(draft, sigs, previous=previous, now_ms=now_ms())
    write_file(args.out, env.encode(), "signed mandate")
    print("\n".join(ceremony.describe(draft.mandate, envelope=env, previous=previous)))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    raw = read_file(args.file, "FILE")
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
        mandate = verify_mandate(env, previous=previous, now_ms=now_ms())
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


def _cmd_publish(args: argparse.Namespace) -> int:
    raw = read_file(args.file, "FILE")
    # A version must at least carry its own threshold; its predecessor check is every reader's.
    mandate = verify_mandate(Envelope.decode(raw), previous=_previous(args), now_ms=now_ms())
    topics = Topics(args.topic_prefix)
    check_broker(args)

    async def go() -> tuple[int, int]:
        security = security_from_args(args)
        await ensure_topic(bootstrap(args), topics, topics.mandate, security)
        return await publish(bootstrap(args), topics.mandate, raw, security=security)

    partition, offset = asyncio.run(go())
    print(
        f"published mandate {mandate.mandate_id} version {mandate.version}"
        f" to {topics.mandate}[{partition}]@{offset}"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# Parser


def add_mandate_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``mandate`` and its steps to the ``obus`` parser."""
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

    d = msub.add_parser(
        "draft",
        help="write a draft from a description or a previous version",
        description="Keys of a description: mandate_id, version (default 1), description, "
        "threshold, not_before/not_after (RFC 3339, or not_before_ms/not_after_ms), [[zones]] "
        "(id, name, min_lat, min_lon, max_lat, max_lon) and [[organizations]] (org, name, "
        "root_public_key hex), and optionally max_delivery_lag: how long after signing a report "
        "may still arrive (a duration such as 14d, 36h or 90m; or max_delivery_lag_ms; at most "
        "90 days; unset or 0: the default of 7 days). Observers offline for days need more; "
        "the lag also bounds how far the holder of an expired key can backdate a report. A "
        "new value takes effect from the epoch after the version is sealed.",
    )
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
    d.add_argument(
        "--max-delivery-lag",
        metavar="DURATION",
        help="new maximum delivery lag (14d, 36h, 90m; at most 90d; 0d: the default of 7 days)",
    )
    for end in ("min", "max"):
        d.add_argument(
            f"--{end}-schema-version",
            type=int,
            metavar="N",
            help=f"new {'oldest' if end == 'min' else 'newest'} report schema version allowed"
            " (raise the newest once every organization runs readers of it)",
        )
    add_log_level(d, "warning")
    d.set_defaults(func=_cmd_draft)

    s = msub.add_parser("sign", help="sign a draft with one organization's root key (offline)")
    s.add_argument("draft", metavar="DRAFT")
    s.add_argument("--key", required=True, metavar="ROOT_KEY_FILE")
    s.add_argument("--previous", metavar="FILE", help="signed previous version (to name the org)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--out", metavar="FILE", help="detached signature file (default DRAFT.ORG.sig)")
    g.add_argument("--bundle", metavar="FILE", help="append to a signatures bundle instead")
    add_log_level(s, "warning")
    s.set_defaults(func=_cmd_sign)

    c = msub.add_parser("combine", help="draft + signatures -> the signed mandate file")
    c.add_argument("draft", metavar="DRAFT")
    c.add_argument("signatures", nargs="+", metavar="SIGNATURES")
    c.add_argument("--previous", metavar="FILE", help="signed previous version (rotation)")
    c.add_argument("--out", required=True, metavar="FILE")
    add_log_level(c, "warning")
    c.set_defaults(func=_cmd_combine)

    v = msub.add_parser(
        "verify", help="verify a signed mandate file (exit 1 with the reason if it does not verify)"
    )
    v.add_argument("file", metavar="FILE")
    v.add_argument("--previous", metavar="FILE", help="verify as the successor of this version")
    add_log_level(v, "warning")
    v.set_defaults(func=_cmd_verify)

    sh = msub.add_parser("show", help="print a draft or a signed mandate for humans")
    sh.add_argument("file", metavar="FILE")
    sh.add_argument("--previous", metavar="FILE", help="also show the changes from this version")
    add_log_level(sh, "warning")
    sh.set_defaults(func=_cmd_show)

    p = msub.add_parser("publish", help="put a signed version on <prefix>mandate")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--previous", metavar="FILE", help="also check it follows this version")
    add_common_args(p)
    p.set_defaults(func=_cmd_publish)
