"""The Raspberry Pi SD card (images/rpi.yaml) under qemu-system-aarch64 -M raspi3b (TCG, single
thread): U-Boot and the device tree are read from the card's own boot partition, U-Boot starts
GRUB (EFI) from the card, GRUB boots slot A, whose squashfs on the card's second partition is
the root; the state partition grows to the (power-of-two padded) card, and a config dropped
on the FAT partition, as a laptop would, is applied. The config modules run on arm64, and
Wi-Fi from the wifi: keys associates with an access point on a second simulated radio.
The test logs in on the Pi's header console (ttyS1, QEMU's second UART): QEMU's USB network
device does not enumerate under Linux here once U-Boot has started USB (docs/raspberry-pi.md),
so there is no SSH in this test.

What QEMU cannot run is the Pi's VideoCore firmware (bootcode.bin, start*.elf, config.txt):
QEMU starts U-Boot where that firmware would (tests/image checks what the card gives it).
The guest is bounded by timeouts and killed on exit; its network is restricted to the SSH forward."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builder import pipeline, plan
from builder.arch import Architecture
from builder.vm.qemu import READY, Guest
from tests.guestsh import CRNG_READY_AT, crng_ready_before

BOOT_TIMEOUT = 300
CARD_MIB = 1024
PASSWORD = "pi-console-test"
# The config modules on arm64, and Wi-Fi: mac80211_hwsim gives the board two simulated radios;
# wlan1, left unmanaged, is an access point (wpa_supplicant's AP mode, started by boot_cmd), and
# the client Basalt runs on wlan0 from the wifi: keys must associate with it (WPA2-PSK).
AP_CONF = """ctrl_interface=/run/wpa-ap
network={
  ssid="site-ap"
  mode=2
  frequency=2412
  key_mgmt=WPA-PSK
  proto=RSN
  pairwise=CCMP
  psk="correct horse battery"
}
"""
SITE_CONFIG = f"""hostname: baked-name
timezone: Europe/Berlin
users:
  - name: ops
    groups: [operators]
write_files:
  - path: /etc/site/role
    content: "edge\\n"
  - path: /etc/site/ap.conf
    content: {json.dumps(AP_CONF)}
boot_cmd:
  - "echo ran > /run/site-boot-cmd"
  - "/usr/sbin/wpa_supplicant -B -i wlan1 -c /etc/site/ap.conf"
network:
  interfaces:
    wlan1: {{unmanaged: true}}
basalt:
  password: {PASSWORD}
  sysctl:
    vm.swappiness: "10"
  modules:
    - mac80211_hwsim radios=2
  environment:
    SITE: pi-site
  wifi:
    - name: site-ap
      passphrase: correct horse battery
    - name: open-fallback
