"""Devices that appear after boot, from the kernel's uevents (what udev listens to): a USB NIC
that enumerates seconds after its controller's driver loaded (the Raspberry Pi 3's Ethernet is
one), a USB Wi-Fi stick or disk plugged in later. PID 1 reads them in its main loop, loads a
driver for each new device's modalias, and brings a new network interface up.

Standard library only; the socket is non-blocking and each read takes what is queued."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1  # the kernel's own broadcasts (udev re-broadcasts on group 2; there is no udev here)


def open_socket() -> socket.socket | None:
    """A socket subscribed to the kernel's uevents, or None where there is none (a container)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             NETLINK_KOBJECT_UEVENT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # a burst of USB devices
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


@dataclass
class Wanted:
    aliases: list[str] = field(default_factory=list)  # drivers to load, by modalias
    interfaces: list[str] = field(default_factory=list)  # network interfaces that appeared

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


def drain(sock: socket.socket) -> list[dict[str, str]]:
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
