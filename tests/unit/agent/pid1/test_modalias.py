"""Drivers by modalias from the build's index, and the ones left for after ready (agent/pid1/modalias.py).

The index is checked against kmod's own resolution on a real module tree in
tests/rootfs/test_rootfs.py; here, made-up tables with known answers."""

from __future__ import annotations

import fnmatch
import marshal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pid1 import devices, modalias

ALIASES = """\
# Aliases extracted from modules themselves.
alias pci:v00008086d000025ABsv*sd*bc*sc*i* i6300esb
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias pci:v*d*sv*sd*bc01sc06i01* ahci
alias pci:v00008086d00002930sv*sd*bc*sc*i* i2c_i801
alias usb:v0BDAp8153d*dc*dsc*dp*ic*isc*ip*in* r8152
alias usb:v0BDAp*d*dc*dsc*dp*icFFisc*ip*in* rtl_vendor
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage
alias acpi*:PNP0C0C:* button
alias acpi*:PNP0A03:* pci_root
alias of:N*T*Cbrcm,bcm2835-rng rng_bcm
alias of:N*T*Cbrcm,bcm2835-rngC* rng_bcm
alias serio:ty01pr*id*ex* psmouse
alias platform:pcspkr pcspkr
alias virtio:d00000001v* virtio_net
alias pci:v0000ABCDd00001[0-2]??sv*sd*bc*sc*i* ranged
alias *:weird:* anywhere
"""
DEPS = """\
kernel/drivers/watchdog/i6300esb.ko:
kernel/drivers/virtio/virtio_pci.ko:
kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libahci.ko
kernel/drivers/i2c/busses/i2c-i801.ko: kernel/drivers/i2c/i2c-smbus.ko
kernel/drivers/net/usb/r8152.ko:
kernel/drivers/net/usb/rtl-vendor.ko:
kernel/drivers/usb/storage/usb-storage.ko:
kernel/drivers/acpi/button.ko:
kernel/drivers/pci/pci-root.ko:
kernel/drivers/char/hw_random/rng-bcm.ko:
kernel/drivers/input/mouse/psmouse.ko:
kernel/drivers/input/misc/pcspkr.ko:
kernel/drivers/net/virtio_net.ko:
kernel/drivers/net/ranged.ko:
kernel/drivers/misc/anywhere.ko:
"""


@pytest.fixture(scope="module")
def index() -> modalias.Index:
    parsed = modalias.parse(modalias.build(ALIASES, DEPS))
    assert parsed is not None
    return parsed


@pytest.mark.parametrize("alias, early, late", [
    ("pci:v00008086d000025ABsv00001AF4sd00001100bc08sc80i00", ["i6300esb"], []),  # vendor + device
    ("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", ["virtio_pci"], []),  # vendor only
    ("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", ["ahci"], []),  # by class
    ("pci:v00008086d00002930sv00001AF4sd00001100bc0Csc05i00", [], ["i2c_i801"]),  # SMBus: after ready
    ("usb:v0BDAp8153d3000dc00dsc00dp00icFFisc00ip00in00", ["r8152", "rtl_vendor"], []),
    ("usb:v0781p5581d0100dc00dsc00dp00ic08isc06ip50in00", ["usb_storage"], []),
    ("acpi:PNP0A08:PNP0A03:", ["pci_root"], []),  # the second of two IDs
    ("acpi:LNXPWRBN:", [], []),
    ("acpi:PNP0C0C:", [], ["button"]),
    ("of:NrngT(null)Cbrcm,bcm2835-rng", ["rng_bcm"], []),
    ("of:NrngT(null)Cbrcm,bcm2835-rngCbrcm,other", ["rng_bcm"], []),
    ("of:NrngT(null)Cbrcm,bcm2835-rng-not", [], []),
    ("serio:ty01pr00id00ex00", [], ["psmouse"]),
    ("platform:pcspkr", [], ["pcspkr"]),
    ("virtio:d00000001v00001AF4", ["virtio_net"], []),
    ("pci:v0000ABCDd00001234sv0sd0bc0sc0i0", ["ranged"], []),  # [0-2]?? matched
    ("pci:v0000ABCDd00001334sv0sd0bc0sc0i0", [], []),
    ("x:weird:y", [], ["anywhere"]),  # a pattern whose bus is a wildcard is tried on every alias
    ("nothing:at-all", [], []),
])
def test_resolve_by_index(index: dict[str, object], alias: str, early: list[str], late: list[str]) -> None:
    assert modalias.resolve(index, [alias]) == (early, late)
    # Before ready, only the early ones (the late patterns are not even tried).
    assert modalias.resolve(index, [alias], early_only=True) == (early, [])
    # The index gives what trying every pattern gives.
    every = [m for line in ALIASES.splitlines() if line.startswith("alias ")
             for _, p, m in [line.split()] if fnmatch.fnmatchcase(alias, p)]
    assert sorted(set(early + late)) == sorted(set(every))


