"""An organization's X25519 decryption key at rest (``obus org enckey --private-out``, read by
``obus node --decryption-key``): encrypted by default with the scheme of every obus key file
(:mod:`nodes.runtime.keyfile`), its organization and key id bound as associated data, the
passphrase from ``$OBUS_DECRYPTION_KEY_PASSPHRASE`` or a terminal; plaintext files from before
still load with one warning, and ``obus key encrypt --kind decryption`` encrypts them in place.
Also: the Ed25519 format is unchanged, byte for byte, by the generalization."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bus.crypto import SigningKey
from bus.errors import ConfigError, KeyStoreError
from bus.model import EncryptionKey, Envelope
from bus.sealed import DecryptionKey
from nodes.cli import trust as trust_cli
from nodes.cli.main import main
from nodes.cli.trust import read_decryption_key, write_decryption_key
from nodes.demo.scenario import Scenario, build_scenario, demo_key
from nodes.runtime import files, keyfile
from nodes.runtime.files import encrypt_key_file, read_key, write_key
from nodes.runtime.keyfile import (
    MAX_SCRYPT_MEMORY,
    PASSPHRASE_ENV,
    KeyKind,
    Passphrase,
    encrypt_key,
)
from tests.logcapture import capture_all_logs
from tests.unit.test_keyfile import _run_on_a_terminal

FAST_SCRYPT = 2**10  # the format is what is tested here, not the cost
PASS = "decryption key passphrase"
VAR = "OBUS_DECRYPTION_KEY_PASSPHRASE"
NOWHERE = ["--bootstrap", "127.0.0.1:9"]

# Written by the code before decryption keys were encrypted (commit 4c1fff1), with a fixed salt
# and nonce: a node key file (encrypt_key, scrypt n=2^10) and a plaintext X25519 key file
# (obus org enckey's private key file).
OLD_NODE_FILE = b"""{
  "type": "obus-ed25519-encrypted",
  "version": 1,
  "kind": "node",
  "key_id": "129129f45fabd08e10db05ada5c37073cbbae261cddd9b486f95ddfe47d75043",
  "public_key": "fbbc86a77ed2efa6678bc3104ac52b764eb79017aba8a972c97001d3bf50b823",
  "kdf": {
    "name": "scrypt",
    "n": 1024,
    "r": 8,
    "p": 1,
    "salt": "923411f7071fb2248ea2872acc3f8a97"
  },
  "cipher": {
    "name": "aes-256-gcm",
    "nonce": "6a9661ab6607dee565a9e24d",
    "ciphertext": "3f7abd9c4801979dfa76b6ae1b57e409e489d192d499162c2a9425d9bebe5c1958c2ab6aa946d1f790908ba3cb2f6c1a"
  }
}
"""
OLD_NODE_PASS = "node key passphrase"
OLD_X25519_FILE = (
    b'{"type": "obus-x25519-private", "org": "un", "private": '
    b'"514bf6214f9d923f98665b1fb6c8903b4e4c29210e84aea35bfb83b7fd612b8a"}'
)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No passphrase in the environment unless a test sets one; nothing decrypted yet."""
    for var in PASSPHRASE_ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(files, "_loaded", {})


def _given(text: str) -> Callable[[KeyKind, Path], Passphrase]:
    return lambda *_: Passphrase(text, "the test")


def _key(org: str = "un") -> DecryptionKey:
    return DecryptionKey(org, demo_key(f"test-decryption-keyfile:{org}").seed)


def _encrypted(tmp_path: Path, key: DecryptionKey | None = None) -> tuple[Path, DecryptionKey]:
    key = key or _key()
    path = tmp_path / f"{key.org}.x25519"
    write_decryption_key(path, key, passphrase=PASS, scrypt_n=FAST_SCRYPT)
    return path, key


