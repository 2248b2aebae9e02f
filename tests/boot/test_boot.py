"""Boot the real ISO in QEMU (TCG): ready line, console, clean power-off, rescue paths.

Each guest is bounded by timeouts and killed on exit (the Guest context manager)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent import layout
from builder import pipeline, plan
from builder.download import BlobStore
from builder.stages import StageContext
from builder.stages import iso as iso_stage
from builder.vm.qemu import IDLE, READY, Guest
from tests.conftest import Build
from tests.guestsh import CRNG_READY_AT, crng_ready_before

BOOT_TIMEOUT = 300  # TCG on a loaded 2-core machine; a healthy boot takes ~10-25 s


def status(guest: Guest, key: Path) -> dict[str, Any]:
    """``basalt status --json``, read over SSH (the serial console is for the ready line and logs:
    a long read-back there can be garbled under load)."""
    return json.loads(guest.ssh("basalt status --json", key))  # type: ignore[no-any-return]


# In the guest: which of the modules named on the command line the read-ahead list lacks (by
# their compiled file, source or extension; built-in and frozen ones are read from no file).
UNLISTED = """
import importlib.util, sys
sys.path[:0] = ['/usr/lib/basalt', '/usr/lib/python3/dist-packages']
listed = set(open('/usr/lib/basalt/readahead').read().split())
missing = []
for name in sys.argv[1:]:
    spec = importlib.util.find_spec(name) if name != '__main__' else None
    if spec is None or spec.origin in (None, 'built-in', 'frozen'):
        continue
    files = {spec.origin.lstrip('/')}
    if spec.origin.endswith('.py'):
        files.add(importlib.util.cache_from_source(spec.origin).lstrip('/'))
    if not files & listed:
        missing.append(name)