def test_late_is_decided_by_where_the_module_lives() -> None:
    assert modalias.is_late("kernel/drivers/input/misc/pcspkr.ko")
    assert modalias.is_late("kernel/arch/x86/crypto/aesni-intel.ko")
    assert modalias.is_late("kernel/drivers/i2c/busses/i2c-i801.ko")
    assert modalias.is_late("kernel/drivers/pwm/pwm-bcm2835.ko")  # a Pi's PWM outputs (0.1 s of its coldplug)
    assert not modalias.is_late("kernel/drivers/net/virtio_net.ko")
    assert not modalias.is_late("kernel/drivers/watchdog/i6300esb.ko")
    assert not modalias.is_late("kernel/drivers/char/hw_random/virtio-rng.ko")
    assert not modalias.is_late("kernel/drivers/usb/host/xhci-pci.ko")
    assert not modalias.is_late("kernel/drivers/mfd/lpc_ich.ko")  # it makes the iTCO watchdog's device


def test_a_table_of_many_keys_finds_each_past_its_collisions() -> None:
    buckets = {f"pci:v{n:08X}d{n * 7:08X}": f"pci:v{n:08X}d{n * 7:08X}sv*sd*bc*sc*i* m{n}" for n in range(3000)}
    table = modalias.Table(modalias._table(buckets), 0)
    assert table.mask + 1 == 8192 and all(table.get(k) == v for k, v in buckets.items())
    assert [table.get(f"pci:v{n:08X}d{n * 7 + 1:08X}") for n in range(3000)] == [None] * 3000


def test_a_table_whose_slots_point_past_its_keys_answers_none() -> None:
    """A damaged table (a slot naming a key it does not have) is never read past its end."""
    data = bytearray(modalias._table({"pci": "pci:v* a", "usb": "usb:v* b"}))
    slots = [int.from_bytes(data[8 + 4 * i:12 + 4 * i], "little") for i in range(8)]
    for i, number in enumerate(slots):
        if number:
            data[8 + 4 * i:12 + 4 * i] = (99).to_bytes(4, "little")
    table = modalias.Table(bytes(data), 0)
    assert table.get("pci") is None and table.get("usb") is None


@pytest.mark.parametrize("pattern, text", [
    ("a*b", "axxb"), ("a*b", "axxbc"), ("a?c", "abc"), ("a?c", "ac"), ("[a-c]x", "bx"), ("[!a-c]x", "bx"),
    ("[!a-c]x", "dx"), ("*", ""), ("", ""), ("", "a"), ("a[", "a["), ("a[]", "a["), ("**a", "ba"),
    ("*a*b*c", "xaxbxc"), ("*a*b*c", "xaxcxb"), ("d0[0-2]*dc", "d01xdc"), ("[^a]", "b"),
    ("ab*ba", "aba"), ("a*a", "a"), ("a**a", "aa"), ("*ab*ab", "abab"), ("*", "x"), ("ab", "abc"),
    ("cpu:type:x86,ven*fam*mod*:feature:*0089*", "cpu:type:x86,ven0002fam000Fmod006Bstp0001:feature:,0088,0089"),
    ("cpu:type:x86,ven*fam*mod*:feature:*0099*", "cpu:type:x86,ven0002fam000Fmod006Bstp0001:feature:,0088,0089"),
])
def test_glob_is_fnmatch(pattern: str, text: str) -> None:
    assert modalias.glob(pattern, text) == fnmatch.fnmatchcase(text, pattern.replace("[^", "[!"))


