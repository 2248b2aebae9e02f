"""The hardware watchdog (``/dev/watchdog0``: i6300esb in QEMU x86, bcm2835-wdt on a Pi, any
other driver the coldplug loads): the board resets itself when nobody feeds it for ``TIMEOUT_S``.

PID 1 opens it after the coldplug and feeds it from a thread of its own every ``FEED_S``, so a
kernel that hangs (the thread stops being scheduled) resets the board. The main loop beats a
heartbeat each turn; the thread stops feeding when that beat is older than the limit in force:

- on a trial boot, the health timeout plus ``GRACE_S``: the main loop must be alive to act on the
  health gate's verdict, and a trial that hangs must come back to the committed slot (the reset
  is the boot that GRUB has already counted);
- once a halt, power-off or reboot has started, ``TIMEOUT_S``: a shutdown that hangs resets;
- otherwise none: a long synchronous config step on a committed boot is not a hang.

The device is never closed (closing it without the magic character leaves it running and
unfed anyway): the watchdog stays armed across the reboot(2) call.
"""

from __future__ import annotations

import os
import time

DEVICE = "/dev/watchdog0"
SYSFS = "/sys/class/watchdog/watchdog0"
# Drivers armed only when the config asks (basalt.watchdog: true): QEMU 7.2's raspi3b models the
# Pi's watchdog as the immediate reset Linux reboots with, so arming it there resets the board at
# once, and its countdown could not be tested here.
UNTESTED = ("Broadcom BCM2835",)  # bcm2835-wdt's identity
TIMEOUT_S = 60
FEED_S = 10.0
GRACE_S = 60.0
# Drivers whose timer resets the board on its second expiry, not its first: an Intel chipset's TCO
# timer (version 2 and later; Linux's iTCO_wdt halves the count only for version 1). Measured under
# QEMU's ICH9 with a 60 s timeout: the reset came 111-127 s after the last feed (docs/upgrades.md).
SECOND_EXPIRY = ("iTCO_wdt",)
WDIOC_SETTIMEOUT = 0xC0045706  # _IOWR('W', 6, int)
WDIOC_GETTIMEOUT = 0x80045707  # _IOR('W', 7, int)


class Watchdog:
    """An open watchdog device and its feeding thread's rules (see the module's docstring)."""

    def __init__(self, fd: int, timeout_s: int, stall_limit_s: float | None, name: str = ""):
        self.fd, self.timeout_s, self.stall_limit_s = fd, timeout_s, stall_limit_s
        # the most time from the last feed to the reset
        self.reset_s = timeout_s * 2 if name in SECOND_EXPIRY else timeout_s
        self.heartbeat = time.monotonic()
        self.starved = False  # the thread has stopped feeding (logged once)

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def shutting_down(self) -> None:
        """From now the shutdown has ``timeout_s`` after the last beat to end in reboot(2)."""
        self.stall_limit_s = min(self.stall_limit_s or self.timeout_s, self.timeout_s)

    def should_feed(self, now: float) -> bool:
        return self.stall_limit_s is None or now - self.heartbeat <= self.stall_limit_s

    def feed_once(self, now: float) -> bool:
        if not self.should_feed(now):
            if not self.starved:
                from agent.log import log
                log(f"watchdog: the main loop has not turned for {now - self.heartbeat:.0f}s (limit "
                    f"{self.stall_limit_s:.0f}s): no longer feeding the watchdog; the board resets within "
                    f"{self.reset_s}s")
                self.starved = True
            return False
        os.write(self.fd, b"\0")
        return True

    def run(self) -> None:
        interval = max(1.0, min(FEED_S, self.timeout_s / 3))
        while True:
            time.sleep(interval)
            try:
                self.feed_once(time.monotonic())
            except OSError:
                pass


def set_timeout(fd: int, seconds: int) -> int:
    """The driver's timeout set to ``seconds`` where it can; the timeout in force."""
    import fcntl
    import struct
    try:
        fcntl.ioctl(fd, WDIOC_SETTIMEOUT, struct.pack("i", seconds))
    except OSError:
        pass
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, WDIOC_GETTIMEOUT, struct.pack("i", 0)))[0])
    except OSError:
        return seconds


def identity(sysfs: str = SYSFS) -> str:
    """The driver's name for its watchdog ("i6300ESB timer"); empty where there is none."""
    try:
        with open(sysfs + "/identity") as f:
            return f.read().strip()
    except OSError:
        return ""


def wanted(setting: object, name: str) -> bool:
    """``basalt.watchdog``: true arms any watchdog, false none, unset every driver but the untested."""
    return setting is True or (setting is None and not name.startswith(UNTESTED))


def start(stall_limit_s: float | None, device: str = DEVICE, timeout_s: int = TIMEOUT_S,
          name: str = "") -> Watchdog | None:
    """The watchdog (its driver's identity: ``name``) opened, armed and fed by a thread; None where
    the board has none."""
    if not os.path.exists(device):
        return None
    import _thread
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    dog = Watchdog(fd, set_timeout(fd, timeout_s), stall_limit_s, name)
    # Feeding more often than the timeout allows (a driver that caps it lower) is always safe.
    os.write(fd, b"\0")
    _thread.start_new_thread(dog.run, ())
    return dog
