"""What a first deployment meets before anything reaches a broker: the description's keys,
the accreditation checks, the replication factor, ``--version`` and the exit codes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bus.crypto import SigningKey
from bus.errors import ConfigError
from bus.model import Accreditation, Mandate, Organization, Role, Zone
from nodes.cli.common import EXIT_BROKER
from nodes.cli.kafka import replication_factor
from nodes.cli.main import main, package_version
from nodes.cli.mandate import check_description
from nodes.cli.trust import check_accreditation
from tests.kafka_broker import free_ports

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = tomllib.loads((REPO / "examples" / "mandate.toml").read_text())


def test_the_example_description_passes_as_is(tmp_path: Path) -> None:
    check_description(EXAMPLE)
    assert (
        main(
            [
                "mandate",
                "draft",
                str(REPO / "examples" / "mandate.toml"),
                "--out",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    ("change", "key", "hint"),
    [
        ({"thresold": 3}, "thresold", "did you mean threshold?"),
        ({"mandate_di": "x"}, "mandate_di", "did you mean mandate_id?"),
        ({"threshold": "4"}, "threshold", "write threshold as a whole number"),
        ({"threshold": True}, "threshold", "write threshold as a whole number"),
        (
            {"zones": [{**EXAMPLE["zones"][0], "max_lot": 1.0}]},
            "zones[0].max_lot",
            "did you mean zones[0].max_lon?",
        ),
        (
            {"zones": [{**EXAMPLE["zones"][0], "min_lat": "48"}]},
            "zones[0].min_lat",
            "a number of degrees",
        ),
        (
            {"organizations": [{**EXAMPLE["organizations"][0], "root_key": "ab"}]},
            "organizations[0].root_key",
            "did you mean organizations[0].root_public_key?",
        ),
        ({"zones": ["north"]}, "zones[0]", "as a table"),
    ],
)
def test_unknown_keys_and_wrong_types_are_named_with_the_fix(
    change: dict[str, object], key: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        check_description({**EXAMPLE, **change})
    assert exc.value.key == key
    assert hint in exc.value.message


def test_several_problems_are_listed_at_once() -> None:
    with pytest.raises(ConfigError) as exc:
        check_description({**EXAMPLE, "thresold": 3, "versoin": 1})
    assert "2 problems" in exc.value.message
    assert (
        "did you mean threshold?" in exc.value.message
        and "did you mean version?" in exc.value.message
    )


ROOT = SigningKey.from_seed(bytes(32))
MANDATE = Mandate(
    mandate_id="m", version=1, zones=(Zone("north", "", 48.0, 37.5, 48.6, 38.5),),
    not_before_ms=1_000_000, not_after_ms=2_000_000,
    organizations=(Organization("un", "", ROOT.public_key), Organization("un-x", "", SigningKey.from_seed(bytes([1]) * 32).public_key)),
    threshold=1,
)  # fmt: skip


def _acc(subject: str, nb: int = 1_000_000, na: int = 2_000_000, org: str = "un") -> Accreditation:
    key = SigningKey.from_seed(bytes([7]) * 32)
    return Accreditation(subject, org, Role.OBSERVER, key.public_key, nb, na, 1, "m")


@pytest.mark.parametrize(
    ("acc", "flag", "text"),
    [
        (_acc("node-1"), "--subject", "outside un's namespace"),
        (_acc("osce-obs-1"), "--subject", "outside un's namespace"),
        (_acc("un-x-obs-1"), "--subject", "also inside un-x's namespace"),
        (_acc("un-obs-1", nb=999_999), "--not-before", "before the mandate's window"),
        (_acc("un-obs-1", na=2_000_001), "--not-after", "after the mandate's window"),
    ],
)
def test_accreditation_checks_refuse_what_a_node_would(
    acc: Accreditation, flag: str, text: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        check_accreditation(acc, MANDATE)
    assert exc.value.key == flag
    assert text in exc.value.message


def test_an_accreditation_inside_namespace_and_window_passes() -> None:
    check_accreditation(_acc("un-obs-1"), MANDATE)


@pytest.mark.parametrize(
    ("asked", "brokers", "force", "expected"),
    [
        (None, 1, False, 1),
        (None, 2, False, 2),
        (None, 5, False, 3),
        (2, 3, False, 2),
        (1, 3, True, 1),
        (1, 1, False, 1),
    ],
)
def test_replication_factor_fits_the_cluster(
    asked: int | None, brokers: int, force: bool, expected: int
) -> None:
    assert replication_factor(asked, brokers, force=force) == expected


@pytest.mark.parametrize(
    ("asked", "brokers", "text"),
    [(1, 3, "--force"), (4, 3, "does not fit"), (0, 1, "does not fit")],
)
def test_replication_factor_refusals(asked: int, brokers: int, text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        replication_factor(asked, brokers, force=False)
    assert text in exc.value.message


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"obus {package_version()}\n"
    assert package_version()[0].isdigit()


def test_no_broker_is_one_line_and_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    code = main(
        ["topics", "--orgs", "un", "--bootstrap", f"127.0.0.1:{port}", "--connect-timeout", "5"]
    )
    err = capsys.readouterr().err
    assert code == EXIT_BROKER == 3
    assert err.count("\n") == 1
    assert f"127.0.0.1:{port}" in err and "fix:" in err and "Traceback" not in err


def test_a_bad_connect_timeout_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "--orgs", "un", "--connect-timeout", "soon"]) == 2
    assert "--connect-timeout" in capsys.readouterr().err