def _edit(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


# -- the format --------------------------------------------------------------------------------


def test_an_encrypted_decryption_key_reads_back_with_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, key = _encrypted(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert (doc["type"], doc["version"], doc["kind"]) == ("obus-x25519-encrypted", 1, "decryption")
    assert (doc["org"], doc["key_id"], doc["public_key"]) == (
        "un",
        key.key_id.hex(),
        key.public_key.hex(),
    )
    assert (doc["kdf"]["name"], doc["kdf"]["n"], doc["cipher"]["name"]) == (
        "scrypt",
        FAST_SCRYPT,
        "aes-256-gcm",
    )
    assert key.private_key.hex() not in path.read_text()
    monkeypatch.setenv("OBUS_NODE_KEY_PASSPHRASE", PASS)  # another kind's variable: not used
    with pytest.raises(ConfigError) as exc:
        read_decryption_key(path, "un")
    assert exc.value.key == VAR and "no terminal" in exc.value.message
    monkeypatch.setenv(VAR, PASS)
    got = read_decryption_key(path, "un")
    assert (got.org, got.private_key) == ("un", key.private_key)
    with pytest.raises(KeyStoreError, match="exists; refusing to overwrite"):
        write_decryption_key(path, key, passphrase=PASS)


def test_a_wrong_passphrase_names_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _encrypted(tmp_path)
    monkeypatch.setenv(VAR, "not the passphrase")
    with pytest.raises(KeyStoreError) as exc:
        read_decryption_key(path, "un")
    assert f"wrong passphrase for {path} (from {VAR}), or the file was altered" in exc.value.message
    assert "not the passphrase" not in str(exc.value.diagnostics())


@pytest.mark.parametrize(
    ("change", "text"),
    [
        # the AAD binds the organization and the key id: the tag no longer verifies
        (lambda d: d.update(org="osce"), "or the file was altered"),
        (lambda d: d.update(key_id=_key("osce").key_id.hex()), "or the file was altered"),
        # the ciphertext, its tag, the nonce, the salt
        (lambda d: d["cipher"].update(ciphertext=_flip(d["cipher"]["ciphertext"], 0)), "altered"),
        (lambda d: d["cipher"].update(ciphertext=_flip(d["cipher"]["ciphertext"], -1)), "altered"),
        (lambda d: d["cipher"].update(nonce=_flip(d["cipher"]["nonce"], 3)), "altered"),
        (lambda d: d["kdf"].update(salt=_flip(d["kdf"]["salt"], 5)), "altered"),
        # not in the AAD, but the decrypted key must give it again
        (lambda d: d.update(public_key=_key("osce").public_key.hex()), "does not match"),
    ],
    ids=["org", "key-id", "ciphertext", "tag", "nonce", "salt", "public-key"],
)
def test_a_swapped_or_tampered_file_does_not_decrypt(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], text: str
) -> None:
    path, _ = _encrypted(tmp_path)
    _edit(path, change)
    with pytest.raises(KeyStoreError) as exc:
        read_decryption_key(path, passphrase=_given(PASS))
    assert text in exc.value.message and str(path) in exc.value.message


def _flip(hex_text: str, at: int) -> str:
    raw = bytearray(bytes.fromhex(hex_text))
    raw[at] ^= 0x01
    return raw.hex()


@pytest.mark.parametrize(
    ("change", "text"),
    [
        (lambda d: d["kdf"].update(n=2**22), f"more than {MAX_SCRYPT_MEMORY >> 20} MiB"),
        (lambda d: d["kdf"].update(n=2**14, r=1024), f"more than {MAX_SCRYPT_MEMORY >> 20} MiB"),
        (lambda d: d["kdf"].update(p=1000), "is not a valid cost"),
        (lambda d: d.update(version=2), "format version 2 is unknown"),
        (lambda d: d.update(kind="node"), "an X25519 key file is of kind decryption, not node"),
        (lambda d: d.update(org="un|osce"), "is not an organization id"),
        (lambda d: d["cipher"].update(name="chacha20-poly1305"), "are not supported"),
    ],
    ids=["n", "r", "p", "version", "kind", "org", "cipher"],
)
def test_an_unusable_file_is_refused_before_any_scrypt_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[dict[str, Any]], object],
    text: str,
) -> None:
    path, _ = _encrypted(tmp_path)
    _edit(path, change)
    derived: list[tuple[object, ...]] = []

    def derive(*args: object) -> bytes:
        derived.append(args)
        return b"\0" * 32

    monkeypatch.setattr(keyfile, "_derive", derive)
    with pytest.raises(KeyStoreError) as exc:
        read_decryption_key(path, passphrase=_given(PASS))
    assert f"{path} is not a usable key file" in exc.value.message and text in exc.value.message
    assert derived == []  # refused before scrypt ran: a crafted file cannot cost unbounded memory


