"""Root and node keys at rest: the encrypted key file format, where the passphrase comes from,
plaintext files from before (one warning, ``obus key encrypt``), and the refusals a command
gives instead of a traceback (wrong passphrase, none at hand, a key of another kind, a file
that is not a key file)."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from bus.crypto import SigningKey
from bus.errors import ConfigError, KeyStoreError
from nodes.cli.main import main
from nodes.demo.scenario import build_scenario
from nodes.observer.device import write_encrypted_key as write_observer_key
from nodes.runtime import files
from nodes.runtime.files import read_key, write_encrypted_key, write_key
from nodes.runtime.keyfile import (
    MAX_SCRYPT_MEMORY,
    PASSPHRASE_ENV,
    KeyKind,
    Passphrase,
    passphrase_from_env_or_terminal,
)
from tests.logcapture import capture_all_logs

FAST_SCRYPT = 2**10  # the format is what is tested here, not the cost
ROOT_PASS = "root key passphrase"
NODE_PASS = "node key passphrase"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No passphrase in the environment unless a test sets one; nothing decrypted yet."""
    for var in PASSPHRASE_ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(files, "_loaded", {})


def _given(text: str) -> Passphrase:
    return Passphrase(text, "the test")


def test_an_encrypted_key_reads_back_with_its_kinds_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, path = SigningKey.generate(), tmp_path / "un-root.json"
    write_encrypted_key(path, key, kind=KeyKind.ROOT, passphrase=ROOT_PASS, scrypt_n=FAST_SCRYPT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert (doc["type"], doc["version"], doc["kind"]) == ("obus-ed25519-encrypted", 1, "root")
    assert doc["key_id"] == key.key_id.hex() and key.seed.hex() not in path.read_text()
    monkeypatch.setenv("OBUS_NODE_KEY_PASSPHRASE", ROOT_PASS)  # the other kind's: not used
    with pytest.raises(ConfigError) as exc:
        read_key(path, kind=KeyKind.ROOT)
    assert exc.value.key == "OBUS_ROOT_KEY_PASSPHRASE"
    monkeypatch.setenv("OBUS_ROOT_KEY_PASSPHRASE", ROOT_PASS)
    assert read_key(path, kind=KeyKind.ROOT).seed == key.seed
    with pytest.raises(KeyStoreError, match="exists; refusing to overwrite"):
        write_encrypted_key(path, key, kind=KeyKind.ROOT, passphrase=ROOT_PASS)


def test_a_wrong_passphrase_names_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.json"
    write_encrypted_key(
        path, SigningKey.generate(), kind=KeyKind.NODE, passphrase=NODE_PASS, scrypt_n=FAST_SCRYPT
    )
    monkeypatch.setenv("OBUS_NODE_KEY_PASSPHRASE", "not the passphrase")
    with pytest.raises(KeyStoreError) as exc:
        read_key(path)
    assert "wrong passphrase" in exc.value.message
    assert "OBUS_NODE_KEY_PASSPHRASE" in exc.value.message and "not the passphrase" not in str(
        exc.value.diagnostics()
    )


def test_a_key_of_another_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "root.json"
    write_encrypted_key(
        path, SigningKey.generate(), kind=KeyKind.ROOT, passphrase=ROOT_PASS, scrypt_n=FAST_SCRYPT
    )
    with pytest.raises(KeyStoreError, match="holds a root key; a node key is expected"):
        read_key(path, kind=KeyKind.NODE, passphrase=lambda *_: _given(ROOT_PASS))


def test_an_observer_key_file_is_the_same_format(tmp_path: Path) -> None:
    """Files the observer client writes (no version, no kind) read as version 1."""
    key, path = SigningKey.generate(), tmp_path / "key.json"
    write_observer_key(path, key, "observer passphrase", n=FAST_SCRYPT)
    asked: list[KeyKind] = []

    def source(kind: KeyKind, _path: Path) -> Passphrase:
        asked.append(kind)
        return _given("observer passphrase")

    assert read_key(path, kind=KeyKind.OBSERVER, passphrase=source).seed == key.seed
    assert asked == [KeyKind.OBSERVER]


def test_a_plaintext_key_loads_with_one_warning_naming_the_fix(tmp_path: Path) -> None:
    key, path = SigningKey.generate(), tmp_path / "old-node.json"
    write_key(path, key)
    with capture_all_logs() as logs:
        assert read_key(path).seed == key.seed
        assert read_key(path).seed == key.seed  # the same file again: no second warning
    warned = [e for e in logs if e["event"] == "key_file_unencrypted"]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning"
    assert warned[0]["path"] == str(path)
    assert warned[0]["fix"] == f"obus key encrypt {path} --kind node"


def test_a_key_is_decrypted_once_per_process(tmp_path: Path) -> None:
    """`obus node` needs its key twice (follow-up and sealer): one prompt, not two."""
    path = tmp_path / "node.json"
    write_encrypted_key(
        path, SigningKey.generate(), kind=KeyKind.NODE, passphrase=NODE_PASS, scrypt_n=FAST_SCRYPT
    )
    asked: list[Path] = []

    def source(_kind: KeyKind, p: Path) -> Passphrase:
        asked.append(p)
        return _given(NODE_PASS)

    assert read_key(path, passphrase=source) == read_key(path, passphrase=source)
    assert asked == [path]


def test_obus_key_encrypt_is_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key, path = SigningKey.generate(), tmp_path / "un-node.json"
    write_key(path, key)
    assert main(["key", "encrypt", str(path), "--kind", "node"]) == 2  # no passphrase at hand
    err = capsys.readouterr().err
    assert "config OBUS_NODE_KEY_PASSPHRASE:" in err and "Traceback" not in err
    assert json.loads(path.read_text())["type"] == "obus-ed25519-seed"  # left as it was
    monkeypatch.setenv("OBUS_NODE_KEY_PASSPHRASE", NODE_PASS)
    assert main(["key", "encrypt", str(path), "--kind", "node"]) == 0
    assert f"encrypted {path}" in capsys.readouterr().out
    encrypted = path.read_bytes()
    assert json.loads(encrypted)["kind"] == "node" and key.seed.hex() not in encrypted.decode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["key", "encrypt", str(path), "--kind", "node"]) == 0
    assert "already encrypted (node key)" in capsys.readouterr().out
    assert path.read_bytes() == encrypted
    assert read_key(path).seed == key.seed
    assert [p.name for p in tmp_path.iterdir()] == ["un-node.json"]  # no temporary file left


