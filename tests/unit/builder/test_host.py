"""builder/host.py's run: the one way the builder runs a tool, and what a failure looks like."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.errors import BasaltError
from builder import host

pytestmark = pytest.mark.unit


def test_a_tool_that_works_gives_its_output() -> None:
    assert host.run(["printf", "a b"]).stdout == b"a b"
    assert host.run([sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read()[::-1])"],
                    input=b"abc").stdout == b"cba"


@pytest.mark.parametrize(("argv", "what", "hint", "said"), [
    (["sh", "-c", "echo one >&2; echo two >&2; exit 3"], "mksquashfs", "free space?",
     "mksquashfs failed (exit 3):\n  one\n  two\nhint: free space?"),
    (["sh", "-c", "echo only line >&2; exit 1"], None, None,
     "sh failed (exit 1): only line\nhint: the command was: sh -c 'echo only line >&2; exit 1'"),
    (["sh", "-c", "exit 9"], "qemu-img convert", None,
     "qemu-img convert failed (exit 9)\nhint: the command was: sh -c 'exit 9'"),
    (["sh", "-c", "for i in $(seq 20); do echo line$i >&2; done; exit 1"], "x", "h",
     "x failed (exit 1):\n  " + "\n  ".join(f"line{i}" for i in range(13, 21)) + "\nhint: h"),
    (["/nonexistent/qemu-img", "info"], None, None,
     "qemu-img: /nonexistent/qemu-img not found\nhint: apt-get install qemu-utils (./inv installs every tool the build "
     "needs)"),
])
def test_a_failure_is_one_error_with_the_tools_last_words_and_a_hint(argv: list[str], what: str | None,
                                                                       hint: str | None, said: str) -> None:
    with pytest.raises(BasaltError) as err:
        host.run(argv, what, hint)
    assert err.value.render() == said


def test_with_a_log_the_output_goes_there_and_its_tail_into_the_error(tmp_path: Path) -> None:
    log = tmp_path / "tool.log"
    with pytest.raises(BasaltError, match=r"mmdebstrap failed \(exit 2\):\n  out\n  err"):
        host.run(["sh", "-c", "echo out; echo err >&2; exit 2"], "mmdebstrap", log=log)
    assert log.read_text() == "out\nerr\n"
