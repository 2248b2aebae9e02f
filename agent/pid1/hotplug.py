"""Devices that appear after boot, from the kernel's uevents (what udev listens to): a USB NIC
that enumerates seconds after its controller's driver loaded (the Raspberry Pi 3's Ethernet is
one), a USB Wi-Fi stick or disk plugged in later. PID 1 reads them in its main loop, loads a
driver for each new device's modalias, and brings a new network interface up.

Standard library only, and on the boot path, so C modules only (``_socket``, not ``socket``,
which pulls in ``enum`` and ``selectors``; no ``dataclasses``); the socket is non-blocking and
each read takes what is queued."""

from __future__ import annotations

import _socket

NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1  # the kernel's own broadcasts (udev re-broadcasts on group 2; there is no udev here)


def open_socket() -> _socket.socket | None:
    """A socket subscribed to the kernel's uevents, or None where there is none (a container)."""
    try:
        sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_DGRAM | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC,
                              NETLINK_KOBJECT_UEVENT)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 1 << 20)  # a burst of USB devices
        sock.bind((0, KERNEL_GROUP))
    except OSError:
        return None
    return sock


def parse(datagram: bytes) -> dict[str, str]:
    """One kernel uevent: ``ACTION@DEVPATH`` then NUL-separated ``KEY=value`` lines."""
    if datagram.startswith(b"libudev"):  # udev's binary format: never from the kernel's group
        return {}
    head, _, rest = datagram.partition(b"\0")
    if b"@" not in head:
        return {}
    event: dict[str, str] = {}
    for item in rest.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            event[key.decode(errors="replace")] = value.decode(errors="replace")
    return event


class Wanted:
    __slots__ = ("aliases", "interfaces")

    def __init__(self, aliases: list[str] | None = None, interfaces: list[str] | None = None) -> None:
        self.aliases: list[str] = aliases or []  # drivers to load, by modalias
        self.interfaces: list[str] = interfaces or []  # network interfaces that appeared

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Wanted) and (self.aliases, self.interfaces) == (other.aliases, other.interfaces)

    def __repr__(self) -> str:
        return f"Wanted(aliases={self.aliases!r}, interfaces={self.interfaces!r})"

    def __bool__(self) -> bool:
        return bool(self.aliases or self.interfaces)


def wanted(events: list[dict[str, str]]) -> Wanted:
    out = Wanted()
    for e in events:
        if e.get("ACTION") != "add":
            continue
        if e.get("MODALIAS") and e["MODALIAS"] not in out.aliases:
            out.aliases.append(e["MODALIAS"])
        if e.get("SUBSYSTEM") == "net" and e.get("INTERFACE") and e["INTERFACE"] != "lo":
            out.interfaces.append(e["INTERFACE"])
    return out


def drain(sock: _socket.socket) -> list[dict[str, str]]:
    """Every uevent queued on ``sock`` (it is non-blocking)."""
    events: list[dict[str, str]] = []
    while True:
        try:
            datagram = sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return events
        except OSError:  # ENOBUFS: events were lost; the caller's coldplug pass catches up
            events.append({"ACTION": "add", "LOST": "1"})
            return events
        event = parse(datagram)
        if event:
            events.append(event)
