"""User mistakes on the `obus` command line: a ConfigError naming the flag, exit 2, no traceback.

Every case runs `nodes.cli.main.main` in-process (or one command function); none needs a broker.
Where a command would connect, the mistake is refused before (`--bootstrap 127.0.0.1:9` would
fail fast otherwise, and the tests would notice by hanging in retries).
"""

from __future__ import annotations

import argparse
import os
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bus.errors import ConfigError
from bus.model import Envelope
from bus.statement import StatementBook
from bus.store.node import NodeStore
from bus.trust import KeyRing
from nodes.cli import followup as followup_cli
from nodes.cli import trust as trust_cli
from nodes.cli.common import security_from_args
from nodes.cli.main import build_parser, main
from nodes.demo.scenario import Scenario, build_scenario, demo_key
from nodes.org_node import statements
from nodes.org_node.statements import Board, check_signing_key
from nodes.runtime.files import write_encrypted_key, write_key
from tests.kafka_broker import free_ports

NOWHERE = ["--bootstrap", "127.0.0.1:9"]
UNWRITABLE = "/proc/obus-no-such-dir/out.file"


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_scenario(time.time_ns() // 1_000_000, observers_per_org=1)


@pytest.fixture
def files(tmp_path: Path, scenario: Scenario) -> dict[str, Path]:
    """A signed mandate file, un's root key, un's and osce's node keys, a spare key."""
    out = {"mandate": tmp_path / "mandate.bin"}
    out["mandate"].write_bytes(scenario.mandate_envelope)
    keys = {
        "un_root": scenario.org_roots["un"],
        "un_node": scenario.node_keys["un"],
        "osce_node": scenario.node_keys["osce"],
        "spare": demo_key("test-cli-errors:spare"),
    }
    for name, key in keys.items():
        out[name] = tmp_path / f"{name}.key"
        write_key(out[name], key)
    return out


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], flag: str) -> str:
    """Run obus; assert exit 2 with an error naming ``flag`` and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"config {flag}:" in err, err
    assert "Traceback" not in err
    return err


# -- 1. broker security options ----------------------------------------------------------------


def _security(monkeypatch: pytest.MonkeyPatch, **given: str) -> Any:
    for var in [v for v in os.environ if v.startswith(("OBUS_SASL", "OBUS_SSL", "OBUS_SECUR"))]:
        monkeypatch.delenv(var)
    return security_from_args(argparse.Namespace(**given))


@pytest.mark.parametrize(
    ("given", "flag"),
    [
        ({"sasl_password_file": "PW"}, "--sasl-password-file"),  # password without a user
        ({"security_protocol": "SSL", "sasl_username": "un", "sasl_password_file": "PW"},
         "--sasl-username"),
        ({"security_protocol": "PLAINTEXT", "sasl_username": "un"}, "--sasl-username"),
        ({"sasl_mechanism": "PLAIN"}, "--sasl-username"),  # SASL wanted, no credentials
        ({"security_protocol": "SASL_SSL", "sasl_username": "un"}, "--sasl-password-file"),
        ({"security_protocol": "SASL_PLAINTEXT"}, "--sasl-username"),
        ({"security_protocol": "PLAINTEXT", "ssl_cafile": "ca.crt"}, "--ssl-cafile"),
    ],
)  # fmt: skip
def test_contradictory_security_options_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, given: dict[str, str], flag: str
) -> None:
    (tmp_path / "pw").write_text("secret\n")
    given = {k: str(tmp_path / "pw") if v == "PW" else v for k, v in given.items()}
    with pytest.raises(ConfigError) as exc:
        _security(monkeypatch, **given)
    assert exc.value.key == flag


def test_security_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("secret\n")
    for var in [v for v in os.environ if v.startswith(("OBUS_SASL", "OBUS_SSL", "OBUS_SECUR"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("OBUS_SASL_PASSWORD", "secret")
    with pytest.raises(ConfigError) as exc:
        security_from_args(argparse.Namespace())
    assert exc.value.key == "OBUS_SASL_PASSWORD"
    monkeypatch.setenv("OBUS_SASL_USERNAME", "un")
    monkeypatch.setenv("OBUS_SECURITY_PROTOCOL", "SSL")
    with pytest.raises(ConfigError) as exc:
        security_from_args(argparse.Namespace())
    assert exc.value.key == "OBUS_SASL_USERNAME"
    assert "OBUS_SECURITY_PROTOCOL is SSL" in exc.value.message
    monkeypatch.setenv("OBUS_SECURITY_PROTOCOL", "bogus")
    with pytest.raises(ConfigError) as exc:
        security_from_args(argparse.Namespace())
    assert exc.value.key == "OBUS_SECURITY_PROTOCOL"


def test_consistent_security_options_still_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("secret\n")
    assert _security(monkeypatch) is None
    sec = _security(monkeypatch, sasl_username="un", sasl_password_file=str(tmp_path / "pw"))
    assert (sec.protocol, sec.username, sec.password) == ("SASL_PLAINTEXT", "un", "secret")
    sec = _security(
        monkeypatch, security_protocol="SASL_SSL", sasl_username="un",
        sasl_password_file=str(tmp_path / "pw"), ssl_cafile="ca.crt",
    )  # fmt: skip
    assert (sec.protocol, sec.sasl_mechanism, sec.ssl_cafile) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "ca.crt",
    )
    assert _security(monkeypatch, ssl_cafile="ca.crt").protocol == "SSL"


def test_security_mistake_through_the_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: dict[str, Path]
) -> None:
    for var in [v for v in os.environ if v.startswith(("OBUS_SASL", "OBUS_SSL", "OBUS_SECUR"))]:
        monkeypatch.delenv(var)
    argv = ["node", "--org", "un", "--mandate", str(files["mandate"]), "--db",
            str(files["mandate"].parent / "un.db"), *NOWHERE,
            "--security-protocol", "PLAINTEXT", "--sasl-username", "un"]  # fmt: skip
    _refused(capsys, argv, "--sasl-username")


# -- 2. mandate draft rotation options, hex keys -----------------------------------------------


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--threshold", "3"], "--threshold"),
        (["--add-org", "au", "African Union", "00" * 32], "--add-org"),
        (["--remove-org", "un"], "--remove-org"),
        (["--replace-key", "un", "00" * 32], "--replace-key"),
        (["--not-after", "2099-01-01T00:00:00Z"], "--not-after"),
        (["--text", "new text"], "--text"),
    ],
)
def test_rotation_options_need_previous(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], flag: str
) -> None:
    (tmp_path / "m.toml").write_text('mandate_id = "x"\n')
    err = _refused(
        capsys, ["mandate", "draft", str(tmp_path / "m.toml"), *extra, "--out", "d"], flag
    )
    assert "rotation options need --previous" in err
    assert "edit the description file instead, or pass --previous" in err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--replace-key", "un", "zz" * 32], "--replace-key"),
        (["--replace-key", "un", "abc"], "--replace-key"),
        (["--threshold", "0"], "--threshold"),
        (["--threshold", "7"], "--threshold"),
        (["--add-org", "au", "African Union", "1234"], "--add-org"),
        (["--remove-org", "un", "--remove-org", "osce", "--remove-org", "eu"], "--remove-org"),
    ],
)
def test_rotation_errors_name_the_flag(
    capsys: pytest.CaptureFixture[str],
    files: dict[str, Path],
    tmp_path: Path,
    extra: list[str],
    flag: str,
) -> None:
    argv = ["mandate", "draft", "--previous", str(files["mandate"]), *extra, "--out",
            str(tmp_path / "v2.draft")]  # fmt: skip
    err = _refused(capsys, argv, flag)
    assert "organizations[" not in err and "config threshold" not in err


def test_accredit_bad_public_key_names_the_flag(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path
) -> None:
    base = ["org", "accredit", "--org", "un", "--root-key", str(files["un_root"]), "--mandate",
            str(files["mandate"]), "--role", "node", "--subject", "n1", "--offline", "--out",
            str(tmp_path / "acc.rec")]  # fmt: skip
    _refused(capsys, [*base, "--public-key", "xyz"], "--public-key")
    _refused(capsys, [*base, "--public-key", "00"], "--public-key")
    assert not (tmp_path / "acc.rec").exists()


# -- 3. statement keys belong to --org -------------------------------------------------------


def _keyring(scenario: Scenario) -> KeyRing:
    kr = KeyRing(scenario.mandate)
    for raw in [*scenario.accreditations, *scenario.node_accreditations]:
        kr.apply(Envelope.decode(raw))
    return kr


def test_check_signing_key(scenario: Scenario) -> None:
    kr = _keyring(scenario)
    check_signing_key(kr, scenario.node_keys["un"], "un")
    check_signing_key(kr, scenario.org_roots["un"], "un")
    for key, org, problem in [
        (scenario.node_keys["osce"], "un", "accredited to osce, not un"),
        (scenario.org_roots["osce"], "un", "root key of osce, not un"),
        (scenario.observers[0].key, scenario.observers[0].org, "as observer, not node"),
        (demo_key("test-cli-errors:spare"), "un", "is not accredited"),
    ]:
        with pytest.raises(ConfigError) as exc:
            check_signing_key(kr, key, org)
        assert exc.value.key == "--node-key"
        assert problem in exc.value.message


def test_statement_sign_refuses_another_orgs_key(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    scenario: Scenario,
    files: dict[str, Path],
) -> None:
    async def board(*_a: Any, **_k: Any) -> Board:
        book = StatementBook(_keyring(scenario))
        return Board(book, book, book.keyring)

    monkeypatch.setattr(statements, "read_board", board)
    monkeypatch.setattr(followup_cli, "check_broker", lambda _args: 1)  # the board is faked
    base = ["statement", "sign", "0190a000-0000-7000-8000-000000000000", "--org", "un",
            "--mandate", str(files["mandate"]), *NOWHERE]  # fmt: skip
    # Trust comes from the node's final store: without one (nor --db beside it), nothing.
    _refused(capsys, [*base, "--node-key", str(files["un_node"])], "--final-db")
    base += ["--final-db", "un.final.db"]
    err = _refused(capsys, [*base, "--node-key", str(files["osce_node"])], "--node-key")
    assert "accredited to osce, not un" in err
    # un's own node key passes the check and reaches the (empty) board
    assert main([*base, "--node-key", str(files["un_node"])]) == 2
    assert "no verified statement" in capsys.readouterr().err


def test_statement_draft_refuses_another_orgs_key(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    scenario: Scenario,
    files: dict[str, Path],
) -> None:
    async def board(*_a: Any, **_k: Any) -> Board:
        book = StatementBook(_keyring(scenario))
        return Board(book, book, book.keyring)

    async def no_publish(*_a: Any, **_k: Any) -> None:
        raise AssertionError("must not publish")

    monkeypatch.setattr(followup_cli, "read_board", board)
    monkeypatch.setattr(followup_cli, "check_broker", lambda _args: 1)  # the board is faked
    monkeypatch.setattr(followup_cli, "draft", no_publish)
    monkeypatch.setattr(followup_cli, "references_from_store", lambda *_a: ())
    argv = ["statement", "draft", "--org", "un", "--node-key", str(files["osce_node"]),
            "--mandate", str(files["mandate"]), "--db", "x.db", "--title", "t", "--text", "x",
            *NOWHERE]  # fmt: skip
    _refused(capsys, argv, "--node-key")


def test_statement_draft_missing_text_file(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path
) -> None:
    argv = ["statement", "draft", "--org", "un", "--node-key", str(files["un_node"]),
            "--mandate", str(files["mandate"]), "--db", "x.db", "--title", "t",
            "--text-file", str(tmp_path / "nope.txt"), *NOWHERE]  # fmt: skip
    _refused(capsys, argv, "--text-file")


# -- 4. enckey: publish first; --offline needs --out -------------------------------------------


@pytest.mark.parametrize("action", ["accredit", "revoke", "enckey"])
def test_offline_without_out_is_refused(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path, action: str
) -> None:
    extra = {
        "accredit": ["--role", "node", "--subject", "n1", "--public-key", "00" * 32],
        "revoke": ["--key-id", "00" * 32, "--last-valid-seq", "0", "--reason", "lost"],
        "enckey": ["--private-out", str(tmp_path / "priv.json")],
    }[action]
    argv = ["org", action, "--org", "un", "--root-key", str(files["un_root"]), "--mandate",
            str(files["mandate"]), "--offline", *extra]  # fmt: skip
    err = _refused(capsys, argv, "--offline")
    assert "nothing would be kept" in err and "add --out FILE" in err
    assert not (tmp_path / "priv.json").exists()


def _enckey(files: dict[str, Path], tmp_path: Path, *extra: str) -> list[str]:
    return ["org", "enckey", "--org", "un", "--root-key", str(files["un_root"]), "--mandate",
            str(files["mandate"]), "--private-out", str(tmp_path / "priv.json"),
            "--plaintext-key", *extra]  # fmt: skip


def test_enckey_failed_publish_leaves_no_private_key(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    from bus.errors import TransportError  # noqa: PLC0415

    def fail(*_a: Any, **_k: Any) -> None:
        raise TransportError("broker down", retriable=True)

    monkeypatch.setattr(trust_cli, "_publish_registry", fail)
    assert main(_enckey(files, tmp_path, *NOWHERE)) == 2
    assert "broker down" in capsys.readouterr().err
    assert list(tmp_path.glob("*priv.json*")) == []  # neither the key nor a temp file
    monkeypatch.undo()
    # the re-run is not refused; offline with --out it keeps record and key (mode 0600)
    assert main(_enckey(files, tmp_path, "--offline", "--out", str(tmp_path / "ek.rec"))) == 0
    priv = tmp_path / "priv.json"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert trust_cli.read_decryption_key(priv, "un").org == "un"
    assert (tmp_path / "ek.rec").exists()
    assert list(tmp_path.glob(".priv.json*")) == []
    # a second run refuses to overwrite the key before publishing anything
    (tmp_path / "ek.rec").unlink()
    assert main(_enckey(files, tmp_path, "--offline", "--out", str(tmp_path / "ek.rec"))) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert not (tmp_path / "ek.rec").exists()


# -- 5. the epilog's node example --------------------------------------------------------------


def test_epilog_node_example_passes_a_node_key() -> None:
    import shlex  # noqa: PLC0415

    epilog = build_parser().epilog or ""
    example = epilog.split("  obus node ", 1)[1].split("\n\n", 1)[0]
    argv = shlex.split(example.replace("\\\n", " "), comments=True)
    args = build_parser().parse_args(["node", *argv])
    assert args.seal and args.node_key == "un-node.json"


@pytest.mark.parametrize(
    "old",
    [["--no-witness"], ["--witness"], ["--checkpoint-every", "5"],
     ["--checkpoint-interval", "2"], ["--witness-db", "un.witness.db"]],
    ids=lambda old: old[0],
)  # fmt: skip
def test_the_checkpoint_witness_flags_are_refused_as_unknown(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], old: list[str]
) -> None:
    """Seals replaced the checkpoint witness: its flags are argparse errors (exit 2), never
    silently ignored, so a deployment still passing them learns that at once."""
    argv = ["node", "--org", "un", "--mandate", str(files["mandate"]), "--db",
            str(files["mandate"].parent / "un.db"), *NOWHERE, *old]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"unrecognized arguments: {' '.join(old)}" in capsys.readouterr().err


# -- 6. values and paths that used to raise tracebacks ------------------------------------------


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--max-attachment-bytes", "-5"], "--max-attachment-bytes"),
        (["--attachment-wait-hours", "-1"], "--attachment-wait-hours"),
        (["--http-port", "99999"], "--http-port"),
    ],
)
def test_node_limits_name_the_flag(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], extra: list[str], flag: str
) -> None:
    argv = ["node", "--org", "un", "--mandate", str(files["mandate"]), "--db",
            str(files["mandate"].parent / "un.db"), *NOWHERE, *extra]  # fmt: skip
    _refused(capsys, argv, flag)


@pytest.mark.parametrize(
    ("extra", "flag"),
    [(["--max-attachment-bytes", "-1"], "--max-attachment-bytes"), (["--port", "70000"], "--port")],
)
def test_gateway_limits_name_the_flag(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], extra: list[str], flag: str
) -> None:
    argv = ["gateway", "--org", "un", "--mandate", str(files["mandate"]), "--node-key",
            str(files["un_node"]), "--db", str(files["mandate"].parent / "gw.db"), *NOWHERE,
            *extra]  # fmt: skip
    _refused(capsys, argv, flag)


def test_dashboard_port_out_of_range(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    argv = ["dashboard", "--org", "un", "--db", str(files["mandate"]), "--mandate",
            str(files["mandate"]), "--http-port", "99999"]  # fmt: skip
    _refused(capsys, argv, "--http-port")


def _log_level_parsers(
    parser: argparse.ArgumentParser, path: str = "obus"
) -> list[tuple[str, Any]]:
    out = []
    for action in parser._actions:
        if "--log-level" in action.option_strings:
            out.append((path, action))
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out.extend(_log_level_parsers(child, f"{path} {name}"))
    return out


def test_every_log_level_has_the_same_choices(capsys: pytest.CaptureFixture[str]) -> None:
    found = _log_level_parsers(build_parser())
    assert len(found) > 10
    for path, action in found:
        assert list(action.choices) == ["debug", "info", "warning", "error"], path
    for argv in (["keygen", "--kind", "root", "--log-level", "bogus", "k.json"],
                 ["mandate", "verify", "--log-level", "bogus", "m.bin"],
                 ["dashboard", "--org", "un", "--db", "d", "--mandate", "m", "--log-level", "x"]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "argument --log-level: invalid choice" in capsys.readouterr().err


def test_logs_configure_refuses_an_unknown_level() -> None:
    from nodes.runtime import logs  # noqa: PLC0415

    with pytest.raises(ConfigError) as exc:
        logs.configure(json=True, level="bogus")
    assert exc.value.key == "--log-level"


def _draft_of_mandate(files: dict[str, Path], tmp_path: Path) -> Path:
    """An unsigned draft of the test mandate (what `obus mandate draft` writes)."""
    from bus import ceremony  # noqa: PLC0415
    from bus.trust import verify_mandate  # noqa: PLC0415

    mandate = verify_mandate(
        Envelope.decode(files["mandate"].read_bytes()), previous=None,
        now_ms=time.time_ns() // 10**6,
    )  # fmt: skip
    draft = tmp_path / "v1.draft"
    draft.write_bytes(ceremony.Draft.of(mandate).encode())
    return draft


def test_unwritable_keygen_path(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBUS_ROOT_KEY_PASSPHRASE", "a long enough passphrase")
    err = _refused(capsys, ["keygen", "--kind", "root", UNWRITABLE], "PATH")
    assert f"cannot write {UNWRITABLE}" in err


def test_unwritable_mandate_signature(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path
) -> None:
    draft = _draft_of_mandate(files, tmp_path)
    argv = ["mandate", "sign", "--key", str(files["un_root"]), str(draft), "--out", UNWRITABLE]
    err = _refused(capsys, argv, "--out")
    assert f"cannot write {UNWRITABLE}" in err


def test_os_error_safety_net(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(_args: argparse.Namespace) -> int:
        raise PermissionError(13, "Permission denied", "/root/secret")

    monkeypatch.setattr(trust_cli, "_cmd_keygen", boom)
    assert main(["keygen", "--kind", "node", "k.json"]) == 2
    err = capsys.readouterr().err
    assert "obus: error: cannot access /root/secret: Permission denied" in err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A clean witnessed export file and its signed mandate file."""
    from tests.witnessed_log import build_log, write  # noqa: PLC0415

    root = tmp_path_factory.mktemp("export")
    log = build_log(reports_per_observer=2)
    (root / "mandate.bin").write_bytes(log.mission.scenario.mandate_envelope)
    return write(root / "log.jsonl", log.header, log.records), root / "mandate.bin"


