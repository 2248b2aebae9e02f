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