print(' '.join(missing) or 'none')
"""


def iso_of(out: Path) -> Path:
    return next(out.glob("*.iso"))


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_boots_to_ready_and_powers_off(built_iso: Path, firmware: str, qemu_available: None) -> None:
    version = plan.load_image("x86_64-iso").version
    with Guest(iso_of(built_iso), firmware=firmware) as guest:
        m = guest.wait_for(READY, BOOT_TIMEOUT)
        assert m.group(1) == version
        assert 0 < int(m.group(2)) and 0 < int(m.group(3)) < 512 * 1024
        assert m.group(4) == "0", guest.tail()
        assert guest.powerdown(90), f"no clean power-off; console tail:\n{guest.tail()}"
        assert guest.proc is not None and guest.proc.returncode == 0
        assert "basalt: poweroff now" in guest.console()


@pytest.fixture(scope="module")
def edge7(build: Build, key: Path) -> Path:
    """The default image with a baked site config (hostname: edge-7, the test key)."""
    return build("x86_64-iso", f"hostname: edge-7\nssh_authorized_keys: ['{pub(key)}']\n")


def pub(key: Path) -> str:
    return key.with_suffix(".pub").read_text().strip()


def test_console_shell_status_reaping_and_basalt_poweroff(edge7: Path, key: Path, qemu_available: None) -> None:
    out = edge7
    # the ISO's own kernel, initramfs and command line; basalt.debug: PID 1 logs what it imported
    with Guest(iso_of(out), firmware="direct", append="basalt.debug") as guest:
        guest.wait_for(READY, BOOT_TIMEOUT)
        guest.wait_for(r"edge-7:/# ", 60)  # the live console shell, prompt showing the configured hostname
        idle = guest.wait_for(IDLE, 60)  # the agent's last unprompted console line
        assert guest.run("echo console-$((6*7))") == "console-42"  # the console shell runs what is typed
        guest.wait_ssh(key)

        def sh(cmd: str) -> str:
            return guest.ssh(cmd, key)
        assert sh("cat /proc/1/cmdline | tr '\\0' ' '") == "/usr/bin/python3 -S /usr/sbin/basalt init "
        assert sh("hostname") == "edge-7"
        assert sh("grep edge-7 /etc/hosts") == "127.0.1.1\tedge-7"
        s = status(guest, key)
        assert [s["hostname"], s["mode"], s["errors"], s["services"]["console-ttyS0"]["state"]] == \
            ["edge-7", "live", [], "running"]
        # the boot timeline: the initramfs's steps, the interpreter's start, each agent phase, ready
        steps = [t["step"] for t in s["timeline"]]
        assert steps[:8] == ["kernel (to the initramfs's /init)", "initramfs: modules", "initramfs: boot medium found",
                             "initramfs: root mounted", "initramfs: state partition",
                             "initramfs: mounts and switch_root",
                             "interpreter start (switch_root to Python's first line)",
                             "interpreter: the agent's imports (to its first line)"]
        assert "agent: coldplug" in steps and steps[-1] == "ready" and s["timeline"][-1]["at_ms"] == s["ready_ms"]
        ats = [t["at_ms"] for t in s["timeline"]]
        assert ats == sorted(ats) and ats[0] > 0 and sum(t["took_ms"] for t in s["timeline"]) == s["ready_ms"]
        assert sh("basalt status").count("boot: kernel ") == 1
        # Drivers before ready are what ready needs (the NIC, the watchdog); the PC speaker, the
        # PS/2 mouse and SMBus come right after it (agent/pid1/modalias.py).
        loaded = sh("cat /run/basalt/modules-loaded").split("\n")
        before, after = loaded[:loaded.index("# ready")], loaded[loaded.index("# ready") + 1:]
        assert {"virtio_net", "i6300esb", "button", "evdev"} <= set(before), loaded
        assert not {"pcspkr", "psmouse", "i2c_i801", "qemu_fw_cfg"} & set(before), loaded
        assert {"pcspkr", "psmouse", "i2c_i801"} <= set(after), loaded
        # File systems load when first mounted (/etc/filesystems: busybox mount without -t tries
        # those, and the kernel runs modprobe for each): the ISO's FAT image, by a plain mount.
        assert not {"ext4", "vfat", "isofs"} & set(loaded), loaded
        # One loop device, the root's (loop max_loop=1); the plain mount below makes the next on demand
        assert sh("ls /sys/block | grep loop") == "loop0"
        assert sh("mkdir -p /tmp/efi && mount -o ro,loop /run/basalt/medium/boot/grub/efi.img /tmp/efi && "
                  "grep -c vfat /proc/mounts; ls /tmp/efi; umount /tmp/efi") == "1\nEFI"
        # No huge pages, so no 44 MiB kept free for them (images/x86_64-iso.yaml, kernel.cmdline)
        thp, min_free = sh("cat /sys/kernel/mm/transparent_hugepage/enabled /proc/sys/vm/min_free_kbytes").split("\n")
        assert thp == "always madvise [never]" and int(min_free) < 8192, (thp, min_free)
        # The initramfs loaded the controllers this machine has (AHCI for the CD, virtio), not the
        # ones it lacks (NVMe, USB, PIIX IDE): builder/initramfs/init, "Drivers by need".
        lsmod = {line.split()[0] for line in sh("cat /proc/modules").splitlines()}
        assert {"ahci", "sr_mod", "isofs", "squashfs", "virtio_pci"} <= lsmod, lsmod
        assert {"ext4", "vfat"} <= lsmod, lsmod  # loaded by the plain mount above
        assert not {"nvme", "xhci_pci", "ehci_pci", "usb_storage", "ata_piix", "virtio_blk"} & lsmod, lsmod
        # QEMU's AHCI: libata was told not to sleep 200 ms before each link's debounce (qemu_ahci)
        assert "FORCE: link flag 0x800 forced" in sh("dmesg | grep 'ata1: FORCE'")
        # The initramfs read the boot's read-ahead list in the background: every file it names is in
        # the root, and the reader has finished (reaped by PID 1, not left running)
        assert sh("cd / && ls $(cat /usr/lib/basalt/readahead) | wc -l") == \
            sh("wc -l < /usr/lib/basalt/readahead") != "0"
        assert sh("ps -o comm | grep -cx cat || true") == "0"
        # ... and it names the file of every module the boot imported by ready, the lazy imports
        # too (BOOT_IMPORTS in agent/pid1/init.py): the config's and the config modules' code.
        imported = sh(f"sed -n 's/.*modules at ready: [0-9]*; native: [^;]*; all: //p' {layout.RUN_AGENT_LOG}")
        assert "agent.config.sources" in imported.split() and "agent.modules.plans" in imported.split(), imported
        assert sh(f"python3 -S -c {shlex.quote(UNLISTED)} {imported}") == "none"
        # The random pool was ready before the agent's interpreter started (it would wait for it).
        crng = sh(CRNG_READY_AT)
        assert crng_ready_before(crng, s["phases"]["python_start_ms"]), (crng, s["phases"])
        assert sh("touch /etc/probe && echo writable") == "writable"  # /etc is a writable overlay
        assert "Read-only file system" in sh("touch /usr/probe 2>&1; true")  # the root is not
        assert sh("grep -c cgroup2 /proc/mounts") == "1"
        # DHCP on the virtio NIC (driver loaded by coldplug); udhcpc's output is in its service log.
        leased = "for i in $(seq 30); do grep -q obtained /run/basalt/log/dhcp-eth0.log && break; sleep 1; done"
        assert "lease of 10.0.2.15 obtained" in sh(f"{leased}; cat /run/basalt/log/dhcp-eth0.log")
        assert "inet 10.0.2.15/24" in sh("ip -4 addr show eth0")
        # Orphans are re-parented to PID 1 and reaped: no zombies after a double fork.
        sh("sh -c 'sleep 1 & exit 0'; sleep 3")
        assert sh("ps -o stat | grep -c '^Z' || true") == "0"
        assert int(idle.group(1)) > 0
        # basalt reboot: services stop, the machine resets and boots to a second ready line.
        mark = len(guest.console())
        guest.send("basalt reboot\n")
        guest.wait_for(r"basalt: reboot now", 60, mark)
        guest.wait_for(READY, BOOT_TIMEOUT, mark)
        guest.wait_for(r"edge-7:/# ", 60, mark)
        guest.settle()
        guest.send("basalt poweroff\n")
        assert guest.wait_exit(90) == 0, f"basalt poweroff did not power off; tail:\n{guest.tail()}"
        assert "basalt: stopping services (poweroff)" in guest.console()


DIRECT = "console=ttyS0,115200 quiet basalt.label=BASALT basalt.mode=live"


def test_kernel_command_line_config_overrides_baked(edge7: Path, key: Path, qemu_available: None) -> None:
    cmdline = f"{DIRECT} basalt.hostname=from-cmdline"
    # Without QEMU's i6300esb card the machine's only watchdog is its chipset's TCO timer, as on an
    # Intel board: lpc_ich (the boot's coldplug) makes its device, and PID 1's watchdog phase loads
    # iTCO_wdt for it and arms it before the ready line (agent/pid1/devices.py: watchdog_drivers).
    with Guest(iso_of(edge7), direct=(edge7 / "vmlinuz", edge7 / "initrd.img", cmdline), i6300esb=False) as guest:
        armed = guest.wait_for(r"basalt: watchdog \(iTCO_wdt\) armed: 60s, resets within 120s of the last feed "
                               r"\(second expiry\)\n", BOOT_TIMEOUT)
        ready = guest.wait_for(READY, BOOT_TIMEOUT, armed.end())
        assert "errors=0" in ready.group(0)
        guest.wait_for(r"from-cmdline:/# ", 60)
        guest.wait_ssh(key)
        shown = guest.ssh("basalt config show", key)
        baked = "/run/basalt/medium/basalt/config.yaml"
        assert shown.splitlines() == ["hostname = 'from-cmdline'    # kernel command line",  # over the baked one
                                      f"ssh_authorized_keys = {[pub(key)]!r}    # {baked}"]
        assert status(guest, key)["config_sources"] == ["/run/basalt/medium/basalt/config.yaml", "kernel command line"]
        tco = guest.ssh("cd /sys/class/watchdog/watchdog0 && cat identity state timeout", key)
        assert tco == "iTCO_wdt\nactive\n60", tco
        loaded = guest.ssh("cat /run/basalt/modules-loaded", key).split("\n")
        before = loaded[:loaded.index("# ready")]
        assert {"lpc_ich", "iTCO_wdt"} <= set(before) and "i2c_i801" not in before, loaded  # ICH9: no SMBus driver


def test_invalid_config_source_is_left_out_and_the_node_still_boots(edge7: Path, key: Path,
                                                                    qemu_available: None) -> None:
    cmdline = f"{DIRECT} basalt.hostname=bad_name!"
    with Guest(iso_of(edge7), direct=(edge7 / "vmlinuz", edge7 / "initrd.img", cmdline)) as guest:
        error = "kernel command line: hostname: 'bad_name!' is not valid here"
        guest.wait_for(re.escape(f"basalt: error: config: {error}"), BOOT_TIMEOUT)
        assert "errors=1" in guest.wait_for(READY, BOOT_TIMEOUT).group(0)
        guest.wait_for(r"edge-7:/# ", 60)  # the baked config still applies
        guest.wait_ssh(key)
        s = status(guest, key)
        assert [s["hostname"], len(s["errors"])] == ["edge-7", 1] and f"config: {error}" in s["errors"][0]
        baked = "/run/basalt/medium/basalt/config.yaml"
        assert guest.ssh(f"basalt config validate {baked}; echo rc=$?", key).endswith("ok\nrc=0")  # the file is fine
        every = guest.ssh("basalt config validate 2>&1; echo rc=$?", key)  # all sources: the command line is not
        assert every.startswith(error) and every.endswith("rc=1")


PROVISION = """\
hostname: provisioned
ssh_authorized_keys: ['{pub}']
write_files:
- path: /etc/basalt-test/plain
  content: "plain text\\n"
