"""Nested, timed step titles, progress bars, and a JSON-lines mode for CI.

``with step("Building squashfs"):`` prints the title, indents what happens
inside, and prints the elapsed time when it ends. With ``BASALT_JSON=1`` (or
``--json``) every event is one JSON object per line on stderr instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

_depth = 0
_stream: TextIO = sys.stderr


def json_mode() -> bool:
    return os.environ.get("BASALT_JSON", "") not in ("", "0")


def _emit(event: str, **fields: Any) -> None:
    if json_mode():
        print(json.dumps({"event": event, "time": round(time.time(), 3), **fields}), file=_stream, flush=True)


def log(message: str) -> None:
    if json_mode():
        _emit("log", message=message)
    else:
        print(f"{'  ' * _depth}{message}", file=_stream, flush=True)


def warn(message: str) -> None:
    if json_mode():
        _emit("warning", message=message)
    else:
        print(f"{'  ' * _depth}warning: {message}", file=_stream, flush=True)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    global _depth
    started = time.monotonic()
    if json_mode():
        _emit("step-start", title=title, depth=_depth)
    else:
        print(f"{'  ' * _depth}‣ {title}", file=_stream, flush=True)
    _depth += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        _depth -= 1
        elapsed = time.monotonic() - started
        if json_mode():
            _emit("step-end", title=title, seconds=round(elapsed, 3), ok=ok)
        elif elapsed >= 0.5 or not ok:
            status = "done" if ok else "failed"
            print(f"{'  ' * _depth}  {status} in {elapsed:.1f}s", file=_stream, flush=True)


class Bar:
    """A byte-count progress bar; redraws at most ten times a second."""

    def __init__(self, label: str, total: int | None):
        self.label, self.total, self.done = label, total, 0
        self._last = 0.0
        self._tty = _stream.isatty() and not json_mode()
        self._started = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= 0.1 or (self.total and self.done >= self.total):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        if json_mode():
            _emit("progress", label=self.label, done=self.done, total=self.total)
            return
        if not self._tty:
            return
        mib = self.done / 1048576
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            text = f"[{bar:<30}] {frac * 100:5.1f}% {mib:7.1f}/{self.total / 1048576:.1f} MiB"
        else:
            text = f"{mib:7.1f} MiB"
        print(f"\r{'  ' * _depth}{self.label[:40]:<40} {text}", end="", file=_stream, flush=True)

    def close(self) -> None:
        self._draw()
        if self._tty:
            print(file=_stream, flush=True)
        elif not json_mode() and self.done >= 4 * 1048576:
            secs = time.monotonic() - self._started
            log(f"{self.label}: {self.done / 1048576:.1f} MiB in {secs:.1f}s")
