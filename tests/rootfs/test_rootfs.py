"""Real root filesystems from each backend, checked by content."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder import host, pipeline, plan
from builder.imagedef import ROOT

EPOCH = plan.DEFAULT_EPOCH


def check_basalt_tree(root: Path) -> None:
    """What every Basalt root must contain, whichever backend unpacked it."""
    assert (root / "usr/sbin/basalt").stat().st_mode & 0o111
    assert (root / "usr/lib/basalt/agent/pid1/init.py").is_file()
    assert (root / "usr/lib/basalt/version").read_text().strip() == plan.load_image("x86_64-iso").version
    assert os.path.realpath(root / "usr/bin/python3").startswith(str(root))
    assert (root / "usr/lib/python3/dist-packages/yaml/__init__.py").is_file()
    release = next((root / "usr/lib/modules").iterdir())
    assert (release / "modules.dep").stat().st_size > 0
    assert (release / "kernel/fs/squashfs/squashfs.ko").is_file()
    assert not (release / "kernel/drivers/gpu").exists()  # kernel.modules.exclude applied
    assert (root / "etc/passwd").read_text().startswith("root:x:0:0:")
    for d in ("proc", "sys", "dev", "run", "tmp", "var"):
        assert (root / d).is_dir()
    assert not (root / "usr/share/doc").exists()


# Libraries in the root that no program or library in it names (DT_NEEDED), kept because something
# opens them by name at run time or a program from outside may need them.
OPENED_BY_NAME = {
    "libgcc_s.so.1": "glibc loads it to unwind a cancelled thread",
    "libnss_files.so.2": "glibc's name service (/etc/nsswitch.conf)",
    "libnss_dns.so.2": "glibc's name service",
    "libnss_compat.so.2": "glibc's name service",
    "libnss_hesiod.so.2": "glibc's name service",
    "libdl.so.2": "glibc's stubs for programs built before glibc 2.34",
    "libpthread.so.0": "glibc's stubs",
    "librt.so.1": "glibc's stubs",
    "libutil.so.1": "glibc's stubs",
    "libanl.so.1": "glibc's stubs",
}


def unloaded_libraries(root: Path) -> set[str]:
    """The shared libraries directly in the tree's multiarch library directory that nothing in the
    tree loads (by DT_NEEDED, found as the tree's loader finds them: builder/media/elf.py)."""
    from builder.media import elf
    found = list(elf.programs(root))
    loaded = elf.loaded(root, found)
    return {rel.rsplit("/", 1)[1] for rel, _ in found
            if rel.startswith("usr/lib/x86_64-linux-gnu/") and rel.count("/") == 3 and rel not in loaded}


def test_mmdebstrap_backend_builds_exact_locked_set() -> None:
    compiled = plan.plan("x86_64-iso")
    out = pipeline.build(compiled, until="rootfs")
    root = out / "root"
    check_basalt_tree(root)
    # Every library left is loaded by something, or opened by name (a library nothing loads belongs
    # in images/x86_64-iso.yaml's rootfs.unused_libraries; the build fails on one taken from a user)
    unloaded = unloaded_libraries(root)
    assert unloaded <= set(OPENED_BY_NAME), sorted(unloaded - set(OPENED_BY_NAME))
    assert (root / "bin").is_symlink() and os.readlink(root / "bin") == "usr/bin"  # merged /usr
    assert (root / "usr/bin/sh").is_symlink() and os.readlink(root / "usr/bin/sh") == "busybox"
    # The kernel's on-demand module loader (/proc/sys/kernel/modprobe, /sbin -> usr/sbin) exists.
    assert (root / "sbin/modprobe").resolve() == (root / "usr/bin/busybox").resolve()
    assert not (root / "usr/bin/perl").exists()  # excluded: no maintainer scripts, no perl
    assert not (root / "var/lib/dpkg/status").exists() or "debconf" not in (root / "var/lib/dpkg/status").read_text()
    assert list((root / "dev").iterdir()) == []  # no device nodes from the host
    # Reproducible timestamps everywhere.
    stamps = {p.lstat().st_mtime for p in [root, *list(root.rglob("*"))[:2000]]}
    assert stamps == {EPOCH}
    # Precompiled, hash-checked bytecode (no mtime dependence).
    assert list((root / "usr/lib/python3.11/__pycache__").glob("os.cpython-311.pyc"))
    assert (out.parent / "kernel/vmlinuz").stat().st_size > 1_000_000 if (out.parent / "kernel").exists() \
        else (out / "kernel/vmlinuz").stat().st_size > 1_000_000


@pytest.mark.skipif(host.which("disk-image-create") is None,
                    reason="diskimage-builder is not installed (the optional [dib] extra); ./inv installs it")
def test_dib_backend_builds_a_basalt_root(tmp_path: Path) -> None:
    text = (ROOT / "images/x86_64-iso.yaml").read_text().replace("backend: mmdebstrap", "backend: dib")
    text = text.replace("name: x86_64-iso", "name: x86_64-dib")
    path = tmp_path / "x86_64-dib.yaml"
    path.write_text(text)
    out = pipeline.build(plan.plan(str(path)), until="rootfs")
    root = out / "root"
    check_basalt_tree(root)
    # its base has programs of its own (gpg, sudo, e2fsprogs): the libraries they load are kept
    assert (root / "usr/lib/x86_64-linux-gnu/libcom_err.so.2").exists() == (root / "usr/sbin/tune2fs").exists()
    assert (root / "etc/debian_version").read_text().startswith("12")
    assert (root / "usr/bin/busybox").is_file()
    assert (out / "kernel/vmlinuz").stat().st_size > 1_000_000


# Devices of the machines Basalt boots on (QEMU's q35 and virt, common NICs, USB sticks and
# keyboards, a Pi 3's device-tree nodes), as their modalias files say.
REAL_ALIASES = [
    "acpi:PNP0A08:PNP0A03:", "acpi:LNXPWRBN:", "acpi:PNP0C0C:", "acpi:QEMU0002:", "acpi:PNP0501:",
    "pci:v00008086d000025ABsv00001AF4sd00001100bc08sc80i00", "pci:v00008086d00002918sv00001AF4sd00001100bc06sc01i00",
    "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", "pci:v00008086d00002930sv00001AF4sd00001100bc0Csc05i00",
    "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", "pci:v00001234d00001111sv00001AF4sd00001100bc03sc00i00",
    "pci:v00008086d000015B8sv00008086sd00002068bc02sc00i00", "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00",
    "pci:v000010ECd00008168sv000010ECsd00000123bc02sc00i00", "pci:v00008086d0000A36Dsv00008086sd00007270bc0Csc03i30",
    "pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02", "platform:pcspkr", "platform:iTCO_wdt",
    "platform:i8042", "serio:ty01pr00id00ex00", "serio:ty06pr00id00ex00", "virtio:d00000001v00001AF4",
    "virtio:d00000004v00001AF4", "scsi:t-0x05", "scsi:t-0x00",
    "usb:v0BDAp8153d3000dc00dsc00dp00icFFisc00ip00in00", "usb:v0424pEC00d0200dcFFdsc00dp01icFFisc00ip00in00",
    "usb:v1D6Bp0002d0601dc09dsc00dp01ic09isc00ip00in00", "usb:v0781p5581d0100dc00dsc00dp00ic08isc06ip50in00",
    "usb:v046DpC52Bd1211dc00dsc00dp00ic03isc01ip01in00", "hid:b0003g0001v0000046Dp0000C52B",
    "of:NrngT(null)Cbrcm,bcm2835-rng", "of:NwatchdogT(null)Cbrcm,bcm2835-pm-wdtCbrcm,bcm2835-pm",
    "cpu:type:x86,ven0000fam0006mod003A:feature:,0000,0001,0002,0019,0068,0080,0081,0089,0091,0094,00C0,00E6",
    # "-" and "_" are one character to kmod: each spelled as its pattern is not
    "platform:simatic-ipc-wdt", "platform:dmi_ipmi_si", "platform:kempld_gpio", "platform:iTCO-wdt",
    "pci:v00008086d0000A123sv00008086sd00007270bc0Csc05i00",  # a 100-series PCH's SMBus function
]


def test_the_driver_index_answers_as_kmod_does() -> None:
    """The index the build makes (agent/pid1/modalias.py) gives, for real devices, the modules
    kmod's own modprobe resolves from the same tree's modules.alias."""
    from agent.pid1 import modalias
    root = pipeline.build(plan.plan("x86_64-iso"), until="rootfs") / "root"
    release = next((root / "usr/lib/modules").iterdir())
    index = modalias.load(str(release / modalias.INDEX))
    assert index is not None
    for alias in REAL_ALIASES:
        kmod = subprocess.run(["modprobe", "-d", str(root), "-S", release.name, "-R", alias],
                              capture_output=True, text=True, timeout=30).stdout.split()
        early, late = modalias.resolve(index, [alias])
        assert sorted(early + late) == sorted(set(kmod)), alias
    early, late = modalias.resolve(index, REAL_ALIASES)
    assert {"virtio_net", "i6300esb", "ahci", "e1000e", "r8169", "xhci_pci", "nvme", "usb_storage", "r8152",
            "lpc_ich"} <= set(early)
    assert {"pcspkr", "psmouse", "i2c_i801", "qemu_fw_cfg", "hid_generic", "crc32_pclmul"} <= set(late)
    assert not set(early) & set(late)
    # The image's hardware class (x86-generic) kept a driver for every device above (except the
    # Pi's, an arm64 board), and left a 100-gigabit server NIC out, which the index names for doctor.
    x86 = [a for a in REAL_ALIASES if not a.startswith("of:")]
    assert [a for a in x86 if not any(modalias.resolve(index, [a])) and modalias.missing(index, [a])] == []
    ice = "pci:v00008086d00001593sv00008086sd00000001bc02sc00i00"
    assert modalias.resolve(index, [ice]) == ([], []) and modalias.missing(index, [ice]) == [(ice, "ice")]
    assert not list(release.glob("kernel/drivers/net/ethernet/intel/ice/*.ko"))


def test_the_index_names_the_drivers_that_make_a_watchdog() -> None:
    """The index's watchdog part (modalias.Watchdogs, from builder/media/hardware.py's
    watchdog_makers) on the real tree: the TCO timer's platform device and its driver; lpc_ich,
    intel_pmc_bxt and lpc_sch (before ready) and i2c_i801 (after it) make a watchdog's device, and
    the SMBus functions of q35's ICH9 and of a 100-series PCH are i2c_i801's."""
    from agent.pid1 import modalias
    root = pipeline.build(plan.plan("x86_64-iso"), until="rootfs") / "root"
    release = next((root / "usr/lib/modules").iterdir())
    hints = modalias.watchdogs(str(release / modalias.INDEX))
    assert hints is not None
    assert ("platform:iTCO_wdt", "iTCO_wdt") in hints.devices
    drivers = {p.stem.replace("-", "_") for p in release.glob("kernel/drivers/watchdog/*.ko")}
    assert {m for _, m in hints.devices} <= drivers
    assert {"lpc_ich", "intel_pmc_bxt", "lpc_sch"} <= hints.early_makers, hints.early_makers
    assert {m for _, m in hints.late_makers} == {"i2c_i801"}
    smbus = ["pci:v00008086d00002930sv00001AF4sd00001100bc0Csc05i00",  # ICH9's, then a 100-series PCH's
             "pci:v00008086d0000A123sv00008086sd00007270bc0Csc05i00"]
    assert [hints.wanted(hints.late_makers, [a]) for a in smbus] == [["i2c_i801"], ["i2c_i801"]]
    assert hints.wanted(hints.devices, ["platform:iTCO_wdt", "platform:pcspkr"]) == ["iTCO_wdt"]


# Run by the tree's own interpreter: what its import system loaded from a file, each as the file read
# (the compiled form where one was used), in the order imported; frozen and built-in modules read none.
LOADED = """import sys
sys.path[:0] = ['/usr/lib/basalt', '/usr/lib/python3/dist-packages']
import agent.pid1.init
for name in agent.pid1.init.BOOT_IMPORTS:
    __import__(name)  # not importlib, which the boot does not import
files = []
for name, module in list(sys.modules.items()):
    spec = module.__spec__
    if spec is None or spec.origin in (None, 'built-in', 'frozen'):
        continue
    files.append(getattr(module, '__cached__', None) or spec.origin)
print('\\n'.join(files))
"""


def test_the_boot_read_ahead_list_is_what_the_interpreter_reads() -> None:
    """The read-ahead list the build writes (builder/media/readahead.py, read by the initramfs)
    names, after the interpreter and its libraries, exactly the module files the tree's own
    Python loads when it starts ``basalt init`` and imports what the boot imports later
    (``BOOT_IMPORTS``; run in the tree with chroot), and only files there."""
    from agent import layout
    from builder.media import elf, tree
    root = pipeline.build(plan.plan("x86_64-iso"), until="rootfs") / "root"
    listed = (root / layout.LIB_READAHEAD.lstrip("/")).read_text().splitlines()
    ran = subprocess.run(["/usr/sbin/chroot", str(root), "/usr/bin/python3", "-S", "-c", LOADED],
                         capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin"})
    assert ran.returncode == 0, ran.stderr
    loaded = [tree.resolve(root, f) for f in ran.stdout.split()]
    modules = [f for f in listed if ("python3" in f and f != "usr/bin/python3.11") or f.startswith("usr/lib/basalt/")]
    assert sorted(modules) == sorted(loaded)
    assert listed[:listed.index("usr/bin/python3.11")] == list(dict.fromkeys(
        tree.resolve(root, lib) for lib in elf.libraries(root, ["usr/bin/python3"])))
    assert "usr/lib/basalt/agent/pid1/__pycache__/init.cpython-311.pyc" in listed
    assert all((root / f).is_file() and not (root / f).is_symlink() for f in listed)
