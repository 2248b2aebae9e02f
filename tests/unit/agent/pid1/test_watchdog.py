"""agent/pid1/watchdog.py: when PID 1 feeds the hardware watchdog and when it lets it reset the board.
The device is a file here (the boundary: a real watchdog would reset this machine); the QEMU x86
tests arm a real i6300esb."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.pid1 import watchdog


def fed(path: Path) -> int:
    return path.stat().st_size


def test_a_committed_boot_is_fed_whatever_the_main_loop_does(tmp_path: Path) -> None:
    device = tmp_path / "watchdog0"
    device.write_bytes(b"")
    dog = watchdog.Watchdog(os.open(device, os.O_WRONLY), 60, None)
    assert dog.feed_once(dog.heartbeat + 10_000) and fed(device) == 1


def test_a_trial_boot_whose_loop_stops_starves_it_once_past_its_limit(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    monkeypatch.setattr("agent.log.log", said.append)
    device = tmp_path / "watchdog0"
    device.write_bytes(b"")
    dog = watchdog.Watchdog(os.open(device, os.O_WRONLY), 60, 360.0)
    start = dog.heartbeat
    assert dog.feed_once(start + 359)
    assert not dog.feed_once(start + 361) and not dog.feed_once(start + 400)
    assert fed(device) == 1
    assert len(said) == 1 and "not turned for 361s (limit 360s): no longer feeding the watchdog" in said[0], said
    dog.beat()
    assert dog.feed_once(dog.heartbeat + 1) and fed(device) == 2


@pytest.mark.parametrize("name, reset_s", [("i6300ESB timer", 60), ("", 60), ("iTCO_wdt", 120),
                                           ("iTCO_wdt2", 60)])
def test_the_reset_is_promised_within_the_time_the_timer_takes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               name: str, reset_s: int) -> None:
    """An Intel chipset's TCO timer resets on its second expiry (measured in QEMU: 111-127 s after
    the last feed at 60 s), so the line a starved trial leaves says twice the timeout."""
    said: list[str] = []
    monkeypatch.setattr("agent.log.log", said.append)
    device = tmp_path / "watchdog0"
    device.write_bytes(b"")
    monkeypatch.setattr(watchdog.Watchdog, "run", lambda self: None)
    dog = watchdog.start(360.0, str(device), name=name)
    assert dog is not None and dog.timeout_s == 60 and dog.reset_s == reset_s
    assert not dog.feed_once(dog.heartbeat + 361)
    assert said == [f"watchdog: the main loop has not turned for 361s (limit 360s): no longer feeding the "
                    f"watchdog; the board resets within {reset_s}s"]


def test_a_shutdown_gets_the_timeout_after_the_last_beat(tmp_path: Path) -> None:
    device = tmp_path / "watchdog0"
    device.write_bytes(b"")
    for limit in (None, 360.0, 20.0):
        dog = watchdog.Watchdog(os.open(device, os.O_WRONLY), 60, limit)
        dog.shutting_down()
        assert dog.stall_limit_s == (20.0 if limit == 20.0 else 60)
        assert not dog.should_feed(dog.heartbeat + 61)


def test_no_device_no_watchdog_and_a_file_is_fed_at_once(tmp_path: Path) -> None:
    assert watchdog.start(None, str(tmp_path / "absent")) is None
    device = tmp_path / "watchdog0"
    device.write_bytes(b"")
    dog = watchdog.start(None, str(device), timeout_s=45)
    assert dog is not None and dog.timeout_s == 45  # the ioctls fail on a file: the asked timeout
    assert fed(device) >= 1


def test_which_drivers_are_armed(tmp_path: Path) -> None:
    pi = "Broadcom BCM2835 Watchdog timer"
    assert watchdog.wanted(None, "i6300ESB timer") and watchdog.wanted(None, "")
    assert not watchdog.wanted(None, pi) and watchdog.wanted(True, pi)
    assert not watchdog.wanted(False, "i6300ESB timer")
    sysfs = tmp_path / "watchdog0"
    assert watchdog.identity(str(sysfs)) == ""
    sysfs.mkdir()
    (sysfs / "identity").write_text(pi + "\n")
    assert watchdog.identity(str(sysfs)) == pi


class Board:
    """A board's watchdog as PID 1 sees it: its sysfs identity and its device, files here."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sysfs, self.device = tmp_path / "sys-watchdog0", tmp_path / "watchdog0"
        real_identity, real_start = watchdog.identity, watchdog.start
        monkeypatch.setattr(watchdog, "identity", lambda: real_identity(str(self.sysfs)))
        self.started: list[float | None] = []

        def start(limit: float | None, name: str = "") -> watchdog.Watchdog | None:
            self.started.append(limit)
            return real_start(limit, str(self.device), name=name)
        monkeypatch.setattr(watchdog, "start", start)
        monkeypatch.setattr(watchdog.Watchdog, "run", lambda self: None)  # no feeding thread in a test

    def appears(self, identity: str) -> None:
        self.sysfs.mkdir()
        (self.sysfs / "identity").write_text(identity + "\n")
        self.device.write_bytes(b"")