@settings(max_examples=400, deadline=None)
@given(st.text("ab*?[]!-", max_size=8), st.text("ab-[]!", max_size=8))
def test_glob_agrees_with_fnmatch_on_anything(pattern: str, text: str) -> None:
    assert modalias.glob(pattern, text) == fnmatch.fnmatchcase(text, pattern)


@settings(max_examples=1000, deadline=None)
@given(st.text("ab*", max_size=10), st.text("ab", max_size=10))
def test_glob_of_literal_pieces_agrees_with_fnmatch(pattern: str, text: str) -> None:
    """Stars and literal pieces only: the string methods' path (overlapping pieces, a piece at both ends)."""
    assert modalias.glob(pattern, text) == fnmatch.fnmatchcase(text, pattern)


GOOD = modalias.build(ALIASES, DEPS, "alias pci:v00008086d00001592sv*sd*bc*sc*i* ice\n")


@pytest.mark.parametrize("content", [
    None, b"", b"junk", marshal.dumps([1, 2]), marshal.dumps({"format": 99}),  # foreign
    modalias.MAGIC, GOOD[:len(modalias.MAGIC) + 6],  # cut in its header
    modalias.MAGIC + (2).to_bytes(4, "little") + GOOD[len(modalias.MAGIC) + 4:],  # format 2's number
    GOOD[:len(modalias.MAGIC) + 8] + b"\xff" * 8 + GOOD[len(modalias.MAGIC) + 16:],  # its header not marshal
    GOOD[:-8], GOOD[:len(GOOD) // 2],  # cut in its tables
    GOOD[:len(modalias.MAGIC) + 4] + (len(GOOD)).to_bytes(4, "little") + GOOD[len(modalias.MAGIC) + 8:],  # too long
])
def test_a_missing_foreign_or_cut_index_is_none(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "idx"
    if content is not None:
        path.write_bytes(content)
    assert modalias.load(str(path)) is None


def test_every_bucket_is_found_in_place_and_nothing_else() -> None:
    """The tables: each key's bucket through its hash table, a key it does not hold none."""
    index = modalias.parse(GOOD)
    assert index is not None
    buckets = {k: "\n".join(f"{p} {m}" for p, m in v) for k, v in modalias._buckets(ALIASES).items()}
    assert len(buckets) > 10
    for key, bucket in buckets.items():
        assert index.keys.get(key) == bucket
    for key in ("", "a", "pci:v00008086d000025AA", "pci:v00008086d000025AC", "zzz", "\u00e9", "pci:v0000ABCD"):
        assert index.keys.get(key) == buckets.get(key)
    assert index.absent.get("pci:v00008086d00001592") == "pci:v00008086d00001592sv*sd*bc*sc*i* ice"
    assert index.absent.get("pci:v00008086d000025AB") is None


def coldplug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aliases: list[str], with_index: bool = True
             ) -> tuple[devices.Coldplug, list[list[str]]]:
    calls: list[list[str]] = []
    monkeypatch.setattr(devices, "start_modprobe", lambda names: calls.append(names()))
    monkeypatch.setattr(devices, "device_aliases", lambda: list(aliases))
    monkeypatch.setattr(devices, "loaded_modules", lambda: {m for call in calls for m in call})
    monkeypatch.setattr(devices.layout, "RUN_MODULES_LOADED", str(tmp_path / "modules-loaded"))
    path = tmp_path / "index"
    if with_index:
        path.write_bytes(modalias.build(ALIASES, DEPS))
    return devices.Coldplug(str(path)), calls


PRESENT = ["platform:pcspkr", "pci:v00008086d000025ABsv00001AF4sd00001100bc08sc80i00", "virtio:d00000001v00001AF4"]


def test_coldplug_leaves_late_drivers_for_after_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plug, calls = coldplug(tmp_path, monkeypatch, PRESENT)
    assert plug.run(1, before_ready=True)
    assert calls == [["i6300esb", "virtio_net", "button", "evdev"]]
    plug.mark_ready()
    # After ready: the same devices, and now their late drivers too (nothing new appeared).
    assert not plug.run(passes=2)
    assert calls[1] == ["i6300esb", "virtio_net", "pcspkr", "button", "evdev"]
    assert not plug.run(passes=2) and len(calls) == 2  # nothing new: nothing run
    record = (tmp_path / "modules-loaded").read_text().splitlines()
    assert record[:record.index("# ready")] == ["button", "evdev", "i6300esb", "virtio_net"]
    assert "pcspkr" in record[record.index("# ready"):]


def test_coldplug_without_an_index_gives_modprobe_the_aliases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plug, calls = coldplug(tmp_path, monkeypatch, PRESENT, with_index=False)
    plug.run(1, before_ready=True)
    assert calls == [[*PRESENT, "button", "evdev"]]


def test_coldplug_at_boot_leaves_modprobe_running_until_waited_for(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The boot's coldplug (wait=False) returns with modprobe still running, a real process here (a
    script standing in for busybox, which would load modules on this machine); wait() reaps it and
    only then records what was loaded. The driver index is read and matched in that child only."""
    monkeypatch.setattr(devices, "device_aliases", lambda: list(PRESENT))
    monkeypatch.setattr(devices, "loaded_modules", lambda: set(done.read_text().split()) if done.exists() else set())
    monkeypatch.setattr(devices.layout, "RUN_MODULES_LOADED", str(tmp_path / "modules-loaded"))
    done, fake = tmp_path / "done", tmp_path / "busybox"
    fake.write_text(f"#!/bin/sh\nsleep 0.5\nshift 3\necho \"$@\" > {done}.new && mv {done}.new {done}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(devices.layout, "BUSYBOX", str(fake))
    index = tmp_path / "index"
    index.write_bytes(modalias.build(ALIASES, DEPS))
    plug = devices.Coldplug(str(index))
    reads: list[str] = []  # the index is read in the child: never in this (PID 1's) process
    real_load = modalias.load
    monkeypatch.setattr(devices.modalias, "load", lambda path: reads.append(path) or real_load(path))
    plug.run(1, before_ready=True, wait=False)
    assert not done.exists() and plug.running is not None and not (tmp_path / "modules-loaded").exists()
    plug.wait()
    assert done.read_text().split() == ["i6300esb", "virtio_net", "button", "evdev"]
    assert (tmp_path / "modules-loaded").read_text().splitlines() == ["button", "evdev", "i6300esb", "virtio_net"]
    plug.wait()  # nothing left: nothing happens
    assert plug.running is None and reads == []


@pytest.mark.parametrize("alias, modules", [
    ("platform:simatic-ipc-wdt", ["simatic_ipc_wdt"]),  # the driver's pattern is spelled with "_"
    ("platform:simatic_ipc_wdt", ["simatic_ipc_wdt"]),
    ("platform:dmi_ipmi_si", ["ipmi_si"]),  # and this one with "-"
    ("platform:dmi-ipmi-si", ["ipmi_si"]),
    ("of:NsensorT(null)Cvendor,temp_sensor", ["vendor_temp"]),
    ("platform:simatic.ipc.wdt", []),  # only "-" and "_" are one character
    ("platform:simatic-ipc", []),
    ("pci:v0000ABCDd00001-00sv00001AF4sd00001100bc02sc00i00", []),  # "-" is no digit in a [0-2] set
])
def test_dash_and_underscore_are_one_character_as_kmod_has_it(alias: str, modules: list[str]) -> None:
    """kmod's rule (the rootfs tier checks it against kmod's modprobe on the real tree): "-" and
    "_" outside a [...] set are the same character, in a device's alias and in a pattern."""
    extra = ("alias platform:simatic_ipc_wdt simatic_ipc_wdt\nalias platform:dmi-ipmi-si ipmi_si\n"
             "alias of:N*T*Cvendor,temp-sensor vendor_temp\nalias of:N*T*Cvendor,temp-sensorC* vendor_temp\n")
    deps = ("kernel/drivers/watchdog/simatic-ipc-wdt.ko:\nkernel/drivers/char/ipmi/ipmi_si.ko:\n"
            "kernel/drivers/hwmon/vendor-temp.ko:\n")
    index = modalias.parse(modalias.build(ALIASES + extra, DEPS + deps))
    assert index is not None
    early, late = modalias.resolve(index, [alias])
    assert early + late == modules


