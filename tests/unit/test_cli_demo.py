"""``obus demo --dir``: the demo's working directory is the one given (default ./obus-demo),
absolute, never inside the installed package, and a directory the demo did not make is refused
rather than cleared."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.errors import ConfigError
from nodes.cli.demo import DEFAULT_DIR, demo_dir
from nodes.cli.main import build_parser, main
from nodes.demo.mission import DEMO_MARKER


def test_the_default_is_obus_demo_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["demo"])
    assert args.dir == DEFAULT_DIR == "obus-demo"
    assert demo_dir(args.dir) == tmp_path.resolve() / "obus-demo"


def test_a_new_empty_or_earlier_demo_directory_is_taken(tmp_path: Path) -> None:
    assert demo_dir(str(tmp_path / "new")) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert demo_dir(str(tmp_path / "empty")) == tmp_path / "empty"
    marked = tmp_path / "marked"
    marked.mkdir()
    (marked / DEMO_MARKER).touch()
    (marked / "un.db").write_bytes(b"")
    assert demo_dir(str(marked)) == marked
    earlier = tmp_path / "earlier"  # made by make demo before the marker
    (earlier / "logs").mkdir(parents=True)
    (earlier / "mandate.bin").write_bytes(b"")
    assert demo_dir(str(earlier)) == earlier


def test_a_directory_the_demo_did_not_make_is_refused_and_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    with pytest.raises(ConfigError) as exc:
        demo_dir(str(mine))
    assert exc.value.key == "--dir" and "no demo made it" in exc.value.message
    assert main(["demo", "--dir", str(mine)]) == 2
    assert "config --dir:" in capsys.readouterr().err
    assert (mine / "chapter1.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        demo_dir(str(tmp_path / "file"))
