"""Agent units that need no VM: kernel arguments, consoles, device aliases, supervision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import cli, system
from agent.config import bootargs
from agent.pid1 import devices, supervise


@pytest.mark.parametrize(("text", "expected"), [
    ("quiet console=tty0 console=ttyS0,115200 basalt.mode=live basalt.rescue",
     {"quiet": "", "console": "tty0 ttyS0,115200", "basalt.mode": "live", "basalt.rescue": ""}),
    ("a=1 a=2", {"a": "1"}),
    ("", {}),
])
def test_parse_cmdline(text: str, expected: dict[str, str]) -> None:
    assert bootargs.parse(text) == expected


@pytest.mark.parametrize(("console", "ttys"), [
    ("tty0 ttyS0,115200", ["/dev/tty1", "/dev/ttyS0"]),
    ("ttyS0,115200 ttyS0", ["/dev/ttyS0"]),
    ("", ["/dev/console"]),
])
def test_consoles(console: str, ttys: list[str]) -> None:
    assert devices.consoles({"console": console} if console else {}) == ttys


def test_device_aliases_reads_every_bus(tmp_path: Path) -> None:
    present = [("pci", "0000:00:01.0", "pci:v00008086d00007010sv*"), ("acpi", "LNXPWRBN:00", "acpi:LNXPWRBN:"),
               ("pci", "0000:00:02.0", "pci:v00008086d00007010sv*"), ("platform", "serial8250", "")]
    for bus, dev, alias in present:
        d = tmp_path / "bus" / bus / "devices" / dev
        d.mkdir(parents=True)
        (d / "modalias").write_text(alias + "\n")
    assert devices.device_aliases(str(tmp_path)) == ["acpi:LNXPWRBN:", "pci:v00008086d00007010sv*"]


def test_service_backoff_grows_and_caps() -> None:
    svc = supervise.Service("x", ["/bin/true"])
    delays = []
    for failures in range(9):
        svc.failures = failures
        delays.append(svc.backoff())
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0] and max(delays) == 30.0


def test_supervisor_restarts_a_crashing_service_and_reaps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real fork/exec/reap path, run in this (non-PID-1) process."""
    monkeypatch.setattr(supervise, "log", lambda message: None)
    it = supervise.Supervisor(log_dir=str(tmp_path))
    it.add(supervise.Service("crasher", ["/bin/sh", "-c", "echo hello-from-service; exit 3"]))
    deadline = time.monotonic() + 10
    while it.services["crasher"].failures < 2 and time.monotonic() < deadline:
        it.reap()
        svc = it.services["crasher"]
        if svc.restart_at is not None and svc.restart_at <= time.monotonic():
            it.launch(svc)
        time.sleep(0.05)
    svc = it.services["crasher"]
    assert svc.failures >= 2
    assert (tmp_path / "crasher.log").read_text().count("hello-from-service\n") >= 2  # its output, in its log
    assert svc.restart_at is not None or svc.pid is not None
    with pytest.raises(ChildProcessError):  # nothing left unreaped (bar the running one)
        if svc.pid:
            os.waitpid(svc.pid, 0)
        os.waitpid(-1, os.WNOHANG)


def test_mem_used_matches_meminfo() -> None:
    info = system.meminfo()
    assert 0 < system.mem_used_kb() <= info["MemTotal"]