def test_a_short_passphrase_is_refused_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OBUS_ROOT_KEY_PASSPHRASE", "short")
    assert main(["keygen", "--kind", "root", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "config OBUS_ROOT_KEY_PASSPHRASE:" in err and "shorter than 8" in err
    assert not (tmp_path / "r.json").exists()


def _signed_draft(tmp_path: Path) -> tuple[Path, SigningKey]:
    from bus import ceremony  # noqa: PLC0415

    scenario = build_scenario(time.time_ns() // 1_000_000, observers_per_org=1)
    draft = tmp_path / "v1.draft"
    draft.write_bytes(ceremony.Draft.of(scenario.mandate).encode())
    return draft, scenario.org_roots["un"]


def test_commands_refuse_a_wrong_or_missing_passphrase_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    draft, root = _signed_draft(tmp_path)
    key_file = tmp_path / "un-root.json"
    write_encrypted_key(key_file, root, kind=KeyKind.ROOT, passphrase=ROOT_PASS)
    argv = ["mandate", "sign", "--key", str(key_file), str(draft)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("obus: error: config OBUS_ROOT_KEY_PASSPHRASE:") and "Traceback" not in err
    )
    monkeypatch.setenv("OBUS_ROOT_KEY_PASSPHRASE", "a wrong passphrase")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"obus: error: wrong passphrase for {key_file} (from OBUS_ROOT_KEY_PASSPHRASE)" in err
    assert "Traceback" not in err
    monkeypatch.setenv("OBUS_ROOT_KEY_PASSPHRASE", ROOT_PASS)
    assert main(argv) == 0
    assert (tmp_path / "v1.draft.un.sig").exists()


@pytest.mark.parametrize(
    ("change", "text"),
    [
        (lambda d: d.update(version=2), "format version 2 is unknown"),
        (lambda d: d.update(kind="auditor"), "'auditor' is not a valid KeyKind"),
        (lambda d: d["kdf"].update(n=2**22), f"more than {MAX_SCRYPT_MEMORY >> 20} MiB"),
        (lambda d: d["kdf"].update(n=1000), "is not a valid cost"),
        (lambda d: d["cipher"].update(name="aes-128-cbc"), "are not supported"),
        (lambda d: d.update(type="obus-ed25519-public"), "type is 'obus-ed25519-public'"),
    ],
)
def test_a_file_that_is_not_a_usable_key_file_is_refused(
    tmp_path: Path, change: object, text: str
) -> None:
    path = tmp_path / "k.json"
    write_encrypted_key(
        path, SigningKey.generate(), kind=KeyKind.NODE, passphrase=NODE_PASS, scrypt_n=FAST_SCRYPT
    )
    doc = json.loads(path.read_text())
    change(doc)  # type: ignore[operator]
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyStoreError) as exc:
        read_key(path, passphrase=lambda *_: _given(NODE_PASS))
    assert f"{path} is not a usable key file" in exc.value.message and text in exc.value.message


def test_a_swapped_key_id_does_not_decrypt(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    write_encrypted_key(
        path, SigningKey.generate(), kind=KeyKind.NODE, passphrase=NODE_PASS, scrypt_n=FAST_SCRYPT
    )
    doc = json.loads(path.read_text())
    doc["key_id"] = SigningKey.generate().key_id.hex()  # the AAD: the tag no longer matches
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyStoreError, match=r"wrong passphrase .* or the file was altered"):
        read_key(path, passphrase=lambda *_: _given(NODE_PASS))


def test_no_terminal_and_no_variable_is_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        passphrase_from_env_or_terminal(
            KeyKind.NODE, Path("n.json"), environ={}, interactive=lambda: False
        )
    assert exc.value.key == "OBUS_NODE_KEY_PASSPHRASE" and "no terminal" in exc.value.message


def _run_on_a_terminal(argv: list[str], answers: list[str]) -> tuple[int, str]:
    """Run ``obus argv`` in a child whose controlling terminal is a pseudo-terminal, typing
    each answer when a prompt shows; (exit status, what the terminal showed)."""
    env = {k: v for k, v in os.environ.items() if k not in PASSPHRASE_ENV.values()}
    env["PYTHONPATH"] = str(REPO)
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.execve(sys.executable, [sys.executable, "-m", "nodes.cli", *argv], env)
    shown, pending = b"", list(answers)
    while True:
        if not select.select([fd], [], [], 60)[0]:  # a child that hangs fails the test
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)
            raise AssertionError(f"obus {argv} hangs; the terminal shows {shown!r}")
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
        if pending and shown.endswith(b": "):  # a prompt waits (echo is off by then)
            os.write(fd, pending.pop(0).encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_keygen_asks_twice_on_a_terminal(tmp_path: Path) -> None:
    path = tmp_path / "un-root.json"
    code, shown = _run_on_a_terminal(
        ["keygen", "--kind", "root", str(path)], [ROOT_PASS, ROOT_PASS]
    )
    assert code == 0, shown
    assert f"Passphrase of the root key {path}:" in shown and "Repeat the passphrase:" in shown
    assert ROOT_PASS not in shown  # not echoed
    assert read_key(path, kind=KeyKind.ROOT, passphrase=lambda *_: _given(ROOT_PASS))
    other = tmp_path / "other.json"
    code, shown = _run_on_a_terminal(
        ["keygen", "--kind", "root", str(other)], [ROOT_PASS, "a different one"]
    )
    assert code == 2 and "the two entries differ" in shown and not other.exists()
