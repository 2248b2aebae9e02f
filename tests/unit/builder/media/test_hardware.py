"""Kernel modules per hardware class (builder/media/hardware.py), on made-up kernel tables; the
shipped classes on the real kernel are checked in tests/rootfs/test_rootfs.py."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from agent.errors import BasaltError
from builder.media import hardware

DEPS = """\
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/ocfs2/ocfs2.ko:
kernel/lib/test_bpf.ko:
kernel/lib/crc8.ko:
kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko: kernel/drivers/ptp/ptp.ko
kernel/drivers/ptp/ptp.ko:
kernel/drivers/net/ethernet/intel/ice/ice.ko:
kernel/drivers/net/veth.ko:
kernel/drivers/net/usb/r8152.ko:
kernel/drivers/char/hw_random/bcm2835-rng.ko:
kernel/drivers/scsi/virtio_scsi.ko: kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/scsi/scsi_mod.ko:
kernel/sound/core/snd.ko:
"""
ALIASES = """\
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias pci:v00008086d00001593sv*sd*bc*sc*i* ice
alias usb:v0BDAp8153d*dc*dsc*dp*ic*isc*ip*in* r8152
alias of:N*T*Cbrcm,bcm2835-rng bcm2835_rng
alias of:N*T*Cbrcm,bcm2835-rngC* bcm2835_rng
"""


def profile(**kw: list[str]) -> dict[str, object]:
    return {"name": "test", "drivers": [], "devices": [], "dtbs": [], "except": [], **kw}


def kept(p: dict[str, object], wanted: list[str] | None = None, dtbs: Path | None = None) -> list[str]:
    return sorted(path.rsplit("/", 1)[-1] for path in hardware.select(p, ALIASES, DEPS, wanted or [], dtbs))


def test_a_class_keeps_its_drivers_its_devices_drivers_and_what_they_need() -> None:
    p = profile(drivers=["kernel/fs/ext4/", "kernel/lib/*.ko", "kernel/drivers/net/*.ko"],
                devices=["pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00"], **{"except": ["kernel/lib/test_*"]})
    # ext4 and jbd2 (its need), lib's crc8 but not its self-test, veth (a wildcard never crosses a /:
    # not usb/r8152), e1000e for the device and ptp for e1000e; virtio_scsi because it is wanted.
    assert kept(p, ["virtio-scsi"]) == ["crc8.ko", "e1000e.ko", "ext4.ko", "jbd2.ko", "ptp.ko", "scsi_mod.ko",
                                        "veth.ko", "virtio_scsi.ko"]


def test_all_keeps_every_module() -> None:
    assert len(kept(hardware.load("all"))) == DEPS.count("\n")


def test_an_excepted_module_a_kept_one_needs_is_kept() -> None:
    p = profile(drivers=["kernel/fs/ext4/"], **{"except": ["kernel/fs/jbd2/"]})
    assert kept(p) == ["ext4.ko", "jbd2.ko"]


def fdt(compatibles: list[list[str]]) -> bytes:
    """A flattened device tree with one node per entry, each with those compatible strings."""
    strings = b"compatible\0"
    body = struct.pack(">I", 1) + b"\0\0\0\0"  # the root node, empty name
    for i, compat in enumerate(compatibles):
        name = f"node{i}".encode() + b"\0"
        body += struct.pack(">I", 1) + name + b"\0" * (-len(name) % 4)
        value = b"".join(c.encode() + b"\0" for c in compat)
        body += struct.pack(">III", 3, len(value), 0) + value + b"\0" * (-len(value) % 4)
        body += struct.pack(">I", 2)
    body += struct.pack(">II", 2, 9)
    header = 40
    return struct.pack(">IIIIIIIIII", 0xD00DFEED, header + len(body) + len(strings), header,
                       header + len(body), 0, 17, 16, 0, len(strings), len(body)) + body + strings


def test_device_tree_compatibles_are_read() -> None:
    blob = fdt([["brcm,bcm2835-rng"], ["raspberrypi,4-model-b", "brcm,bcm2711"]])
    assert hardware.dtb_compatibles(blob) == {"brcm,bcm2835-rng", "raspberrypi,4-model-b", "brcm,bcm2711"}
    with pytest.raises(ValueError):
        hardware.dtb_compatibles(b"\0" * 40)


def test_a_board_class_keeps_the_drivers_of_its_device_trees(tmp_path: Path) -> None:
    (tmp_path / "broadcom").mkdir()
    (tmp_path / "broadcom/bcm2837-rpi-3-b.dtb").write_bytes(fdt([["brcm,bcm2835-rng"]]))
    (tmp_path / "broadcom/other-board.dtb").write_bytes(fdt([["vendor,thing"]]))
    assert kept(profile(dtbs=["broadcom/bcm2837-rpi-*.dtb"]), dtbs=tmp_path) == ["bcm2835-rng.ko"]
    assert kept(profile(dtbs=["broadcom/nothing-*.dtb"]), dtbs=tmp_path) == []


@pytest.mark.parametrize("rel, patterns, hit", [
    ("kernel/drivers/net/veth.ko", ["kernel/drivers/net/*.ko"], True),
    ("kernel/drivers/net/usb/r8152.ko", ["kernel/drivers/net/*.ko"], False),
    ("kernel/drivers/net/usb/r8152.ko", ["kernel/drivers/net/"], True),
    ("kernel/drivers/netx/a.ko", ["kernel/drivers/net/"], False),
    ("kernel/arch/x86/crypto/aesni.ko", ["kernel/arch/*/crypto/"], True),
    ("kernel/fs/ext4/ext4.ko", ["kernel/fs/ext4/ext4.ko"], True),
    ("kernel/fs/ext4/ext4.ko", ["kernel/fs/ext4"], False),  # a directory is written with its /
])
def test_paths_match_by_segment(rel: str, patterns: list[str], hit: bool) -> None:
    assert hardware.matches(rel, patterns) == hit


def test_every_shipped_class_loads_with_what_it_includes() -> None:
    assert {"all", "virtual", "x86-generic", "rpi", "arm64-generic"} <= set(hardware.names())
    for name in hardware.names():
        data = hardware.load(name)
        assert set(data) == {"name", "drivers", "devices", "dtbs", "except"}
    x86 = hardware.load("x86-generic")
    assert "kernel/fs/ext4/" in x86["drivers"] and "kernel/drivers/virtio/" in x86["drivers"]  # common, virtual
    assert hardware.load("rpi")["dtbs"]


def test_an_unknown_class_is_refused_with_the_known_ones() -> None:
    with pytest.raises(BasaltError) as e:
        hardware.load("x86-gneric")
    assert "no hardware class 'x86-gneric'" in e.value.render() and "x86-generic" in e.value.render()


def test_watchdog_makers_are_the_modules_naming_a_watchdog_drivers_device(tmp_path: Path) -> None:
    """hardware.watchdog_makers: a module whose file names a watchdog driver's platform device (in
    either spelling, as a whole string; xz- and gzip-compressed modules too) makes it."""
    import gzip
    import lzma
    files = {
        "kernel/drivers/watchdog/iTCO_wdt.ko": b"\0alias=platform:iTCO_wdt\0iTCO_wdt\0",  # the driver itself
        "kernel/drivers/watchdog/ie6xx_wdt.ko": b"\0ie6xx_wdt\0",
        "kernel/drivers/mfd/lpc_ich.ko": b"ELF\0iTCO_wdt\0gpio_ich\0",
        "kernel/drivers/i2c/busses/i2c-i801.ko.xz": lzma.compress(b"\0i2c\0iTCO_wdt\0"),
        "kernel/drivers/mfd/lpc_sch.ko.gz": gzip.compress(b"\0ie6xx-wdt\0"),  # the other spelling
        "kernel/drivers/mfd/near.ko": b"\0iTCO_wdt_old\0xiTCO_wdt\0",  # not the whole string
        "kernel/drivers/net/e1000e.ko": b"\0e1000e\0",
    }
    for path, data in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    deps = "".join(f"{path}:\n" for path in files)
    aliases = "alias platform:iTCO_wdt iTCO_wdt\nalias platform:ie6xx_wdt ie6xx_wdt\nalias pci:v00008086d* e1000e\n"
    assert hardware.watchdog_makers(tmp_path, aliases, deps) == ("i2c_i801", "lpc_ich", "lpc_sch")
    assert hardware.watchdog_makers(tmp_path, "alias pci:v00008086d* e1000e\n", deps) == ()  # no watchdog driver