def test_a_key_of_the_other_type_is_refused_either_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(VAR, PASS)
    monkeypatch.setenv("OBUS_NODE_KEY_PASSPHRASE", PASS)
    x25519, _ = _encrypted(tmp_path)
    with pytest.raises(KeyStoreError, match="holds a decryption key; a node key is expected"):
        read_key(x25519)  # an X25519 file given as --node-key
    node = tmp_path / "node.json"
    write_key(node, demo_key("test-decryption-keyfile:node"))
    with pytest.raises(KeyStoreError, match="holds an Ed25519 signing key; a decryption key is"):
        read_decryption_key(node, "un")  # a plaintext node key given as --decryption-key
    enc_node = tmp_path / "enc-node.json"
    enc_node.write_bytes(encrypt_key(SigningKey.generate(), PASS, KeyKind.NODE, n=FAST_SCRYPT))
    with pytest.raises(KeyStoreError, match="holds a node key; a decryption key is expected"):
        read_decryption_key(enc_node, "un")
    _edit(enc_node, lambda d: d.update(kind="decryption"))  # an Ed25519 file claiming the kind
    with pytest.raises(KeyStoreError, match="an Ed25519 key file cannot be of kind decryption"):
        read_decryption_key(enc_node, "un")


def test_the_key_of_another_organization_is_refused_naming_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _encrypted(tmp_path)
    monkeypatch.setenv(VAR, PASS)
    with pytest.raises(ConfigError) as exc:
        read_decryption_key(path, "osce")
    assert exc.value.key == "--decryption-key" and "is the key of un, not osce" in exc.value.message


def test_a_plaintext_decryption_key_loads_with_one_warning_naming_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "old.x25519"
    path.write_bytes(OLD_X25519_FILE)  # as obus org enckey wrote it before
    with capture_all_logs() as logs:
        key = read_decryption_key(path, "un")
        assert read_decryption_key(path, "un") == key  # the same file again: no second warning
    assert key.private_key.hex() == json.loads(OLD_X25519_FILE)["private"] and key.org == "un"
    warned = [e for e in logs if e["event"] == "key_file_unencrypted"]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning"
    assert warned[0]["path"] == str(path) and warned[0]["kind"] == "decryption"
    assert warned[0]["fix"] == f"obus key encrypt {path} --kind decryption"
    # --plaintext-key writes exactly that format
    again = tmp_path / "again.x25519"
    write_decryption_key(again, key)
    assert again.read_bytes() == OLD_X25519_FILE
    assert stat.S_IMODE(again.stat().st_mode) == 0o600


