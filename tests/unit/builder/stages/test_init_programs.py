"""What the initramfs's /init runs is there to run: every program it calls is an applet of its
busybox (a missing one fails only at boot, as ``blkid`` did: the installed boot's state-partition
check called it, failed, and every installed boot then searched every disk by label), and the
label check that replaced it reads a real ext4 superblock.

The busybox is the build host's ``busybox-static``: the package the image's initramfs takes its
busybox from (images/*.yaml), from the same Debian release."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from builder.stages import initramfs
from tests.initsh import init_functions, programs

# The image's modmatch.sh (written by the initramfs stage, sourced by /init) defines match() and
# fs_modules().
SOURCED_FUNCTIONS = {"match", "fs_modules"}


def applets() -> set[str]:
    return set(subprocess.run(["busybox", "--list"], capture_output=True, text=True, check=True).stdout.split())


def test_every_program_the_init_runs_is_an_applet_of_its_busybox() -> None:
    called = programs(initramfs.INIT.read_text(), SOURCED_FUNCTIONS)
    assert {"mount", "insmod", "findfs", "dd", "switch_root", "cttyhack"} <= called  # the reading sees them
    paths = {p for p in called if p.startswith("/")}
    assert paths == {"/bin/busybox", "/init"}, paths  # busybox itself, and /init run again from the rescue shell
    assert called - paths - applets() == set()


@pytest.mark.parametrize("script, expected", [
    ('case "$(blkid "$state" 2>/dev/null)" in *" LABEL=x"*) ;; *) state= ;; esac', {"blkid"}),
    ('x=$(findfs "LABEL=$l" 2>/dev/null) && [ -b "$x" ] && break', {"findfs"}),
    ('case "$a" in b|c) cp x y ;; *) mv y z ;; esac', {"cp", "mv"}),
    ('for f in cat ls; do insmod "$f"; done', {"insmod"}),
    ('(cd /newroot && set -f && exec tac $(head -n1 ".$list") > /dev/null 2>&1) &', {"tac", "head"}),
    ('say "rescue: see (mount; ls) in the text" # grep in a comment', {"say"}),
    ('n=$((n + 1)) opt=x setsid cttyhack sh -l', {"cttyhack"}),
    ('exec switch_root /newroot /usr/sbin/basalt init', {"switch_root"}),
    ('chroot /newroot /usr/bin/env true; f() { sort; }', {"chroot", "/usr/bin/env", "sort"}),
    ('[ -n "$slot" ] || echo "$(uname)" | tr a b', {"uname", "tr"}),
    ('mkfifo /run/t && exec 3<> /run/t && t=1; read -t 1 -u 3 _; exec 3>&-; ls >&2 2>&1 x', {"mkfifo", "ls"}),
])
def test_the_reading_of_a_script_finds_each_program_it_calls(script: str, expected: set[str]) -> None:
    assert programs(script) == expected


def label(device: Path) -> str:
    """As /init uses it: in a command substitution (which drops the NULs)."""
    script = init_functions("ext4_label") + 'x=$(ext4_label "$1"); printf %s "$x"'
    return subprocess.run(["busybox", "sh", "-c", script, "sh", str(device)], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("make, expected", [
    (["mkfs.ext4", "-q", "-F", "-L", "BASALT_STATE"], "BASALT_STATE"),
    (["mkfs.ext4", "-q", "-F", "-L", "BASALT_STATE_OLD"], "BASALT_STATE_OLD"),  # 16 bytes: no NUL at all
    (["mkfs.ext4", "-q", "-F", "-L", "state"], "state"),
    (["mkfs.ext4", "-q", "-F"], ""),
    (["mkfs.vfat", "-n", "BASALTSTATE"], None),  # FAT keeps its label elsewhere: not the state label
    ([], ""),  # zeros
])
def test_the_state_partitions_label_is_read_from_its_ext4_superblock(tmp_path: Path, make: list[str],
                                                                       expected: str | None) -> None:
    device = tmp_path / "part.img"
    with device.open("wb") as f:
        f.truncate(8 << 20)
    if make:
        subprocess.run([*make, str(device)], check=True, capture_output=True)
    got = label(device)
    if expected is None:
        assert got != "BASALT_STATE" and "BASALT" not in got
    else:
        assert got == expected


def test_a_device_too_short_or_missing_has_no_label(tmp_path: Path) -> None:
    short = tmp_path / "short.img"
    short.write_bytes(b"BASALT_STATE" * 90)  # 1080 bytes: ends before the label's offset
    assert label(short) == ""
    assert label(tmp_path / "missing") == ""