def test_init_refuses_to_run_as_ordinary_process() -> None:
    proc = subprocess.run([sys.executable, "-c", "from agent.pid1.init import main; raise SystemExit(main())"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[4])
    assert proc.returncode == 2 and "must run as PID 1" in proc.stderr


def test_status_reads_the_agents_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    status = {"version": "1.0", "mode": "live", "hostname": "edge", "ready_ms": 5000, "phases": {}, "errors": ["x: y"],
              "services": {"console-ttyS0": {"state": "running", "pid": 9, "failures": 0}}}
    (tmp_path / "status.json").write_text(json.dumps(status))
    monkeypatch.setattr(cli, "STATUS", tmp_path / "status.json")
    assert cli.main(["status", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["hostname"] == "edge" and shown["errors"] == ["x: y"] and shown["mem_used_kb"] > 0
    assert cli.main(["status"]) == 0
    text = capsys.readouterr().out
    assert "Basalt 1.0 (live mode) on edge" in text and "error: x: y" in text


@pytest.mark.parametrize("argv", sorted(cli.PLAIN))
def test_plain_spellings_are_what_the_parser_makes_of_them(argv: tuple[str, ...]) -> None:
    assert vars(cli.parse(list(argv))) == {"debug": False, **cli.PLAIN[argv]}


@pytest.mark.parametrize(("argv", "imported"), [
    (["version"], set()),
    (["status", "--json"], set()),
    (["--debug", "status", "--json"], {"argparse", "re"}),  # any other spelling goes through the parser
    (["app", "--dry-run", "ps"], {"argparse", "re", "json", "subprocess", "agent.apps.cli"}),
    (["--debug", "app", "--dry-run", "ps"], {"argparse", "re", "json", "subprocess", "agent.apps.cli"}),
])
def test_what_a_command_imports(argv: list[str], imported: set[str], tmp_path: Path) -> None:
    """``basalt status`` and ``version`` (what scripts and monitors run) import neither argparse nor
    the apps CLI (HTTP and Kubernetes: 1.6 s of a node's first ``basalt status`` under emulation),
    nor json, re or subprocess (0.5 s more); ``app`` gets its arguments when it is the command,
    wherever it stands."""
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"version": "1"}))
    code = ("import sys; from agent import cli; cli.STATUS = sys.argv[1]; code = cli.main(sys.argv[2:]); "
            "print(sorted(m for m in ('argparse', 're', 'json', 'subprocess', 'agent.apps.cli') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(status), *argv], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[4], timeout=60)
    assert proc.stdout.splitlines()[-1] == repr(sorted(imported)), proc.stderr


def test_status_without_agent_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "STATUS", tmp_path / "missing.json")
    assert cli.main(["status"]) == 1
    assert capsys.readouterr().err == ("no status yet: the agent is not running as PID 1\n"
                                       "hint: basalt status works on a booted Basalt node\n")


def test_hosts_file_names_the_host() -> None:
    assert system.hosts_text("edge-1").splitlines() == [
        "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", "127.0.1.1\tedge-1"]


@pytest.mark.parametrize(("argv", "expected"), [
    (["echo", "hi"], "hi\n"),
    (["sh", "-c", "echo out; echo err >&2"], "out\n"),  # stderr is discarded
    (["cat"], ""),  # no input: /dev/null, never the caller's
    (["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x"], "x" * 300000),  # more than a pipe holds
    (["sh", "-c", "echo partial; exit 3"], None),  # a failure is None, not half an answer
    (["/nonexistent/program"], None),
    (["no-such-program-anywhere"], None),
    (["sleep", "30"], None),  # past the timeout: killed
    (["sh", "-c", "echo x; exec >&-; sleep 30"], None),  # its output closed, still running: killed
    (["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"], None),  # more than its limit (2 MB here)
    (["sh", "-c", "yes"], None),  # output without end: killed at the limit, not at the timeout
], ids=["echo", "stderr", "no-input", "large", "fails", "no-file", "not-on-path", "timeout", "closed-early",
        "over-limit", "endless"])
def test_output_of_a_program_without_subprocess(argv: list[str], expected: str | None, tmp_path: Path) -> None:
    started = time.monotonic()
    assert system.output(argv, timeout=0.5 if argv[-1] != "yes" else 30, limit=2_000_000) == expected
    assert time.monotonic() - started < 5


def test_a_program_past_its_timeout_is_gone(tmp_path: Path) -> None:
    marker = tmp_path / "still-running"
    assert system.output(["sh", "-c", f"sleep 1; touch {marker}"], timeout=0.2) is None
    time.sleep(1.5)
    assert not marker.exists()
