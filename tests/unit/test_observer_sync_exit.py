"""`obus observer sync`'s exit codes: 0 when all is delivered, 4 (not done yet, run it again)
while reports are still queued, never 3, which every command keeps for an unreachable broker."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from nodes.cli.common import EXIT_BROKER
from nodes.cli.followup import EXIT_NOT_FINAL
from nodes.cli.main import main
from nodes.cli.observer import EXIT_QUEUED
from nodes.observer.device import Home, init_observer, submit_file
from nodes.observer.outbox import Outbox
from tests.mission import make_mission

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_793_491_200_000 + 21 * 86_400_000  # inside the test mandate's window


def _closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _home(tmp_path: Path, *, queued: int) -> Home:
    m = make_mission(1, now_ms=NOW)
    home = Home(tmp_path / "home")
    key = init_observer(
        home, observer_id="un-obs-7", org="un", mandate_envelope=m.scenario.mandate_envelope,
        gateway=f"http://127.0.0.1:{_closed_port()}", passphrase="correct horse battery",
        at_ms=NOW, scrypt_n=2**10,
    )  # fmt: skip
    outbox = Outbox(home.outbox)
    try:
        for i in range(queued):
            submit_file(home, outbox, key, ROOT / "examples" / "report.yaml", at_ms=NOW + i)
    finally:
        outbox.close()
    return home


def _sync(home: Home) -> int:
    return main([
        "observer", "sync", "--home", str(home.root), "--max-seconds", "0.3",
        "--backoff-base", "0.05", "--backoff-cap", "0.1",
    ])  # fmt: skip


def test_still_queued_is_its_own_code_not_the_broker_one() -> None:
    codes = {"still queued": EXIT_QUEUED, "not final": EXIT_NOT_FINAL, "broker": EXIT_BROKER}
    assert codes == {"still queued": 4, "not final": 4, "broker": 3}


def test_sync_with_the_gateway_unreachable_exits_4_and_says_what_is_queued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = _home(tmp_path, queued=2)
    assert _sync(home) == EXIT_QUEUED
    out = capsys.readouterr().out
    assert "delivered 0, rejected 0, still queued 2" in out
    assert "connect" in out  # the waits name why: the gateway cannot be reached


def test_sync_with_nothing_queued_exits_0(tmp_path: Path) -> None:
    assert _sync(_home(tmp_path, queued=0)) == 0


def test_sync_help_documents_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["observer", "sync", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{EXIT_QUEUED} when reports or attachments are still queued (not done yet" in text
