"""The console lines the tests and the bench wait for match only once they are whole.

The serial console is read while the guest writes it; CI once read ``... mem_used_kb=40928 error``
(the rest of the line not yet there) and failed a healthy boot."""

from __future__ import annotations

import re

import pytest

from builder.bench import floor
from builder.vm.qemu import IDLE, READY

WHOLE = "basalt: ready version=0.1.0 boot_ms=5554 mem_used_kb=40928 errors=12\r\n"
IDLE_LINE = "basalt: idle mem_used_kb=41000 rss_kb=9412\r\n"
FLOOR_LINE = "floor: uptime=2.35 mem_used_kb=27123\r\n"


def test_a_whole_ready_line_gives_every_figure() -> None:
    m = READY.search("[    5.1] some kernel line\r\n" + WHOLE + "basalt: idle ...")
    assert m is not None
    assert m.groups() == ("0.1.0", "5554", "40928", "12")


@pytest.mark.parametrize("pattern, line", [(READY, WHOLE), (IDLE, IDLE_LINE), (floor.LINE, FLOOR_LINE)])
def test_no_prefix_of_a_line_matches(pattern: re.Pattern[str] | str, line: str) -> None:
    regex = re.compile(pattern)
    whole = regex.search(line)
    assert whole is not None
    end = whole.end()
    for cut in range(len(line.rstrip("\r\n"))):
        assert regex.search(line[:cut]) is None, line[:cut]
    assert regex.search(line[:end + 1]) is not None  # one character past the last number is enough


def test_idle_figures() -> None:
    m = IDLE.search(IDLE_LINE)
    assert m is not None and m.groups() == ("41000", "9412")