@pytest.mark.parametrize("text, normal", [
    ("platform:a-b_c", "platform:a_b_c"), ("pci:v0000ABCDd00001[0-2]??-x", "pci:v0000ABCDd00001[0-2]??_x"),
    ("usb:v[!-]p-", "usb:v[!-]p_"), ("plain", "plain"), ("[a-", "[a-"), ("a-[", "a_["), ("", ""),
])
def test_normalize_leaves_sets_alone(text: str, normal: str) -> None:
    assert modalias.normalize(text) == normal


# An Intel board's TCO timer: ICH9 (QEMU's q35) has lpc_ich make its device; a 100-series or later
# PCH has its SMBus function's driver (i2c_i801, a late driver) make it. iTCO_wdt drives it.
TCO_ALIASES = ALIASES + """\
alias pci:v00008086d00002918sv*sd*bc*sc*i* lpc_ich
alias pci:v00008086d0000A123sv*sd*bc*sc*i* i2c_i801
alias platform:iTCO_wdt iTCO_wdt
"""
TCO_DEPS = DEPS + "kernel/drivers/mfd/lpc_ich.ko:\nkernel/drivers/watchdog/iTCO_wdt.ko:\n"
LPC = "pci:v00008086d00002918sv00001AF4sd00001100bc06sc01i00"
ICH9_SMBUS = "pci:v00008086d00002930sv00001AF4sd00001100bc0Csc05i00"
PCH_SMBUS = "pci:v00008086d0000A123sv00008086sd00007270bc0Csc05i00"
VIRTIO_NET = "virtio:d00000001v00001AF4"