@pytest.mark.parametrize("flag", ["--json-out", "--html-out"])
def test_unwritable_audit_output_is_exit_2_not_1(
    capsys: pytest.CaptureFixture[str], export: tuple[Path, Path], flag: str
) -> None:
    path, mandate = export
    argv = ["audit", "--from", str(path), "--mandate", str(mandate), flag, UNWRITABLE]
    err = _refused(capsys, argv, flag)
    assert f"cannot write {UNWRITABLE}" in err


def test_unwritable_prove_output(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, export: tuple[Path, Path]
) -> None:
    import nodes.auditor.prove  # noqa: PLC0415

    proof = SimpleNamespace(
        to_json=lambda: {"proof": []}, topic="t", partition=0, offset=0, leaf_index=0,
        checkpoint=SimpleNamespace(origin="o", size=1), orgs=["un"], quorum=1, proof=[],
    )  # fmt: skip
    monkeypatch.setattr(nodes.auditor.prove, "prove_from_file", lambda *_a, **_k: proof)
    path, mandate = export
    argv = ["audit", "prove", "--from", str(path), "--mandate", str(mandate), "--report-id", "x",
            "--json-out", UNWRITABLE]  # fmt: skip
    _refused(capsys, argv, "--json-out")


# -- 7. audit prove: one way to name the record; no parent options ---------------------------


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--topic", "obus.reports.un"], "--offset"),
        (["--topic", "obus.reports.un", "--partition", "1"], "--offset"),
        (["--offset", "3"], "--topic"),
        (["--topic", "obus.reports.un", "--offset", "3", "--report-id", "r"], "--topic"),
        (["--partition", "0", "--report-id", "r"], "--partition"),
        ([], "--topic"),
    ],
)
def test_prove_names_the_record_one_way(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], extra: list[str], flag: str
) -> None:
    argv = ["audit", "prove", "--mandate", str(files["mandate"]), *NOWHERE, *extra]
    _refused(capsys, argv, flag)


