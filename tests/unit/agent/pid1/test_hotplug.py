"""agent/pid1/hotplug.py: the kernel's uevents as PID 1 reads them (parsed from the kernel's wire
format), what they ask for, and a real netlink uevent socket on this host."""

from __future__ import annotations

import socket

from agent.pid1 import hotplug

USB_NIC = (b"add@/devices/platform/soc/3f980000.usb/usb1/1-1/1-1.1/1-1.1:1.0\0ACTION=add\0"
           b"DEVPATH=/devices/platform/soc/3f980000.usb/usb1/1-1/1-1.1/1-1.1:1.0\0SUBSYSTEM=usb\0"
           b"DEVTYPE=usb_interface\0MODALIAS=usb:v0525pA4A2d0000dc02dsc00dp00ic02isc06ip00in00\0SEQNUM=1742\0")
NET = b"add@/devices/.../net/usb0\0ACTION=add\0SUBSYSTEM=net\0INTERFACE=usb0\0IFINDEX=3\0SEQNUM=1750\0"


def test_a_kernel_uevent_is_parsed() -> None:
    event = hotplug.parse(USB_NIC)
    assert event["ACTION"] == "add" and event["SUBSYSTEM"] == "usb"
    assert event["MODALIAS"] == "usb:v0525pA4A2d0000dc02dsc00dp00ic02isc06ip00in00"
    assert hotplug.parse(b"libudev\0\xfe\xed\xca\xfe...") == {}  # udev's format is not the kernel's
    assert hotplug.parse(b"garbage") == {}


def test_what_the_events_ask_for() -> None:
    remove = hotplug.parse(USB_NIC.replace(b"add", b"remove"))
    lo = hotplug.parse(NET.replace(b"usb0", b"lo"))
    wanted = hotplug.wanted([hotplug.parse(USB_NIC), hotplug.parse(USB_NIC), hotplug.parse(NET), remove, lo])
    assert wanted.aliases == ["usb:v0525pA4A2d0000dc02dsc00dp00ic02isc06ip00in00"]  # once, not for a removal
    assert wanted.interfaces == ["usb0"]
    assert not hotplug.wanted([remove, lo])


def test_the_uevent_socket_opens_and_drains_without_blocking() -> None:
    sock = hotplug.open_socket()
    assert sock is not None  # netlink uevents exist on this (Linux) host
    try:
        assert sock.family == socket.AF_NETLINK and not sock.getblocking()
        assert isinstance(hotplug.drain(sock), list)  # returns at once with what is queued
    finally:
        sock.close()