@pytest.mark.parametrize("board, present, maker, before, runs", [
    ("ICH9: lpc_ich (before ready) made it", [LPC, ICH9_SMBUS, "platform:pcspkr"], "lpc_ich",
     ["iTCO_wdt", "lpc_ich"], [["lpc_ich", "button", "evdev"], ["iTCO_wdt"]]),
    ("PCH: the SMBus driver makes it", [PCH_SMBUS, "platform:pcspkr"], "i2c_i801",
     ["i2c_i801", "iTCO_wdt"], [["button", "evdev"], ["i2c_i801"], ["iTCO_wdt"]]),
    ("no watchdog at all", [VIRTIO_NET, "platform:pcspkr"], None,
     ["virtio_net"], [["virtio_net", "button", "evdev"]]),
])
def test_a_watchdog_another_driver_makes_gets_its_driver_before_ready(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, board: str, present: list[str], maker: str | None,
        before: list[str], runs: list[list[str]]) -> None:
    """Coldplug.watchdog_drivers, where the boot's pass made no watchdog: with a driver that makes
    one loaded (lpc_ich), the watchdog drivers of the platform devices present; else the late
    drivers that make one for a device present (i2c_i801), then those; nothing where neither is."""
    calls: list[list[str]] = []
    loaded = lambda: {m for call in calls for m in call}  # noqa: E731
    buses: list[tuple[str, ...]] = []

    def device_aliases(buses_: tuple[str, ...] = ()) -> list[str]:
        buses.append(buses_)
        made = ["platform:iTCO_wdt"] if maker in loaded() else []
        return sorted(a for a in [*present, *made] if not buses_ or a.split(":")[0] in buses_)
    monkeypatch.setattr(devices, "start_modprobe", lambda names: calls.append(names()))
    monkeypatch.setattr(devices, "device_aliases", lambda buses=(): device_aliases(buses))
    monkeypatch.setattr(devices, "loaded_modules", loaded)
    monkeypatch.setattr(devices.layout, "RUN_MODULES_LOADED", str(tmp_path / "modules-loaded"))
    index = tmp_path / "index"
    index.write_bytes(modalias.build(TCO_ALIASES, TCO_DEPS, makers=("i2c_i801", "lpc_ich")))
    plug = devices.Coldplug(str(index))
    plug.run(1, before_ready=True)
    plug.watchdog_drivers(lambda: "iTCO_wdt" in loaded())
    assert calls == runs, board
    assert buses[1:] == ([("platform",)] if maker else []), buses  # only the platform bus is looked at
    plug.mark_ready()
    plug.run(passes=2)  # after ready: the late drivers (the PC speaker; ICH9's SMBus driver)
    record = (tmp_path / "modules-loaded").read_text().splitlines()
    assert sorted(record[:record.index("# ready")]) == sorted({*before, "button", "evdev"}), board
    assert "pcspkr" in record[record.index("# ready"):]
    assert ("i2c_i801" in record[record.index("# ready"):]) == (board.startswith("ICH9")), record


