"""Stage units: command lines built, cpio bytes, module order, ISO names, plans, caching."""

from __future__ import annotations

import dataclasses
import gzip
import json
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.errors import BasaltError
from builder import pipeline
from builder.imagedef import load_image
from builder.media import cpio, grub
from builder.plan import PlannedStage, compile_plan
from builder.stages import Stage, initramfs, iso, rootfs, squashfs
from tests.initsh import init_functions


def read_cpio(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """Parse newc back: name -> (mode, data, rdev)."""
    out, off = {}, 0
    while True:
        assert data[off:off + 6] == b"070701"
        f = [int(data[off + 6 + i * 8: off + 14 + i * 8], 16) for i in range(13)]
        namesize, size = f[11], f[6]
        name = data[off + 110: off + 110 + namesize - 1].decode()
        off = (off + 110 + namesize + 3) & ~3
        body = data[off: off + size]
        off = (off + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = (f[1], body, (f[9], f[10]))


def test_cpio_roundtrip_and_determinism() -> None:
    import io
    entries = [cpio.directory("dev"), cpio.chardev("dev/console", 5, 1), cpio.file("init", b"#!/bin/sh\n", 0o755),
               cpio.symlink("bin/sh", "busybox")]
    a, b = io.BytesIO(), io.BytesIO()
    cpio.write(a, entries)
    cpio.write(b, list(reversed(entries)))
    assert a.getvalue() == b.getvalue()
    parsed = read_cpio(a.getvalue())
    assert stat.S_ISCHR(parsed["dev/console"][0]) and parsed["dev/console"][2] == (5, 1)
    assert parsed["init"][1] == b"#!/bin/sh\n" and parsed["init"][0] & 0o777 == 0o755
    assert stat.S_ISLNK(parsed["bin/sh"][0]) and parsed["bin/sh"][1] == b"busybox"


def test_squashfs_command_line() -> None:
    argv = squashfs.command("/src", "/dst.sqfs", {"compression": "zstd", "level": 15, "block_size_kb": 256,
                                                  "source_date_epoch": 42})
    assert argv[:3] == ["mksquashfs", "/src", "/dst.sqfs"]
    joined = " ".join(argv)
    assert "-comp zstd" in joined and "-b 256K" in joined and "-Xcompression-level 15" in joined
    assert "-mkfs-time 42" in joined and "-all-time 42" in joined and "-noappend" in argv


def fake_modules(tmp_path: Path) -> Path:
    mdir = tmp_path / "6.1.0"
    mdir.mkdir(parents=True)
    (mdir / "modules.dep").write_text(
        "kernel/fs/isofs/isofs.ko:\nkernel/drivers/scsi/sr_mod.ko: kernel/drivers/cdrom/cdrom.ko "
        "kernel/drivers/scsi/scsi_mod.ko\nkernel/drivers/cdrom/cdrom.ko:\nkernel/drivers/scsi/scsi_mod.ko:\n"
        "kernel/drivers/usb/storage/usb-storage.ko: kernel/drivers/scsi/scsi_mod.ko\n")
    (mdir / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    return mdir


def test_initramfs_module_order_puts_dependencies_first(tmp_path: Path) -> None:
    order = initramfs.module_order(fake_modules(tmp_path), ["sr_mod", "usb_storage", "isofs", "ext4"])
    assert order == ["kernel/drivers/cdrom/cdrom.ko", "kernel/drivers/scsi/scsi_mod.ko",
                     "kernel/drivers/scsi/sr_mod.ko", "kernel/drivers/usb/storage/usb-storage.ko",
                     "kernel/fs/isofs/isofs.ko"]


def test_initramfs_loads_drivers_by_need(tmp_path: Path) -> None:
    """Each module's guard and patterns, and the generated match() run by a real busybox sh: a
    controller's driver only for a device that wants it, disk drivers once their bus exists."""
    mdir = fake_modules(tmp_path)
    (mdir / "modules.dep").write_text((mdir / "modules.dep").read_text() +
                                      "kernel/drivers/ata/ahci.ko: kernel/drivers/scsi/scsi_mod.ko\n"
                                      "kernel/drivers/nvme/host/nvme.ko:\n")
    (mdir / "modules.alias").write_text(
        "alias pci:v*d*sv*sd*bc01sc06i01* ahci\nalias pci:v00008086d00002922sv*sd*bc*sc*i* ahci\n"
        "alias acpi*:LNRO0005:* ahci\nalias pci:v*d*sv*sd*bc01sc08i02* nvme\nalias scsi:t-0x05* sr_mod\n"
        "alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage\nalias fs-iso9660 isofs\n"
        "alias fs-ext4 ext4\nalias fs-ext2 ext4\n")
    (mdir / "modules.builtin").write_text("")
    (mdir / "modules.dep").write_text((mdir / "modules.dep").read_text() + "kernel/fs/ext4/ext4.ko:\n"
                                      "kernel/crypto/crc32c_generic.ko:\nkernel/fs/nls/nls_cp437.ko:\n"
                                      "kernel/drivers/block/loop.ko:\n")
    groups = initramfs.module_groups(mdir, ["loop", "sr_mod", "ext4", "crc32c_generic", "ahci", "nvme",
                                            "usb_storage", "isofs", "nls_cp437"])
    # In the order /init loads them: what no device asks for, drivers for present devices, then
    # for their buses; file systems by type, only when mounted, with what their mount asks the
    # kernel for by name (a checksum, a code page).
    assert [(n, g) for n, g, _, _ in groups] == [("loop", "always"), ("ahci", "match"), ("nvme", "match"),
                                                 ("sr_mod", "bus:scsi=scsi_mod.ko"), ("usb_storage", "bus:usb="),
                                                 ("ext4", "fs:ext2,ext4"), ("crc32c_generic", "fs:ext4"),
                                                 ("isofs", "fs:iso9660"), ("nls_cp437", "fs:vfat")]
    assert groups[1][2] == ["kernel/drivers/scsi/scsi_mod.ko", "kernel/drivers/ata/ahci.ko"]  # its needs first
    script = initramfs.modmatch(groups) + "wanted=' '\nfor a in \"$@\"; do match \"$a\"; done\necho \"$wanted\""
    ran = subprocess.run(["busybox", "sh", "-c", script, "sh", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",
                          "acpi:LNRO0005:", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"],
                         capture_output=True, text=True, timeout=30)
    assert ran.stdout.split() == ["ahci", "ahci"]  # not nvme: no NVMe device


AHCI = "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
VIRTIO_NET = "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
VIRTIO_SCSI = "virtio:d00000008v00001AF4"
A = " async_probe=1"
NODB = " force=nodbdelay"  # libata on QEMU's AHCI: no sleep before the links' debounce
LOOP = " max_loop=1"  # the root's loop device only; more on demand
REAL_AHCI = "pci:v00008086d00002922sv00008086sd00007270bc01sc06i01"  # the same chip on a real board


@pytest.mark.parametrize(("aliases", "before", "expected"), [
    # one device for ahci, one for virtio_pci: both probe asynchronously, loaded first; no module
    # that is not a driver waits; the CD driver, synchronous, waits for the AHCI ports
    ([AHCI, VIRTIO_NET], "", ["scsi_mod.ko" + A, "libata.ko" + A + NODB, "ahci.ko" + A, "virtio.ko" + A,
                              "virtio_pci.ko" + A, "loop.ko" + A + LOOP, "cdrom.ko" + A, "sr_mod.ko"]),
    # two AHCI controllers (the same alias twice): ahci synchronous, in the list's order, after
    # every library of the pass (cdrom's too: none waits behind a driver for the probes in flight)
    ([AHCI, VIRTIO_NET, AHCI], "", ["virtio.ko" + A, "virtio_pci.ko" + A, "loop.ko" + A + LOOP, "scsi_mod.ko" + A,
                                    "libata.ko" + A + NODB, "cdrom.ko" + A, "ahci.ko", "sr_mod.ko"]),
    # two virtio devices: virtio_pci synchronous
    ([VIRTIO_NET, AHCI, VIRTIO_NET], "", ["scsi_mod.ko" + A, "libata.ko" + A + NODB, "ahci.ko" + A,
                                          "loop.ko" + A + LOOP, "virtio.ko" + A, "cdrom.ko" + A, "virtio_pci.ko",
                                          "sr_mod.ko"]),
    # two SCSI host drivers share the sd and sr names: both synchronous
    ([VIRTIO_SCSI, AHCI], "", ["loop.ko" + A + LOOP, "scsi_mod.ko" + A, "libata.ko" + A + NODB, "virtio.ko" + A,
                               "cdrom.ko" + A, "ahci.ko", "virtio_scsi.ko", "sr_mod.ko"]),
    # a real board's AHCI: libata keeps its sleep before the debounce
    ([REAL_AHCI], "", ["scsi_mod.ko" + A, "libata.ko" + A, "ahci.ko" + A, "loop.ko" + A + LOOP, "cdrom.ko" + A,
                       "sr_mod.ko"]),
    # QEMU's virtio-net and a real AHCI: still no QEMU AHCI, the sleep stays
    ([VIRTIO_NET, REAL_AHCI], "", ["scsi_mod.ko" + A, "libata.ko" + A, "ahci.ko" + A, "virtio.ko" + A,
                                   "virtio_pci.ko" + A, "loop.ko" + A + LOOP, "cdrom.ko" + A, "sr_mod.ko"]),
    # a SCSI host loaded in an earlier pass (sr_mod too): this one could race its disks
    ([VIRTIO_SCSI], "loop.ko scsi_mod.ko libata.ko ahci.ko cdrom.ko sr_mod.ko", ["virtio.ko" + A, "virtio_scsi.ko"]),
])
def test_initramfs_probes_asynchronously_only_where_nothing_can_be_renamed(
        tmp_path: Path, aliases: list[str], before: str, expected: list[str]) -> None:
    """The init's own load_modules, run by a real busybox sh over a module list in $modlist's
    format; insmod and the devices' aliases are stand-ins (no kernel to load into here). A second
    pass over the same devices loads nothing."""
    first, _, again = load_modules_passes(tmp_path, aliases, before, "first", "again").partition("---\n")
    assert first.splitlines() == expected
    assert again == "---\n"


def test_initramfs_fallback_pass_loads_every_driver_synchronously(tmp_path: Path) -> None:
    """The pass the init makes when the medium is not there after 3 s: every driver, whatever
    the devices want (here none), each probing synchronously; file systems still wait for their mount."""
    assert load_modules_passes(tmp_path, [], "", "all").splitlines() == [
        "loop.ko" + A + LOOP, "scsi_mod.ko" + A, "libata.ko" + A, "virtio.ko" + A, "cdrom.ko" + A, "ahci.ko",
        "virtio_pci.ko", "virtio_scsi.ko", "sr_mod.ko", "---"]


def load_modules_passes(tmp_path: Path, aliases: list[str], before: str, *passes: str) -> str:
    """What insmod was asked, pass by pass (each ends with ---), with ``before`` already loaded."""
    modlist = initramfs.modlist([("loop", "always", ["loop.ko"], []),
                                 ("ahci", "match", ["scsi_mod.ko", "libata.ko", "ahci.ko"], []),
                                 ("virtio_pci", "match", ["virtio.ko", "virtio_pci.ko"], []),
                                 ("virtio_scsi", "match", ["scsi_mod.ko", "virtio.ko", "virtio_scsi.ko"], []),
                                 ("sr_mod", "bus:scsi=scsi_mod.ko", ["scsi_mod.ko", "cdrom.ko", "sr_mod.ko"], []),
                                 ("isofs", "fs:iso9660", ["cdrom.ko", "isofs.ko"], [])])
    match = ("match() {\n"
             f"\tcase \"$1\" in {AHCI} | {REAL_AHCI}) wanted=\"${{wanted}}ahci \" ;; esac\n"
             "\tcase \"$1\" in pci:v00001AF4*) wanted=\"${wanted}virtio_pci \" ;; esac\n"
             f"\tcase \"$1\" in {VIRTIO_SCSI}) wanted=\"${{wanted}}virtio_scsi \" ;; esac\n"
             "}\n")
    script = (init_functions("insmod_all", "qemu_ahci", "one_device", "load_modules") + match +
              'cat() { printf "%s\\n" $ALIASES; }\n'
              'insmod() { f=$1; shift; echo "${f#/lib/modules/}${*:+ $*}"; }\n' + modlist +
              'loaded=" $1 " drivers=" " async=" "\n'
              'shift 1\nfor pass in "$@"; do load_modules "$pass"; echo ---; done\n'
              'case "$IFS" in " \t\n") ;; *) echo "IFS left changed" ;; esac\n')
    ran = subprocess.run(["busybox", "sh", "-c", script, "sh", before, *passes], capture_output=True,
                         text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "ALIASES": " ".join(aliases)})
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def test_initramfs_fs_modules_are_each_types_groups_in_the_lists_order(tmp_path: Path) -> None:
    """fs_modules TYPE... (generated): for each type, the files of every group whose guard names
    it, in the module list's order, as /init read them from the list before; nothing for a type
    no module serves."""
    groups = [("loop", "always", ["kernel/drivers/block/loop.ko"], []),
              ("ext4", "fs:ext2,ext3,ext4", ["kernel/lib/crc16.ko", "kernel/fs/jbd2/jbd2.ko",
                                              "kernel/fs/ext4/ext4.ko"], []),
              ("crc32c_generic", "fs:ext4", ["kernel/crypto/crc32c_generic.ko"], []),
              ("isofs", "fs:iso9660", ["kernel/drivers/cdrom/cdrom.ko", "kernel/fs/isofs/isofs.ko"], []),
              ("vfat", "fs:vfat", ["kernel/fs/fat/fat.ko", "kernel/fs/fat/vfat.ko"], []),
              ("nls_cp437", "fs:vfat", ["kernel/fs/nls/nls_cp437.ko"], [])]
    script = initramfs.fsmods(groups) + ('set -f\nfor t in "$@"; do fs_modules $t; echo "$t:$fs"; done\n'
                                         'fs_modules vfat ext4; echo "both:$fs"')
    ran = subprocess.run(["busybox", "sh", "-c", script, "sh", "ext4", "ext2", "vfat", "iso9660", "xfs", "loop", "*"],
                         capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "ext4: crc16.ko jbd2.ko ext4.ko crc32c_generic.ko", "ext2: crc16.ko jbd2.ko ext4.ko",
        "vfat: fat.ko vfat.ko nls_cp437.ko", "iso9660: cdrom.ko isofs.ko", "xfs:", "loop:", "*:",
        "both: fat.ko vfat.ko nls_cp437.ko crc16.ko jbd2.ko ext4.ko crc32c_generic.ko"]
    assert initramfs.fsmods([]) == "fs_modules() {\n\tfs=\n\tfor type in \"$@\"; do\n\t\t:\n\tdone\n}\n"


@pytest.mark.parametrize("fstype", ["a b", "a|b", "x)", "*", "a;reboot", "$(x)", "ext4\nreboot", "ext\u00e9"])
def test_initramfs_refuses_a_file_system_type_that_is_not_a_shell_word(fstype: str) -> None:
    with pytest.raises(BasaltError):
        initramfs.fsmods([("odd", f"fs:ext4,{fstype}", ["kernel/fs/odd.ko"], [])])


@pytest.mark.parametrize("word", ["a b", "a'b", "a\nreboot", "$(x)", "a`b`", "*", "a;b", "a|b", "", "\u00e9"])
def test_initramfs_refuses_a_module_list_word_that_is_not_a_shell_word(word: str) -> None:
    for group in [(word, "always", ["kernel/x.ko"], []), ("x", word, ["kernel/x.ko"], []),
                  ("x", "always", [f"kernel/{word}.ko" if word else ""], [])]:
        with pytest.raises(BasaltError):
            initramfs.modlist([group])


def test_initramfs_module_list_is_one_line_per_group() -> None:
    """$modlist in busybox sh: a line per group, its words as /init splits them."""
    text = initramfs.modlist([("sr_mod", "bus:scsi=scsi_mod.ko", ["kernel/drivers/scsi/scsi_mod.ko",
                                                                  "kernel/drivers/scsi/sr_mod.ko"], []),
                              ("ext4", "fs:ext2,ext3,ext4", ["kernel/lib/crc-t10dif.ko", "kernel/fs/ext4/ext4.ko"],
                               [])])
    ran = subprocess.run(["busybox", "sh", "-c", text + "IFS='\n'; for l in $modlist; do echo \"[$l]\"; done"],
                         capture_output=True, text=True, timeout=30)
    assert ran.stdout.splitlines() == ["[sr_mod bus:scsi=scsi_mod.ko scsi_mod.ko sr_mod.ko]",
                                       "[ext4 fs:ext2,ext3,ext4 crc-t10dif.ko ext4.ko]"], ran


@pytest.mark.parametrize("pattern", ["a b", "a|b", "a;reboot", "$(x)", "a`b`", "a\"b"])
def test_initramfs_refuses_an_alias_that_is_not_a_shell_pattern(pattern: str) -> None:
    with pytest.raises(BasaltError):
        initramfs.shell_patterns(["pci:v*", pattern])


def test_initramfs_unknown_module_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BasaltError) as exc:
        initramfs.module_order(fake_modules(tmp_path), ["nosuch"])
    assert "initramfs module 'nosuch' is neither a module nor built into the kernel" in exc.value.render()


def unpack_initrd(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(data)
    if compression == "lz4":  # the legacy frame, the only one the kernel unpacks
        assert data[:4] == bytes.fromhex("02214c18")
    return subprocess.run([compression, "-d", "-q", "-c"], input=data, capture_output=True, check=True).stdout


@pytest.mark.parametrize("compression", ["lz4", "gzip", "zstd"])
def test_initramfs_archive_contents(tmp_path: Path, compression: str) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/busybox").write_bytes(b"\x7fELF-busybox")
    mdir = fake_modules(root / "usr/lib/modules")
    for rel in ("kernel/fs/isofs/isofs.ko",):
        (mdir / rel).parent.mkdir(parents=True)
        (mdir / rel).write_bytes(b"ko")
    out = tmp_path / "out"
    out.mkdir()
    ctx = SimpleNamespace(input=lambda name: tmp_path, out=out)
    initramfs.run(ctx, {"modules": ["isofs"], "compression": compression, "readahead": True, "init_digest": "x",
                        "source_date_epoch": 7})
    parsed = read_cpio(unpack_initrd((out / "initrd.img").read_bytes(), compression))
    assert "etc/modules" not in parsed  # the list is $modlist, not a file /init reads a byte at a time
    assert parsed["etc/modmatch.sh"][1] == b"modlist='isofs always isofs.ko'\nmatch() {\n\t:\n\n}\n" + \
        initramfs.fsmods([]).encode()
    assert parsed["lib/modules/isofs.ko"][1] == b"ko"
    assert parsed["init"][1] == initramfs.INIT.read_bytes()
    assert parsed["bin/busybox"][0] & 0o111
    assert parsed["etc/options.sh"][1] == b"read_ahead='1'\n"
    off = initramfs.entries(tmp_path / "root", {"modules": ["isofs"], "readahead": False, "source_date_epoch": 7})
    assert next(e for e in off if e.name == "etc/options.sh").data == b"read_ahead=''\n"  # the init's test: -n


@pytest.mark.parametrize(("path", "name"), [
    ("/boot/grub/grub.cfg", "/BOOT/GRUB/GRUB.CFG;1"), ("/basalt/vmlinuz", "/BASALT/VMLINUZ.;1"),
    ("/basalt/rootfs.squashfs", "/BASALT/ROOTFS.SQUASHFS;1"), ("/basalt/id-ab12", "/BASALT/ID_AB12.;1"),
    ("/basalt/install/plan.json.minisig", "/BASALT/INSTALL/PLAN_JSON.MINISIG;1"),  # ISO 9660: one dot
])
def test_iso_names(path: str, name: str) -> None:
    assert iso.iso_name(path) == name


def test_grub_config_has_normal_and_rescue_entries() -> None:
    cfg = iso.grub_cfg({"arch": "x86_64", "version": "1.2.3", "cmdline": "console=ttyS0", "volume_id": "BASALT"})
    assert "terminal_output serial console" in cfg
    assert cfg.count("menuentry") == 2
    assert "linux /basalt/vmlinuz console=ttyS0 basalt.label=BASALT basalt.mode=live\n" in cfg
    assert "basalt.rescue" in cfg.split("menuentry")[2]
    early = grub.early_cfg("id-1")
    assert "search --no-floppy --set=root --file /basalt/id-1" in early and " if " not in early


@pytest.mark.parametrize(("rel", "excluded"), [
    ("kernel/drivers/gpu/drm/drm.ko", True), ("kernel/drivers/gpu", True), ("kernel/drivers/gpux/a.ko", False),
    ("kernel/drivers/net/wireless/mac80211_hwsim.ko", False), ("kernel/drivers/net/wireless/ath/ath.ko", True),
    ("kernel/fs/isofs/isofs.ko", False), ("kernel/sound/x/y.ko", True),
])
def test_module_exclusion(rel: str, excluded: bool) -> None:
    exclude = ["kernel/drivers/gpu", "kernel/drivers/net/wireless", "kernel/sound/*"]
    keep = ["kernel/drivers/net/wireless/mac80211_hwsim.ko"]
    assert rootfs.module_excluded(rel, exclude, keep) is excluded


def test_merge_usr(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/busybox").write_text("bb")
    (tmp_path / "lib/x86_64-linux-gnu").mkdir(parents=True)
    (tmp_path / "lib/x86_64-linux-gnu/libc.so.6").write_text("libc")
    (tmp_path / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    rootfs.merge_usr(tmp_path)
    assert (tmp_path / "bin").is_symlink() and (tmp_path / "usr/bin/busybox").read_text() == "bb"
    assert (tmp_path / "lib/x86_64-linux-gnu/libc.so.6").read_text() == "libc"


def plan_for_test(tmp_path: Path, config: str | None = None) -> Any:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text("deb http://mirror.example/debian bookworm main\n")
    return compile_plan(load_image("x86_64-iso"), config, apt)


def test_plan_is_ordered_and_resolved(tmp_path: Path) -> None:
    p = plan_for_test(tmp_path)
    assert [s.name for s in p.stages] == ["fetch", "k3s", "rootfs", "squashfs", "initramfs", "bundle", "iso"]
    fetch = p.stages[0].options
    assert fetch["sources"] == [{"uri": "http://mirror.example/debian", "suites": ["bookworm"],
                                 "components": ["main"]}]
    assert fetch["boot_packages"] == ["grub-pc-bin", "grub-efi-amd64-bin"]
    assert p.stages[6].options["firmware"] == ["bios", "uefi"]
    assert "fetch" in p.describe() and json.loads(json.dumps(p.to_json()))["image"] == "x86_64-iso"


def test_config_change_only_changes_the_iso_stage(tmp_path: Path) -> None:
    a, b = plan_for_test(tmp_path), plan_for_test(tmp_path, "hostname: edge-1\n")
    changed = [x.name for x, y in zip(a.stages, b.stages, strict=True) if x.options != y.options]
    assert changed == ["iso"]


def fake_stage(name: str, volatile: bool = False, inputs: tuple[str, ...] = ()) -> Any:
    """A stage stand-in that records runs (the pipeline's caching is what is tested)."""
    def run(ctx: Any, options: dict[str, Any]) -> None:
        stage.runs += 1  # type: ignore[attr-defined]
        (ctx.out / "data").write_text(json.dumps(options))
        if volatile:
            (ctx.out / "key").write_text(options.get("key", "k"))

    stage = SimpleNamespace(**vars(Stage(name, 1, {}, inputs, volatile, (Path(__file__),), {}, run,
                                         lambda options: (), lambda options, tree: {})), runs=0)
    return stage


def test_pipeline_caches_and_invalidates_downstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASALT_CACHE_KEEP", raising=False)  # the test run's own setting (tests/conftest.py)
    mods = {"fetch": fake_stage("fetch", volatile=True), "rootfs": fake_stage("rootfs", inputs=("fetch",)),
            "iso": fake_stage("iso", inputs=("rootfs",))}
    monkeypatch.setattr(pipeline, "module", lambda name: mods[name])
    monkeypatch.setattr(pipeline, "check_tools", lambda plan: None)

    def run(rootfs_opt: str, iso_opt: str, key: str = "k") -> dict[str, Any]:
        stages = (PlannedStage("fetch", {"key": key}), PlannedStage("rootfs", {"o": rootfs_opt}),
                  PlannedStage("iso", {"o": iso_opt}))
        plan = SimpleNamespace(stages=stages, image=SimpleNamespace(name="t"))
        return pipeline.Pipeline(plan, cache=tmp_path / "cache", out=tmp_path / "out").run()  # type: ignore[arg-type]

    first = run("a", "x")
    assert [mods[n].runs for n in mods] == [1, 1, 1]
    again = run("a", "x")
    assert [mods[n].runs for n in mods] == [2, 1, 1]  # fetch always checks; the rest cached
    assert again["iso"].cached and again["iso"].id == first["iso"].id
    run("a", "y")
    assert [mods[n].runs for n in mods] == [3, 1, 2]  # only iso re-ran
    run("b", "y")
    assert [mods[n].runs for n in mods] == [4, 2, 3]  # rootfs and everything after
    run("b", "y", key="new-lock")
    assert [mods[n].runs for n in mods] == [5, 3, 4]  # new package set: all downstream
    assert not list((tmp_path / "cache" / "stages").glob("tmp-*"))
    # Old outputs beyond the last pipeline.KEEP per stage are collected.
    for n in range(pipeline.KEEP + 2):
        run("b", f"iso-{n}", key="new-lock")
    iso_dirs = [d for d in (tmp_path / "cache" / "stages").iterdir()
                if (d / "stage.json").is_file() and json.loads((d / "stage.json").read_text())["name"] == "iso"]
    assert len(iso_dirs) == pipeline.KEEP


def test_an_output_another_build_is_reading_is_not_collected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build holds a shared lock on every stage output it reads until it is done: the cache's
    collection skips those (and removes them once the reader lets go), and a stage whose lock
    another holder has exclusively is waited for, not built twice."""
    from builder.locks import Lock
    monkeypatch.delenv("BASALT_CACHE_KEEP", raising=False)
    mods = {"fetch": fake_stage("fetch", volatile=True), "iso": fake_stage("iso", inputs=("fetch",))}
    monkeypatch.setattr(pipeline, "module", lambda name: mods[name])
    monkeypatch.setattr(pipeline, "check_tools", lambda plan: None)

    def pipe(iso_opt: str) -> pipeline.Pipeline:
        stages = (PlannedStage("fetch", {"key": "k"}), PlannedStage("iso", {"o": iso_opt}))
        plan = SimpleNamespace(stages=stages, image=SimpleNamespace(name="t"))
        return pipeline.Pipeline(plan, cache=tmp_path / "cache", out=tmp_path / "out")  # type: ignore[arg-type]

    reader = pipe("first")
    first = reader.run()["iso"]  # not closed: it is still reading its outputs
    for n in range(pipeline.KEEP + 1):
        with pipe(f"later-{n}") as p:
            p.run()
    assert (first.path / "data").is_file()  # kept while read, though past the last KEEP
    reader.close()
    with pipe("one-more") as p:
        p.run()
    assert not first.path.exists()  # collected once nobody reads it
    # A stage being built elsewhere (its lock held exclusively) is not built beside it.
    holder = Lock(reader.locks_dir / f"{first.id}.lock")
    assert holder.try_take()
    assert not Lock(holder.path).try_take()
    holder.close()
    assert Lock(holder.path).try_take()


class Recorder:
    """Stands in for a real stage: its real name, version, inputs, code and volatility, but
    ``run`` records the call instead of building (what is tested is which stages the real plan's
    ids send to run). A volatile stand-in's key is what the real stage's lock would hold: fetch's
    the resolved package set (here: its options and the archive's state), k3s's the version and the
    binary's bytes, never the route or path it came by."""

    archive = "snapshot-1"  # the Debian archive's state: a security update changes it

    def __init__(self, runs: list[str]):
        self.runs = runs

    def __call__(self, real: Stage) -> Stage:
        def run(ctx: Any, options: dict[str, Any]) -> None:
            self.runs.append(real.name)
            for name in real.inputs:
                assert ctx.input(name).is_dir()
            if real.name == "fetch":
                key = json.dumps([options["packages"], options["sources"], self.archive])
            elif real.name == "k3s":
                binary = Path(options["binary"]).read_bytes().hex() if options["binary"] else None
                key = json.dumps([options["enabled"], options["version"], binary])
            else:
                return
            (ctx.out / "key").write_text(key)
        return dataclasses.replace(real, run=run)


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Any]:
    """(the stages run so far, build(image) -> the manifest-like results) over the real plan."""
    runs: list[str] = []
    from builder import stages
    recorder = Recorder(runs)
    recorders = {name: recorder(stages.module(name)) for name in stages.ORDER}
    monkeypatch.setattr(pipeline, "module", lambda name: recorders[name])
    monkeypatch.setattr(pipeline, "check_tools", lambda plan: None)

    def build(p: Any) -> dict[str, Any]:
        runs.clear()
        return pipeline.Pipeline(p, cache=tmp_path / "cache", out=tmp_path / "out").run()
    return runs, build


def copy_tree(src: Path, dest: Path) -> Path:
    import shutil
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


VOLATILE = ["fetch", "k3s"]
DOWNSTREAM_OF_ROOTFS = ["rootfs", "squashfs", "initramfs", "bundle", "iso"]


@pytest.mark.parametrize(("change", "reruns"), [
    ("nothing", []),
    ("package list", DOWNSTREAM_OF_ROOTFS),
    ("archive update", DOWNSTREAM_OF_ROOTFS),  # same options, a newer package in the signed index
    ("mirror", DOWNSTREAM_OF_ROOTFS),
    ("overlay file", DOWNSTREAM_OF_ROOTFS),
    ("agent code", DOWNSTREAM_OF_ROOTFS),
    ("kernel command line", ["iso"]),
    ("site config", ["iso"]),
    ("squashfs level", ["squashfs", "bundle", "iso"]),
    # the root keeps the modules the initramfs loads, whatever its hardware class: rootfs reads the list
    ("initramfs modules", ["rootfs", "squashfs", "initramfs", "bundle", "iso"]),
    ("k3s version", DOWNSTREAM_OF_ROOTFS),
    ("k3s binary", DOWNSTREAM_OF_ROOTFS),
    ("k3s binary moved", []),  # the same bytes from another path: nothing in the image changes
])
def test_a_change_reruns_exactly_the_stages_that_read_it(
        change: str, reruns: list[str], recorded: tuple[list[str], Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from builder import plan as plan_mod
    runs, build = recorded
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text("deb http://mirror.example/debian bookworm main\n")
    monkeypatch.setattr(plan_mod, "OVERLAYS", copy_tree(plan_mod.OVERLAYS, tmp_path / "overlays"))
    monkeypatch.setattr(plan_mod, "AGENT_DIR", copy_tree(plan_mod.AGENT_DIR, tmp_path / "agent"))
    binary = tmp_path / "k3s"
    binary.write_bytes(b"k3s release binary 1")
    img = load_image("x86_64-k3s")

    def compiled(image: Any = img, config: str | None = None, k3s_binary: Path = binary) -> Any:
        return compile_plan(image, config, apt, str(k3s_binary))

    first = build(compiled())
    assert sorted(runs) == sorted((*plan_mod.BUILD, "iso"))  # a first build runs every stage
    image, config, k3s_binary = img, None, binary
    if change == "package list":
        image = dataclasses.replace(img, packages=(*img.packages, "less"))
    elif change == "archive update":
        monkeypatch.setattr(Recorder, "archive", "snapshot-2")
    elif change == "mirror":
        (apt / "sources.list").write_text("deb http://other-mirror.example/debian bookworm main\n")
    elif change == "overlay file":
        motd = tmp_path / "overlays/base/rootfs/etc/motd"
        motd.parent.mkdir(parents=True, exist_ok=True)
        motd.write_text("changed\n")
    elif change == "agent code":
        with (tmp_path / "agent/doctor.py").open("a") as f:
            f.write("# changed\n")
    elif change == "kernel command line":
        image = dataclasses.replace(img, cmdline=img.cmdline + " loglevel=4")
    elif change == "site config":
        config = "hostname: edge-1\n"
    elif change == "squashfs level":
        image = dataclasses.replace(img, squashfs={"level": 3})
    elif change == "initramfs modules":
        image = dataclasses.replace(img, initramfs_modules=(*img.initramfs_modules, "nbd"))
    elif change == "k3s version":
        image = dataclasses.replace(img, k3s={**img.k3s, "version": "v1.35.0+k3s1"})
    elif change == "k3s binary":
        binary.write_bytes(b"k3s release binary 2")
    elif change == "k3s binary moved":
        k3s_binary = tmp_path / "elsewhere" / "k3s"
        k3s_binary.parent.mkdir()
        k3s_binary.write_bytes(binary.read_bytes())
    second = build(compiled(image, config, k3s_binary))
    assert sorted(r for r in runs if r not in VOLATILE) == sorted(reruns)
    assert [r for r in runs if r in VOLATILE] == VOLATILE  # the volatile stages always check
    for name, result in second.items():  # everything not re-run is reused, with its id
        if name not in VOLATILE:
            assert (result.id == first[name].id) == (name not in reruns), name
            assert result.cached == (name not in reruns), name


def test_a_cache_miss_says_which_input_changed(recorded: tuple[list[str], Any], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from builder import progress
    _, build = recorded
    stream = io.StringIO()
    monkeypatch.setattr(progress, "_stream", stream)
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text("deb http://mirror.example/debian bookworm main\n")
    img = load_image("x86_64-iso")
    build(compile_plan(img, None, apt))
    import dataclasses
    stream.seek(0)
    stream.truncate()
    with_less = dataclasses.replace(img, packages=(*img.packages, "less"))
    build(compile_plan(with_less, None, apt))
    err = stream.getvalue()
    assert "rootfs (inputs changed: fetch)" in err
    assert "squashfs (inputs changed: rootfs)" in err
    assert "iso (inputs changed: fetch, initramfs, rootfs, squashfs)" in err
    build(compile_plan(dataclasses.replace(with_less, cmdline="console=ttyS0"), None, apt))
    assert stream.getvalue().endswith("‣ iso (options changed: cmdline)\n")


def test_until_runs_only_what_a_stage_reads(recorded: tuple[list[str], Any], tmp_path: Path) -> None:
    runs, _ = recorded
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text("deb http://mirror.example/debian bookworm main\n")
    p = compile_plan(load_image("x86_64-iso"), None, apt)
    results = pipeline.Pipeline(p, cache=tmp_path / "cache", out=tmp_path / "out").run(until="initramfs")
    assert runs == ["fetch", "k3s", "rootfs", "initramfs"] and list(results) == runs
    with pytest.raises(BasaltError) as exc:
        pipeline.Pipeline(p, cache=tmp_path / "cache").run(until="disk")
    assert exc.value.render() == ("no stage 'disk' in this plan\n"
                                  "hint: stages of x86_64-iso: fetch, k3s, rootfs, squashfs, initramfs, bundle, iso")


def test_a_stage_cannot_read_an_undeclared_input(tmp_path: Path) -> None:
    from builder.download import BlobStore
    from builder.stages import StageContext
    ctx = StageContext(out=tmp_path, inputs={"rootfs": tmp_path}, store=BlobStore(tmp_path), work=tmp_path)
    with pytest.raises(BasaltError) as exc:
        ctx.input("fetch")
    assert "a stage read 'fetch', which is not among its INPUTS (rootfs)" in exc.value.render()


def test_failed_stage_leaves_nothing_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(ctx: Any, options: dict[str, Any]) -> None:
        (ctx.out / "half").write_text("written")
        raise BasaltError.simple("disk full")
    mods = {"rootfs": fake_stage("rootfs")}
    mods["rootfs"].run = boom
    monkeypatch.setattr(pipeline, "module", lambda name: mods[name])
    monkeypatch.setattr(pipeline, "check_tools", lambda plan: None)
    plan = SimpleNamespace(stages=(PlannedStage("rootfs", {}),), image=SimpleNamespace(name="t"))
    with pytest.raises(BasaltError):
        pipeline.Pipeline(plan, cache=tmp_path, out=tmp_path / "out").run()  # type: ignore[arg-type]
    assert [p.name for p in (tmp_path / "stages").iterdir()] == []


def test_missing_tool_fails_first_naming_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline.host, "which", lambda tool: None if tool == "mksquashfs" else "/bin/x")
    with pytest.raises(BasaltError) as exc:
        pipeline.check_tools(plan_for_test(tmp_path))
    assert exc.value.render() == ("missing host tools: mksquashfs\n"
                                  "hint: apt-get install squashfs-tools  (or run: ./inv setup)")


def test_cli_help_and_docs_take_the_stage_list_from_one_place() -> None:
    import re

    from builder import cli, stages
    root = Path(__file__).resolve().parents[4]
    table = re.findall(r"^\| (\w+)(?: \(output\))? \| `builder/stages/", (root / "docs/architecture.md").read_text(),
                       re.M)
    assert tuple(table) == stages.ORDER
    assert tuple(stages.ORDER) == (*stages.BUILD, *stages.OUTPUTS)
    assert all(stages.module(name).name == name for name in stages.ORDER)
    import io
    from contextlib import redirect_stdout
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        cli.main(["build", "--help"])
    assert ", ".join(stages.ORDER) in " ".join(out.getvalue().split())
