"""The pure core imports no I/O framework: asyncio, aiokafka, sqlite3, sockets or HTTP stay at
the edges (bus.kafka, bus.store, nodes). `make lint` checks the same statically (.importlinter);
this test checks it at run time and keeps the contract's list of core modules complete."""

from __future__ import annotations

import configparser
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import bus

REPO = Path(__file__).resolve().parents[2]
ADAPTERS = ("bus.kafka", "bus.store", "bus._pb")
FORBIDDEN = ["asyncio", "aiokafka", "sqlite3", "socket", "http", "aiohttp", "ssl", "selectors"]


def core_modules() -> list[str]:
    """Every module of bus/ that is not an adapter (nor generated protobuf code)."""
    names = [m.name for m in pkgutil.walk_packages(bus.__path__, "bus.")]
    return sorted(n for n in names if not n.startswith(ADAPTERS) and n not in ADAPTERS)


def test_core_modules_import_no_io_framework() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {core_modules()!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_import_contract_lists_every_core_module() -> None:
    """A new core module is checked by `make lint` only once .importlinter lists it."""
    config = configparser.ConfigParser()
    config.read(REPO / ".importlinter")
    listed = config["importlinter:contract:core-is-pure"]["source_modules"].split()
    assert sorted(listed) == core_modules()


def test_topic_names_need_no_kafka_client() -> None:
    """An offline audit of an export needs topic names, never the Kafka client."""
    code = "import sys, bus.topics, bus.export\nprint('aiokafka' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
