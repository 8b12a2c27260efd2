"""Generate bus/_pb from schemas/obus/v1/*.proto; ``--check`` fails when the checked-in code is stale.

Uses the protoc bundled with grpcio-tools (pinned in pyproject.toml) so output is reproducible.
Run as ``python schemas/generate.py [--check]`` (``make proto`` / ``make proto-check``).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
OUT = ROOT / "bus" / "_pb"


def generate(dest: Path) -> list[Path]:
    """Write *_pb2.py and *_pb2.pyi for every schema into dest; return the written files."""
    protos = sorted(p.relative_to(SCHEMAS).as_posix() for p in SCHEMAS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{SCHEMAS}", f"-I{include}", f"--python_out={dest}", f"--pyi_out={dest}"]
    if protoc.main([*args, *protos]) != 0:
        raise SystemExit("protoc failed")
    for folder in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    return sorted(p for p in dest.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "_pb"
        fresh.mkdir()
        files = generate(fresh)
        if args.check:
            stale = [
                f.relative_to(fresh).as_posix()
                for f in files
                if not (OUT / f.relative_to(fresh)).is_file()
                or not filecmp.cmp(f, OUT / f.relative_to(fresh), shallow=False)
            ]
            extra = [
                p.relative_to(OUT).as_posix()
                for p in OUT.rglob("*.py*")
                # Bytecode caches are Python's, not generated code (written wherever
                # PYTHONDONTWRITEBYTECODE is unset, as on a fresh machine).
                if p.is_file()
                and "__pycache__" not in p.relative_to(OUT).parts
                and not (fresh / p.relative_to(OUT)).exists()
            ]
            if stale or extra:
                print(f"generated code is stale: {stale + extra}; run `make proto`", file=sys.stderr)
                return 1
            print("generated code is up to date")
            return 0
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(fresh, OUT)
        print(f"wrote {len(files)} files to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
