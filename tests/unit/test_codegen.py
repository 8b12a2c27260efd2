"""The checked-in generated protobuf code matches the schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_not_stale() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "schemas" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