- path: /etc/basalt-test/b64
  encoding: b64
  content: {b64}
  permissions: '0600'
- path: /etc/basalt-test/gz
  encoding: gz+b64
  content: {gzb64}
  owner: nobody:nogroup
init_cmd:
- echo init > /run/init-ran
boot_cmd:
- echo boot > /run/boot-ran
run_cmd:
- ip -4 addr show eth0 > /run/run-ran
k3os:
  sysctl:
    vm.swappiness: 7
  modules:
  - dummy numdummies=3
  environment:
    HTTP_PROXY: http://proxy.invalid:3128
"""


def test_config_modules_apply_at_boot(build: Build, key: Path, qemu_available: None) -> None:
    import base64
    import gzip
    out = build("x86_64-iso", PROVISION.format(b64=base64.b64encode(b"encoded\n").decode(), pub=pub(key),
                                               gzb64=base64.b64encode(gzip.compress(b"zipped\n", mtime=0)).decode()))
    with Guest(iso_of(out), firmware="direct") as guest:
        assert "errors=0" in guest.wait_for(READY, BOOT_TIMEOUT).group(0)
        guest.wait_for(r"provisioned:/# ", 60)
        guest.wait_ssh(key)

        def sh(cmd: str) -> str:
            return guest.ssh(cmd, key)
        assert sh("cat /etc/basalt-test/plain /etc/basalt-test/b64 /etc/basalt-test/gz") == \
            "plain text\nencoded\nzipped"
        assert sh("stat -c '%a %U' /etc/basalt-test/b64 /etc/basalt-test/gz") == "600 root\n644 nobody"
        assert sh("cat /proc/sys/vm/swappiness") == "7"
        assert sh("ls -d /sys/class/net/dummy* | wc -l") == "3"  # module loaded with its parameter
        assert sh("cat /etc/environment") == "HTTP_PROXY=http://proxy.invalid:3128"
        assert sh("cat /run/init-ran /run/boot-ran") == "init\nboot"
        ran = "for i in $(seq 60); do [ -s /run/run-ran ] && break; sleep 1; done; cat /run/run-ran"
        assert "inet 10.0.2.15/24" in sh(ran)  # run_cmd ran after the network was up
        guest.wait_for(IDLE, 60)  # the agent's last unprompted console line: every phase is done
        s = status(guest, key)
        assert s["errors"] == [] and s["phases"]["runtime_modules_done_ms"] > s["phases"]["boot_modules_done_ms"]


def broken_iso(tmp_path: Path, squashfs: bytes) -> Path:
    """The default ISO with its root image replaced (the iso stage run on a doctored input)."""
    compiled = plan.plan("x86_64-iso")
    results = pipeline.Pipeline(compiled).run(until="initramfs")
    inputs = {name: r.path for name, r in results.items()}
    bad = tmp_path / "bad-squashfs"
    bad.mkdir()
    (bad / "rootfs.squashfs").write_bytes(squashfs)
    inputs["squashfs"] = bad
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    ctx = StageContext(out=out, inputs=inputs, store=BlobStore(), work=work)
    iso_stage.run(ctx, compiled.stages[-1].options)
    return out / "basalt.iso"


def test_corrupt_root_reaches_rescue_shell(built_iso: Path, tmp_path: Path, qemu_available: None) -> None:
    good = (built_iso / "rootfs.squashfs").read_bytes()
    corrupt = b"\0" * 4096 + good[4096:]  # superblock destroyed
    with Guest(broken_iso(tmp_path, corrupt), firmware="direct") as guest:
        guest.wait_for(r"basalt: rescue: root image /basalt/rootfs.squashfs on /dev/sr\d is corrupt or unreadable",
                       BOOT_TIMEOUT)
        guest.wait_for(r"basalt: rescue: dropping to a shell on the console", 30)
        assert "Kernel panic" not in guest.console()
        assert guest.run("echo rescue-shell-$((6*7))") == "rescue-shell-42"  # a usable shell


def test_missing_medium_reaches_rescue_shell(built_iso: Path, qemu_available: None) -> None:
    cmdline = "console=ttyS0,115200 quiet basalt.label=NOSUCH basalt.wait=3"
    with Guest(iso_of(built_iso), direct=(built_iso / "vmlinuz", built_iso / "initrd.img", cmdline)) as guest:
        guest.wait_for(r"basalt: rescue: no boot medium labelled NOSUCH found after 3s", BOOT_TIMEOUT)
        assert "Kernel panic" not in guest.console()


def test_rescue_entry_stops_in_the_initramfs_with_root_mounted(built_iso: Path, qemu_available: None) -> None:
    cmdline = "console=ttyS0,115200 quiet basalt.label=BASALT basalt.mode=live basalt.rescue"
    with Guest(iso_of(built_iso), direct=(built_iso / "vmlinuz", built_iso / "initrd.img", cmdline)) as guest:
        guest.wait_for(r"basalt: rescue: rescue requested on the kernel command line", BOOT_TIMEOUT)
        assert guest.run("cat /newroot/usr/lib/basalt/version") == plan.load_image("x86_64-iso").version
        assert READY.search(guest.console()) is None


def test_qemu_missing_is_a_clear_error(built_iso: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.errors import BasaltError
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(BasaltError) as exc, Guest(iso_of(built_iso)):
        pass
    assert exc.value.render() == ("qemu-system-x86_64 not found\nhint: apt-get install qemu-system-x86")


def test_a_silent_guest_fails_loudly_saying_where_the_cpus_are(built_iso: Path, qemu_available: None) -> None:
    """A guest that never speaks is not restarted (single-threaded TCG removed the early hang the
    harness used to retry, docs/architecture.md "QEMU"): its timeout fails the test, saying where
    each vCPU was. Silence is made here by sending the console to the screen only."""
    silent = "console=tty0 quiet basalt.label=BASALT basalt.mode=live"
    with Guest(iso_of(built_iso), direct=(built_iso / "vmlinuz", built_iso / "initrd.img", silent)) as guest, \
            pytest.raises(TimeoutError) as exc:
        first = guest.proc
        guest.wait_for("this line never appears", 8)
    assert guest.proc is first  # the same QEMU: never restarted
    text = str(exc.value)
    assert "cpu state (QMP info registers):" in text
    assert re.search(r"^CPU#0$", text, re.M), text
    assert len(re.findall(r"^[RE]IP=[0-9a-f]{8}", text, re.M)) == 2, text  # 64- or (early) 32-bit