@pytest.mark.parametrize(
    ("parent", "flag"),
    [
        (["--html-out", "a.html"], "--html-out"),
        (["--strict"], "--strict"),
        (["--final-digest"], "--final-digest"),
    ],
)
def test_prove_refuses_audit_options(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], parent: list[str], flag: str
) -> None:
    argv = ["audit", *parent, "prove", "--mandate", str(files["mandate"]), "--report-id", "r",
            *NOWHERE]  # fmt: skip
    _refused(capsys, argv, flag)


def test_audit_options_before_prove_are_kept() -> None:
    args = build_parser().parse_args(
        [
            "audit",
            "--json-out",
            "p.json",
            "--from",
            "log.jsonl",
            "--mandate",
            "m.bin",
            "prove",
            "--report-id",
            "r",
        ]
    )
    assert (args.json_out, args.from_file, args.mandate) == ("p.json", "log.jsonl", "m.bin")
    args = build_parser().parse_args(
        ["audit", "--json-out", "a.json", "prove", "--report-id", "r", "--json-out", "b.json"]
    )
    assert args.json_out == "b.json"
    args = build_parser().parse_args(["audit", "--json-out", "a.json"])
    assert (args.json_out, args.from_file, args.audit_command) == ("a.json", None, None)


# -- 8. mandate verify: exit 1 with the reason -------------------------------------------------