"""


@pytest.fixture(scope="module")
def rpi_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("rpi")
    config = tmp / "config.yaml"
    config.write_text(SITE_CONFIG)
    out = pipeline.build(plan.plan("rpi", str(config)), out=tmp / "out")
    return next(out.glob("rpi-*.img"))


def drop_on_boot_partition(card: Path, name: str, text: str, work: Path) -> None:
    """Put a file on the card's FAT partition (its first MBR partition) with mtools."""
    table = json.loads(subprocess.run(["sfdisk", "-J", str(card)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert table["label"] == "dos"
    (work / name).write_text(text)
    subprocess.run(["mcopy", "-o", "-i", f"{card}@@{table['partitions'][0]['start'] * 512}", str(work / name),
                    f"::/{name}"], check=True, env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})


def login(guest: Guest, hostname: str = "pi-trial") -> None:
    """Log in on a fresh guest's console (its getty may print the prompt before the ready line)."""
    at = guest.wait_for(rf"{hostname} login:", 120).end()
    guest.settle()
    guest.send("root\n")
    guest.wait_for("Password:", 60, at)
    guest.send(PASSWORD + "\n")


def test_the_pi_card_boots_under_raspi3b_through_u_boot_and_grub(rpi_card: Path, tmp_path: Path,
                                                               qemu_available: None) -> None:
    card = tmp_path / "card.img"
    subprocess.run(["cp", "--sparse=always", str(rpi_card), str(card)], check=True)
    drop_on_boot_partition(card, "basalt-config.yaml", "hostname: pi-from-laptop\n", tmp_path)
    with Guest(None, arch=Architecture.ARM64, board="rpi", boot_disk=card, boot_disk_mib=CARD_MIB) as guest:
        m = guest.wait_for(READY, BOOT_TIMEOUT)
        assert m.group(4) == "0", guest.console()[-4000:]
        guest.wait_for("state partition /dev/mmcblk0p4 grown to", 180)  # after ready, in a child of PID 1
        console = guest.console()
        assert "devicetree: board" in console  # the card's u-boot.bin (rpi_arm64: the DT it is handed)
        assert "Scanning mmc 0:1..." in console  # its distro boot, on the card's boot partition
        assert "Booting /efi\\boot\\bootaa64.efi" in console  # U-Boot found the card's GRUB
        assert "Booting `Basalt (slot a)'" in console
        # Unarmed unless the config asks: QEMU's raspi3b resets at once when it is (agent/pid1/watchdog.py).
        assert "basalt: watchdog (Broadcom BCM2835 Watchdog timer) left unarmed" in console
        # The dropped config's hostname, in the getty's prompt on the header console.
        login(guest, "pi-from-laptop")

        def sh(cmd: str) -> str:  # the agent and the kernel log on this console too: drop their lines
            lines = guest.run(cmd, 120).splitlines()
            return "\n".join(line for line in lines if not line.startswith(("basalt: ", "[")))

        assert sh("uname -m") == "aarch64"
        assert sh("tr -d '\\0' < /proc/device-tree/model; echo") == "Raspberry Pi 3 Model B"
        assert sh("hostname") == "pi-from-laptop"  # the dropped config wins over the baked one
        assert sh("awk '$3 == \"squashfs\" {print $1}' /proc/mounts") == "/dev/mmcblk0p2"
        assert sh("cat /run/basalt/slot /run/basalt/mode").split() == ["a", "installed"]
        # The dropped config, validated at this boot, is remembered for the next (root's only).
        assert sh("stat -c %a /var/lib/basalt/validated-config.bin") == "600"
        assert sh("grep -c basalt-config.yaml /var/lib/basalt/validated-config.bin") == "1"
        # Only what is asserted crosses the serial line (long lines there are fragile).
        fields = sh("basalt status --json | python3 -c 'import json, sys; s = json.load(sys.stdin); "
                    "print(s[\"phases\"][\"python_start_ms\"], "
                    "\"/run/basalt/medium/basalt-config.yaml\" in s[\"config_sources\"], "
                    "s[\"slots\"][\"a\"][\"image\"], s[\"slots\"][\"b\"])'")
        started, fields = fields.split(" ", 1)
        assert fields == "True rpi {'state': 'empty'}", fields
        # The random pool was ready before the agent's interpreter started: the SoC's RNG is
        # credited (images/rpi.yaml), or Python's start would wait for jitter entropy.
        crng = sh(CRNG_READY_AT)
        assert crng_ready_before(crng, int(started)), (crng, started)
        # Config modules on arm64 (each answer short: the serial line is the transport).
        assert sh("cat /etc/timezone /etc/site/role /run/site-boot-cmd").split() == ["Europe/Berlin", "edge", "ran"]
        assert sh("id -nG ops") == "ops operators"
        assert sh("cat /proc/sys/vm/swappiness") == "10"
        assert sh("grep -c SITE=pi-site /etc/environment") == "1"
        # Wi-Fi: the generated supplicant config, and a supplicant on the simulated radio.
        assert sh("ls /sys/class/net | grep -c wlan") == "2"
        assert sh("stat -c %a /etc/wpa_supplicant/basalt.conf") == "600"
        assert sh("grep -c -e 'ssid=\"site-ap\"' -e 'psk=\"correct horse battery\"' -e 'ssid=\"open-fallback\"' "
                  "/etc/wpa_supplicant/basalt.conf") == "3"
        # the redirect inside braces: a process that ends between the glob and the open is no error line
        running = sh("for p in /proc/[0-9]*; do { tr '\\0' ' ' < $p/cmdline; } 2>/dev/null; echo; done"
                     " | grep -c '^/usr/sbin/wpa_supplicant -i wlan0 '")
        assert running == "1", running  # on wlan0 only: wlan1 is unmanaged
        state = sh("for i in $(seq 90); do [ \"$(cat /sys/class/net/wlan0/operstate)\" = up ] && break; sleep 1; "
                   "done; cat /sys/class/net/wlan0/operstate")
        assert state == "up", sh("tail -n 5 /var/log/basalt/wifi-wlan0.log")  # associated: the link is up
        size_kb = int(sh("df -k /var | tail -1").split()[1])
        assert size_kb > (CARD_MIB - 1 - 128 - 2 * 256) * 1024 * 0.9, size_kb
        guest.send("poweroff\n")
        assert guest.wait_exit(120) is not None, guest.tail()  # the watchdog's power-off ends QEMU


def partition(card: Path, number: int) -> tuple[int, int]:
    """(offset, size) in bytes of MBR partition ``number`` of the card."""
    table = json.loads(subprocess.run(["sfdisk", "-J", str(card)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]["partitions"]
    part = table[number - 1]
    return part["start"] * 512, part["size"] * 512


@pytest.fixture(scope="module")
def rpi_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Pi image's version 2: its upgrade bundle."""
    import yaml
    tmp = tmp_path_factory.mktemp("rpi-v2")
    definition = tmp / "rpi-v2.yaml"
    definition.write_text(yaml.safe_dump({"extends": "rpi", "version": "2"}))
    return pipeline.build(plan.plan(str(definition)), until="bundle") / "upgrade.bundle"


def card_with_trial(rpi_card: Path, bundle_path: Path, work: Path, dropped: str) -> Path:
    """A copy of the card (1 GiB, a power of two: booted in place) with version 2 written to slot B
    as basalt upgrade writes it — its squashfs to partition 3, its kernel, initramfs and build
    record to /basalt/b on the FAT partition — and the trial of slot B armed in GRUB's environment
    block; ``dropped`` is a basalt-config.yaml for the FAT partition."""
    import os
    import tarfile

    from agent.upgrade import bootsel, bundle
    card = work / "card.img"
    subprocess.run(["cp", "--sparse=always", str(rpi_card), str(card)], check=True)
    os.truncate(card, CARD_MIB << 20)
    with tarfile.open(bundle_path) as tar:
        tar.extractall(work / "bundle")
    manifest = json.loads((work / "bundle" / bundle.MANIFEST).read_text())
    offset, size = partition(card, 3)
    root = (work / "bundle" / bundle.ROOT).read_bytes()
    assert len(root) <= size
    with open(card, "r+b") as f:
        f.seek(offset)
        f.write(root)
    fat = f"{card}@@{partition(card, 1)[0]}"
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    (work / "build.json").write_text(json.dumps({k: manifest[k] for k in ("version", "image", "built")}))
    (work / "version").write_text(manifest["version"] + "\n")
    (work / "basalt-config.yaml").write_text(dropped)
    subprocess.run(["mcopy", "-i", fat, "::/boot/grub/grubenv", str(work / "grubenv")], check=True, env=env)
    grub = bootsel.GrubEnv(str(work / "grubenv"))
    grub.arm("b", 1)
    subprocess.run(["mmd", "-i", fat, "::/basalt/b"], check=True, env=env)
    for src, dest in ((work / "bundle" / bundle.KERNEL, "::/basalt/b/vmlinuz"),
                      (work / "bundle" / bundle.INITRD, "::/basalt/b/initrd.img"),
                      (work / "build.json", "::/basalt/b/build.json"), (work / "version", "::/basalt/b/version"),
                      (work / "grubenv", "::/boot/grub/grubenv"),
                      (work / "basalt-config.yaml", "::/basalt-config.yaml")):
        subprocess.run(["mcopy", "-o", "-i", fat, str(src), dest], check=True, env=env)
    return card


def sh_on(guest: Guest, cmd: str) -> str:
    lines = guest.run(cmd, 120).splitlines()
    return "\n".join(line for line in lines if not line.startswith(("basalt: ", "[")))


BOOT_STATE = ("basalt status --json | python3 -c 'import json, sys; s = json.load(sys.stdin); "
              "print(s[\"slot\"], s[\"version\"], s[\"boot\"][\"committed\"], s[\"boot\"][\"trial\"])'")


def test_a_trial_of_slot_b_through_u_boot_and_grub_is_committed(rpi_card: Path, rpi_v2: Path, tmp_path: Path,
                                                               qemu_available: None) -> None:
    """GRUB counts the trial down with save_env on the card's FAT partition, through U-Boot's EFI block
    I/O, before it boots slot B; B's health gate passes and commits it from Linux."""
    card = card_with_trial(rpi_card, rpi_v2, tmp_path, "hostname: pi-trial\n")
    with Guest(None, arch=Architecture.ARM64, board="rpi", boot_disk=card, boot_disk_in_place=True) as guest:
        m = guest.wait_for(READY, BOOT_TIMEOUT)
        console = guest.console()
        assert "basalt: trial boot of slot b (boots left after this one: 0; then slot a)" in console, console[-3000:]
        assert "Booting `Basalt (slot b)'" in console
        guest.wait_for(r"basalt: health: slot b \(2\) passed its health gate: committed", 300, m.end())
        login(guest)
        assert sh_on(guest, BOOT_STATE) == "b 2 b None"
        assert sh_on(guest, "awk '$3 == \"squashfs\" {print $1}' /proc/mounts") == "/dev/mmcblk0p3"


def test_a_trial_of_slot_b_that_fails_its_gate_comes_back_on_slot_a(rpi_card: Path, rpi_v2: Path, tmp_path: Path,
                                                                   qemu_available: None) -> None:
    dropped = ("hostname: pi-trial\nbasalt:\n  upgrade:\n    health_timeout: 10\n    health_checks:\n"
               "      - {name: site-probe, run: 'false', timeout: 5}\n")
    card = card_with_trial(rpi_card, rpi_v2, tmp_path, dropped)
    with Guest(None, arch=Architecture.ARM64, board="rpi", boot_disk=card, boot_disk_in_place=True) as guest:
        m = guest.wait_for(READY, BOOT_TIMEOUT)
        assert "Booting `Basalt (slot b)'" in guest.console()
        guest.wait_for(r"basalt: health: slot b \(2\) failed: health gate failed after 10s: "
                       r"health check site-probe exited 1", 300, m.end())
        guest.wait_for(r"basalt: reboot now", 120, m.end())
        assert guest.wait_exit(60) is not None  # raspi3b runs with -no-reboot: the reboot ends QEMU
    with Guest(None, arch=Architecture.ARM64, board="rpi", boot_disk=card, boot_disk_in_place=True) as guest:
        m = guest.wait_for(READY, BOOT_TIMEOUT)
        console = guest.console()
        assert "Booting `Basalt (slot a)'" in console and "trial boot of slot" not in console
        guest.wait_for(r"basalt: health: slot b \(2\) failed its trial", 300, m.end())
        login(guest)
        assert sh_on(guest, BOOT_STATE).startswith("a ") and sh_on(guest, BOOT_STATE).endswith(" a None")
        reason = sh_on(guest, "basalt status --json | python3 -c 'import json, sys; "
                              "print(json.load(sys.stdin)[\"upgrade\"][\"failed\"][\"2\"][\"reason\"][:40])'")
        assert reason == "health gate failed after 10s: health che", reason
