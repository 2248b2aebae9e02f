"""``inv configure``'s output directory (builder/fleet/stamp.py): a stamp replaces only an earlier
stamp's own output or an empty directory; everything else is refused before a byte is written,
with its message, and is left exactly as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.fleet import stamp

ROOT = Path(__file__).resolve().parents[4]


def tree(path: Path) -> dict[str, bytes | str]:
    """Everything under ``path`` (links as their targets), to compare before and after."""
    out: dict[str, bytes | str] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
    return out


@pytest.fixture
def work(tmp_path: Path) -> Path:
    disk = tmp_path / "in/x86_64-raw-1.img"
    disk.parent.mkdir()
    disk.write_bytes(bytes(510) + b"\x55\xaa" + bytes(4096))  # an MBR signature: a disk image to kind_of
    (tmp_path / "site.yaml").write_text("hostname: depot-7\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export PATH\n")
    (home / "notes").mkdir()
    (home / "notes/today.txt").write_text("keep me\n")
    return tmp_path


# (how the output is given, the name, the refusal's start)
CASES: list[tuple[str, Callable[[Path], Path], str, str]] = [
    ("-o ~ (a directory with files)", lambda w: w / "home", "", "exists and is not an earlier stamp's output"),
    ("-o . (the working directory)", lambda w: w, "", "the output directory holds the input"),
    ("the input's own directory", lambda w: w / "in", "", "the output directory holds the input"),
    ("--name ..", lambda w: w / "out/sites/..", "..", "'..': a site name is letters, digits"),
    ("--name with a slash", lambda w: w / "out/x", "a/b", "'a/b': a site name is letters, digits"),
    ("--name starting with '-'", lambda w: w / "out/x", "-rf", "'-rf': a site name is letters, digits"),
    ("a link to a directory", lambda w: link(w / "out-link", w / "home"), "", "the output directory is a link"),
    ("a file", lambda w: w / "home/.bashrc", "", "exists and is not a directory"),
    ("another tool's manifest", lambda w: manifest(w / "home", {"name": "not ours"}),
     "", "exists and is not an earlier stamp's output"),
    ("a manifest that is not JSON", lambda w: manifest(w / "home", None), "", "exists and is not an earlier stamp's"),
]


def link(path: Path, target: Path) -> Path:
    path.symlink_to(target)
    return path


def manifest(directory: Path, value: object) -> Path:
    (directory / "manifest.json").write_text("{not json" if value is None else json.dumps(value))
    return directory


@pytest.mark.parametrize(("case", "out", "name", "message"), CASES, ids=[c[0] for c in CASES])
def test_an_output_that_is_not_a_stamps_own_is_refused_and_kept(
        work: Path, case: str, out: Callable[[Path], Path], name: str, message: str) -> None:
    target = out(work)
    before = tree(work)
    with pytest.raises(stamp.BasaltError) as err:
        stamp.configure(work / "in/x86_64-raw-1.img", work / "site.yaml", target, name)
    assert message in err.value.render(), err.value.render()
    assert "\nhint: " in err.value.render()
    assert tree(work) == before  # nothing written, moved or removed


def test_the_cli_refuses_with_a_message_and_no_traceback(work: Path) -> None:
    before = tree(work)
    proc = subprocess.run([sys.executable, "-m", "builder", "configure", "--image", str(work / "in/x86_64-raw-1.img"),
                           "--config", str(work / "site.yaml"), "-o", str(work / "home")],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {work / 'home'}: exists and is not an earlier stamp's output"), proc.stderr
    assert tree(work) == before


def test_an_earlier_stamps_output_and_an_empty_directory_may_be_replaced(work: Path) -> None:
    manifest(work / "home", {"stamped_from": {"file": "x.img", "sha256": "0" * 64}})
    assert stamp.check_out(work / "home", work / "in/x86_64-raw-1.img", "depot-7") == work / "home"
    (work / "empty").mkdir()
    assert stamp.check_out(work / "empty", work / "in/x86_64-raw-1.img", "depot-7") == work / "empty"