def test_mandate_verify_unparsable_is_exit_1(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\xff not a mandate")
    assert main(["mandate", "verify", str(junk)]) == 1
    assert "REJECTED (malformed)" in capsys.readouterr().out
    draft = _draft_of_mandate(files, tmp_path)
    assert main(["mandate", "verify", str(draft)]) == 1
    assert "this looks like a draft; combine signatures first" in capsys.readouterr().out
    assert main(["mandate", "verify", str(files["mandate"])]) == 0


# -- 9. help texts and the observer's gateway URL ----------------------------------------------


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    topics = _help(capsys, "topics")
    assert "<prefix>attachments.<org>" in topics and "statements" in topics
    assert "report and attachment topics" in topics
    assert "4 when reports or attachments are still queued" in _help(capsys, "observer", "sync")
    statement = _help(capsys, "statement")
    assert "1 unknown id" in statement


def test_report_example_names_where_zone_ids_are() -> None:
    text = (Path(__file__).parents[2] / "examples" / "report.yaml").read_text()
    assert "obus observer status` for the ids" not in text
    assert "obus mandate show" in text


@pytest.mark.parametrize(
    "url", ["notaurl", "ftp://gw", "http://", "http://gw:99999", "gw.example:8480"]
)
def test_observer_init_refuses_a_bad_gateway_url(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path, url: str
) -> None:
    argv = ["observer", "init", "--home", str(tmp_path / "home"), "--observer-id", "un-obs-9",
            "--org", "un", "--mandate", str(files["mandate"]), "--gateway", url]  # fmt: skip
    _refused(capsys, argv, "--gateway")
    assert not (tmp_path / "home").exists()


def test_observer_init_accepts_a_gateway_url() -> None:
    from nodes.cli.observer import check_gateway_url  # noqa: PLC0415

    for url in ("http://127.0.0.1:8480", "https://gw.un.example", "https://gw.example/obus/"):
        check_gateway_url("--gateway", url)


# -- broker unreachable: every command that connects says so in one line, exit 3 --------------


@pytest.mark.parametrize(
    "command",
    [
        ["log", "export", "log.jsonl", "--mandate", "{mandate}"],
        ["audit", "--mandate", "{mandate}"],
        ["audit", "prove", "--mandate", "{mandate}", "--topic", "obus.reports.un", "--offset",
         "0"],
        ["statement", "status", "--mandate", "{mandate}", "--final-db", "un.final.db"],
        ["statement", "sign", "0190a000-0000-7000-8000-000000000000", "--org", "un",
         "--node-key", "{un_node}", "--mandate", "{mandate}", "--final-db", "un.final.db"],
        ["statement", "draft", "--org", "un", "--node-key", "{un_node}", "--mandate",
         "{mandate}", "--db", "un.db", "--title", "t", "--text", "x"],
        ["node", "--org", "un", "--mandate", "{mandate}", "--db", "un.db", "--node-key",
         "{un_node}"],
    ],
    ids=["log-export", "audit", "audit-prove", "statement-status", "statement-sign", "statement-draft", "node"],
)  # fmt: skip
def test_no_broker_is_one_line_and_exit_3_for_every_command_that_connects(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, Path],
    scenario: Scenario,
    tmp_path: Path,
    command: list[str],
) -> None:
    from nodes.runtime.keyfile import KeyKind  # noqa: PLC0415

    node_key = tmp_path / "un-node-encrypted.json"  # encrypted: no plaintext warning on stderr
    monkeypatch.setenv("OBUS_NODE_KEY_PASSPHRASE", "node key passphrase")
    write_encrypted_key(
        node_key, scenario.node_keys["un"], kind=KeyKind.NODE, passphrase="node key passphrase"
    )
    monkeypatch.chdir(tmp_path)
    if command[:2] == ["statement", "draft"]:  # its store is read before it connects
        NodeStore(tmp_path / "un.db").close()
    (port,) = free_ports(1)
    argv = [a.format(mandate=files["mandate"], un_node=node_key) for a in command]
    code = main([*argv, "--bootstrap", f"127.0.0.1:{port}", "--connect-timeout", "5"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.count("\n") == 1 and err.startswith("obus: error: broker unreachable"), err
    assert f"127.0.0.1:{port}" in err and "fix:" in err
    assert not (tmp_path / "log.jsonl").exists()
    assert command[0] != "node" or not (tmp_path / "un.db").exists()
