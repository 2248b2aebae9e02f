"""PID 1's side of ``basalt config apply [--try S]`` (agent/pid1/control.py): hostile requests are
refused with an answer or ignored, never crash the handler or leave a trial whose deadline cannot
come. The provisioner is a stand-in that records what it was asked (the real one reconfigures a
running node: tests/boot/test_provision.py drives it end to end)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.pid1 import control

ROOT = Path(__file__).resolve().parents[4]


class Prov:
    def __init__(self) -> None:
        self.trying: object = None
        self.config: dict[str, Any] = {}
        self.merged: object = None
        self.config_sources: list[str] = []
        self.config_fallback: str | None = None
        self.reconfigured = 0

    def reconfigure(self) -> list[str]:
        self.reconfigured += 1
        return []


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(control, "REQUEST", str(tmp_path / "request.json"))
    monkeypatch.setattr(control, "RESULT", str(tmp_path / "result-{}.json"))
    from agent.config import sources
    monkeypatch.setattr(sources, "REJECTED", str(tmp_path / "rejected.json"))
    return tmp_path


# (the request file's bytes, the answer in result-7.json or None for none at all)
REQUESTS: list[tuple[bytes, Any]] = [
    (b'{"command": "apply", "id": 7, "try": NaN}', ["--try takes 1 to 86400 seconds, not nan"]),
    (b'{"command": "apply", "id": 7, "try": Infinity}', ["--try takes 1 to 86400 seconds, not inf"]),
    (b'{"command": "apply", "id": 7, "try": -5}', ["--try takes 1 to 86400 seconds, not -5"]),
    (b'{"command": "apply", "id": 7, "try": 0}', ["--try takes 1 to 86400 seconds, not 0"]),
    (b'{"command": "apply", "id": 7, "try": 1e300}', ["--try takes 1 to 86400 seconds, not 1e+300"]),
    (b'{"command": "apply", "id": 7, "try": "soon"}', ["--try takes seconds, not 'soon'"]),
    (b'{"command": "apply", "id": 7, "try": true}', ["--try takes seconds, not True"]),
    (b'{"command": "apply", "id": 7, "try": [30]}', ["--try takes seconds, not [30]"]),
    (b'{"command": "reboot", "id": 7}', ["unknown request 'reboot'"]),
    (b'{"command": "apply", "id": "7"}', None),
    (b'{"command": "apply", "id": -1}', None),
    (b'{"command": "apply", "id": 1e99}', None),
    (b'{"command": "apply"}', None),
    (b"[" * 100_000 + b"]" * 100_000, None),  # nesting past Python's recursion limit
    (b'{"command": "apply", "id": 7, "pad": "' + b"x" * (128 << 10) + b'"}', None),  # over 64 KiB
    (b"\xff\xfe not json", None),
    (b'"just a string"', None),
]


@pytest.mark.parametrize(("raw", "errors"), REQUESTS, ids=range(len(REQUESTS)))
def test_a_hostile_request_gets_a_refusal_or_nothing(paths: Path, raw: bytes, errors: Any) -> None:
    (paths / "request.json").write_bytes(raw)
    prov = Prov()
    control.handle_request(prov)  # type: ignore[arg-type]
    assert not (paths / "request.json").exists()
    assert prov.trying is None and prov.reconfigured == 0 and control.deadline(prov) is None  # type: ignore[arg-type]
    results = sorted(p.name for p in paths.glob("result-*.json"))
    if errors is None:
        assert results == []
    else:
        assert results == ["result-7.json"]
        answer = json.loads((paths / "result-7.json").read_text())
        assert answer["ok"] is False and answer["errors"] == errors


def test_a_good_trial_has_a_finite_deadline(paths: Path) -> None:
    (paths / "request.json").write_text('{"command": "apply", "id": 7, "try": 30}')
    prov = Prov()
    control.handle_request(prov)  # type: ignore[arg-type]
    assert json.loads((paths / "result-7.json").read_text())["applied"] is True
    deadline = control.deadline(prov)  # type: ignore[arg-type]
    assert deadline is not None and math.isfinite(deadline) and prov.reconfigured == 1


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "0", "1e6", "soon", ""])
def test_the_cli_refuses_a_bad_try_with_argparses_message(value: str) -> None:
    proc = subprocess.run([sys.executable, "-c", "import sys; from agent import cli; sys.exit(cli.main(sys.argv[1:]))",
                           "config", "apply", "--try", value], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "argument --try: --try takes" in proc.stderr, proc.stderr
