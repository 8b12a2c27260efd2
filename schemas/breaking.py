"""Fail on a schema change that breaks nodes of the last release (``make proto-check``).

The schemas of the last release are committed as a FileDescriptorSet in
``schemas/baseline/<tag>/obus.binpb`` (with ``COMMIT``: the commit they were taken from, so
the check needs neither the tag nor the history in a clone). The current ``schemas/`` are
compiled with the protoc of grpcio-tools (as ``schemas/generate.py`` does) and compared message
by message, field by field, on what the wire and the generated code rest on.

A descriptor diff of our own rather than ``buf breaking``: the bus has a rule buf cannot know.
Its readers are strict (bus.model): a field an older node does not know makes the record
malformed there, unless the message is open to additions (:data:`bus.model.OPEN_MESSAGES`) and
the field takes a number of :data:`bus.model.ADDITION_FIELDS` above every number the baseline
had. So besides buf's wire rules (no field or message removed, renumbered, retyped, relabelled
or renamed; no enum value removed or renamed) an added field is breaking unless it is such an
addition, and an added enum value is breaking (older nodes quarantine an unknown value: a new
value needs a new field). And removing a field is breaking even when its number is reserved:
the log keeps every old record, and a node without the field reads those as malformed.

Run as ``python schemas/breaking.py`` (exit 1 listing every breaking change), or
``--write-baseline TAG [--commit C]`` to record the current schemas (which must be those of
commit C, default HEAD) as the baseline of release TAG.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
BASELINES = SCHEMAS / "baseline"
BASELINE_FILE = "obus.binpb"
sys.path.insert(0, str(ROOT))

from bus.model import ADDITION_FIELDS, OPEN_MESSAGES  # noqa: E402 - after the path is set

FDS = descriptor_pb2.FileDescriptorSet
Message = descriptor_pb2.DescriptorProto
Enum = descriptor_pb2.EnumDescriptorProto


def compile_schemas(schemas: Path = SCHEMAS) -> FDS:
    """The FileDescriptorSet of every ``obus/**.proto`` under ``schemas``."""
    protos = sorted(p.relative_to(schemas).as_posix() for p in (schemas / "obus").rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        args = ["protoc", f"-I{schemas}", f"-I{include}", f"--descriptor_set_out={out}"]
        if protoc.main([*args, *protos]) != 0:
            raise SystemExit("protoc failed")
        return FDS.FromString(out.read_bytes())


def _messages(prefix: str, messages: list[Message]) -> Iterator[tuple[str, Message]]:
    for m in messages:
        name = f"{prefix}.{m.name}"
        yield name, m
        yield from _messages(name, list(m.nested_type))


def _enums(fds: FDS) -> dict[str, Enum]:
    out: dict[str, Enum] = {}
    for f in fds.file:
        for e in f.enum_type:
            out[f"{f.package}.{e.name}"] = e
        for name, m in _messages(f.package, list(f.message_type)):
            for e in m.enum_type:
                out[f"{name}.{e.name}"] = e
    return out


def _all_messages(fds: FDS) -> dict[str, Message]:
    return {n: m for f in fds.file for n, m in _messages(f.package, list(f.message_type))}


def _type(f: descriptor_pb2.FieldDescriptorProto) -> str:
    kind = descriptor_pb2.FieldDescriptorProto.Type.Name(f.type).removeprefix("TYPE_").lower()
    return f"{kind} {f.type_name.lstrip('.')}".strip()


def _label(f: descriptor_pb2.FieldDescriptorProto) -> str:
    if f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return "repeated"
    return "optional" if f.proto3_optional else "singular"


def breaking_changes(baseline: FDS, current: FDS) -> list[str]:
    """Every change from ``baseline`` to ``current`` that breaks a node of the baseline or a
    reader of a record it wrote (module docstring); empty when compatible."""
    problems: list[str] = []
    old_messages, new_messages = _all_messages(baseline), _all_messages(current)
    for name, old in old_messages.items():
        new = new_messages.get(name)
        if new is None:
            problems.append(f"message {name} removed")
            continue
        old_fields = {f.number: f for f in old.field}
        new_fields = {f.number: f for f in new.field}
        for number, of in sorted(old_fields.items()):
            nf = new_fields.get(number)
            where = f"{name} field {number} ({of.name})"
            if nf is None:
                moved = next((f.number for f in new.field if f.name == of.name), None)
                how = f"renumbered to {moved}" if moved is not None else "removed"
                problems.append(
                    f"{where} {how}: records in the log carry it and a node without it reads"
                    " them as malformed (deprecate it instead)"
                )
                continue
            if nf.name != of.name:
                problems.append(f"{where} renamed to {nf.name}")
            if _type(nf) != _type(of):
                problems.append(f"{where} changed type {_type(of)} -> {_type(nf)}")
            if _label(nf) != _label(of):
                problems.append(f"{where} changed from {_label(of)} to {_label(nf)}")
        highest = max(old_fields, default=0)
        for number, nf in sorted(new_fields.items()):
            if number in old_fields:
                continue
            if name in OPEN_MESSAGES and number in ADDITION_FIELDS and number > highest:
                continue
            allowed = (
                f"only {max(highest + 1, ADDITION_FIELDS.start)}..{ADDITION_FIELDS.stop - 1}"
                if name in OPEN_MESSAGES
                else "none: the message is not open to additions"
            )
            problems.append(
                f"{name} field {number} ({nf.name}) added: nodes of the baseline read it as"
                f" malformed (additions allowed: {allowed})"
            )
        old_reserved = {n for r in old.reserved_range for n in range(r.start, r.end)}
        new_reserved = {n for r in new.reserved_range for n in range(r.start, r.end)}
        dropped = old_reserved - new_reserved
        problems.extend(
            f"{name} reserved number {n} {'reused' if n in new_fields else 'no longer reserved'}"
            for n in sorted(dropped)
        )
    old_enums, new_enums = _enums(baseline), _enums(current)
    for name, old_enum in old_enums.items():
        new_enum = new_enums.get(name)
        if new_enum is None:
            problems.append(f"enum {name} removed")
            continue
        old_values = {v.number: v.name for v in old_enum.value}
        new_values = {v.number: v.name for v in new_enum.value}
        for number, value in sorted(old_values.items()):
            if number not in new_values:
                problems.append(f"enum {name} value {number} ({value}) removed")
            elif new_values[number] != value:
                renamed = new_values[number]
                problems.append(f"enum {name} value {number} renamed {value} -> {renamed}")
        problems.extend(
            f"enum {name} value {n} ({new_values[n]}) added: nodes of the baseline quarantine"
            " it (add a field in the addition range instead)"
            for n in sorted(set(new_values) - set(old_values))
        )
    return problems


def latest_baseline() -> Path:
    """The baseline directory of the newest release (by version number)."""
    tags = [p for p in BASELINES.iterdir() if (p / BASELINE_FILE).is_file()]
    if not tags:
        raise SystemExit(f"no baseline under {BASELINES.relative_to(ROOT)}")

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.name.removeprefix("v").split("."))

    return max(tags, key=version)


def write_baseline(tag: str, commit: str = "HEAD") -> Path:
    """Record the current schemas as the baseline of release ``tag``, taken at ``commit``.

    Raises:
        SystemExit: the schemas differ from those of ``commit``.
    """

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True)

    resolved = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    if resolved.returncode != 0:
        raise SystemExit(f"no commit {commit}")
    if git("diff", "--quiet", resolved.stdout.strip(), "--", "schemas/obus").returncode != 0:
        raise SystemExit(f"schemas/obus differs from {commit}: the baseline would not be its")
    folder = BASELINES / tag
    folder.mkdir(parents=True, exist_ok=True)
    (folder / BASELINE_FILE).write_bytes(compile_schemas().SerializeToString(deterministic=True))
    (folder / "COMMIT").write_text(resolved.stdout)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-baseline", metavar="TAG", help="record the current schemas")
    parser.add_argument("--commit", default="HEAD", help="the release commit (--write-baseline)")
    parser.add_argument("--baseline", type=Path, help="baseline directory (default: newest)")
    parser.add_argument("--schemas", type=Path, default=SCHEMAS, help="schemas to check")
    args = parser.parse_args(argv)
    if args.write_baseline:
        folder = write_baseline(args.write_baseline, args.commit)
        print(f"wrote {folder.relative_to(ROOT)}")
        return 0
    folder = args.baseline or latest_baseline()
    baseline = FDS.FromString((folder / BASELINE_FILE).read_bytes())
    problems = breaking_changes(baseline, compile_schemas(args.schemas))
    if problems:
        print(f"breaking schema changes against {folder.name}:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"schemas are compatible with {folder.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