def test_the_watchdog_part_is_read_from_the_header_alone(tmp_path: Path) -> None:
    """modalias.watchdogs reads the header only, and a file that is not this format's index
    (cut, foreign, another format, a header claiming more than the file) is none."""
    good = modalias.build(TCO_ALIASES, TCO_DEPS, makers=("i2c_i801", "lpc_ich"))
    header_end = len(modalias.MAGIC) + 8 + int.from_bytes(good[len(modalias.MAGIC) + 4:len(modalias.MAGIC) + 8],
                                                          "little")
    path = tmp_path / "index"
    path.write_bytes(good[:header_end])  # the tables cut off: the header is all it reads
    hints = modalias.watchdogs(str(path))
    assert hints is not None
    assert hints.devices == [("platform:iTCO_wdt", "iTCO_wdt")]
    assert hints.early_makers == {"lpc_ich"}
    assert hints.late_makers == [("pci:v00008086d00002930sv*sd*bc*sc*i*", "i2c_i801"),
                                 ("pci:v00008086d0000A123sv*sd*bc*sc*i*", "i2c_i801")]
    assert hints.wanted(hints.late_makers, [VIRTIO_NET, PCH_SMBUS]) == ["i2c_i801"]
    assert hints.wanted(hints.devices, ["platform:iTCO-wdt"]) == ["iTCO_wdt"]  # either spelling
    other_format = modalias.MAGIC + (3).to_bytes(4, "little") + good[len(modalias.MAGIC) + 4:]
    too_long = modalias.MAGIC + (4).to_bytes(4, "little") + (1 << 30).to_bytes(4, "little")
    for bad in (b"", good[:10], good[:header_end - 1], good[:header_end - 8], b"x" * 100, other_format, too_long):
        path.write_bytes(bad)
        assert modalias.watchdogs(str(path)) is None, bad[:40]
    assert modalias.watchdogs(str(tmp_path / "absent")) is None