def test_the_ed25519_format_is_unchanged_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node key file written before the generalization decrypts, and the same key, salt and
    nonce give the same bytes now."""
    key = demo_key("test-decryption-keyfile:ed25519")
    old = tmp_path / "old-node.json"
    old.write_bytes(OLD_NODE_FILE)
    assert read_key(old, passphrase=_given(OLD_NODE_PASS)).seed == key.seed
    doc = json.loads(OLD_NODE_FILE)
    fixed = iter([bytes.fromhex(doc["kdf"]["salt"]), bytes.fromhex(doc["cipher"]["nonce"])])
    monkeypatch.setattr(os, "urandom", lambda n: next(fixed))
    assert encrypt_key(key, OLD_NODE_PASS, KeyKind.NODE, n=2**10) == OLD_NODE_FILE


# -- obus key encrypt --kind decryption ---------------------------------------------------------


def test_obus_key_encrypt_encrypts_a_decryption_key_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "un.x25519"
    path.write_bytes(OLD_X25519_FILE)
    argv = ["key", "encrypt", str(path), "--kind", "decryption"]
    assert main(argv) == 2  # no passphrase at hand
    err = capsys.readouterr().err
    assert f"config {VAR}:" in err and "Traceback" not in err
    assert path.read_bytes() == OLD_X25519_FILE  # left as it was
    monkeypatch.setenv(VAR, PASS)
    assert main(argv) == 0
    key = DecryptionKey("un", bytes.fromhex(json.loads(OLD_X25519_FILE)["private"]))
    assert f"encrypted {path} (decryption key {key.key_id.hex()})" in capsys.readouterr().out
    encrypted = path.read_bytes()
    doc = json.loads(encrypted)
    assert (doc["type"], doc["kind"], doc["org"]) == ("obus-x25519-encrypted", "decryption", "un")
    assert key.private_key.hex() not in encrypted.decode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(argv) == 0  # idempotent
    assert "already encrypted (decryption key)" in capsys.readouterr().out
    assert path.read_bytes() == encrypted
    with capture_all_logs() as logs:
        assert read_decryption_key(path, "un") == key
    assert not [e for e in logs if e["event"] == "key_file_unencrypted"]
    assert [p.name for p in tmp_path.iterdir()] == ["un.x25519"]  # no temporary file left


@pytest.mark.parametrize("kind", ["node", "root"])
def test_obus_key_encrypt_refuses_a_key_of_the_other_type(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    for var in PASSPHRASE_ENV.values():
        monkeypatch.setenv(var, PASS)
    x25519 = tmp_path / "un.x25519"
    x25519.write_bytes(OLD_X25519_FILE)
    assert main(["key", "encrypt", str(x25519), "--kind", kind]) == 2
    err = capsys.readouterr().err
    assert f"holds an X25519 decryption key, not a {kind} key; left as it is" in err
    assert x25519.read_bytes() == OLD_X25519_FILE
    signing = tmp_path / f"{kind}.json"
    write_key(signing, demo_key(f"test-decryption-keyfile:{kind}"))
    before = signing.read_bytes()
    assert main(["key", "encrypt", str(signing), "--kind", "decryption"]) == 2
    err = capsys.readouterr().err
    assert "holds an Ed25519 signing key, not a decryption key; left as it is" in err
    assert signing.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([x25519.name, signing.name])


def test_encrypt_key_file_returns_the_decryption_key(tmp_path: Path) -> None:
    path = tmp_path / "un.x25519"
    path.write_bytes(OLD_X25519_FILE)
    got, already = encrypt_key_file(
        path, kind=KeyKind.DECRYPTION, passphrase=_given(PASS), scrypt_n=FAST_SCRYPT
    )
    assert isinstance(got, DecryptionKey) and already is None
    assert read_decryption_key(path, "un", passphrase=_given(PASS)) == got
    assert encrypt_key_file(path, kind=KeyKind.DECRYPTION, passphrase=_given(PASS)) == (
        None,
        KeyKind.DECRYPTION,
    )


def test_key_encrypt_asks_twice_on_a_terminal(tmp_path: Path) -> None:
    path = tmp_path / "un.x25519"
    path.write_bytes(OLD_X25519_FILE)
    code, shown = _run_on_a_terminal(
        ["key", "encrypt", str(path), "--kind", "decryption"], [PASS, PASS]
    )
    assert code == 0, shown
    assert f"Passphrase of the decryption key {path}:" in shown
    assert "Repeat the passphrase:" in shown and PASS not in shown  # not echoed
    assert read_decryption_key(path, "un", passphrase=_given(PASS)).org == "un"


# -- obus org enckey ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_scenario(time.time_ns() // 1_000_000, observers_per_org=1)


@pytest.fixture
def enckey(tmp_path: Path, scenario: Scenario) -> Callable[..., list[str]]:
    """``obus org enckey`` for un, offline with ``--out``, given a plaintext root key."""
    mandate, root = tmp_path / "mandate.bin", tmp_path / "un-root.key"
    mandate.write_bytes(scenario.mandate_envelope)
    write_key(root, scenario.org_roots["un"])

    def argv(*extra: str) -> list[str]:
        return ["org", "enckey", "--org", "un", "--root-key", str(root), "--mandate",
                str(mandate), "--private-out", str(tmp_path / "un.x25519"), "--offline", "--out",
                str(tmp_path / "ek.rec"), *extra]  # fmt: skip

    return argv


def _published_key_id(record: Path) -> bytes:
    return EncryptionKey.decode(Envelope.decode(record.read_bytes()).payload).key_id


def test_enckey_writes_the_private_key_encrypted(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    enckey: Callable[..., list[str]],
) -> None:
    monkeypatch.setattr(trust_cli, "SCRYPT_N", FAST_SCRYPT)
    monkeypatch.setenv(VAR, PASS)
    assert main(enckey()) == 0
    out = capsys.readouterr().out
    assert f"encrypted; the node takes the passphrase from {VAR}" in out
    private = tmp_path / "un.x25519"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    doc = json.loads(private.read_text())
    assert (doc["type"], doc["kind"], doc["org"]) == ("obus-x25519-encrypted", "decryption", "un")
    published = _published_key_id(tmp_path / "ek.rec")
    assert doc["key_id"] == published.hex()
    with capture_all_logs() as logs:
        key = read_decryption_key(private, "un")  # as obus node --decryption-key reads it
    assert key.key_id == published
    assert not [e for e in logs if e["event"] == "key_file_unencrypted"]
    assert key.private_key.hex() not in private.read_text()
    assert list(tmp_path.glob(".un.x25519*")) == []


def test_enckey_without_a_passphrase_refuses_before_publishing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], enckey: Callable[..., list[str]]
) -> None:
    assert main(enckey()) == 2
    err = capsys.readouterr().err
    assert f"obus: error: config {VAR}:" in err and "Traceback" not in err
    assert "no terminal" in err
    assert not (tmp_path / "ek.rec").exists()  # nothing published: no orphaned public key
    assert list(tmp_path.glob("*un.x25519*")) == []


def test_enckey_refuses_a_short_passphrase_naming_the_variable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    enckey: Callable[..., list[str]],
) -> None:
    monkeypatch.setenv(VAR, "short")
    assert main(enckey()) == 2
    err = capsys.readouterr().err
    assert f"config {VAR}:" in err and "shorter than 8" in err
    assert not (tmp_path / "ek.rec").exists() and not (tmp_path / "un.x25519").exists()


def test_enckey_refuses_an_existing_file_before_asking_for_a_passphrase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], enckey: Callable[..., list[str]]
) -> None:
    (tmp_path / "un.x25519").write_bytes(OLD_X25519_FILE)
    assert main(enckey()) == 2  # no passphrase at hand: the existing file is what is named
    err = capsys.readouterr().err
    assert "exists; refusing to overwrite a key" in err and VAR not in err
    assert (tmp_path / "un.x25519").read_bytes() == OLD_X25519_FILE
    assert not (tmp_path / "ek.rec").exists()


def test_enckey_plaintext_key_keeps_the_old_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], enckey: Callable[..., list[str]]
) -> None:
    assert main(enckey("--plaintext-key")) == 0  # no passphrase needed
    assert "plaintext: tests and demos only" in capsys.readouterr().out
    private = tmp_path / "un.x25519"
    doc = json.loads(private.read_text())
    assert set(doc) == {"type", "org", "private"} and doc["type"] == "obus-x25519-private"
    with capture_all_logs() as logs:
        key = read_decryption_key(private, "un")
    assert key.key_id == _published_key_id(tmp_path / "ek.rec")
    assert [e["fix"] for e in logs if e["event"] == "key_file_unencrypted"] == [
        f"obus key encrypt {private} --kind decryption"
    ]