class Coldplug:
    """The coldplug's watchdog_drivers (agent/pid1/devices.py, tested in test_modalias.py): the
    driver it loads makes ``makes`` appear on ``board``, or nothing (None)."""

    def __init__(self, board: Board, makes: str | None) -> None:
        self.board, self.makes, self.calls = board, makes, 0

    def watchdog_drivers(self, found: object) -> None:
        self.calls += 1
        if self.makes:
            self.board.appears(self.makes)


def init_with(config: dict[str, object], args: dict[str, str], coldplug: Coldplug | None = None) -> object:
    """PID 1's boot object with only what arm_watchdog reads (the rest of __init__ reads the node)."""
    from agent.log import Errors
    from agent.pid1.init import Init
    init = Init.__new__(Init)
    init.watchdog, init.watchdog_seen, init.args, init.errors = None, None, args, Errors()
    init.prov = type("Prov", (), {"config": config})()
    init.coldplug = coldplug
    return init


@pytest.mark.parametrize("config, present, makes, calls, said", [
    ({}, None, "iTCO_wdt", 1, ["watchdog (iTCO_wdt) armed: 60s, resets within 120s of the last feed (second expiry), "
     "trial boot: the main loop must turn within 360s"]),
    ({"basalt": {"watchdog": True}}, None, "iTCO_wdt", 1,
     ["watchdog (iTCO_wdt) armed: 60s, resets within 120s of the last feed (second expiry), "
     "trial boot: the main loop must turn within 360s"]),
    ({"basalt": {"watchdog": False}}, None, "iTCO_wdt", 0, []),  # none wanted: no driver loaded for one
    ({}, "i6300ESB timer", "iTCO_wdt", 0,  # the boot's coldplug found one: nothing more
     ["watchdog (i6300ESB timer) armed: 60s, trial boot: the main loop must turn within 360s"]),
    ({}, None, None, 1, []),  # a board with none: looked for once
])
def test_before_ready_a_watchdog_another_driver_makes_is_looked_for_and_armed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, object], present: str | None,
        makes: str | None, calls: int, said: list[str]) -> None:
    """The boot's watchdog phase: where the boot's coldplug made no watchdog and the config does
    not refuse one, the coldplug looks for a watchdog another driver makes (an Intel board's TCO
    timer), and one found is armed before the ready line, with the trial's limit."""
    logged: list[str] = []
    monkeypatch.setattr("agent.pid1.init.log", logged.append)
    board = Board(tmp_path, monkeypatch)
    if present:
        board.appears(present)
    plug = Coldplug(board, makes)
    init = init_with(config, {"basalt.trial": "1"}, plug)
    init.arm_watchdog(True)
    assert plug.calls == calls and logged == said
    assert (init.watchdog is not None) == bool(said)
    assert (fed(board.device) if board.device.exists() else 0) == int(bool(said))
    init.arm_watchdog()  # after the late coldplug: nothing new
    assert plug.calls == calls and logged == said


@pytest.mark.parametrize("config, armed", [({}, True), ({"basalt": {"watchdog": False}}, False)])
def test_a_watchdog_whose_driver_comes_after_ready_is_armed_then_and_decided_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, object], armed: bool) -> None:
    """A watchdog whose driver comes only after ready (its device made by a late driver that is no
    WATCHDOG_MAKERS, or hotplugged): PID 1 arms it then, with the trial boot's limit; each device
    is decided on once."""
    said: list[str] = []
    monkeypatch.setattr("agent.pid1.init.log", said.append)
    board = Board(tmp_path, monkeypatch)
    init = init_with(config, {"basalt.trial": "1"}, Coldplug(board, None))
    init.arm_watchdog(True)  # the boot's watchdog phase: no device yet, and none another driver makes
    assert init.watchdog is None and said == []
    before = list(board.started)  # asked to start where nothing is (config allowing): no watchdog
    board.appears("iTCO_wdt")
    init.arm_watchdog()  # after the late coldplug
    init.arm_watchdog()  # a hotplug later: nothing more
    if armed:
        assert init.watchdog is not None and board.started[len(before):] == [300.0 + watchdog.GRACE_S]
        assert fed(board.device) == 1
        assert said == ["watchdog (iTCO_wdt) armed: 60s, resets within 120s of the last feed (second expiry), "
     "trial boot: the main loop must turn within 360s"], said
    else:
        assert init.watchdog is None and board.started == before and fed(board.device) == 0
        assert said == ["watchdog (iTCO_wdt) left unarmed (basalt.watchdog: true arms it; docs/upgrades.md)"], said


def test_an_armed_watchdog_is_kept_when_a_second_one_appears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU's q35: the i6300esb armed before ready; the chipset's iTCO_wdt (watchdog1) after it changes nothing."""
    said: list[str] = []
    monkeypatch.setattr("agent.pid1.init.log", said.append)
    board = Board(tmp_path, monkeypatch)
    board.appears("i6300ESB timer")
    init = init_with({}, {})
    init.arm_watchdog(True)
    first = init.watchdog
    assert first is not None and said == ["watchdog (i6300ESB timer) armed: 60s"]
    (board.sysfs / "identity").write_text("iTCO_wdt\n")  # whatever watchdog0 says now
    init.arm_watchdog()
    assert init.watchdog is first and len(said) == 1 and len(board.started) == 1
