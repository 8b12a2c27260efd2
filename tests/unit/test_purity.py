"""The pure core imports no I/O framework: asyncio, aiokafka, sockets or HTTP stay at the edges."""

from __future__ import annotations

import json
import subprocess
import sys

PURE = [
    "bus.errors", "bus.crypto", "bus.model", "bus.trust", "bus.verify", "bus.sign",
    "bus.policy", "bus.ingest", "bus.merkle", "bus.uuid7", "bus.checkpoint",
    "bus.witness", "bus.export",
    "bus.ceremony", "bus.lifecycle", "bus.sealed",
    "bus.decision", "bus.statement",
    "bus.receipt", "bus.report_file", "bus.acl", "bus.attachment",
]  # fmt: skip
FORBIDDEN = ["asyncio", "aiokafka", "socket", "http", "aiohttp", "ssl", "selectors"]


def test_core_modules_import_no_io_framework() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {PURE!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
